"""The README is tested: every `python run.py ...` command it shows composes and passes start-up
(every component built and checked) — or stops at start-up naming what this machine lacks (vLLM,
DeepSpeed) — and the ones that fit a CPU budget run end to end at tiny sizes; the Python API
snippet runs; every `python bench/...` command's script answers `--help`."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BENCHMARKS, needs_shared
from hydra.core.override_parser.overrides_parser import OverridesParser

import reasonft  # noqa: F401  (resolvers)
from reasonft.config import PROJECT_ROOT, compose_config
from reasonft.pipeline.runner import Pipeline
from reasonft.pipeline.startup import start

README = (PROJECT_ROOT / "README.md").read_text()
HAS_VLLM = importlib.util.find_spec("vllm") is not None
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
HAS_CUDA = __import__("torch").cuda.is_available()
TINY_TOY = [
    "data.source.n_train=24", "data.source.n_test=6", "data.source.max_ops=2",
    "model.build.steps=10", "model.build.n_pretrain=200", "model.build.vocab_size=400",
    "model.build.hidden_size=32", "model.build.intermediate_size=64",
    "generate.n=2", "generate.max_new_tokens=40", "verify.workers=1",
    "eval.benchmarks.toy_test.n_samples=2", "eval.benchmarks.toy_test.limit=4",
    "eval.benchmarks.toy_test_greedy.limit=4", "eval.ks=[1,2]",
    "eval.generator.max_new_tokens=40", "eval.heldout_entropy.limit=4",
    "logger=none", "callbacks.progress_bar=null",
]


def run_commands() -> list[str]:
    """Every `python run.py` command of the README: bash blocks (continuations joined, comments
    dropped) and inline code in the prose."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens[:2] == ["python", "run.py"]:
                found.append(shlex.join(tokens))
    found.extend(re.findall(r"`(python run\.py[^`]*)`", README))
    return found


def bench_commands() -> list[str]:
    return sorted(set(re.findall(r"`(python bench/[^`]*)`", README)))


def bench_scripts() -> list[str]:
    return sorted({shlex.split(c)[1] for c in bench_commands()})


# The start-up errors the README quotes inline: (`override` → `the message, maybe cut with ...`).
QUOTED_ERROR = re.compile(r"`(?:python run\.py )?([\w.]+=[^`\s]+)` → `([^`]+)`")


def quoted_startup_errors() -> list[tuple[str, str]]:
    pairs = [(o, " ".join(m.split()).removesuffix("...").strip()) for o, m in QUOTED_ERROR.findall(README)]
    return [(o, m) for o, m in pairs if m]


# The README commands it shows failing (`python run.py select.nn=5` → `Could not override ...`):
# an unknown key stops composition with its name.
EXPECTED_TO_FAIL = {f"python run.py {o}": m for o, m in quoted_startup_errors()}


def test_the_readme_shows_commands():
    commands = run_commands()
    assert len(commands) >= 8, commands
    assert any("stages=[rank,report]" in c for c in commands)
    assert bench_commands()


@pytest.fixture(scope="module")
def placeholders(tmp_path_factory, smollm2_path):
    """Real files in place of the README's /ckpt/... and /data/... paths: the real pretrained
    student (SmolLM2-135M-Instruct, converted) for every checkpoint, small teacher pools."""
    root = tmp_path_factory.mktemp("readme")
    ckpt = smollm2_path
    gguf = next((smollm2_path.parent / "packages").rglob("*.gguf"))  # what it was converted from
    traces = root / "r1_traces.jsonl"
    rows = [
        {"problem": "What is 1 + 1?", "answer": "2", "generation": "<think>1+1=2</think> \\boxed{2}", "model": "R1"},
        {"problem": "What is 2 + 3?", "answer": "5", "generation": "<think>2+3=5</think> \\boxed{5}", "model": "QwQ"},
    ]
    traces.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = root / "r1_traces.parquet"
    import pandas as pd

    pd.DataFrame(rows).to_parquet(parquet)
    return {"ckpt": ckpt, "gguf": gguf, "jsonl": traces, "parquet": parquet, "root": root}


def _substitute(token: str, files: dict[str, Path]) -> str:
    if "gguf" in files:
        token = re.sub(r"/ckpt/[\w.\-]+\.gguf", str(files["gguf"]), token)
    token = re.sub(r"/ckpt/[\w.\-]+", str(files["ckpt"]), token)
    token = re.sub(r"/data/[\w.\-]+\.jsonl", str(files["jsonl"]), token)
    return re.sub(r"/data/[\w.\-]+\.parquet", str(files["parquet"]), token)


def expand(command: str, files: dict[str, Path]) -> list[list[str]]:
    """The override lists of one command: a multirun's sweeps expanded into every job."""
    tokens = [_substitute(t, files) for t in shlex.split(command)[2:] if t != "-m"]
    parsed = OverridesParser.create().parse_overrides(tokens)
    choices = []
    for override, token in zip(parsed, tokens, strict=True):
        if override.is_sweep_override() and not override.key_or_group.startswith("hydra"):
            key = override.get_key_element()
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            choices.append([token])
    return [list(job) for job in itertools.product(*choices)]


def expected_error(overrides: list[str]) -> str | None:
    """What a command must stop at start-up naming on this machine, in the order start-up checks:
    the strategy's package, then the Trainer (a paper preset trains on GPUs), then the evaluation
    backend (the OXA benchmarks sample with vLLM)."""
    text = " ".join(overrides)
    paper = re.search(r"experiment=(oxa_full|oxa_mle|sft|sft_lp)_", text) is not None
    trains = paper and "stages=" not in text
    if "strategy=deepspeed" in text and not HAS_DEEPSPEED:
        return "deepspeed"
    if trains and not HAS_CUDA:
        return "gpu"
    if ("eval=oxa6" in text or paper) and "generate@eval.generator=hf" not in text and not HAS_VLLM:
        return "vLLM"
    if "rl=oxa_paper" in text and not (HAS_VLLM and HAS_CUDA):  # rollouts by vLLM on GPUs
        return "rl.use_vllm"
    return None


@needs_shared(BENCHMARKS)
@pytest.mark.slow
@pytest.mark.parametrize("command", run_commands())
def test_readme_command_composes_and_starts(command, placeholders, tmp_path):
    if command in EXPECTED_TO_FAIL:
        with pytest.raises(Exception, match=re.escape(EXPECTED_TO_FAIL[command])):
            compose_config(overrides=shlex.split(command)[2:])
        return
    for overrides in expand(command, placeholders):
        hydra_keys = any(o.startswith("hydra") for o in overrides)
        cfg = compose_config(
            overrides=[*overrides, f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}/cache"],
            return_hydra_config=hydra_keys,
        )
        expected = expected_error(overrides)
        if expected is None:
            start(cfg)
        else:
            with pytest.raises(Exception, match=f"(?s){expected}"):
                start(cfg)


def test_the_startup_errors_the_readme_quotes_are_the_ones_printed(tmp_path):
    pairs = quoted_startup_errors()
    assert any(o == "train.micro_batch_size=3" for o, _ in pairs), pairs
    for override, message in pairs:
        with pytest.raises(Exception) as raised:
            cfg = compose_config(overrides=[override, f"paths.output_dir={tmp_path}",
                                            f"paths.cache_dir={tmp_path}/cache"])
            start(cfg)
        assert message in " ".join(str(raised.value).split()), (override, str(raised.value))


def _run(overrides: list[str], tmp_path: Path) -> Pipeline:
    cfg = compose_config(
        overrides=[*overrides, f"paths.output_dir={tmp_path}/run", f"paths.cache_dir={tmp_path}/cache"],
    )
    pipeline = Pipeline(cfg)
    pipeline.run()
    return pipeline


@pytest.mark.slow
def test_teacher_ranking_recipe_runs_and_prints_its_table(tmp_path):
    [command] = [c for c in run_commands() if "stages=[rank,report]" in c]
    overrides = shlex.split(command)[2:]
    pipeline = _run([*overrides, *TINY_TOY, "rank.n_prompts=10", "rank.n_bootstrap=50"], tmp_path)
    assert [a.stage for a in pipeline.artifacts] == ["base", "verify", "score", "rank"]
    md = (tmp_path / "run" / "results.md").read_text()
    assert "## Teacher ranking" in md and "| numbered |" in md and "mean GALP" in md
    assert (tmp_path / "run" / "rank" / "teacher_ranking.png").exists()


FOUR_RECIPES = "python run.py -m experiment=toy_sft,toy_sft_lp,toy_oxa_mle,toy_oxa_full seed=1,2,3"
# The miniature student's PPLs lie far above the toy promote window: one bin over [1, 10001]
# lets the OXA recipes promote teacher data (the OXA_FULL steps then mix CE and UL).
WIDE_PROMOTE = ["ppl_min=1.0", "ppl_max=10001.0", "bin_width=10000.0", "mu=5001.0"]
PROMOTE_KEY = {"toy_oxa_mle": "select", "toy_oxa_full": "select.promote"}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("recipes") / "cache"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["toy_sft", "toy_sft_lp", "toy_oxa_mle", "toy_oxa_full"])
def test_every_recipe_of_the_multirun_runs_end_to_end(recipe, shared_cache, tmp_path):
    """Each job of the README's four-recipe multirun (seed 1) at tiny sizes, through training and
    the evaluation of the trained student; OXA_FULL's every step holds 8 CE + 8 UL sequences."""
    assert FOUR_RECIPES in run_commands()
    files = {"ckpt": "", "jsonl": "", "parquet": ""}  # the command names no file
    [job] = [j for j in expand(FOUR_RECIPES, files) if f"experiment={recipe}" in j and "seed=1" in j]
    promote = [f"{PROMOTE_KEY[recipe]}.{s}" for s in WIDE_PROMOTE] if recipe in PROMOTE_KEY else []
    cfg = compose_config(overrides=[
        *job, *TINY_TOY, *promote, "logger=csv", "trainer.max_epochs=1",
        f"paths.output_dir={tmp_path}/run", f"paths.cache_dir={shared_cache}",
    ])
    pipeline = Pipeline(cfg)
    pipeline.run()
    assert {"train", "evaluate"} <= {a.stage for a in pipeline.artifacts}
    assert set(pipeline.results) == {"base", "trained"}
    report = json.loads((pipeline.built["train"].path / "train_report.json").read_text())
    assert report["global_step"] == report["data"]["sampler"]["steps_per_epoch"] > 0
    (metrics,) = (tmp_path / "run").rglob("metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("loss")]
    assert len(rows) == report["global_step"]
    composition = {(float(r.get("sequences_ce") or 0), float(r.get("sequences_ul") or 0)) for r in rows}
    if recipe == "toy_oxa_full":
        assert report["data"]["by_loss_type"]["ce"] > 0 and report["data"]["by_loss_type"]["ul"] > 0
        assert composition == {(8.0, 8.0)}, composition
        assert all(float(r["loss_ul"]) > 0 and float(r["loss_ce"]) > 0 for r in rows)
    else:
        assert composition == {(16.0, 0.0)}, composition


@needs_shared(BENCHMARKS)
@pytest.mark.slow
def test_evaluation_only_recipe_runs_on_a_local_checkpoint(tmp_path, placeholders):
    [command] = [c for c in run_commands() if "eval=math500" in c and ".gguf" not in c]
    overrides = [_substitute(t, placeholders) for t in shlex.split(command)[2:]]
    tiny = ["eval.benchmarks.MATH500.limit=2", "eval.benchmarks.MATH500.n_samples=2", "eval.ks=[1,2]",
            "eval.generator.max_new_tokens=8", "model.dtype=float32", "logger=none"]
    pipeline = _run([*overrides, *tiny], tmp_path)
    assert [a.stage for a in pipeline.artifacts] == ["evaluate"]
    assert "MATH500" in pipeline.results["base"]["benchmarks"]


def test_python_api_snippet_runs(tmp_path, monkeypatch):
    """The snippet exactly as the README shows it (it loads the toy world and the shipped student
    itself; only the cache is a scratch folder), and every `# True` / `# False` comment checked."""
    [snippet] = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    monkeypatch.setenv("REASONFT_CACHE", str(tmp_path / "cache"))
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102
    records, chosen = namespace["records"], namespace["chosen"]
    assert len(records) == 120 and all(r["lalp"] is not None and r["ppl"] >= 1.0 for r in records)
    assert sum(r["correct"] for r in records) > 60  # the sloppy teacher slips, the others do not
    assert 0 < len(chosen) <= 20 and all(r["correct"] for r in chosen)
    assert len({r["prompt_id"] for r in chosen}) == len(chosen)  # max_per_prompt=1
    assert namespace["ranking"] is not None
    for line in snippet.splitlines():
        code, _, comment = line.partition("#")
        if comment.strip() in ("True", "False") and code.strip():
            assert eval(code, namespace) is (comment.strip() == "True"), line


# Every bench script's --help, run as `python SCRIPT --help` would run it (runpy, __main__), all
# in one process so that torch and transformers are imported once, not once per script.
HELP_ALL = """
import contextlib, io, json, runpy, sys, traceback
results = {}
for script in sys.argv[1:]:
    sys.argv = [script, "--help"]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        code, err = 1, io.StringIO(traceback.format_exc())
    results[script] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()[-2000:]}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def bench_help() -> dict[str, dict]:
    done = subprocess.run([sys.executable, "-c", HELP_ALL, *bench_scripts()], check=False, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("script", bench_scripts())
@pytest.mark.slow
def test_bench_script_answers_help(script, bench_help):
    result = bench_help[script]
    assert result["code"] == 0 and "usage:" in result["stdout"], result["stderr"]
