"""`score(records, model, tokenizer, ...)`: the notebook-friendly entry point to scoring.

    from reasonft.scoring.api import score
    scored = score(records, model, tokenizer, method="lalp", window=4, steps="paragraph")

`steps` names a splitter config (`conf/score/steps/<name>.yaml`, built with Hydra), or is a
splitter object / `_target_` mapping. A list of dicts in gives a list of dicts out; a Dataset
in gives a Dataset out. With `return_report=True` the counts of the run (records, unscorable,
merged steps, ...) come back too.
"""

from __future__ import annotations

from typing import Any

import datasets
import torch

from reasonft.data.records import as_dataset, like_input
from reasonft.scoring.lalp import WindowSpec
from reasonft.scoring.scorer import Scorer
from reasonft.scoring.steps import StepSplitter


def score(
    records: datasets.Dataset | list[dict[str, Any]],
    model: torch.nn.Module,
    tokenizer: Any,
    method: str = "lalp",
    window: WindowSpec = 4,
    steps: str | StepSplitter | dict[str, Any] = "paragraph",
    condition_on_prompt: bool = True,
    batch_tokens: int = 16384,
    return_report: bool = False,
    **scorer_kwargs: Any,
) -> Any:
    """Add n_tokens, ppl, galp, lalp, step_logps, score_conditioning to `records`.

    Extra keyword arguments go to `Scorer` (chunk_tokens, prompt_format, window_rounding,
    progress).
    """
    scorer = Scorer(
        method=method,
        window=window,
        steps=steps,
        condition_on_prompt=condition_on_prompt,
        batch_tokens=batch_tokens,
        **scorer_kwargs,
    )
    scored, report = scorer(as_dataset(records), model, tokenizer)
    result = like_input(scored, records)
    return (result, report) if return_report else result
