"""Records -> token ids with prompt masking, and tokenised examples -> padded training tensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from reasonft.data.prompts import IGNORE_INDEX, PromptFormat


def encode_record(
    problem: str, response: str, tokenizer: Any, prompt_format: PromptFormat | None = None
) -> dict[str, Any]:
    """`{input_ids, labels, prompt_len}` of one record: the prompt the model sees, its response
    and the format's response terminator (`<|im_end|>\\n` under a Qwen chat template, else EOS)."""
    return PromptFormat.coerce(prompt_format).encode(problem, response, tokenizer)


class Collator:
    """Right-pads a list of examples into a training batch.

    Each example has `input_ids`, `labels` (-100 over the prompt), `loss_type_id` (index into
    `loss_types`), `prompt_id` and the record `columns` the loss terms read. The batch holds
    `input_ids`, `attention_mask`, `labels` (-100 over prompt and padding) [B, L], `loss_type`
    [B] (ids), `loss_types` (the names the ids index), `prompt_id` (list, for error messages)
    and `columns` (name -> [B] tensor).

    With `packing`, the model input is padding-free as well: the sequences laid end to end in one
    row, `packed_input_ids` and `packed_position_ids` [1, T] (positions restart at 0 for each
    sequence, which is how transformers keeps the sequences from attending to each other), and
    `packed_index` [B, L], the column of the packed row that holds each padded position (0 over
    padding). The padded tensors stay, for the loss and the token counts.
    """

    def __init__(
        self,
        pad_token_id: int,
        loss_types: Sequence[str],
        packing: bool = False,
        columns: Sequence[str] = (),
    ) -> None:
        if pad_token_id is None:
            raise ValueError(
                "collate: the tokenizer has no pad token; set tokenizer.pad_token "
                "(models.loading.load_tokenizer uses eos)"
            )
        self.pad_token_id = int(pad_token_id)
        self.loss_types = tuple(loss_types)
        self.packing = bool(packing)
        self.columns = tuple(columns)

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
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "loss_type": loss_type,
            "loss_types": self.loss_types,
            "prompt_id": [ex.get("prompt_id") for ex in examples],
            "columns": {name: torch.as_tensor([ex[name] for ex in examples]) for name in self.columns},
        }
        if self.packing:
            batch.update(pack(input_ids, attention_mask))
        return batch


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The real tokens of a right-padded batch in one row, their positions, and where each
    padded position went (see `Collator`)."""
    lengths = attention_mask.sum(dim=1)
    real = attention_mask.bool()
    packed_input_ids = input_ids[real].unsqueeze(0)
    packed_position_ids = torch.cat([torch.arange(int(n)) for n in lengths]).unsqueeze(0)
    packed_index = torch.zeros_like(input_ids)
    packed_index[real] = torch.arange(int(lengths.sum()))
    return {
        "packed_input_ids": packed_input_ids,
        "packed_position_ids": packed_position_ids,
        "packed_index": packed_index,
    }
