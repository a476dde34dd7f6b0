"""What both generation backends (hf.py, vllm.py) prepare before sampling: checked problems and
sampling settings, prompt token ids, per-prompt response budgets, stop tokens, per-sample seeds."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import datasets

from reasonft.data.prompts import PromptFormat
from reasonft.data.records import as_dataset, require_columns

PROBLEM_COLUMNS = ("prompt_id", "prompt", "answer")


def check_sampling(
    n: int, temperature: float, top_p: float, max_new_tokens: int | None,
    max_total_tokens: int | None = None,
) -> None:
    if n < 1:
        raise ValueError(f"generate.n={n}: need at least one sample per prompt")
    if temperature < 0:
        raise ValueError(f"generate.temperature={temperature}: must be >= 0 (0 = greedy)")
    if temperature == 0 and n > 1:
        raise ValueError(
            f"generate.temperature=0 (greedy) with n={n}: every sample would be identical; "
            "set n=1 or a temperature > 0"
        )
    if not 0 < top_p <= 1:
        raise ValueError(f"generate.top_p={top_p}: must lie in (0, 1]")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(
            f"generate.max_new_tokens={max_new_tokens}: must be >= 1, or null (until the context limit)"
        )
    if max_total_tokens is not None and max_total_tokens < 2:
        raise ValueError(
            f"generate.max_total_tokens={max_total_tokens}: must be >= 2, or null (the model's "
            "max_position_embeddings)"
        )


def check_problems(problems: datasets.Dataset | list[dict[str, Any]]) -> datasets.Dataset:
    """The problems as a Dataset with prompt_id/prompt/answer and unique prompt ids."""
    ds = as_dataset(problems)
    require_columns(ds, PROBLEM_COLUMNS, "generate")
    seen: set[Any] = set()
    duplicates = []
    for pid in ds["prompt_id"]:
        if pid in seen:
            duplicates.append(pid)
        seen.add(pid)
    if duplicates:
        raise ValueError(
            f"generate: prompt_id must be unique per problem (samples are seeded by it); "
            f"duplicated: {duplicates[:10]}{' ...' if len(duplicates) > 10 else ''}"
        )
    return ds


def sample_seed(seed: int, prompt_id: Any, sample_idx: int) -> int:
    """A 32-bit key for one sample, stable across processes (unlike Python's salted `hash`)."""
    digest = hashlib.blake2b(f"{seed}\x1f{prompt_id}\x1f{sample_idx}".encode(), digest_size=4)
    return int.from_bytes(digest.digest(), "little")


def prompt_token_ids(
    prompts: Sequence[str], tokenizer: Any, prompt_format: PromptFormat
) -> list[list[int]]:
    """Token ids of what the student sees, no added special tokens (as in training)."""
    texts = [prompt_format.prompt_text(p, tokenizer) for p in prompts]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def context_limit(model: Any, max_total_tokens: int | None) -> int | None:
    """The most tokens prompt + response may take: `max_total_tokens`, else the model's
    `max_position_embeddings` (None when neither is known)."""
    if max_total_tokens is not None:
        return int(max_total_tokens)
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(positions) if positions else None


def response_budgets(
    prompt_lengths: Sequence[int], max_new_tokens: int | None, limit: int | None,
    prompt_ids: Sequence[Any],
) -> list[int]:
    """Per prompt: how many tokens its response may take (stop token included):
    `max_new_tokens`, and at most `limit - prompt length` when a context limit is known."""
    if max_new_tokens is None and limit is None:
        raise ValueError(
            "generate.max_new_tokens=null runs until the context limit, but the model config has "
            "no max_position_embeddings; set generate.max_total_tokens or generate.max_new_tokens"
        )
    budgets = []
    for length, pid in zip(prompt_lengths, prompt_ids):
        room = None if limit is None else limit - length
        if room is not None and room < 1:
            raise ValueError(
                f"generate: the prompt of prompt_id={pid!r} has {length} tokens, leaving no room "
                f"for a response within {limit} tokens; raise generate.max_total_tokens (or the "
                "model's max_position_embeddings) or shorten the prompt"
            )
        if max_new_tokens is None:
            budgets.append(room)
        else:
            budgets.append(max_new_tokens if room is None else min(max_new_tokens, room))
    return budgets


def stop_token_ids(
    tokenizer: Any, model_eos: Any, extra_stop_tokens: Sequence[str],
    extra_stop_ids: Sequence[int] = (),
) -> list[int]:
    """EOS of the tokenizer and of the model's generation config, plus extra stop tokens present
    in the vocabulary (e.g. `<|im_end|>`, which ends a chat turn) and stop token ids given as
    ids (the official evaluation's 151643, 151645)."""
    ids: list[int] = []
    for value in (tokenizer.eos_token_id, model_eos):
        if value is None:
            continue
        ids.extend(value if isinstance(value, (list, tuple)) else [value])
    vocab = tokenizer.get_vocab()
    ids.extend(vocab[token] for token in extra_stop_tokens if token in vocab)
    out_of_vocab = [int(i) for i in extra_stop_ids if not 0 <= int(i) < len(tokenizer)]
    if out_of_vocab:
        raise ValueError(
            f"generate.stop_token_ids={list(extra_stop_ids)}: {out_of_vocab} lie outside the "
            f"tokenizer's {len(tokenizer)} ids; give ids of this tokenizer (or [])"
        )
    ids.extend(int(i) for i in extra_stop_ids)
    if not ids:
        raise ValueError("generate: the tokenizer has no eos_token and no stop token was found")
    return sorted({int(i) for i in ids})
