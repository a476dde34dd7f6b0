"""Load a student: a local/HF checkpoint, or any HF config with random weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str | None) -> torch.dtype | None:
    if name in (None, "auto"):
        return None
    if name not in DTYPES:
        raise ValueError(f"model.dtype={name!r}: choose one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[name]


def load_student(
    path: str,
    dtype: str | None = "float32",
    attn_implementation: str | None = None,
    config_overrides: dict[str, Any] | None = None,
    key: str = "model.path",
) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained(path)` with optional config changes (METHODS §1d).
    `key` names where `path` came from in errors (the config key the user set)."""
    if not Path(path).exists():
        if key != "model.path":
            raise FileNotFoundError(f"{key}: the student folder {path!r} does not exist")
        raise FileNotFoundError(
            f"model.path={path!r} does not exist. Point model.path at a local checkpoint folder "
            "(config.json + weights); no model hub is reachable from here."
        )
    kwargs: dict[str, Any] = {}
    if config_overrides:
        config = AutoConfig.from_pretrained(path)
        for name, value in config_overrides.items():
            setattr(config, name, value)
        kwargs["config"] = config
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(dtype), **kwargs)


def random_student(
    config: str | dict[str, Any],
    dtype: str | None = "float32",
    seed: int = 0,
    config_overrides: dict[str, Any] | None = None,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """A model with random weights from a config file/dict: the real compute cost, no download."""
    if isinstance(config, (str, Path)):
        cfg_dict = json.loads(Path(config).read_text())
    else:
        cfg_dict = dict(config)
    cfg_dict.update(config_overrides or {})
    model_type = cfg_dict.pop("model_type", "qwen2")
    cfg = AutoConfig.for_model(model_type, **cfg_dict)
    if attn_implementation:
        cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=_dtype(dtype))
    return model


def load_tokenizer(path: str) -> Any:
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
