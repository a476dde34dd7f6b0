"""Policy entropy (METHODS §3): the mean over response tokens of H(pi(. | x, y_<t)).

Teacher-forced: each record's prompt (as the student sees it) and response are encoded together
and the entropy of the model's next-token distribution is read at every response position, via
`token_logprobs`, which never holds the [batch, length, vocab] logits. On the model's own samples
this is the entropy of the policy at temperature 1 along the sampled paths, whatever temperature
drew them; on a fixed held-out set of (teacher) responses it tracks the policy on fixed contexts.
"""

from __future__ import annotations

from typing import Any

import datasets
import torch

from reasonft.data.prompts import PromptFormat
from reasonft.data.records import as_dataset, require_columns
from reasonft.generation.progress import throughput_progress
from reasonft.scoring.batching import length_sorted_batches
from reasonft.scoring.logprobs import token_logprobs


def response_entropies(
    model: torch.nn.Module,
    tokenizer: Any,
    records: datasets.Dataset | list[dict[str, Any]],
    prompt_format: PromptFormat | None = None,
    terminate: bool = False,
    batch_tokens: int = 16384,
    chunk_tokens: int = 4096,
    max_length: int | None = None,
    progress: bool = True,
    description: str = "entropy",
) -> tuple[list[tuple[float, int] | None], dict[str, int]]:
    """Per record: (sum of token entropies over the response, number of response tokens), or
    None when it was not scored; and the skip counts {"empty": no response token, "too_long":
    prompt + response longer than `max_length` tokens}. `terminate` also scores the response
    terminator of `prompt_format` (as training sees it)."""
    prompt_format = PromptFormat.coerce(prompt_format)
    ds = as_dataset(records)
    require_columns(ds, ("prompt", "response"), "entropy")
    encoded = [
        prompt_format.encode(prompt, response or "", tokenizer, terminate=terminate)
        for prompt, response in zip(ds["prompt"], ds["response"])
    ]
    n_targets = [len(e["input_ids"]) - e["prompt_len"] for e in encoded]
    empty = [i for i, n in enumerate(n_targets) if n == 0]
    too_long = [
        i
        for i, e in enumerate(encoded)
        if n_targets[i] > 0 and max_length is not None and len(e["input_ids"]) > max_length
    ]
    skipped = {"empty": len(empty), "too_long": len(too_long)}
    dropped = set(empty) | set(too_long)
    usable = [i for i in range(len(encoded)) if i not in dropped]
    results: list[tuple[float, int] | None] = [None] * len(encoded)
    if not usable:
        return results, skipped
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    batches = length_sorted_batches([len(encoded[i]["input_ids"]) for i in usable], batch_tokens)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), throughput_progress(progress) as bar:
            task = bar.add_task(description, total=len(usable), rate="")
            for batch in batches:
                rows = [usable[j] for j in batch]
                width = max(len(encoded[i]["input_ids"]) for i in rows)
                ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                target = torch.zeros((len(rows), width), dtype=torch.bool)
                for r, i in enumerate(rows):
                    e = encoded[i]
                    length = len(e["input_ids"])
                    ids[r, :length] = torch.tensor(e["input_ids"])
                    mask[r, :length] = 1
                    target[r, e["prompt_len"] : length] = True
                _, entropy = token_logprobs(
                    model, ids.to(device), mask.to(device), target.to(device), chunk_tokens
                )
                sums = (entropy.double() * target.to(device)).sum(dim=1).tolist()
                for r, i in enumerate(rows):
                    results[i] = (sums[r], n_targets[i])
                bar.update(task, advance=len(rows))
    finally:
        model.train(was_training)
    return results, skipped


def policy_entropy(
    model: torch.nn.Module,
    tokenizer: Any,
    records: datasets.Dataset | list[dict[str, Any]],
    prompt_format: PromptFormat | None = None,
    terminate: bool = False,
    batch_tokens: int = 16384,
    chunk_tokens: int = 4096,
    max_length: int | None = None,
    progress: bool = True,
    description: str = "entropy",
) -> dict[str, Any]:
    """Mean token entropy over all response tokens of `records` (pooled), with counts.

    Returns entropy (token-pooled mean, nats), entropy_per_response (mean of per-response
    means), tokens, responses, and the records skipped: skipped_empty, skipped_too_long.
    """
    per_record, skipped = response_entropies(
        model, tokenizer, records, prompt_format, terminate,
        batch_tokens, chunk_tokens, max_length, progress, description,
    )
    scored = [r for r in per_record if r is not None]
    tokens = sum(n for _, n in scored)
    return {
        "entropy": sum(s for s, _ in scored) / tokens if tokens else float("nan"),
        "entropy_per_response": sum(s / n for s, n in scored) / len(scored) if scored else float("nan"),
        "tokens": tokens,
        "responses": len(scored),
        "skipped_empty": skipped["empty"],
        "skipped_too_long": skipped["too_long"],
    }
