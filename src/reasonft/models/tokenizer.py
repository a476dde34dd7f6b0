"""Train a small byte-level BPE tokenizer on a corpus and save it as a Hugging Face fast tokenizer.

The tokenizer uses exactly Qwen2's normaliser and pre-tokeniser (NFC, Qwen's split regex, then
byte-level without its own regex). transformers 5 loads any tokenizer saved beside a Qwen2 model
config as `Qwen2Tokenizer`, whatever class `tokenizer_config.json` names, and that class rebuilds
this pipeline from the vocabulary and merges; with the same pipeline from the start, the
in-memory tokenizer and every reload give the same ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS, IM_START, IM_END]
# Qwen2's pre-tokenisation: contractions, letter runs, single digits, punctuation runs, newlines.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Qwen2-style chat template, so the toy student and a real Qwen checkpoint build prompts alike.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Qwen2's pre-tokenisation, trained on `corpus`, with special tokens
    and chat template."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=EOS,
        additional_special_tokens=[IM_START, IM_END],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | Path) -> None:
    """Save so that `AutoTokenizer.from_pretrained(path)` gives back the same tokenizer.

    The class is named `Qwen2Tokenizer`: that is what transformers 5 loads beside a Qwen2
    config anyway, and naming it makes a folder without a model config load the same way.
    """
    path = Path(path)
    tokenizer.save_pretrained(path)
    cfg_file = path / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg_file.write_text(json.dumps(cfg, indent=2))


def check_tokenizer_reload(tokenizer: Any, folder: str | Path, texts: Iterable[str]) -> None:
    """The tokenizer saved in `folder`, loaded as the later stages load it, encodes every text
    to the same ids as `tokenizer` (else raise: a fine-tuned student whose tokenizer changed
    would be fed ids it was never trained on)."""
    from reasonft.models.loading import load_tokenizer

    reloaded = load_tokenizer(str(folder))
    texts = list(texts)
    before = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    after = reloaded(texts, add_special_tokens=False)["input_ids"] if texts else []
    for text, a, b in zip(texts, before, after):
        if a != b:
            raise ValueError(
                f"the tokenizer saved in {folder} ({type(reloaded).__name__}) encodes a training "
                f"text differently from the one trained with ({type(tokenizer).__name__}): "
                f"{len(a)} vs {len(b)} ids for {text[:60]!r}"
            )
    if reloaded.eos_token != tokenizer.eos_token:
        raise ValueError(
            f"the tokenizer saved in {folder} names EOS {reloaded.eos_token!r}, the one trained "
            f"with {tokenizer.eos_token!r}"
        )
