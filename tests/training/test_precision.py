"""Which dtype the student trains in: fp32 master weights unless pure 16-bit training is asked for
by its Lightning name (training/precision.py), and what the sharded strategies do with it."""

from __future__ import annotations

import pytest
import torch
from pytorch_lightning.plugins.precision import FSDPPrecision

from reasonft.training.precision import is_pure_low_precision, precision_note, training_dtype


@pytest.mark.parametrize(
    ("precision", "model_dtype", "expected"),
    [
        ("bf16-mixed", "bfloat16", "float32"),
        ("16-mixed", "float16", "float32"),
        ("32-true", "bfloat16", "float32"),
        ("32-true", "float32", "float32"),
        ("bf16-true", "bfloat16", "bfloat16"),
        ("16-true", "float16", "float16"),
    ],
)
def test_training_dtype(precision, model_dtype, expected):
    assert training_dtype(precision, model_dtype) == expected
    assert is_pure_low_precision(precision) == precision.endswith("16-true")


def test_start_up_says_what_it_does_with_the_dtypes():
    assert precision_note("bf16-mixed", "float32") is None
    assert "training loads it in float32" in precision_note("bf16-mixed", "bfloat16")
    assert "pure low-precision training, as asked" in precision_note("bf16-true", "bfloat16")


def test_fsdp_bf16_mixed_computes_in_bf16_over_the_fp32_module_it_shards():
    """FSDP keeps its flat parameters (the optimiser's) in the dtype of the module it wraps, the
    float32 one the train stage loads, and casts to bf16 only for compute and reduction."""
    config = FSDPPrecision("bf16-mixed").mixed_precision_config
    assert config.param_dtype == torch.bfloat16 and config.reduce_dtype == torch.bfloat16
    assert training_dtype("bf16-mixed", "bfloat16") == "float32"
