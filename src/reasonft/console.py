"""What a run shows in the terminal: its stages and their progress, not the libraries' chatter.

Quietened for `run.py` only (a notebook keeps the libraries' defaults): per-file progress bars of
`datasets` (parquet writes, split generation) and transformers (weight loading), Lightning's
start-up banners and tips, and deprecation warnings raised inside third-party packages. Every
warning a library raises at WARNING level or above still shows.
"""

from __future__ import annotations

import logging
import warnings


def quiet_libraries() -> None:
    import datasets
    import pytorch_lightning  # noqa: F401  (it sets its loggers' levels when imported: first)
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()
    for name in ("pytorch_lightning", "lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
