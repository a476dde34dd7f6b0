"""Map response tokens to steps through the tokenizer's character offsets.

The response is tokenised alone with `add_special_tokens=False`, which gives the same ids
`data.prompts.encode_example` puts after the prompt. Rules:

- a token belongs to the step in which its first character lies (a token straddling a step
  boundary counts for the step where it starts);
- a step that ends up with no token (its characters all sit inside a token that started
  earlier, or an empty pre-segmented step) is merged into the next step, the last one into the
  step before; every merge is counted;
- without a prompt the first token of a pass has no context and cannot be scored; a step that
  would be left with no scored token (one token long, nothing before it in its window) is merged
  the same way (see `ensure_scored_token`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class ScoringExample:
    """One response ready to score: token ids and the step each response token belongs to."""

    index: int  # row in the records being scored
    prompt_ids: np.ndarray  # int64 [P]; empty when the response is scored without its prompt
    response_ids: np.ndarray  # int64 [T], response text only (no eos)
    token_step: np.ndarray | None  # int64 [T] step of each token, None when steps are not needed
    merged_steps: int = 0  # steps merged away (no token of their own, or nothing scorable)

    @property
    def n_steps(self) -> int:
        if self.token_step is None or len(self.token_step) == 0:
            return 0
        return int(self.token_step[-1]) + 1

    def step_bounds(self) -> list[tuple[int, int]]:
        """[start, end) token range of every step."""
        if self.token_step is None:
            raise ValueError("this example was encoded without steps")
        starts = np.flatnonzero(np.diff(self.token_step, prepend=-1)).tolist()
        return list(zip(starts, [*starts[1:], len(self.token_step)]))


def token_step_ids(
    offsets: Sequence[tuple[int, int]], steps: Sequence[str]
) -> tuple[np.ndarray, int]:
    """Step index of every token (steps without a token merged away) and the number merged."""
    step_starts = np.cumsum([0, *[len(s) for s in steps[:-1]]]).tolist() if steps else []
    raw = [max(bisect.bisect_right(step_starts, start) - 1, 0) for start, _ in offsets]
    owned = sorted(set(raw))
    renumber = {old: new for new, old in enumerate(owned)}
    return np.asarray([renumber[s] for s in raw], dtype=np.int64), len(steps) - len(owned)


def ensure_scored_token(
    token_step: np.ndarray, window_size: Callable[[int], int], has_context: bool
) -> tuple[np.ndarray, int]:
    """Merge steps that would have no scored token when nothing precedes the response.

    Step i's window starts `window_size(i)` steps back; when that is 0 and there is no prompt,
    the step's first token opens its pass and is not scored, so a one-token step would be left
    empty. It is merged into the next step (the last one into the step before).
    """
    if has_context or len(token_step) == 0:
        return token_step, 0
    lengths = np.bincount(token_step).tolist()
    merged = 0
    i = 0
    while i < len(lengths):
        if lengths[i] == 1 and window_size(i) == 0 and len(lengths) > 1:
            if i + 1 < len(lengths):
                lengths[i + 1] += 1
            else:
                lengths[i - 1] += 1
            del lengths[i]
            merged += 1
            continue
        i += 1
    return np.repeat(np.arange(len(lengths), dtype=np.int64), lengths), merged
