"""Records -> token ids with prompt masking, and tokenised examples -> padded training tensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from reasonft.data.prompts import IGNORE_INDEX, build_prompt, encode_example
from reasonft.data.records import LOSS_TYPES


def encode_record(
    problem: str,
    response: str,
    tokenizer: Any,
    prompt_suffix: str = "",
    chat_template: bool = True,
) -> dict[str, Any]:
    """`{input_ids, labels, prompt_len}` of one record: the prompt the model sees + its response."""
    prompt_text = build_prompt(problem, tokenizer, prompt_suffix, chat_template)
    return encode_example(prompt_text, response, tokenizer)


class Collator:
    """Right-pads a list of examples into a training batch.

    Each example has `input_ids`, `labels` (-100 over the prompt), `loss_type_id` (index into
    `loss_types`) and `prompt_id`. The batch holds `input_ids`, `attention_mask`, `labels`
    (-100 over prompt and padding) [B, L], `loss_type` [B] (ids), `loss_types` (the names the
    ids index) and `prompt_id` (list, for error messages).
    """

    def __init__(self, pad_token_id: int, loss_types: Sequence[str] = LOSS_TYPES) -> None:
        if pad_token_id is None:
            raise ValueError(
                "collate: the tokenizer has no pad token; set tokenizer.pad_token "
                "(models.loading.load_tokenizer uses eos)"
            )
        self.pad_token_id = int(pad_token_id)
        self.loss_types = tuple(loss_types)

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("collate: empty micro-batch")
        length = max(len(ex["input_ids"]) for ex in examples)
        size = (len(examples), length)
        input_ids = torch.full(size, self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(size, dtype=torch.long)
        labels = torch.full(size, IGNORE_INDEX, dtype=torch.long)
        for row, ex in enumerate(examples):
            n = len(ex["input_ids"])
            if len(ex["labels"]) != n:
                raise ValueError(
                    f"collate: record prompt_id={ex.get('prompt_id')!r} has {n} input ids but "
                    f"{len(ex['labels'])} labels"
                )
            input_ids[row, :n] = torch.as_tensor(ex["input_ids"], dtype=torch.long)
            attention_mask[row, :n] = 1
            labels[row, :n] = torch.as_tensor(ex["labels"], dtype=torch.long)
        loss_type = torch.as_tensor([int(ex["loss_type_id"]) for ex in examples], dtype=torch.long)
        if loss_type.min() < 0 or loss_type.max() >= len(self.loss_types):
            raise ValueError(
                f"collate: loss_type_id outside [0, {len(self.loss_types)}) for loss_types "
                f"{self.loss_types}"
            )
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "loss_type": loss_type,
            "loss_types": self.loss_types,
            "prompt_id": [ex.get("prompt_id") for ex in examples],
        }
