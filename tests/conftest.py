from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# Before torch loads OpenMP (see run.py): idle threads sleep instead of spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BENCHMARKS = SHARED / "benchmarks"
REFERENCE = SHARED / "reference"
# The field mapping of every file in ../shared/benchmarks (their real shapes differ).
BENCHMARK_FIELDS = {
    "aime.json": {"prompt": "problem", "answer": "answer"},
    "aime25.json": {"prompt": "problem", "answer": "answer"},
    "HMMT25.json": {"prompt": "problem", "answer": "answer"},
    "CMIMC25.json": {"prompt": "problem", "answer": "answer"},
    "BRUMO25.json": {"prompt": "problem", "answer": "answer"},
    "minerva.json": {"prompt": "problem", "answer": "answer"},
    "math500.json": {"prompt": "problem", "answer": "answer"},
    "amc.json": {"prompt": "problem", "answer": "answer"},
    "deepscaler10k.parquet": {"prompt": "prompt[0].content", "answer": "reward_model.ground_truth"},
}

# One thread: tiny test tensors gain nothing from two, and the cores are shared.
torch.set_num_threads(1)

TINY_CORPUS = [
    "<think>\n3 + 4 = 7\n\nThen 7 * 2 = 14\n\nSo the answer is 14.\n</think>\n\\boxed{14}",
    "Compute (12 - 5) * 3. Let's reason step by step.",
    "First, we subtract five from twelve, which gives seven.\n\nNext, multiply by three: 21.",
    "Step 1: 8 / 2 = 4\nStep 2: 4 + 9 = 13\n\\boxed{13}",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from reasonft.models.tokenizer import train_tokenizer

    return train_tokenizer(TINY_CORPUS, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    """A random tiny Qwen2 (float32, eager-free sdpa) matching `tiny_tokenizer`."""
    from reasonft.models.loading import random_student

    model = random_student(
        {
            "model_type": "qwen2",
            "vocab_size": len(tiny_tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "tie_word_embeddings": False,
        },
        seed=0,
    )
    model.eval()
    return model


HAS_VLLM = importlib.util.find_spec("vllm") is not None
# `make test-vllm` sets it: there a vLLM that cannot be imported fails the tests, never skips them.
REQUIRE_VLLM = os.environ.get("REASONFT_REQUIRE_VLLM") == "1"
# `make test-demo` sets it: the default run on a fresh cache takes minutes, so `make test` skips it.
RUN_DEMO = os.environ.get("REASONFT_TEST_DEMO") == "1"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA; no GPU on this machine")
    skip_vllm = pytest.mark.skip(reason="vllm is not installed here: `make test-vllm` runs it (.venv-vllm)")
    skip_demo = pytest.mark.skip(reason="the default run on a fresh cache: `make test-demo` runs it")
    for item in items:
        if "demo" in item.keywords and not RUN_DEMO:
            item.add_marker(skip_demo)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "vllm" in item.keywords and not HAS_VLLM and not REQUIRE_VLLM:
            item.add_marker(skip_vllm)


def needs_shared(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is absent (../shared not beside the checkout)")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real student (SmolLM2-135M-Instruct), converted once into the project's cache (or
    $REASONFT_CACHE) from the GGUF file of the package named in conf/model/smollm2.yaml."""
    from omegaconf import OmegaConf

    from reasonft.config import CONF_DIR, PROJECT_ROOT
    from reasonft.models.gguf import GGUFStudent

    build = OmegaConf.load(CONF_DIR / "model" / "smollm2.yaml").build
    cache = Path(os.environ.get("REASONFT_CACHE") or PROJECT_ROOT / ".cache" / "reasonft")
    builder = GGUFStudent(package=build.package, member=build.member, sha256=build.sha256)
    return Path(builder.build(cache))
