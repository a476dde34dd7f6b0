"""PromptFormat: prompt text, system message handling and response terminator, checked against
text written by hand — and, for Qwen2.5-Math, the official training data's exact encoding."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import REFERENCE, needs_shared
from omegaconf import OmegaConf

from reasonft.config import CONF_DIR as CONF
from reasonft.data.prompts import OXA_SUFFIX, PromptFormat
from reasonft.training.collate import encode_record

QWEN_TOKENIZER_CONFIG = REFERENCE / "qwen2.5-math-1.5b.tokenizer_config.json"
# The stock Qwen2.5-Math chat template gives a system message of its own when none is given;
# the official OXA checkpoints ("...-no_sys") and the reference config have that branch removed.
STOCK_DEFAULT_BRANCH = (
    "{%- else %}\n        {{- '<|im_start|>system\\nPlease reason step by step, and put your "
    "final answer within \\\\boxed{}.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n"
    "{%- for message in messages %}"
)
STOCK_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def _chatml(user: str, system: str | None = None) -> str:
    head = "" if system is None else f"<|im_start|>system\n{system}<|im_end|>\n"
    return head + f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def test_default_format_is_the_chat_template_without_a_system_message(tiny_tokenizer):
    fmt = PromptFormat()
    assert fmt.prompt_text("Compute 3 + 4.", tiny_tokenizer) == _chatml("Compute 3 + 4.")
    assert fmt.response_terminator(tiny_tokenizer) == "<|im_end|>\n"
    plain = PromptFormat(suffix=" Be brief.", chat_template=False)
    assert plain.prompt_text("Compute 3 + 4.", tiny_tokenizer) == "Compute 3 + 4. Be brief."
    assert plain.response_terminator(tiny_tokenizer) == tiny_tokenizer.eos_token


def test_system_prompt_choices(tiny_tokenizer):
    text = "Compute 3 + 4."
    assert PromptFormat(system_prompt="You are terse.").prompt_text(text, tiny_tokenizer) == _chatml(
        text, "You are terse."
    )
    # The toy template has no default system message: "default" renders just the user turn.
    assert PromptFormat(system_prompt="default").prompt_text(text, tiny_tokenizer) == _chatml(text)
    with pytest.raises(ValueError, match="data.system_prompt"):
        PromptFormat(chat_template=False, system_prompt="x")


def test_encoding_masks_the_prompt_and_ends_with_the_terminator(tiny_tokenizer):
    fmt = PromptFormat(suffix=OXA_SUFFIX)
    response = "<think>\n3 + 4 = 7\n</think>\n\\boxed{7}"
    ex = encode_record("Compute 3 + 4.", response, tiny_tokenizer, fmt)
    prompt = tiny_tokenizer(_chatml("Compute 3 + 4." + OXA_SUFFIX), add_special_tokens=False)["input_ids"]
    whole = tiny_tokenizer(response + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert ex["input_ids"] == prompt + whole
    assert ex["labels"] == [-100] * len(prompt) + whole
    assert tiny_tokenizer.convert_ids_to_tokens(whole[-2:]) == ["<|im_end|>", "Ċ"]
    eos = PromptFormat(chat_template=False).encode("Q", "A", tiny_tokenizer)
    assert eos["input_ids"][-1] == tiny_tokenizer.eos_token_id


def test_from_config_reads_the_data_keys():
    data = OmegaConf.create({"prompt_suffix": OXA_SUFFIX, "chat_template": True, "system_prompt": None})
    assert PromptFormat.from_config(data) == PromptFormat(suffix=OXA_SUFFIX)
    assert PromptFormat.coerce({"suffix": "x", "chat_template": False}) == PromptFormat("x", False)
    with pytest.raises(ValueError, match="unknown key"):
        PromptFormat.coerce({"prompt_suffix": "x"})
    with pytest.raises(TypeError, match="data.chat_template"):
        PromptFormat(chat_template="yes")


def _qwen_tokenizer(tiny_tokenizer, template: str):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = template
    return tok


@needs_shared(QWEN_TOKENIZER_CONFIG)
def test_qwen25_math_official_training_text(tiny_tokenizer):
    """The official data (LLaMA-Factory's qwen_no_sys): prompt `<|im_start|>user\\n{problem +
    suffix}<|im_end|>\\n<|im_start|>assistant\\n`, response + `<|im_end|>\\n`, no system turn —
    with the reference template and with the stock one, whose default system turn is removed."""
    config = json.loads(QWEN_TOKENIZER_CONFIG.read_text())
    reference = config["chat_template"]
    assert config["eos_token"] == "<|endoftext|>" and "<|im_end|>" in config["additional_special_tokens"]
    anchor = "{%- endif %}\n{%- endif %}\n{%- for message in messages %}"
    assert anchor in reference and "Please reason step by step" not in reference
    stock = reference.replace(anchor, STOCK_DEFAULT_BRANCH, 1)
    problem = "What is $1+1$?"
    response = "<think>\n1+1=2\n</think>\nThe answer is \\boxed{2}."
    official_prompt = _chatml(problem + OXA_SUFFIX)
    fmt = PromptFormat(suffix=OXA_SUFFIX)
    for template in (reference, stock):
        tok = _qwen_tokenizer(tiny_tokenizer, template)
        assert fmt.prompt_text(problem, tok) == official_prompt
        assert fmt.response_terminator(tok) == "<|im_end|>\n"
        ex = fmt.encode(problem, response, tok)
        # LLaMA-Factory encodes the user slot and the assistant slot (content + <|im_end|>\n).
        prompt_ids = tok.encode(official_prompt, add_special_tokens=False)
        response_ids = tok.encode(response + "<|im_end|>\n", add_special_tokens=False)
        assert ex["input_ids"] == prompt_ids + response_ids
        assert ex["prompt_len"] == len(prompt_ids)
    stock_tok = _qwen_tokenizer(tiny_tokenizer, stock)
    # "default" keeps the stock template's own system turn; the reference template has none.
    assert PromptFormat(suffix=OXA_SUFFIX, system_prompt="default").prompt_text(problem, stock_tok) == (
        _chatml(problem + OXA_SUFFIX, STOCK_SYSTEM)
    )
    ref_tok = _qwen_tokenizer(tiny_tokenizer, reference)
    assert PromptFormat(suffix=OXA_SUFFIX, system_prompt="default").prompt_text(problem, ref_tok) == official_prompt


def test_response_end_eos_keeps_the_template_prompt(tiny_tokenizer):
    fmt = PromptFormat(response_end="eos")
    assert fmt.prompt_text("Q", tiny_tokenizer) == _chatml("Q")
    assert fmt.response_terminator(tiny_tokenizer) == "<|endoftext|>"
    assert fmt.encode("Q", "A", tiny_tokenizer)["input_ids"][-1] == tiny_tokenizer.eos_token_id
    with pytest.raises(ValueError, match="data.response_end"):
        PromptFormat(response_end="im_end")
    data = OmegaConf.load(CONF / "data" / "toy.yaml")
    assert PromptFormat.from_config(data) == PromptFormat(response_end="eos")
    official = PromptFormat.from_config(OmegaConf.load(CONF / "data" / "deepscaler.yaml"))
    assert official == PromptFormat(suffix=OXA_SUFFIX)
