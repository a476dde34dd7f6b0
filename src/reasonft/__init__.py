"""reasonft: distil long-chain reasoning into a student; OXA and LALP on Hydra + Lightning.

The notebook API (each imported on first use, so `import reasonft` stays light):

- `is_correct(response, gold, timeout=5.0, grader="math_verify") -> bool` — the verify stage's
  verdict for one response; `grader="official"` applies the official OXA evaluation's rule
  (no `</think>` is wrong; the last `\\boxed{}` after the first `</think>`; MATH normalisation
  then sympy).
- `pass_at_k(n, c, k) -> float` — the unbiased pass@k estimator.
- `score(records, model, tokenizer, method="lalp", window=4, steps="paragraph", ...)` — adds
  `n_tokens`, `ppl`, `galp`, `lalp`, `step_logps` to the records.
- `select(records, strategy, **params)` — a `conf/select/<strategy>.yaml` selector.
- `toy_student(cache_dir=None) -> (world, model, tokenizer)` — the default run's toy world and
  its base student (the shipped one: seconds).
"""

from importlib import import_module
from typing import Any

from reasonft.config import register_resolvers

__version__ = "0.1.0"
__all__ = ["is_correct", "pass_at_k", "rank_teachers", "score", "select", "toy_student"]

_API = {
    "is_correct": "reasonft.verify.in_process",
    "pass_at_k": "reasonft.evaluation.passk",
    "score": "reasonft.scoring.api",
    "select": "reasonft.selection.api",
    "rank_teachers": "reasonft.selection.api",
    "toy_student": "reasonft.models.toy",
}

register_resolvers()


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'reasonft' has no attribute {name!r}")
