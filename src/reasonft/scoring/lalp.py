"""Exact LALP log-probs at forward-pass speed (METHODS.md §2a, §2c).

Step i (0-based, i steps precede it) is scored given the prompt and only the `w_i` steps just
before it, re-encoded from the start of that window: positions restart right after the prompt,
exactly as if `prompt + s_{i-w_i} .. s_i` were fed to the model alone. How it stays fast:

- **prompt once**: each response's prompt is encoded once; its key/value cache is shared by all
  of that response's windows (a `DynamicCache` built from the selected rows, masked to each
  prompt's true length).
- **shared window starts**: windows that start at the same step are prefixes of one another,
  so one pass over `s_start .. s_last` scores all of them (causal attention makes step j's
  tokens see exactly `s_start .. s_j`). With an integer k, steps 0..k share the start 0; with
  k >= p the whole response is a single pass, identical to GALP's.
- **packing**: these segments are packed first-fit into rows (capacity: the longest segment
  of the batch) with a block-causal 4D mask, and rows of similar length are batched under
  `batch_tokens`, so almost no padded token goes through the model.
  Why not transformers' `DataCollatorWithFlattening`: it gives the same numbers (every pass as
  prompt + window, flattened with restarting position ids and `use_cache=False`: per step mean
  within 1.9e-6 on the toy student and 4.8e-7 on a tiny random Llama; with the default cache
  transformers ignores the packing and the numbers are wrong), but each pass then carries its
  own copy of the prompt, the GALP pass's prompt cache cannot be reused, and the collator makes
  one row per call, so rows are not batched. CPU time 1.14x this packing's on 73-token prompts
  (`bench/score_throughput.py --only throughput --responses 8 --vocab 1024 --rounds 3
  --methods galp,lalp,flattened`), more with longer prompts and more passes.
- **vocabulary projection only for scored tokens**: hidden states of the scored step tokens
  are gathered and projected with `logprobs_from_hidden` in chunks; no `[B, L, vocab]` logits.

Window sizes: an integer `k` gives `w_i = min(k, i)`; a fraction `f` in (0, 1] gives
`w_i = ceil(f * i)` (default; every step after the first sees at least its predecessor, f = 1
is the full prefix) or `floor(f * i)` with `rounding="floor"` (small f then scores early steps
with the prompt alone). METHODS.md says "a fraction f of the preceding steps"; ceil keeps the
5-25% range of the paper meaningful for traces of a few dozen steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from transformers import DynamicCache

from reasonft.scoring.batching import first_fit_decreasing, length_sorted_batches, pad_right
from reasonft.scoring.logprobs import logprobs_from_hidden
from reasonft.scoring.token_steps import ScoringExample

WindowSpec = int | float
ROUNDINGS = ("ceil", "floor")


def check_window(window: WindowSpec, rounding: str = "ceil") -> None:
    """Raise a ValueError naming the bad key when the window is not an int >= 0 or a fraction."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"score.window_rounding={rounding!r}: choose one of {ROUNDINGS}")
    if isinstance(window, bool) or not isinstance(window, (int, float)):
        raise TypeError(f"score.window={window!r}: give an integer k >= 0 or a fraction 0 < f <= 1")
    if isinstance(window, int) and window < 0:
        raise ValueError(f"score.window={window}: an integer window must be >= 0")
    if isinstance(window, float) and not 0.0 < window <= 1.0:
        raise ValueError(
            f"score.window={window}: a fractional window must be in (0, 1]; write an integer "
            "(4, not 4.0) for a fixed number of steps"
        )


def window_size(i: int, window: WindowSpec, rounding: str = "ceil") -> int:
    """How many preceding steps step `i` (0-based, so `i` steps precede it) is scored with."""
    if isinstance(window, int):
        return min(window, i)
    exact = round(window * i, 9)  # 0.1 * 30 is 3.0000000000000004 in floats
    return min(i, math.ceil(exact) if rounding == "ceil" else math.floor(exact))


def window_groups(
    n_steps: int, window: WindowSpec, rounding: str = "ceil"
) -> list[tuple[int, int, int]]:
    """Passes `(start, first, last)`: one pass over steps start..last scores steps first..last.

    Consecutive steps whose windows start at the same step share a pass (their windows are
    prefixes of one another). Window starts never decrease, so groups are contiguous.
    """
    groups: list[list[int]] = []
    for i in range(n_steps):
        start = i - window_size(i, window, rounding)
        if groups and groups[-1][0] == start:
            groups[-1][2] = i
        else:
            groups.append([start, i, i])
    return [tuple(g) for g in groups]  # type: ignore[misc]


@dataclass
class PromptContext:
    """Per-example prompt keys/values (right-padded) and the hidden state of the last prompt token."""

    keys: list[Tensor] | None  # per layer [B, kv_heads, P, head_dim]; None when no prompt
    values: list[Tensor] | None
    last_hidden: Tensor | None  # [B, H]; rows of examples without a prompt are unused
    lengths: Tensor  # [B] prompt lengths (long, CPU)


def context_from_cache(cache: DynamicCache, hidden: Tensor, lengths: Tensor) -> PromptContext:
    """Keep the first `max(lengths)` cached positions of a right-padded pass and the hidden state
    at each sequence's `lengths - 1` (the position that predicts the first response token)."""
    keep = int(lengths.max()) if len(lengths) else 0
    if keep == 0:
        return PromptContext(None, None, None, lengths)
    keys = [layer.keys[:, :, :keep].contiguous() for layer in cache.layers]
    values = [layer.values[:, :, :keep].contiguous() for layer in cache.layers]
    last = hidden[
        torch.arange(len(lengths), device=hidden.device),
        (lengths - 1).clamp(min=0).to(hidden.device),
    ]
    return PromptContext(keys, values, last, lengths)


def encode_prompts(model: torch.nn.Module, prompts: Sequence[np.ndarray]) -> PromptContext:
    """One pass over the (right-padded) prompts, keeping their cache and last hidden states."""
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    if len(prompts) == 0 or int(lengths.max()) == 0:
        return PromptContext(None, None, None, lengths)
    device = next(model.parameters()).device
    ids, att = pad_right(prompts)
    out = model.base_model(
        input_ids=ids.to(device),
        attention_mask=att.to(device),
        past_key_values=DynamicCache(config=model.config),
        use_cache=True,
    )
    return context_from_cache(out.past_key_values, out.last_hidden_state, lengths)


@contextmanager
def masked_attention(model: torch.nn.Module) -> Iterator[str]:
    """Run with an attention implementation that takes 4D custom masks (sdpa or eager)."""
    config = model.config
    original = getattr(config, "_attn_implementation", None) or "eager"
    if original in ("sdpa", "eager"):
        yield original
        return
    model.set_attn_implementation("sdpa")
    try:
        yield "sdpa"
    finally:
        model.set_attn_implementation(original)


@dataclass
class _Segment:
    example: int  # position of the example in the batch
    start: int  # first token of the pass (response token index)
    end: int  # one past its last token
    scored_from: int  # first token scored in this pass

    @property
    def length(self) -> int:
        return self.end - self.start


def _segments(
    examples: Sequence[ScoringExample], window: WindowSpec, rounding: str, skip_full_prefix: bool
) -> list[_Segment]:
    segments = []
    for b, ex in enumerate(examples):
        bounds = ex.step_bounds()
        for start, first, last in window_groups(len(bounds), window, rounding):
            if skip_full_prefix and start == 0:
                continue
            segments.append(_Segment(b, bounds[start][0], bounds[last][1], bounds[first][0]))
    return segments


def _block_mask(seg: Tensor, pos: Tensor, prompt_len: Tensor, prompt_width: int) -> Tensor:
    """[n, 1, R, P + R] bool: a real token sees its prompt and, causally, its own segment.

    Padding tokens see only themselves (a row with no visible key would give NaN)."""
    width = seg.shape[1]
    real = seg >= 0
    own = (
        (seg[:, :, None] == seg[:, None, :])
        & (pos[:, None, :] <= pos[:, :, None])
        & real[:, :, None]
    )
    own |= torch.eye(width, dtype=torch.bool, device=seg.device)[None] & ~real[:, :, None]
    prompt = (
        torch.arange(prompt_width, device=seg.device)[None, None, :] < prompt_len[:, None, None]
    ) & real[:, :, None]
    return torch.cat([prompt, own], dim=-1)[:, None]


def local_token_logprobs(
    model: torch.nn.Module,
    examples: Sequence[ScoringExample],
    window: WindowSpec = 4,
    rounding: str = "ceil",
    batch_tokens: int = 16384,
    chunk_tokens: int = 1024,
    context: PromptContext | None = None,
    full_prefix_logps: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Per-token local log-probs of each example ([T] float32, NaN where not scored).

    Every response token is scored once, in the pass of its own step's window. `context`
    reuses an already computed prompt cache (e.g. from the GALP pass); `full_prefix_logps`
    (GALP's token log-probs, same conditioning) fills the steps whose window reaches back to
    the first step, whose numbers are GALP's by definition, without computing them again.
    """
    check_window(window, rounding)
    device = next(model.parameters()).device
    out = [np.full(len(ex.response_ids), np.nan, dtype=np.float32) for ex in examples]
    segments = _segments(examples, window, rounding, skip_full_prefix=full_prefix_logps is not None)
    if full_prefix_logps is not None:
        for b, ex in enumerate(examples):
            bounds = ex.step_bounds()
            for start, first, last in window_groups(len(bounds), window, rounding):
                if start == 0:
                    a, e = bounds[first][0], bounds[last][1]
                    out[b][a:e] = full_prefix_logps[b][a:e]
    if not segments:
        return out
    if context is None:
        context = encode_prompts(model, [ex.prompt_ids for ex in examples])
    capacity = max(s.length for s in segments)
    rows: list[list[_Segment]] = []
    for b in range(len(examples)):
        own = [s for s in segments if s.example == b]
        rows.extend(
            [own[i] for i in group]
            for group in first_fit_decreasing([s.length for s in own], capacity)
        )
    row_lengths = [sum(s.length for s in row) for row in rows]
    _check_sliding_window(model, int(context.lengths.max()) + capacity)
    lm_head = model.get_output_embeddings()
    with masked_attention(model) as attn:
        for micro in length_sorted_batches(row_lengths, batch_tokens):
            _score_rows(
                model,
                lm_head,
                attn,
                [rows[r] for r in micro],
                examples,
                context,
                out,
                chunk_tokens,
                device,
            )
    return out


def _score_rows(
    model: torch.nn.Module,
    lm_head: torch.nn.Module,
    attn: str,
    rows: list[list[_Segment]],
    examples: Sequence[ScoringExample],
    context: PromptContext,
    out: list[np.ndarray],
    chunk_tokens: int,
    device: torch.device,
) -> None:
    width = max(sum(s.length for s in row) for row in rows)
    n = len(rows)
    ids = np.zeros((n, width), dtype=np.int64)
    seg = np.full((n, width), -1, dtype=np.int64)
    pos = np.zeros((n, width), dtype=np.int64)
    row_example = np.array([row[0].example for row in rows])
    # Where each scored token's prediction comes from: a flat index into the rows' hidden
    # states, or -1 - b for "the last prompt token of example b" (the window is empty).
    source, targets, dest_example, dest_token = [], [], [], []
    for r, row in enumerate(rows):
        offset = 0
        for k, s in enumerate(row):
            ex = examples[s.example]
            ids[r, offset : offset + s.length] = ex.response_ids[s.start : s.end]
            seg[r, offset : offset + s.length] = k
            pos[r, offset : offset + s.length] = np.arange(s.length)
            scored = np.arange(s.scored_from, s.end)
            at = offset + scored - s.start  # row position of each scored token
            src = r * width + at - 1
            if s.scored_from == s.start:  # first token predicted by the prompt alone
                if len(ex.prompt_ids) == 0:
                    scored, at, src = scored[1:], at[1:], src[1:]
                else:
                    src[0] = -1 - s.example
            source.append(src)
            targets.append(ids[r, at])
            dest_example.append(np.full(len(scored), s.example))
            dest_token.append(scored)
            offset += s.length
    prompt_len = context.lengths[torch.as_tensor(row_example)]
    prompt_width = int(prompt_len.max())
    seg_t, pos_t = torch.as_tensor(seg, device=device), torch.as_tensor(pos, device=device)
    mask = _block_mask(seg_t, pos_t, prompt_len.to(device), prompt_width)
    dtype = next(model.parameters()).dtype
    if attn == "eager":
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(
            ~mask, torch.finfo(dtype).min
        )
    cache = None
    if prompt_width > 0:
        index = torch.as_tensor(row_example, device=device)
        cache = DynamicCache(
            ddp_cache_data=[
                (
                    k.index_select(0, index)[:, :, :prompt_width],
                    v.index_select(0, index)[:, :, :prompt_width],
                )
                for k, v in zip(context.keys, context.values)
            ]
        )
    hidden = model.base_model(
        input_ids=torch.as_tensor(ids, device=device),
        attention_mask=mask,
        position_ids=prompt_len.to(device)[:, None] + pos_t,
        past_key_values=cache,
        use_cache=cache is not None,
    ).last_hidden_state
    src = torch.as_tensor(np.concatenate(source), device=device)
    from_rows = src >= 0
    h = torch.empty((len(src), hidden.shape[-1]), dtype=hidden.dtype, device=device)
    h[from_rows] = hidden.reshape(-1, hidden.shape[-1])[src[from_rows]]
    if (~from_rows).any():
        h[~from_rows] = context.last_hidden[
            (-1 - src[~from_rows]).to(context.last_hidden.device)
        ].to(device)
    logp, _ = logprobs_from_hidden(
        h,
        lm_head,
        torch.as_tensor(np.concatenate(targets), device=device),
        chunk_tokens,
        with_entropy=False,
    )
    logp = logp.float().cpu().numpy()
    dest_example_all, dest_token_all = np.concatenate(dest_example), np.concatenate(dest_token)
    for b in np.unique(dest_example_all):
        pick = dest_example_all == b
        out[b][dest_token_all[pick]] = logp[pick]


def _check_sliding_window(model: torch.nn.Module, longest: int) -> None:
    config = model.config
    layer_types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None)
    if "sliding_attention" in layer_types and window is not None and longest > window:
        raise ValueError(
            f"the model uses sliding-window attention (window {window}) and a LALP pass holds "
            f"{longest} tokens; the packed block mask assumes full attention. Lower score.batch_tokens "
            "or the window, or score with a model without sliding layers."
        )
