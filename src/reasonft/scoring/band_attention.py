"""SDPA that skips the keys a block of queries cannot see: the banded LALP pass at band cost.

A dense `[B, 1, L, L]` mask through SDPA makes every query row multiply every key, masked or
not, so a banded pass would pay more attention work than GALP's causal one. This attention
function (registered with transformers' `AttentionInterface`) cuts the queries into blocks of
`BLOCK` rows and gives SDPA only the key columns some row of the block sees (for the band: the
prompt and the response from the block's earliest window start), with the mask restricted to
them. The result is the dense masked SDPA's, up to float summation order; the work is the band's
area (for a window of a fraction f of the preceding steps, about f of a causal pass's).

The column plan is worked out once per mask (the same mask object reaches every layer).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv

NAME = "reasonft_band_sdpa"
BLOCK = 256  # query rows per SDPA call


@dataclass
class _Block:
    batch: int
    start: int
    end: int
    keys: Tensor | int  # gathered key indices, or the length of a contiguous prefix 0..keys-1
    mask: Tensor  # [1, 1, end - start, n_keys] bool


_PLAN: tuple[Tensor, list[_Block]] | None = None


def _plan(mask: Tensor, block: int) -> list[_Block]:
    global _PLAN
    if _PLAN is not None and _PLAN[0] is mask:
        return _PLAN[1]
    n, _, length, _ = mask.shape
    blocks = []
    for b in range(n):
        for start in range(0, length, block):
            end = min(start + block, length)
            rows = mask[b, 0, start:end, :end]
            seen = rows.any(0)
            keys = torch.nonzero(seen).squeeze(1)
            if len(keys) == end:  # every column up to the block's end: a plain slice
                blocks.append(_Block(b, start, end, end, rows[None, None]))
            else:
                blocks.append(_Block(b, start, end, keys, rows[:, keys][None, None]))
    _PLAN = (mask, blocks)
    return blocks


def band_sdpa_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[Tensor, None]:
    """transformers attention function: query [B, H, L, D], key/value [B, KVH, L, D], a 4D bool
    mask [B, 1, L, L]; returns ([B, L, H, D], None) like `sdpa_attention_forward`."""
    if attention_mask is None or attention_mask.dtype != torch.bool or attention_mask.dim() != 4:
        raise ValueError(f"{NAME} needs a 4D boolean attention mask (the banded LALP pass)")
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = torch.empty_like(query)
    for blk in _plan(attention_mask, BLOCK):
        q = query[blk.batch : blk.batch + 1, :, blk.start : blk.end]
        if isinstance(blk.keys, int):
            k = key[blk.batch : blk.batch + 1, :, : blk.keys]
            v = value[blk.batch : blk.batch + 1, :, : blk.keys]
        else:
            k = key[blk.batch : blk.batch + 1].index_select(2, blk.keys)
            v = value[blk.batch : blk.batch + 1].index_select(2, blk.keys)
        out[blk.batch : blk.batch + 1, :, blk.start : blk.end] = (
            torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=blk.mask, dropout_p=0.0, scale=scaling
            )
        )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, band_sdpa_attention)


@contextmanager
def band_attention(model: torch.nn.Module) -> Iterator[str]:
    """Run `model` with `band_sdpa_attention`, then restore its attention implementation."""
    global _PLAN
    original = getattr(model.config, "_attn_implementation", None) or "eager"
    model.set_attn_implementation(NAME)
    try:
        yield NAME
    finally:
        _PLAN = None  # do not keep the last mask alive
        model.set_attn_implementation(original)
