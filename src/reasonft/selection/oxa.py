"""OXA's full data recipe (METHODS.md §1a + §1b): promoted teacher data (ce) + suppressed self data (ul)."""

from __future__ import annotations

from typing import Any

import datasets

from reasonft.selection.base import Selection
from reasonft.selection.confident_incorrect import ConfidentIncorrectSelector
from reasonft.selection.gaussian import PPLGaussianSelector


class OXASelector:
    """One selected set: `promote` (Gaussian PPL, loss ce) followed by `suppress` (confident incorrect, ul).

    Both parts read the same pool; each is configured by its own nested config (Hydra builds them
    first and hands the instances over). The report holds both parts' reports.
    """

    name = "oxa"

    def __init__(
        self,
        promote: PPLGaussianSelector | dict[str, Any],
        suppress: ConfidentIncorrectSelector | dict[str, Any],
    ) -> None:
        self.promote = (
            promote if isinstance(promote, PPLGaussianSelector) else PPLGaussianSelector(**promote)
        )
        self.suppress = (
            suppress
            if isinstance(suppress, ConfidentIncorrectSelector)
            else ConfidentIncorrectSelector(**suppress)
        )

    def __call__(self, ds: datasets.Dataset) -> Selection:
        promoted = self.promote(ds)
        suppressed = self.suppress(ds)
        records = datasets.concatenate_datasets([promoted.records, suppressed.records])
        report = {
            "selector": self.name,
            "n_pool": len(ds),
            "n_selected": len(records),
            "n_by_loss_type": {"ce": len(promoted.records), "ul": len(suppressed.records)},
            "shortfall": promoted.report.get("shortfall", 0)
            + suppressed.report.get("shortfall", 0),
            "promote": promoted.report,
            "suppress": suppressed.report,
        }
        return Selection(records=records, report=report)
