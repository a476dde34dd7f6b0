"""The record schema: one record per candidate response, carried through every stage.

Each stage only adds columns; it never rewrites what an earlier stage wrote.
"""

from __future__ import annotations

from typing import Any

import datasets

# Written by the loaders (and by `generate` for student samples).
BASE_COLUMNS = ("prompt_id", "prompt", "answer", "response", "source")
# Other accepted forms of the gold answer (a list of strings), where the data offers some.
ANSWER_ALTERNATIVES = "answer_alternatives"
# Optional on input.
OPTIONAL_COLUMNS = ("steps", "sample_idx", ANSWER_ALTERNATIVES)
# Added by later stages, in order: verify, score, select.
VERIFY_COLUMNS = ("correct", "pred_answer", "verify_status")
SCORE_COLUMNS = (
    "n_tokens",
    "n_scored_tokens",
    "ppl",
    "galp",
    "lalp",
    "step_logps",
    "score_conditioning",
)
SELECT_COLUMNS = ("loss_type", "selected_by")

# The kind of a training record without a `loss_type` (record kinds are the loss terms'
# `loss_type`s, each with its share of the step in `train.per_step`).
DEFAULT_LOSS_TYPE = "ce"


def as_dataset(records: datasets.Dataset | list[dict[str, Any]]) -> datasets.Dataset:
    """Accept a `datasets.Dataset` or a list of dicts (notebook use) and return a Dataset."""
    if isinstance(records, datasets.Dataset):
        return records
    return datasets.Dataset.from_list(list(records))


def like_input(result: datasets.Dataset, original: Any) -> Any:
    """Return `result` in the container type the caller gave (list in, list out)."""
    if isinstance(original, datasets.Dataset):
        return result
    return result.to_list()


def require_columns(ds: datasets.Dataset, columns: tuple[str, ...] | list[str], stage: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"{stage}: records lack column(s) {missing}; present: {ds.column_names}. "
            f"Run the stage that adds them first (verify adds `correct`, score adds `ppl`/`lalp`)."
        )
