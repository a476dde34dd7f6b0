"""The sweep comparison (`reasonft.compare`): one row per job, seeds pooled per recipe, failed jobs
listed, the figure drawn; the headline of an evaluation read by benchmark kind."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reasonft.compare import COMPARISON_JSON, COMPARISON_MD, compare, main, write_comparison
from reasonft.config import PROJECT_ROOT
from reasonft.evaluation.comparison_plot import COMPARISON_PNG
from reasonft.evaluation.headline import headline

BENCHES = [
    {"name": "greedy", "n_samples": 1, "temperature": 0},
    {"name": "sampled", "n_samples": 8, "temperature": None},
]


def summary(greedy: float, p1: float, p8: float, entropy: float) -> dict:
    return {
        "benchmarks": {
            "greedy": {"pass@1": greedy, "entropy": 0.01},
            "sampled": {"pass@1": p1, "pass@2": (p1 + p8) / 2, "pass@8": p8, "entropy": entropy},
        },
        "settings": {"benchmarks": BENCHES},
    }


def write_job(root: Path, num: int, overrides: list[str], trained: dict | None, objective=None) -> Path:
    folder = root / f"{num}_job"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": 42}))
    if trained is not None:
        results = {
            "objective": {"name": "pass@1", "value": objective},
            "results": {"base": summary(0.5, 0.4, 0.7, 0.2), "trained": trained},
            "stages": {"base:b0": {}, f"select:s{num}": {}, f"train:t{num}": {},
                       "evaluate:eb": {}, f"evaluate:et{num}": {}},
        }
        (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_headline_reads_benchmarks_by_kind():
    h = headline(summary(0.9, 0.6, 0.95, 0.3))
    assert h.greedy == 0.9 and h.pass1 == 0.6 and h.passk == 0.95 and h.k == 8
    assert h.entropy == 0.3  # the sampled benchmark's; the greedy one's 0.01 is not averaged in
    assert h.curve == {1: 0.6, 2: (0.6 + 0.95) / 2, 8: 0.95}
    assert h.sampled == ["sampled"] and h.greedy_benchmarks == ["greedy"]


def test_comparison_pools_seeds_and_lists_failed_jobs(tmp_path):
    values = {("toy_sft", 1): 0.80, ("toy_sft", 2): 0.84, ("toy_oxa", 1): 0.90, ("toy_oxa", 2): 0.96}
    num = 0
    for (exp, seed), p1 in values.items():
        write_job(tmp_path, num, [f"experiment={exp}", f"seed={seed}"], summary(p1 + 0.05, p1, 1.0, p1 / 4), p1)
        num += 1
    write_job(tmp_path, num, ["experiment=toy_oxa", "seed=3"], None)  # failed: no results.json

    data = compare(tmp_path)
    assert data["total"] == 5 and data["finished"] == 4
    assert [j["seed"] for j in data["jobs"]] == [1, 2, 1, 2, 3]
    assert data["jobs"][4]["status"].startswith("no results.json")
    assert data["jobs"][0]["artifacts"] == {"base": "b0", "select": "s0", "train": "t0",
                                            "evaluate:base": "eb", "evaluate:trained": "et0"}
    groups = {g["overrides"]: g for g in data["groups"]}
    assert set(groups) == {"experiment=toy_sft", "experiment=toy_oxa"}
    oxa = groups["experiment=toy_oxa"]
    assert oxa["seeds"] == [1, 2, 3] and oxa["finished"] == 2
    # plain reference: mean and sample standard deviation of 0.90 and 0.96
    assert math.isclose(oxa["pass@1"]["mean"], 0.93)
    assert math.isclose(oxa["pass@1"]["std"], math.sqrt(((0.90 - 0.93) ** 2 + (0.96 - 0.93) ** 2) / 1))
    assert math.isclose(oxa["greedy_accuracy"]["min"], 0.95) and math.isclose(oxa["greedy_accuracy"]["max"], 1.01)
    assert len(data["base_students"]) == 1 and data["base_students"][0]["greedy_accuracy"] == 0.5

    paths = write_comparison(tmp_path)
    assert [p.name for p in paths] == [COMPARISON_JSON, COMPARISON_MD, COMPARISON_PNG]
    md = (tmp_path / COMPARISON_MD).read_text()
    assert "| experiment=toy_oxa | 1, 2, 3 (1 not finished) | 0.930 ± 0.042 |" in md
    assert "| 4_job | experiment=toy_oxa | 3 | no results.json" in md
    assert "base student" in md and (tmp_path / COMPARISON_PNG).stat().st_size > 10_000


def test_no_groups_without_a_seed_sweep(tmp_path):
    write_job(tmp_path, 0, ["experiment=a"], summary(0.9, 0.8, 1.0, 0.1), 0.8)
    write_job(tmp_path, 1, ["experiment=b"], summary(0.7, 0.6, 0.9, 0.2), 0.6)
    data = compare(tmp_path)
    assert data["groups"] == [] and [j["seed"] for j in data["jobs"]] == [42, 42]
    assert "By recipe" not in (write_comparison(tmp_path)[1]).read_text()


def test_command_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such sweep folder" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2  # an empty folder: no job
    write_job(tmp_path, 0, ["experiment=a"], summary(0.9, 0.8, 1.0, 0.1), 0.8)
    assert main([str(tmp_path)]) == 0
    assert "| 0_job | experiment=a |" in capsys.readouterr().out


def test_module_runs_as_the_readme_shows(tmp_path):
    write_job(tmp_path, 0, ["experiment=a"], summary(0.9, 0.8, 1.0, 0.1), 0.8)
    done = subprocess.run([sys.executable, "-m", "reasonft.compare", str(tmp_path)],
                          capture_output=True, text=True, cwd=PROJECT_ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / COMPARISON_MD).is_file()


@pytest.mark.parametrize("corrupt", ["results.json"])
def test_unreadable_results_name_the_file(tmp_path, corrupt):
    folder = write_job(tmp_path, 0, ["experiment=a"], summary(0.9, 0.8, 1.0, 0.1), 0.8)
    (folder / corrupt).write_text("{not json")
    with pytest.raises(ValueError, match="0_job"):
        compare(tmp_path)


@pytest.mark.slow
def test_a_multirun_writes_its_comparison(tmp_path):
    """A real multirun (one recipe, seeds 1 and 2, on a miniature toy world): the comparison at its
    root with the seeds pooled, the seed in every sub-folder name, run titles with their list
    overrides and each run's base-and-trained plot."""
    from pipeline.test_pipeline import TINY

    sweep = tmp_path / "sweep"
    overrides = ["stages=[train,evaluate,report]", *TINY, f"paths.cache_dir={tmp_path / 'cache'}"]
    command = [sys.executable, "run.py", "-m", "seed=1,2", *overrides, f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    folders = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert [name[-6:] for name in folders] == ["_seed1", "_seed2"], folders
    data = json.loads((sweep / COMPARISON_JSON).read_text())
    assert data["finished"] == 2 and [j["seed"] for j in data["jobs"]] == [1, 2]
    [group] = data["groups"]
    assert group["overrides"] == " ".join(overrides) and group["seeds"] == [1, 2]
    values = [j["trained"]["pass@1"] for j in data["jobs"]]
    assert math.isclose(group["pass@1"]["mean"], sum(values) / 2)
    assert math.isclose(group["pass@1"]["std"], abs(values[0] - values[1]) / math.sqrt(2))
    # the base student is evaluated with each run's seed: one row per seed
    assert [b["seed"] for b in data["base_students"]] == [1, 2]
    assert len({j["artifacts"]["train"] for j in data["jobs"]}) == 2
    assert (sweep / COMPARISON_PNG).stat().st_size > 10_000
    run = sweep / folders[0]
    assert "stages=[train,evaluate,report]" in (run / "results.md").read_text().splitlines()[0]
    assert "stages=[train,evaluate,report]" in done.stdout  # the printed title too
    assert (run / COMPARISON_PNG).is_file()
