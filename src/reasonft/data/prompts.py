"""Prompt building and tokenisation with prompt masking."""

from __future__ import annotations

from typing import Any

OXA_SUFFIX = (
    "\nLet's reason step by step. Enclose the reasoning process within <think>...</think>, then "
    "summarize it and present the final answer within \\boxed{} — for example: "
    "<think>reasoning process here</think> \\boxed{answer here}."
)
IGNORE_INDEX = -100


def build_prompt(problem: str, tokenizer: Any, suffix: str = "", chat_template: bool = True) -> str:
    """The text the student sees before its response: chat template when the tokenizer has one."""
    content = problem + suffix
    if chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    return content


def encode_example(
    prompt_text: str,
    response: str,
    tokenizer: Any,
    append_eos: bool = True,
) -> dict[str, list[int]]:
    """Token ids of prompt + response, and labels with every prompt token set to -100.

    Prompt and response are tokenised separately so that the boundary is exact and the
    response ids are the same ones scoring uses.
    """
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if append_eos and tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
        "prompt_len": len(prompt_ids),
    }
