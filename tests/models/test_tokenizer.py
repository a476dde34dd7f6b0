"""The trained tokenizer gives the same ids in memory and after any reload through AutoTokenizer.

transformers 5 loads a tokenizer saved beside a Qwen2 model config as `Qwen2Tokenizer` (whatever
`tokenizer_config.json` names) and rebuilds Qwen's pre-tokenisation from the vocabulary; a
tokenizer trained with another pre-tokeniser would change its ids after the reload.
"""

from __future__ import annotations

import unicodedata

import pytest
from transformers import AutoTokenizer, Qwen2Config
from transformers.models.qwen2 import tokenization_qwen2

from reasonft.models.tokenizer import QWEN2_PRETOKENIZE_REGEX, save_tokenizer

PROBES = [
    "Step 1:  12 - 5 = 7\n\n\nThen   add 3.\n  \n\\boxed{10}\n</think>\n \t end",
    "<think>\n123456 + 7 = 123463\n\n</think>\n\\boxed{123463}",
    "  leading spaces, trailing spaces   \n\n\n\n",
    "It's 2x3 -- don't panic; we'll see.\r\nDone",
    # the same letter composed and decomposed: NFC makes them one
    unicodedata.normalize("NFD", "café") + " café",
    "<|im_start|>user\nCompute 2 + 3.<|im_end|>\n<|im_start|>assistant\n",
]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("beside_qwen2_config", [False, True], ids=["alone", "beside_qwen2_config"])
def test_saved_and_reloaded_gives_the_same_ids(tiny_tokenizer, tmp_path, beside_qwen2_config):
    if beside_qwen2_config:
        Qwen2Config(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=1,
                    num_attention_heads=4, num_key_value_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    save_tokenizer(tiny_tokenizer, tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in PROBES:
        assert _ids(loaded, text) == _ids(tiny_tokenizer, text), repr(text)
        assert loaded.decode(_ids(loaded, text)) == unicodedata.normalize("NFC", text)
    assert loaded.eos_token == tiny_tokenizer.eos_token
    assert loaded.pad_token_id == tiny_tokenizer.pad_token_id
    messages = [{"role": "user", "content": "Compute 2 + 3."}]
    assert loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )


def test_pretokenisation_is_qwen2s(tiny_tokenizer):
    assert QWEN2_PRETOKENIZE_REGEX == tokenization_qwen2.PRETOKENIZE_REGEX
    pieces = [p for p, _ in tiny_tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str("x 123\n\nab")]
    # digits one by one (as Qwen), a newline run kept together
    assert [p for p in pieces if p.isdigit()] == ["1", "2", "3"]
    assert "ĊĊ" in pieces


def test_special_tokens_are_single_ids(tiny_tokenizer):
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert len(_ids(tiny_tokenizer, token)) == 1
