"""One unattended check of everything that needs CUDA, sized for a few minutes on one H200.

    bench/gpu_check.sh OUTDIR               # the GPU machine: installs .whl/ first, then this
    bench/gpu_check.sh OUTDIR --dry-run     # anywhere: tiny sizes, the CUDA-only parts skipped
    bench/gpu_check.sh OUTDIR --only train,score   # a rerun of some steps
    python bench/gpu_check.py OUTDIR [--dry-run]   # the same, packages already installed

Steps, in this order, each in a forked child with its own time limit: a step that fails, hangs
or crashes is recorded (traceback, partial figures) and the next one still runs.

1. environment: package versions, the device.
2. gpu_tests: `pytest -m gpu` over the test files that hold gpu-marked tests.
3. train: a random-weight Qwen2.5-Math-1.5B-shaped student (../shared/reference config),
   bf16-mixed, micro-batch 1, at 8k and 16k tokens, with and without activation checkpointing,
   reasonft (bench/train_throughput.py) beside TRL's SFTTrainer on the same batches: tokens/s,
   MFU (bench/flops.py) over the datasheet's dense bf16 peak and over a bf16 matmul measured in
   this run (bench/matmul_peak.py), peak memory.
4. score: GALP, exact LALP (k = 4) and banded LALP (k = 4 and 0.25 of the preceding steps; one
   masked pass) on R1-length multi-step responses, same shape, bf16: response tokens/s, each
   LALP's time over GALP's beside exact LALP's window-token ratio.
5. generate: HFGenerator at that shape (bench/generate_throughput.py), beside native sampling.

Writes OUTDIR/gpu_check.json (every step with a status: ok, failed, timeout, crashed or skipped)
and OUTDIR/gpu_check.md. With --dry-run, or when no CUDA device is found, every step runs at tiny
sizes on the CPU (tiny config, tens of tokens) and what only CUDA can measure (MFU, the H200
figures, the gpu-marked tests) is marked skipped with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# Forked steps need a parent without CUDA: libraries that ask torch.cuda.is_available() at
# import time then ask NVML, which creates no CUDA context.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# ../shared does not travel to the GPU machine: `make wheels` copies the config into .whl/.
REFERENCE_CONFIGS = tuple(
    folder / "qwen2.5-math-1.5b.config.json"
    for folder in (ROOT.parent / "shared" / "reference", ROOT / ".whl" / "reference")
)
sys.path.insert(0, str(BENCH))

from gpu_check_report import write_outputs  # bench/ is on the path from here on

STATUSES = ("ok", "failed", "timeout", "crashed", "skipped")
TINY_MODEL = {
    "model_type": "qwen2",
    "vocab_size": 1024,  # covers the benches' tokenizers (512 to 1000 tokens)
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the H200 run and the CPU dry run."""

    train_lengths: tuple[int, ...]
    long_length: int  # the paper's maximum length: reasonft alone, activation checkpointing on
    train_steps: int
    train_warmup: int
    matmul_n: int
    score_responses: int
    score_min_steps: int
    score_max_steps: int
    score_batch_tokens: int
    generate_prompts: int
    generate_n: int
    generate_max_new_tokens: int
    generate_batch_size: int
    limits_s: dict[str, int] = field(default_factory=dict)


# The H200 budget: 500 s of step limits; with the install and the imports, under 9 minutes.
FULL = Sizes(
    train_lengths=(8192, 16384),
    long_length=32768,
    train_steps=4,
    train_warmup=1,
    matmul_n=8192,
    score_responses=16,
    score_min_steps=200,  # about 40 tokens a step: responses of 8k to 12k tokens, R1's length
    score_max_steps=300,
    score_batch_tokens=32768,
    generate_prompts=32,
    generate_n=2,
    generate_max_new_tokens=256,
    generate_batch_size=64,
    limits_s={"environment": 30, "gpu_tests": 80, "train": 250, "score": 70, "generate": 70},
)
DRY = Sizes(
    train_lengths=(48,),  # one length runs every line of the loop; two would double the time
    long_length=64,
    train_steps=2,
    train_warmup=1,
    matmul_n=64,
    score_responses=2,
    score_min_steps=3,
    score_max_steps=5,
    score_batch_tokens=4096,
    generate_prompts=2,
    generate_n=2,
    generate_max_new_tokens=4,
    generate_batch_size=4,
    limits_s={"environment": 30, "gpu_tests": 60, "train": 90, "score": 30, "generate": 30},
)


def reference_config() -> Path | None:
    return next((path for path in REFERENCE_CONFIGS if path.is_file()), None)


class StepSkipped(Exception):
    """The step cannot run here; its message is the reason."""


@dataclass
class Context:
    """What every step reads: where it runs and at which sizes."""

    dry_run: bool
    cuda: bool
    sizes: Sizes
    workdir: Path

    @property
    def accelerator(self) -> str:
        return "gpu" if self.cuda else "cpu"

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    def model_config(self) -> dict[str, Any]:
        """The 1.5B shape on CUDA, the tiny one in a dry run."""
        if not self.cuda:
            return dict(TINY_MODEL)
        path = reference_config()
        if path is None:
            raise StepSkipped(
                f"the 1.5B config is in none of {[str(p) for p in REFERENCE_CONFIGS]} "
                "(`make wheels` copies it from ../shared/reference into .whl/reference)"
            )
        return json.loads(path.read_text())

    def cuda_only(self, what: str) -> str:
        return f"{what}: no CUDA device (dry run on the CPU)"


class StepRecord:
    """A step's figures, written to disk after every change so a killed step leaves them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.result: dict[str, Any] = {}
        self.skipped_parts: dict[str, str] = {}

    def save(self, status: str = "running", **extra: Any) -> None:
        payload = {"status": status, "result": self.result, **extra}
        if self.skipped_parts:
            payload["skipped_parts"] = self.skipped_parts
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=1, default=str))
        tmp.replace(self.path)


# ---- steps ------------------------------------------------------------------------------------


def step_environment(ctx: Context, record: StepRecord) -> None:
    versions = {}
    for name in (
        "torch",
        "transformers",
        "pytorch_lightning",
        "accelerate",
        "datasets",
        "trl",
        "hydra",
        "omegaconf",
        "tokenizers",
        "pytest",
    ):
        try:
            versions[name] = importlib.import_module(name).__version__
        except Exception as error:  # noqa: BLE001  (a missing package is a finding here)
            versions[name] = f"unavailable: {error!r}"
    record.result = {"python": sys.version.split()[0], "versions": versions, "cuda": ctx.cuda}
    if ctx.cuda:
        import torch

        props = torch.cuda.get_device_properties(0)
        record.result["device"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": props.total_memory / 2**30,
            "multiprocessors": props.multi_processor_count,
            "cuda_runtime": torch.version.cuda,
        }
    else:
        record.skipped_parts["device"] = ctx.cuda_only("device properties")


class _Outcomes:
    """pytest plugin: the outcome of every test (the call phase, or setup where it ended there)."""

    def __init__(self) -> None:
        self.tests: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" or report.outcome != "passed":
            entry = {"outcome": report.outcome, "seconds": round(report.duration, 3)}
            if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
                entry["reason"] = report.longrepr[2]
            elif report.outcome == "failed":
                entry["error"] = str(report.longrepr)[-4000:]
            self.tests.setdefault(report.nodeid, entry)


def gpu_test_files() -> list[Path]:
    return sorted(p for p in (ROOT / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text())


def step_gpu_tests(ctx: Context, record: StepRecord) -> None:
    import pytest

    files = gpu_test_files()
    outcomes = _Outcomes()
    exit_code = pytest.main(
        ["-m", "gpu", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT), *map(str, files)],
        plugins=[outcomes],
    )
    counts: dict[str, int] = {}
    for entry in outcomes.tests.values():
        counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
    record.result = {
        "files": [str(f.relative_to(ROOT)) for f in files],
        "exit_code": int(exit_code),
        "counts": counts,
        "tests": outcomes.tests,
    }
    record.save()
    if int(exit_code) not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"pytest -m gpu exited with {int(exit_code)}: {counts}")
    if not ctx.cuda:
        raise StepSkipped(
            f"no CUDA device: the {len(outcomes.tests)} gpu-marked tests were collected and "
            "skipped (tests/conftest.py)"
        )


def step_train(ctx: Context, record: StepRecord) -> None:
    import torch
    from flops import (
        H200_DENSE_BF16_FLOPS,
        DecoderShape,
        model_flops_utilisation,
        training_flops_per_token,
    )
    from matmul_peak import matmul_flops_per_s
    from train_throughput import TrainRun, make_inputs, measure

    config = ctx.model_config()
    shape = DecoderShape.from_config(config)
    sizes = ctx.sizes
    matmul = matmul_flops_per_s(sizes.matmul_n, torch.bfloat16, ctx.device)
    record.result = {
        "model": {**asdict(shape), "linear_weights": shape.linear_weights},
        "precision": "bf16-mixed",
        "micro_batch": 1,
        "timed_steps": sizes.train_steps - sizes.train_warmup,
        "matmul_bf16": {"n": sizes.matmul_n, "tflops_per_s": matmul / 1e12},
        "datasheet_dense_bf16_tflops_per_s": H200_DENSE_BF16_FLOPS / 1e12,
        "runs": [],
        "pairs": [],
    }
    if not ctx.cuda:
        record.skipped_parts["mfu"] = ctx.cuda_only("MFU over the H200's bf16 peak")
        record.skipped_parts["peak_memory"] = ctx.cuda_only(
            "CUDA peak memory (the figure is the process's peak RSS)"
        )
    record.save()
    failures = []
    for length in sizes.train_lengths:
        workdir = ctx.workdir / f"train_{length}"
        workdir.mkdir(parents=True, exist_ok=True)
        make_inputs(workdir, n_records=sizes.train_steps, length=length)
        flops = training_flops_per_token(shape, length)
        flops_causal = training_flops_per_token(shape, length, causal=True)
        for checkpointing in (False, True):
            run = TrainRun(
                steps=sizes.train_steps,
                warmup=sizes.train_warmup,
                batch=1,
                length=length,
                model=config,
                accelerator=ctx.accelerator,
                precision="bf16-mixed",
                gradient_checkpointing=checkpointing,
            )
            pair = {}
            for engine in ("reasonft", "trl"):
                entry: dict[str, Any] = {
                    "engine": engine,
                    "length": length,
                    "activation_checkpointing": checkpointing,
                }
                try:
                    entry.update(measure(engine, workdir, run))
                except Exception:  # noqa: BLE001  (recorded; the other runs still go)
                    entry["error"] = traceback.format_exc()[-6000:]
                    failures.append(f"{engine} at {length} tokens, checkpointing {checkpointing}")
                    _free_cuda(ctx)
                else:
                    rate = entry["tokens_per_s"]
                    entry["model_tflops_per_s"] = rate * flops / 1e12
                    entry["model_tflops_per_s_causal"] = rate * flops_causal / 1e12
                    if ctx.cuda:
                        entry["mfu_datasheet"] = model_flops_utilisation(
                            rate, flops, H200_DENSE_BF16_FLOPS
                        )
                        entry["mfu_measured_matmul"] = model_flops_utilisation(rate, flops, matmul)
                        entry["mfu_causal_datasheet"] = model_flops_utilisation(
                            rate, flops_causal, H200_DENSE_BF16_FLOPS
                        )
                    pair[engine] = entry
                record.result["runs"].append(entry)
                record.save()
            if len(pair) == 2:
                ours, theirs = pair["reasonft"], pair["trl"]
                record.result["pairs"].append(
                    {
                        "length": length,
                        "activation_checkpointing": checkpointing,
                        "tokens_per_s_ratio_reasonft_over_trl": ours["tokens_per_s"]
                        / theirs["tokens_per_s"],
                        "peak_memory_ratio_reasonft_over_trl": ours["peak_memory_mb"]
                        / theirs["peak_memory_mb"],
                    }
                )
                record.save()
    failures += _train_long_row(ctx, record, config, shape, matmul)
    if failures:
        raise RuntimeError("training runs failed (tracebacks under runs): " + "; ".join(failures))


def _train_long_row(ctx: Context, record: StepRecord, config: dict[str, Any], shape: Any, matmul: float) -> list[str]:
    """One reasonft row at the paper's maximum length (32,768 tokens) with activation
    checkpointing: peak memory and tokens/s (TRL is not run there: the pairs above compare)."""
    from flops import H200_DENSE_BF16_FLOPS, model_flops_utilisation, training_flops_per_token
    from train_throughput import TrainRun, make_inputs, measure

    sizes = ctx.sizes
    length = sizes.long_length
    workdir = ctx.workdir / f"train_{length}_long"
    workdir.mkdir(parents=True, exist_ok=True)
    make_inputs(workdir, n_records=sizes.train_steps, length=length)
    run = TrainRun(
        steps=sizes.train_steps, warmup=sizes.train_warmup, batch=1, length=length, model=config,
        accelerator=ctx.accelerator, precision="bf16-mixed", gradient_checkpointing=True,
    )
    entry: dict[str, Any] = {"engine": "reasonft", "length": length, "activation_checkpointing": True,
                             "row": "max_length"}
    try:
        entry.update(measure("reasonft", workdir, run))
    except Exception:  # noqa: BLE001  (recorded beside the other rows)
        entry["error"] = traceback.format_exc()[-6000:]
        record.result["runs"].append(entry)
        record.save()
        _free_cuda(ctx)
        return [f"reasonft at {length} tokens with checkpointing"]
    flops = training_flops_per_token(shape, length)
    entry["model_tflops_per_s"] = entry["tokens_per_s"] * flops / 1e12
    if ctx.cuda:
        entry["mfu_datasheet"] = model_flops_utilisation(entry["tokens_per_s"], flops, H200_DENSE_BF16_FLOPS)
        entry["mfu_measured_matmul"] = model_flops_utilisation(entry["tokens_per_s"], flops, matmul)
    record.result["runs"].append(entry)
    record.save()
    return []


def _free_cuda(ctx: Context) -> None:
    import gc

    import torch

    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()


def _random_model(ctx: Context, dtype: str) -> Any:
    import torch

    from reasonft.models.loading import random_student

    with torch.device(ctx.device):
        return random_student(ctx.model_config(), dtype=dtype, seed=0).eval()


def _cuda_peak_mb(ctx: Context) -> float | None:
    import torch

    if not ctx.cuda:
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def _reset_cuda_peak(ctx: Context) -> None:
    import torch

    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()


# The score step's methods: (name, Scorer kwargs, the column it fills). Exact LALP only at k = 4:
# at 0.25 of the steps its windows hold ~37x the response on 300-step traces.
SCORE_METHODS: tuple[tuple[str, dict[str, Any], str], ...] = (
    ("galp", {"method": "galp"}, "galp"),
    ("lalp", {"method": "lalp", "window": 4}, "lalp"),
    ("lalp_banded", {"method": "lalp", "window": 4, "lalp_pass": "banded"}, "lalp"),
    ("lalp_banded_f0.25", {"method": "lalp", "window": 0.25, "lalp_pass": "banded"}, "lalp"),
)


def step_score(ctx: Context, record: StepRecord) -> None:
    from score_throughput import count_window_tokens, make_pool

    from reasonft.models.tokenizer import train_tokenizer
    from reasonft.scoring.scorer import Scorer

    sizes = ctx.sizes
    window = 4
    records = make_pool(sizes.score_responses, sizes.score_min_steps, sizes.score_max_steps, seed=0)
    tokenizer = train_tokenizer([r["prompt"] + r["response"] for r in records], vocab_size=512)
    model = _random_model(ctx, "bfloat16")
    common = {"batch_tokens": sizes.score_batch_tokens, "chunk_tokens": 4096, "progress": False}
    scorers = {name: (Scorer(**kwargs, **common), column) for name, kwargs, column in SCORE_METHODS}
    examples = scorers["lalp"][0].encode(records, range(len(records)), tokenizer)
    response_tokens = sum(len(ex.response_ids) for ex in examples)
    prompt_tokens = sum(len(ex.prompt_ids) for ex in examples)
    window_tokens = count_window_tokens(examples, window)
    record.result = {
        "responses": len(records),
        "response_tokens": response_tokens,
        "mean_response_tokens": response_tokens / len(records),
        "steps": sum(ex.n_steps for ex in examples),
        "prompt_tokens": prompt_tokens,
        "window": window,
        "methods": {name: kwargs for name, kwargs, _ in SCORE_METHODS},
        "dtype": "bfloat16",
    }
    for scorer, _ in scorers.values():  # warm-up: kernels, allocator
        scorer(records[:1], model, tokenizer)
    for name, (scorer, column) in scorers.items():
        _reset_cuda_peak(ctx)
        began = time.perf_counter()
        scores = scorer(records, model, tokenizer)[0][column]
        seconds = time.perf_counter() - began
        if not all(isinstance(s, float) and math.isfinite(s) for s in scores):
            raise RuntimeError(f"{name}: non-finite or missing scores {scores[:4]}")
        record.result[name] = {
            "seconds": seconds,
            "response_tokens_per_s": response_tokens / seconds,
            "peak_memory_mb": _cuda_peak_mb(ctx),
        }
        if name != "galp":
            record.result[f"{name}_over_galp_seconds"] = seconds / record.result["galp"]["seconds"]
        record.save()
    # GALP reads each response token once; exact LALP re-reads every window (banded: once).
    record.result["lalp_over_galp_window_tokens"] = window_tokens / response_tokens
    if not ctx.cuda:
        record.skipped_parts["peak_memory"] = ctx.cuda_only("CUDA peak memory")


def step_generate(ctx: Context, record: StepRecord) -> None:
    from generate_throughput import measure

    from reasonft.data.toy import ToyWorld
    from reasonft.models.tokenizer import train_tokenizer

    sizes = ctx.sizes
    world = ToyWorld(seed=0, n_train=300, n_test=max(sizes.generate_prompts, 8))
    tokenizer = train_tokenizer(world.corpus(), vocab_size=600)
    problems = world.problems("test").select(range(sizes.generate_prompts))
    model = _random_model(ctx, "bfloat16")
    settings = SimpleNamespace(
        n=sizes.generate_n,
        temperature=0.6,
        top_p=0.95,
        max_new_tokens=sizes.generate_max_new_tokens,
        batch_size=sizes.generate_batch_size,
    )
    _reset_cuda_peak(ctx)
    label = "Qwen2.5-Math-1.5B shape" if ctx.cuda else "tiny shape (dry run)"
    record.result = measure(label, model, tokenizer, problems, settings)
    record.result["prompts"] = sizes.generate_prompts
    record.result["batch_size"] = sizes.generate_batch_size
    record.result["peak_memory_mb"] = _cuda_peak_mb(ctx)
    if not ctx.cuda:
        record.skipped_parts["peak_memory"] = ctx.cuda_only("CUDA peak memory")


STEPS: dict[str, Callable[[Context, StepRecord], None]] = {
    "environment": step_environment,
    "gpu_tests": step_gpu_tests,
    "train": step_train,
    "score": step_score,
    "generate": step_generate,
}
# Imported once in the parent so that each forked step starts without paying for them.
PRELOAD = (
    "torch",
    "transformers",
    "pytorch_lightning",
    "datasets",
    "trl",
    "pytest",
    "train_throughput",
    "score_throughput",
    "generate_throughput",
    "reasonft.training.module",
    "reasonft.scoring.scorer",
    "reasonft.generation.hf",
)


# ---- the runner -----------------------------------------------------------------------------


def _child(fn: Callable[[Context, StepRecord], None], ctx: Context, path: Path) -> None:
    record = StepRecord(path)
    record.save()
    try:
        fn(ctx, record)
    except StepSkipped as reason:
        record.save("skipped", reason=str(reason))
    except BaseException as error:  # noqa: BLE001  (the step's whole point: record, go on)
        record.save(
            "failed",
            reason=f"{type(error).__name__}: {error}"[:500],
            error=traceback.format_exc()[-8000:],
        )
        sys.stdout.flush()
        os._exit(1)
    else:
        record.save("ok")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_step(name: str, ctx: Context, limit_s: int) -> dict[str, Any]:
    """Run one step in a forked child; whatever happens to it, return its record."""
    path = ctx.workdir / f"step_{name}.json"
    began = time.perf_counter()
    process = multiprocessing.get_context("fork").Process(
        target=_child, args=(STEPS[name], ctx, path), name=f"gpu_check:{name}"
    )
    process.start()
    process.join(limit_s)
    timed_out = process.is_alive()
    if timed_out:
        process.kill()
        process.join()
    seconds = time.perf_counter() - began
    record: dict[str, Any] = {"status": "crashed", "result": {}}
    if path.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(path.read_text())
    if timed_out:
        record["status"] = "timeout"
        record["reason"] = f"killed after its limit of {limit_s} s (figures so far are kept)"
    elif record["status"] == "running":
        record["status"] = "crashed"
        record["reason"] = f"the step process ended with exit code {process.exitcode}"
    return {"name": name, "limit_s": limit_s, "seconds": round(seconds, 2), **record}


def _probe_cuda() -> None:
    import torch

    os._exit(0 if torch.cuda.is_available() and torch.cuda.device_count() > 0 else 1)


def cuda_available() -> bool:
    """Asked in a forked child: the parent must never hold a CUDA context when it forks."""
    probe = multiprocessing.get_context("fork").Process(target=_probe_cuda)
    probe.start()
    probe.join(60)
    if probe.is_alive():
        probe.kill()
        probe.join()
    return probe.exitcode == 0


def run_all(outdir: Path, dry_run: bool, only: tuple[str, ...] = tuple(STEPS)) -> dict[str, Any]:
    began = time.perf_counter()
    for module in PRELOAD:
        with contextlib.suppress(Exception):  # the step that needs it reports the failure
            importlib.import_module(module)
    preload_seconds = round(time.perf_counter() - began, 2)
    cuda = not dry_run and cuda_available()
    sizes = FULL if cuda else DRY
    outdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "dry_run": not cuda,
        "why_dry": None if cuda else ("--dry-run" if dry_run else "no CUDA device found"),
        "sizes": asdict(sizes),
        "preload_seconds": preload_seconds,
        "steps": [],
    }
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        ctx = Context(dry_run=not cuda, cuda=cuda, sizes=sizes, workdir=Path(tmp))
        for name in only:
            print(f"== gpu_check: {name} (limit {sizes.limits_s[name]} s)", flush=True)
            step = run_step(name, ctx, sizes.limits_s[name])
            print(
                f"== gpu_check: {name}: {step['status']} in {step['seconds']} s "
                f"{step.get('reason', '')}",
                flush=True,
            )
            report["steps"].append(step)
            report["seconds"] = round(time.perf_counter() - began, 2)
            write_outputs(report, outdir)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("outdir", type=Path, help="where gpu_check.json and gpu_check.md go")
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny sizes on the CPU even where CUDA is present"
    )
    parser.add_argument(
        "--only",
        type=lambda text: tuple(text.split(",")),
        default=tuple(STEPS),
        help=f"comma-separated steps to run, in the usual order (default: all of {','.join(STEPS)})",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.only if name not in STEPS]
    if unknown:
        parser.error(f"--only {','.join(unknown)}: no such step; the steps are {','.join(STEPS)}")
    only = tuple(name for name in STEPS if name in args.only)
    if args.dry_run:  # also for the gpu-marked tests' own CUDA check (tests/conftest.py)
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    sys.stdout.reconfigure(line_buffering=True)
    report = run_all(args.outdir, args.dry_run, only)
    statuses = {s["name"]: s["status"] for s in report["steps"]}
    print(f"gpu_check: {statuses}; {args.outdir / 'gpu_check.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
