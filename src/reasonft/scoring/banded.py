"""Banded LALP: exact LALP's windows enforced by an attention mask in one forward pass.

Exact LALP (`scoring.lalp`) re-encodes every step's window from its start, so its cost grows with
the window. This approximation runs prompt + response through the model once, as GALP does, with a
mask that gives each scored token the context LocalLP names (METHODS.md §2a): the row that
predicts a token of step i (the row of the token before it) attends, in every layer, to

- the prompt (when the response is scored given it),
- the tokens of the steps `i - w_i .. i - 1` (`w_i = window_size(i, window, rounding)`, the same
  windows as exact LALP, integer or fraction),
- the tokens of step i before the predicted one, and itself.

The mask is a band: row q sees the prompt and the response tokens `lo(q) .. q`, where `lo(q)` is
the first token of the window of the step of token q + 1 (window starts never decrease, so the band
only moves forward). A token whose window is empty (step 0, or `w_i = 0`) is predicted from the
last prompt token, exactly as exact LALP does (unscored without a prompt).

Why it is not exact: in the first layer every scoring row sees exactly its window, but the keys and
values it reads in later layers belong to rows that had their own (earlier-starting) windows, so
information from further back flows in through the layers. With one layer and `positions="global"`
and no prompt it is exact LALP; with a window covering every step it is GALP (no row is masked).

Position ids (`positions`):
- "global" (default): every token keeps its place in prompt + response (`0 .. P + T - 1`), as in
  GALP's pass. Distances inside a window are those of exact LALP; the distance from a window to
  the prompt is longer (exact LALP puts the window right after the prompt).
- "local": each row sits where exact LALP puts it, `P + q - lo(q)` (the prompt at `0 .. P - 1`):
  the query-to-prompt distance is exact, but the keys of earlier rows carry their own windows'
  offsets, so distances inside the response shrink (and can turn negative).
`bench/lalp_banded_agreement.py` measures both against exact LALP.

Only the scoring rows are projected to the vocabulary (`logprobs_from_hidden`, in chunks): no
`[batch, length, vocab]` logits. The mask is a `[B, 1, L, L]` boolean tensor. With
`skip_blocks=True` (default) it goes to `band_attention.band_sdpa_attention`, which gives SDPA
only the keys each block of query rows can see, so the attention does the band's work (less than
GALP's causal pass); with `skip_blocks=False` it goes through plain SDPA (or eager), which
multiplies every query by every key. The linear layers do GALP's work exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from reasonft.scoring.band_attention import band_attention
from reasonft.scoring.batching import pad_right
from reasonft.scoring.lalp import (
    WindowSpec,
    _check_sliding_window,
    check_window,
    masked_attention,
    window_size,
)
from reasonft.scoring.logprobs import logprobs_at
from reasonft.scoring.token_steps import ScoringExample

BAND_POSITIONS = ("global", "local")


def check_positions(positions: str) -> None:
    if positions not in BAND_POSITIONS:
        raise ValueError(f"score.band_positions={positions!r}: choose one of {BAND_POSITIONS}")


def token_window_starts(
    token_step: np.ndarray, window: WindowSpec, rounding: str = "ceil"
) -> np.ndarray:
    """[T]: the first response token of the window of each token's step (exact LALP's pass start)."""
    if len(token_step) == 0:
        return np.zeros(0, dtype=np.int64)
    n_steps = int(token_step[-1]) + 1
    step_start = np.searchsorted(token_step, np.arange(n_steps), side="left")
    first_step = np.array([i - window_size(i, window, rounding) for i in range(n_steps)])
    return step_start[first_step][token_step].astype(np.int64)


def row_band_starts(token_lo: np.ndarray) -> np.ndarray:
    """[T]: `lo(q)` of each response row q, the window start of the token it predicts (q + 1);
    the last row predicts nothing and keeps its own token's."""
    if len(token_lo) == 0:
        return token_lo
    return np.concatenate([token_lo[1:], token_lo[-1:]])


def band_mask(prompt_len: int, row_lo: np.ndarray) -> torch.Tensor:
    """[L, L] bool, L = prompt + response: row q sees key r (r <= q) iff r is a prompt token, or
    a response token at or after `lo(q)`, or q itself. Prompt rows are plainly causal."""
    length = prompt_len + len(row_lo)
    idx = torch.arange(length)
    lo = torch.zeros(length, dtype=torch.long)
    lo[prompt_len:] = prompt_len + torch.as_tensor(row_lo, dtype=torch.long)
    causal = idx[None, :] <= idx[:, None]
    in_band = (idx[None, :] < prompt_len) | (idx[None, :] >= lo[:, None])
    return (causal & in_band) | torch.eye(length, dtype=torch.bool)


def band_positions(prompt_len: int, row_lo: np.ndarray, positions: str = "global") -> np.ndarray:
    """[L] position ids of prompt + response (see the module's "Position ids")."""
    check_positions(positions)
    rows = np.arange(len(row_lo))
    if positions == "global":
        response = prompt_len + rows
    else:
        response = prompt_len + np.maximum(rows - row_lo, 0)
    return np.concatenate([np.arange(prompt_len), response]).astype(np.int64)


def predictor_rows(prompt_len: int, token_lo: np.ndarray) -> np.ndarray:
    """[T]: the row (in prompt + response) whose hidden state predicts each response token, or -1
    where nothing may (the window is empty and there is no prompt)."""
    t = np.arange(len(token_lo))
    rows = np.where(token_lo <= t - 1, prompt_len + t - 1, prompt_len - 1)
    return np.where(rows < 0, -1, rows).astype(np.int64)


def banded_token_logprobs(
    model: torch.nn.Module,
    examples: Sequence[ScoringExample],
    window: WindowSpec = 4,
    rounding: str = "ceil",
    positions: str = "global",
    chunk_tokens: int = 1024,
    skip_blocks: bool = True,
) -> list[np.ndarray]:
    """Per-token banded-LALP log-probs of each example ([T] float32, NaN where not scored), all
    examples in one right-padded forward pass (batch them under a token budget beforehand)."""
    check_window(window, rounding)
    check_positions(positions)
    out = [np.full(len(ex.response_ids), np.nan, dtype=np.float32) for ex in examples]
    if not examples:
        return out
    device = next(model.parameters()).device
    seqs = [np.concatenate([ex.prompt_ids, ex.response_ids]) for ex in examples]
    ids, _ = pad_right(seqs)
    n, width = ids.shape
    mask = torch.eye(width, dtype=torch.bool).repeat(n, 1, 1)  # padding rows: themselves only
    pos = torch.zeros((n, width), dtype=torch.long)
    source, targets, dest_example, dest_token = [], [], [], []
    for b, ex in enumerate(examples):
        p, t = len(ex.prompt_ids), len(ex.response_ids)
        token_lo = token_window_starts(ex.token_step, window, rounding)
        row_lo = row_band_starts(token_lo)
        mask[b, : p + t, : p + t] = band_mask(p, row_lo)
        pos[b, : p + t] = torch.as_tensor(band_positions(p, row_lo, positions))
        rows = predictor_rows(p, token_lo)
        scored = np.flatnonzero(rows >= 0)
        source.append(b * width + rows[scored])
        targets.append(ex.response_ids[scored])
        dest_example.append(np.full(len(scored), b))
        dest_token.append(scored)
    _check_sliding_window(model, width)
    mask4d = mask[:, None].to(device)
    with band_attention(model) if skip_blocks else masked_attention(model) as attn:
        if attn == "eager":
            dtype = next(model.parameters()).dtype
            mask4d = torch.zeros(mask4d.shape, dtype=dtype, device=device).masked_fill_(
                ~mask4d, torch.finfo(dtype).min
            )
        hidden = model.base_model(
            input_ids=ids.to(device),
            attention_mask=mask4d,
            position_ids=pos.to(device),
            use_cache=False,
        ).last_hidden_state
    logp = logprobs_at(hidden, model, source, targets, chunk_tokens)
    dest_example_all, dest_token_all = np.concatenate(dest_example), np.concatenate(dest_token)
    for b in range(len(examples)):
        pick = dest_example_all == b
        out[b][dest_token_all[pick]] = logp[pick]
    return out
