"""bench/gpu_check.sh: its CPU dry run end to end, the guarded step runner, the FLOP counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import flops
import gpu_check
import gpu_check_report
import matmul_peak


@pytest.mark.slow  # 25-50 s on 2 busy cores, most of it importing torch, Lightning, TRL
def test_dry_run_writes_every_step_with_a_status(tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT / "src"),
    }
    began = time.perf_counter()
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(outdir), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    seconds = time.perf_counter() - began
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((outdir / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == list(gpu_check.STEPS)
    assert all(s["status"] in gpu_check.STATUSES for s in report["steps"])
    assert report["dry_run"] is True and report["why_dry"] == "--dry-run"
    # Only what needs CUDA is skipped, and says why; everything else ran at tiny sizes.
    failed = {n: s.get("error", s.get("reason")) for n, s in steps.items() if s["status"] != "ok"}
    assert failed.keys() == {"gpu_tests"}, failed
    assert "no CUDA" in steps["gpu_tests"]["reason"]
    tests = steps["gpu_tests"]["result"]["tests"]
    assert tests and all(t["outcome"] == "skipped" for t in tests.values())
    assert {"mfu", "peak_memory"} <= steps["train"]["skipped_parts"].keys()
    train = steps["train"]["result"]
    # 2 engines x ckpt on/off per length, then reasonft alone at the maximum length, ckpt on
    assert len(train["runs"]) == 4 * len(gpu_check.DRY.train_lengths) + 1
    long_row = train["runs"][-1]
    assert long_row["row"] == "max_length" and long_row["length"] == gpu_check.DRY.long_length
    assert long_row["activation_checkpointing"] and long_row["tokens_per_s"] > 0
    assert gpu_check.FULL.long_length == 32768
    assert all(r["tokens_per_s"] > 0 and "error" not in r for r in train["runs"])
    assert len(train["pairs"]) == 2 * len(gpu_check.DRY.train_lengths)
    score = steps["score"]["result"]
    assert score["galp"]["response_tokens_per_s"] > 0 and score["lalp"]["seconds"] > 0
    assert score["lalp_over_galp_window_tokens"] >= 1.0
    for name in ("lalp_banded", "lalp_banded_f0.25"):  # the one-pass approximation is timed too
        assert score[name]["seconds"] > 0 and score[f"{name}_over_galp_seconds"] > 0
    md_score = (outdir / "gpu_check.md").read_text().split("## Scoring")[1]
    assert "| lalp_banded_f0.25 |" in md_score and "lalp_banded/galp time" in md_score
    assert steps["generate"]["result"]["hf_generator_tokens_per_s"] > 0
    md = (outdir / "gpu_check.md").read_text()
    assert all(f"| {name} | {steps[name]['status']} |" in md for name in steps)
    assert (outdir / "install.log").is_file()
    print(f"dry run: {seconds:.1f} s")


# ---- the step runner: every way a step can end ------------------------------------------


def _ok(ctx: Any, record: gpu_check.StepRecord) -> None:
    record.result = {"figure": 1.5}


def _fails_after_a_figure(ctx: Any, record: gpu_check.StepRecord) -> None:
    record.result = {"partial": 1}
    record.save()
    raise ValueError("broken on purpose")


# How long the hanging step sleeps: far beyond its 3 s limit.
HANG_S = 60


def _hangs(ctx: Any, record: gpu_check.StepRecord) -> None:
    record.result = {"before_the_hang": True}
    record.save()
    time.sleep(HANG_S)


def _dies(ctx: Any, record: gpu_check.StepRecord) -> None:
    os._exit(3)  # as a segfault or the OOM killer would: no record written after the start


def _skips(ctx: Any, record: gpu_check.StepRecord) -> None:
    raise gpu_check.StepSkipped("not here")


def test_each_step_is_guarded_and_the_next_one_still_runs(tmp_path: Path, monkeypatch) -> None:
    steps = {
        "ok": _ok,
        "fails": _fails_after_a_figure,
        "hangs": _hangs,
        "dies": _dies,
        "skips": _skips,
        "after": _ok,
    }
    monkeypatch.setattr(gpu_check, "STEPS", steps)
    ctx = gpu_check.Context(dry_run=True, cuda=False, sizes=gpu_check.DRY, workdir=tmp_path)
    results = {name: gpu_check.run_step(name, ctx, limit_s=3) for name in steps}
    assert {n: r["status"] for n, r in results.items()} == {
        "ok": "ok",
        "fails": "failed",
        "hangs": "timeout",
        "dies": "crashed",
        "skips": "skipped",
        "after": "ok",
    }
    assert results["ok"]["result"] == {"figure": 1.5}
    assert "ValueError: broken on purpose" in results["fails"]["error"]
    assert results["fails"]["result"] == {"partial": 1}
    assert results["hangs"]["result"] == {"before_the_hang": True}
    assert results["hangs"]["seconds"] < HANG_S  # cut at its limit, not when the hang ended
    assert "exit code 3" in results["dies"]["reason"]
    assert results["skips"]["reason"] == "not here"
    report = {"started": "t", "dry_run": True, "why_dry": "test", "steps": list(results.values())}
    md = gpu_check_report.markdown(report)
    assert "broken on purpose" in md and "| hangs | timeout |" in md


def test_only_names_known_steps(capsys) -> None:
    with pytest.raises(SystemExit):
        gpu_check.main(["out", "--only", "train,nonsense"])
    assert "--only nonsense: no such step" in capsys.readouterr().err


# ---- FLOPs ------------------------------------------------------------------------------

TINY = {
    "model_type": "qwen2",
    "vocab_size": 97,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "tie_word_embeddings": True,
}


@pytest.mark.parametrize("seq_len", [1, 11, 24])
def test_training_flops_equal_torch_flop_counter_on_eager_attention(seq_len: int) -> None:
    """Eager attention multiplies the full S x S scores, as PaLM's count does; torch's flop
    counter sees every product of one forward + backward."""
    from torch.utils.flop_counter import FlopCounterMode

    from reasonft.models.loading import random_student

    model = random_student(TINY, attn_implementation="eager")
    ids = torch.randint(
        0, TINY["vocab_size"], (1, seq_len), generator=torch.Generator().manual_seed(0)
    )
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids).logits.sum().backward()
    shape = flops.DecoderShape.from_config(TINY)
    assert flops.training_flops_per_token(shape, seq_len) * seq_len == counter.get_total_flops()


def test_linear_weights_are_the_weights_of_the_products() -> None:
    from reasonft.models.loading import random_student

    model = random_student(TINY)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert flops.DecoderShape.from_config(TINY).linear_weights == linear


def test_causal_attention_flops_count_each_visible_pair_once() -> None:
    shape = flops.DecoderShape.from_config(TINY)
    for seq_len in (1, 7, 16):
        pairs = sum(i + 1 for i in range(seq_len))  # token i sees positions 0..i
        per_pair = 12 * shape.layers * shape.heads * shape.head_dim  # 2 products x 2 x fwd+bwd
        reference = 6 * shape.linear_weights * seq_len + per_pair * pairs
        causal = flops.training_flops_per_token(shape, seq_len, causal=True) * seq_len
        assert causal == pytest.approx(reference, rel=1e-12)


def test_qwen_1_5b_shape_and_mfu() -> None:
    path = gpu_check.reference_config()
    config = json.loads(path.read_text()) if path else {
        "num_hidden_layers": 28, "hidden_size": 1536, "num_attention_heads": 12,
        "num_key_value_heads": 2, "intermediate_size": 8960, "vocab_size": 151936,
    }  # fmt: skip
    shape = flops.DecoderShape.from_config(config)
    assert (shape.head_dim, shape.kv_heads) == (128, 2)
    # Qwen2.5-Math-1.5B: 1.54B parameters, of which the 233M embedding is also the lm_head.
    assert shape.linear_weights == pytest.approx(1.54e9, rel=0.01)
    rate = 10_000.0
    assert flops.model_flops_utilisation(rate, 2.0e9, 1e15) == pytest.approx(rate * 2.0e9 / 1e15)


def test_matmul_rate_counts_two_n_cubed_per_product(monkeypatch) -> None:
    ticks = iter([10.0, 12.0])
    monkeypatch.setattr(matmul_peak.time, "perf_counter", lambda: next(ticks))
    rate = matmul_peak.matmul_flops_per_s(8, torch.float32, "cpu", warmup=1, repeats=5)
    assert rate == 2 * 8**3 * 5 / 2.0


# ---- scoring FLOPs (bench/flops.py: GALP, exact LALP, banded LALP) ------------------------


def test_scoring_flops_equal_torch_flop_counter() -> None:
    """GALP (dense pairs through eager attention), exact LALP (its passes, written out here) and
    banded LALP with a dense mask, against what torch's flop counter sees in those forwards."""
    from torch.utils.flop_counter import FlopCounterMode

    from reasonft.models.loading import random_student

    model = random_student(TINY, attn_implementation="eager").eval()
    shape = flops.DecoderShape.from_config(TINY)
    prompt, steps = 3, [2, 4, 1, 3]
    length, total = prompt + sum(steps), sum(steps)

    def counted(n_tokens: int, scored: int) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            hidden = model.base_model(input_ids=torch.ones((1, n_tokens), dtype=torch.long))
            model.lm_head(hidden.last_hidden_state[0, :scored])
        return counter.get_total_flops()

    # Eager attention multiplies every (query, key) pair: a dense mask's work.
    dense = flops.scoring_flops(shape, prompt, steps, 1, "banded", dense_mask=True)
    assert dense == counted(length, total)
    # Causal work = dense work less the pairs above the diagonal.
    per_pair = 4 * shape.layers * shape.heads * shape.head_dim
    above = length * (length - 1) // 2
    assert flops.scoring_flops(shape, prompt, steps, 1, "galp") == dense - per_pair * above
    # Exact LALP, k = 1: the prompt, then passes over steps 0-1, 1-2, 2-3 (each token sees the
    # prompt and its pass causally), then the vocabulary projection of every response token.
    passes = [(0, 2), (1, 3), (2, 4)]
    lengths = [sum(steps[a:b]) for a, b in passes]
    linear = 2 * (shape.linear_weights - shape.hidden * shape.vocab)
    reference = linear * (prompt + sum(lengths)) + 2 * shape.hidden * shape.vocab * total
    reference += per_pair * (prompt * (prompt + 1) // 2)
    reference += per_pair * sum(n * prompt + n * (n + 1) // 2 for n in lengths)
    assert flops.scoring_flops(shape, prompt, steps, 1, "lalp") == reference


@pytest.mark.parametrize("window", [1, 2, 0.5])
def test_banded_flops_count_the_pairs_the_mask_admits(window) -> None:
    import numpy as np

    from reasonft.scoring.banded import band_mask, row_band_starts, token_window_starts

    shape = flops.DecoderShape.from_config(TINY)
    prompt, steps = 5, [3, 1, 4, 2, 6, 2]
    token_step = np.repeat(np.arange(len(steps)), steps)
    mask = band_mask(prompt, row_band_starts(token_window_starts(token_step, window)))
    expected = flops.forward_flops(shape, prompt + sum(steps), sum(steps), int(mask.sum()))
    assert flops.scoring_flops(shape, prompt, steps, window, "banded") == expected
