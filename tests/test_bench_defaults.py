"""A bench measures the configured defaults unless told otherwise."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from reasonft.config import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_train_throughput_measures_the_configured_chunk_tokens(capsys):
    configured = OmegaConf.load(CONF_DIR / "train" / "default.yaml").chunk_tokens
    bench = _bench("train_throughput")
    assert bench.TrainRun(steps=2, warmup=0, batch=1, length=8).chunk_tokens == configured
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"train.chunk_tokens of conf/train/default.yaml, {configured})" in help_text
