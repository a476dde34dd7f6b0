"""GALP's engine: every response token's log-prob given the prompt and the whole response before
it (METHODS.md §2a), in one right-padded pass over prompt + response per batch.

Only response positions are projected to the vocabulary (`logprobs_at`). The pass can keep its
cache over the prompts, which exact LALP then reuses instead of encoding the prompts again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import DynamicCache

from reasonft.scoring.batching import pad_right
from reasonft.scoring.lalp import PromptContext, context_from_cache
from reasonft.scoring.logprobs import logprobs_at
from reasonft.scoring.token_steps import ScoringExample


def global_token_logprobs(
    model: torch.nn.Module,
    examples: Sequence[ScoringExample],
    chunk_tokens: int = 1024,
    keep_context: bool = False,
) -> tuple[list[np.ndarray], PromptContext | None]:
    """log p(y_t | x, y_<t) for every response token (NaN where nothing precedes it).

    One right-padded pass over prompt + response; only response positions are projected to the
    vocabulary. With `keep_context` the pass's cache over the prompts is returned too, for LALP.
    """
    device = next(model.parameters()).device
    ids, att = pad_right([np.concatenate([ex.prompt_ids, ex.response_ids]) for ex in examples])
    out = model.base_model(
        input_ids=ids.to(device),
        attention_mask=att.to(device),
        past_key_values=DynamicCache(config=model.config) if keep_context else None,
        use_cache=keep_context,
    )
    hidden = out.last_hidden_state
    width = ids.shape[1]
    source, targets, sizes, first_scored = [], [], [], []
    for b, ex in enumerate(examples):
        p, t = len(ex.prompt_ids), len(ex.response_ids)
        first = 0 if p > 0 else 1
        at = np.arange(p + first, p + t)
        source.append(b * width + at - 1)
        targets.append(ids[b, at].numpy())
        sizes.append(len(at))
        first_scored.append(first)
    logp = logprobs_at(hidden, model, source, targets, chunk_tokens)
    result, offset = [], 0
    for ex, n, first in zip(examples, sizes, first_scored):
        token_logps = np.full(len(ex.response_ids), np.nan, dtype=np.float32)
        token_logps[first:] = logp[offset : offset + n]
        result.append(token_logps)
        offset += n
    context = None
    if keep_context:
        lengths = torch.tensor([len(ex.prompt_ids) for ex in examples], dtype=torch.long)
        context = context_from_cache(out.past_key_values, hidden, lengths)
    return result, context
