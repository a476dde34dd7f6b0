"""Token log-probabilities (and entropies) without the `[batch, length, vocab]` logits tensor.

The decoder runs once; the vocabulary projection is applied only at the positions that are
scored, a chunk of `chunk_tokens` positions at a time. Under autograd each chunk is
checkpointed, so backward recomputes that chunk's logits instead of keeping them all.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def _chunk_logp_entropy(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, with_entropy: bool
) -> tuple[Tensor, Tensor]:
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    if not with_entropy:
        return logp, logp.new_zeros(logp.shape).detach()
    with torch.no_grad():
        probs = torch.softmax(logits, dim=-1)
        entropy = lse - (probs * logits).sum(-1)
    return logp, entropy


def logprobs_from_hidden(
    hidden: Tensor,
    lm_head: torch.nn.Linear,
    targets: Tensor,
    chunk_tokens: int = 4096,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor]:
    """Log p(target) and the (detached) entropy at each row of `hidden` [N, H] -> ([N], [N]).

    The entropy costs a second pass over the vocabulary; `with_entropy=False` skips it (zeros).
    """
    logps, ents = [], []
    use_ckpt = torch.is_grad_enabled() and hidden.requires_grad
    for start in range(0, hidden.shape[0], chunk_tokens):
        h = hidden[start : start + chunk_tokens]
        t = targets[start : start + chunk_tokens]
        if use_ckpt:
            lp, en = checkpoint(
                _chunk_logp_entropy,
                h,
                lm_head.weight,
                lm_head.bias,
                t,
                with_entropy,
                use_reentrant=False,
            )
        else:
            lp, en = _chunk_logp_entropy(h, lm_head.weight, lm_head.bias, t, with_entropy)
        logps.append(lp)
        ents.append(en)
    if not logps:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat(logps), torch.cat(ents)


def token_logprobs(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    target_mask: Tensor,
    chunk_tokens: int = 4096,
    position_ids: Tensor | None = None,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor]:
    """Per-token log p(y_t | y_<t) and entropy of a causal LM, shaped like `input_ids`.

    `target_mask[b, t]` says token t is scored (predicted from position t-1); unscored
    positions (and t = 0) hold 0. Works for any HF causal LM whose `base_model` returns
    `last_hidden_state` and whose output embedding is a plain linear layer.
    """
    base = model.base_model
    # No KV cache in a teacher-forced pass (a cache would also turn off the packed-sequence mask).
    out = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    hidden = out.last_hidden_state
    mask = target_mask[:, 1:].bool()
    h = hidden[:, :-1][mask]
    t = input_ids[:, 1:][mask]
    lp, en = logprobs_from_hidden(h, model.get_output_embeddings(), t, chunk_tokens, with_entropy)
    logp = hidden.new_zeros(input_ids.shape, dtype=torch.float32)
    ent = hidden.new_zeros(input_ids.shape, dtype=torch.float32)
    logp[:, 1:][mask] = lp
    ent[:, 1:][mask] = en.to(ent.dtype)
    return logp, ent


def logprobs_at(
    hidden: Tensor,
    model: torch.nn.Module,
    rows: list,
    targets: list,
    chunk_tokens: int,
) -> np.ndarray:
    """Log p(target) at the given flat rows of `hidden` [B, L, H] (lists of index arrays, one per
    example, concatenated), as a float32 numpy array: what the scorer and the banded pass share."""
    device = hidden.device
    src = torch.as_tensor(np.concatenate(rows), device=device)
    logp, _ = logprobs_from_hidden(
        hidden.reshape(-1, hidden.shape[-1])[src],
        model.get_output_embeddings(),
        torch.as_tensor(np.concatenate(targets), device=device),
        chunk_tokens,
        with_entropy=False,
    )
    return logp.float().cpu().numpy()
