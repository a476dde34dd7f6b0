"""Evaluation end to end: files, Pass@1/Pass@k against the saved samples, configs."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import datasets
import pytest
from conftest import BENCHMARKS, needs_shared
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from pytorch_lightning.loggers import CSVLogger

from reasonft.evaluation.evaluate import Evaluator
from reasonft.evaluation.metrics import benchmark_metrics
from reasonft.evaluation.passk import pass_at_k
from reasonft.generation.hf import HFGenerator
from reasonft.io import read_records

TINY = [
    {"problem": "Compute 3 + 4.", "answer": "7"},
    {"problem": "Compute (12 - 5) * 3.", "answer": "21"},
    {"problem": "What is 8 / 2?", "answer": "4"},
]
LISTY = [  # Minerva-like: the gold answer is a list of strings
    {"problem": "Half of one?", "answer": ["\\frac{1}{2}\n"]},
    {"problem": "Ten squared?", "answer": ["100\n"]},
]


class ScriptedGenerator:
    """Test double of a generation backend: problem j gets j correct samples (then wrong ones,
    every third without any boxed answer), so pass@k is far from trivial."""

    temperature, top_p, max_new_tokens = 0.6, 0.95, 32

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls: list[dict] = []

    def generate(self, problems, model, tokenizer, prompt_format=None, *, n=None, seed=None):
        self.calls.append({"n": n, "seed": seed, "problems": len(problems)})
        rows = []
        for j, p in enumerate(problems):
            for s in range(n):
                if s < j:
                    text = f"<think>\n{p['prompt']}\n</think>\n\\boxed{{{p['answer']}}}"
                elif s % 3 == 2:
                    text = "I do not know."
                else:
                    text = "<think>\nguess\n</think>\n\\boxed{-999}"
                rows.append({**{k: p[k] for k in ("prompt_id", "prompt", "answer")}, "response": text,
                             "source": "self", "sample_idx": s,
                             "gen_tokens": len(self.tokenizer(text, add_special_tokens=False)["input_ids"]),
                             "finish_reason": "stop"})
        return datasets.Dataset.from_list(rows)


class FakeSource:
    """The data-source interface: problems(split) and teacher_pool(split)."""

    def problems(self, split):
        assert split == "test"
        return datasets.Dataset.from_list(
            [{"prompt_id": f"t{i}", "prompt": p["problem"], "answer": p["answer"]} for i, p in enumerate(TINY)]
        )

    def teacher_pool(self, split):
        return datasets.Dataset.from_list(
            [{"prompt_id": f"t{i}", "prompt": p["problem"], "answer": p["answer"], "source": "teacher",
              "response": f"<think>\nso it is {p['answer']}\n</think>\n\\boxed{{{p['answer']}}}"}
             for i, p in enumerate(TINY)]
        )


class RecordingLogger:
    """Stands in for a WandbLogger: records what it is sent."""

    def __init__(self):
        self.metrics, self.tables, self.texts, self.images = [], [], [], []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))

    def log_table(self, key, columns=None, data=None, step=None):
        self.tables.append((key, columns, data))

    def log_text(self, key, columns=None, data=None, step=None):
        self.texts.append((key, columns, data))

    def log_image(self, key, images, step=None):
        self.images.append((key, images))


class ExactVerifier:
    """A cheap stand-in for the Verifier (the callback test is about the callback)."""

    def __call__(self, ds):
        from reasonft.verify.extract import extract_answer

        preds = [extract_answer(r) or "" for r in ds["response"]]
        correct = [p == str(a) for p, a in zip(preds, ds["answer"])]
        status = ["correct" if c else ("no_answer" if not p else "incorrect") for c, p in zip(correct, preds)]
        ds = ds.add_column("correct", correct).add_column("pred_answer", preds).add_column("verify_status", status)
        return ds, {"records": len(ds)}


@pytest.fixture(scope="module")
def verifier():
    from reasonft.verify.verifier import Verifier

    return Verifier(timeout=10.0, workers=1, show_progress=False)


@pytest.fixture()
def bench_dir(tmp_path):
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "tiny.json").write_text(json.dumps(TINY))
    (folder / "listy.json").write_text(json.dumps(LISTY))
    return folder


def _plain_pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_evaluate_writes_files_and_metrics_match_saved_samples(tiny_model, tiny_tokenizer, bench_dir, tmp_path, verifier):
    generator = ScriptedGenerator(tiny_tokenizer)
    evaluator = Evaluator(
        benchmarks=[
            {"name": "tiny", "path": "tiny.json", "fields": {"prompt": "problem", "answer": "answer"}, "n_samples": 4},
            {"name": "listy", "path": str(bench_dir / "listy.json"), "n_samples": 4, "limit": 2},
        ],
        generator=generator, ks=[1, 2, 4, 8], verifier=verifier,
        heldout_entropy={"split": "test", "limit": 2}, seed=5, benchmarks_dir=str(bench_dir),
        progress=False,
    )
    csv = CSVLogger(tmp_path / "logs", name="eval")
    wandb_like = RecordingLogger()
    out = tmp_path / "out"
    results = evaluator.evaluate(
        tiny_model, tiny_tokenizer, out, data_source=FakeSource(), loggers=[csv, wandb_like], tag="base", step=3
    )

    assert [c["n"] for c in generator.calls] == [4, 4] and {c["seed"] for c in generator.calls} == {5}
    for name in ("eval_results.json", "eval_results.md", "pass_at_k.png", "samples/tiny.parquet", "samples/listy.parquet"):
        assert (out / name).is_file(), name
    assert (out / "pass_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "eval_results.json").read_text()) == results
    table = (out / "eval_results.md").read_text()
    assert "| tiny |" in table and "| listy |" in table and "**average**" in table

    for name in ("tiny", "listy"):
        samples = read_records(out / "samples" / f"{name}.parquet")
        m = results["benchmarks"][name]
        correct = list(samples["correct"])
        assert 0 < sum(correct) < len(correct)
        assert m["pass@1"] == pytest.approx(sum(correct) / len(correct), abs=1e-12)
        by_problem: dict[str, list[bool]] = {}
        for pid, c in zip(samples["prompt_id"], correct):
            by_problem.setdefault(pid, []).append(c)
        counts = [(len(v), sum(v)) for v in by_problem.values()]
        for k in (2, 4):
            expected = sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
            assert m[f"pass@{k}"] == pytest.approx(expected, abs=1e-12)
            assert m[f"pass@{k}"] == pytest.approx(sum(_plain_pass_at_k(n, c, k) for n, c in counts) / len(counts))
        assert "pass@8" not in m and m["skipped_ks"] == [8]
        assert m["any_correct"] == pytest.approx(sum(c > 0 for _, c in counts) / len(counts))
        assert m["no_answer_share"] == pytest.approx(list(samples["verify_status"]).count("no_answer") / len(samples))
        assert m["mean_tokens"] == pytest.approx(statistics.fmean(samples["gen_tokens"]))
        assert m["entropy"] > 0 and m["entropy_tokens"] > 0
    assert results["benchmarks"]["listy"]["problems"] == 2  # the answer lists were read
    assert any("k=[8]" in note for note in results["notes"])
    for key in ("pass@1", "pass@2", "pass@4", "any_correct", "entropy"):
        expected = statistics.fmean(results["benchmarks"][b][key] for b in ("tiny", "listy"))
        assert results["average"][key] == pytest.approx(expected)
    assert results["heldout_entropy"]["responses"] == 2 and results["heldout_entropy"]["entropy"] > 0

    logged, step = wandb_like.metrics[0]
    assert step == 3 and logged["eval/base/tiny/pass@1"] == results["benchmarks"]["tiny"]["pass@1"]
    assert logged["eval/base/average/pass@2"] == results["average"]["pass@2"]
    assert "eval/base/heldout/entropy" in logged
    key, columns, rows = wandb_like.tables[0]
    assert key == "eval/base/samples" and "response" in columns and len(rows) == 3 + 2
    assert wandb_like.texts and wandb_like.images
    metrics_csv = Path(csv.log_dir) / "metrics.csv"
    assert "eval/base/tiny/pass@1" in metrics_csv.read_text().splitlines()[0]


def test_evaluate_real_generator_on_a_data_source_split(tiny_model, tiny_tokenizer, tmp_path, verifier):
    generator = HFGenerator(n=99, temperature=0.6, top_p=0.95, max_new_tokens=6, batch_size=8, progress=False)
    evaluator = Evaluator(
        benchmarks=[{"name": "toy_test", "split": "test", "n_samples": 2}], generator=generator,
        ks=[1, 2], verifier=verifier, heldout_entropy={"split": "test", "limit": 5}, progress=False,
    )
    tiny_model.train()
    try:
        results = evaluator.evaluate(tiny_model, tiny_tokenizer, tmp_path, data_source=FakeSource())
        assert tiny_model.training
    finally:
        tiny_model.eval()
    samples = read_records(tmp_path / "samples" / "toy_test.parquet")
    assert len(samples) == 2 * len(TINY) and list(samples["sample_idx"]) == [0, 1] * len(TINY)
    m = results["benchmarks"]["toy_test"]
    assert m["pass@1"] == pytest.approx(statistics.fmean(samples["correct"]))
    assert m["samples_per_problem"] == 2 and m["mean_tokens"] <= 6
    assert results["heldout_entropy"]["responses"] == len(TINY)  # limit 5 > 3 records
    with pytest.raises(ValueError, match="no data_source"):
        evaluator.evaluate(tiny_model, tiny_tokenizer, tmp_path / "again")


def test_greedy_benchmark_decodes_greedily(tiny_model, tiny_tokenizer, tmp_path, verifier):
    """A benchmark with temperature 0 decodes greedily whatever the generator's temperature."""
    generator = HFGenerator(n=4, temperature=1.0, max_new_tokens=5, batch_size=8, progress=False)
    evaluator = Evaluator(
        benchmarks={"greedy": {"split": "test", "n_samples": 1, "temperature": 0}, "dropped": None},
        generator=generator, ks=[1], verifier=verifier, progress=False,
    )
    assert [b.name for b in evaluator.benchmarks] == ["greedy"]
    results = evaluator.evaluate(tiny_model, tiny_tokenizer, tmp_path, data_source=FakeSource())
    samples = read_records(tmp_path / "samples" / "greedy.parquet")
    assert results["benchmarks"]["greedy"]["samples_per_problem"] == 1 and len(samples) == len(TINY)
    greedy = HFGenerator(n=1, temperature=0, max_new_tokens=5, progress=False)
    expected = greedy.generate(FakeSource().problems("test"), tiny_model, tiny_tokenizer)
    assert samples["response"] == expected["response"]


def test_benchmarks_by_name_and_greedy_settings_are_checked():
    common = {"generator": None, "ks": [1], "verifier": None}
    with pytest.raises(ValueError, match="temperature=0 \\(greedy\\) with n_samples=4"):
        Evaluator(benchmarks={"g": {"split": "test", "n_samples": 4, "temperature": 0}}, **common)
    with pytest.raises(ValueError, match="temperature=-1"):
        Evaluator(benchmarks={"g": {"split": "test", "temperature": -1}}, **common)
    with pytest.raises(ValueError, match="eval.benchmarks.g: its `name` key says 'h'"):
        Evaluator(benchmarks={"g": {"name": "h", "split": "test"}}, **common)
    with pytest.raises(ValueError, match="empty"):
        Evaluator(benchmarks={"g": None}, **common)


def test_benchmark_metrics_against_plain_counts():
    rows = []
    flags = {"p": [1, 0, 0, 1, 0, 0, 0, 0], "q": [0] * 8, "r": [1] * 8}
    for pid, fs in flags.items():
        rows += [{"prompt_id": pid, "correct": bool(f), "sample_idx": i, "gen_tokens": 10 + i,
                  "verify_status": "correct" if f else "incorrect", "finish_reason": "length" if i == 7 else "stop"}
                 for i, f in enumerate(fs)]
    m = benchmark_metrics(datasets.Dataset.from_list(rows), 8, [1, 4, 8, 16])
    assert m["pass@1"] == pytest.approx(10 / 24)
    assert m["pass@4"] == pytest.approx((_plain_pass_at_k(8, 2, 4) + 0 + 1) / 3)
    assert m["pass@8"] == pytest.approx(2 / 3) == m["any_correct"]
    assert m["skipped_ks"] == [16] and "pass@16" not in m
    assert m["truncated_share"] == pytest.approx(3 / 24) and m["median_tokens"] == 13.5
    with pytest.raises(ValueError, match="expected 4 samples"):
        benchmark_metrics(datasets.Dataset.from_list(rows), 4, [1])


def test_bad_benchmark_configs_are_named():
    common = {"generator": None, "ks": [1], "verifier": None}
    with pytest.raises(ValueError, match=r"eval.benchmarks.a: unknown key\(s\) \['n'\]"):
        Evaluator(benchmarks={"a": {"path": "a.json", "n": 4}}, **common)
    with pytest.raises(ValueError, match=r"eval.benchmarks\[0\]: `name` is required"):
        Evaluator(benchmarks=[{"path": "a.json"}], **common)
    with pytest.raises(ValueError, match="exactly one of `path`"):
        Evaluator(benchmarks=[{"name": "a", "path": "a.json", "split": "test"}], **common)
    with pytest.raises(ValueError, match="unique"):
        Evaluator(benchmarks=[{"name": "a", "split": "test"}, {"name": "a", "split": "train"}], **common)
    small = Evaluator(benchmarks=[{"name": "a", "split": "test", "n_samples": 64}], heldout_entropy={"split": "test", "limit": 100}, **common)
    budget = small.with_budget(n_samples=4, limit=10)
    assert budget.benchmarks[0].n_samples == 4 and budget.benchmarks[0].limit == 10
    assert budget.heldout["limit"] == 10 and small.benchmarks[0].n_samples == 64


# -- configs -------------------------------------------------------------------------------------


def _compose(tmp_path: Path, option: str, overrides=()):
    primary = tmp_path / "primary"
    primary.mkdir(exist_ok=True)
    (primary / "eval_only.yaml").write_text(
        "hydra:\n  searchpath:\n    - pkg://reasonft.conf\n"
        "defaults:\n  - paths: default\n  - eval: toy\n  - _self_\nseed: 42\n"
    )
    with initialize_config_dir(config_dir=str(primary), version_base="1.3"):
        return compose("eval_only", overrides=[f"eval={option}", *overrides])


@needs_shared(BENCHMARKS)
@pytest.mark.parametrize("option", ["oxa6", "math500"])
def test_official_eval_configs_compose_and_point_at_files(option, tmp_path):
    cfg = _compose(tmp_path, option, [f"paths.benchmarks_dir={BENCHMARKS}"])
    ev = cfg.eval
    assert ev._target_ == "reasonft.evaluation.evaluate.Evaluator"
    assert ev.generator._target_ == "reasonft.generation.vllm.VLLMGenerator"
    # Until a stop token or prompt + response reach 32,768 tokens (the official budget).
    assert (ev.generator.temperature, ev.generator.top_p) == (0.6, 0.95)
    assert (ev.generator.max_new_tokens, ev.generator.max_total_tokens) == (None, 32768)
    official = {"verify_fn": "reasonft.verify.official.official_equal", "answer_rule": "official"}
    if option == "oxa6":
        assert list(ev.generator.stop_token_ids) == [151643, 151645]
        assert {k: ev.verifier[k] for k in official} == official and ev.compare_graders
        assert ev.second_verifier.answer_rule == "last_think"
    else:
        assert ev.verifier.answer_rule == "last_think" and not ev.compare_graders
        assert {k: ev.second_verifier[k] for k in official} == official
    skipped = ("_target_", "generator", "verifier", "second_verifier", "compare_graders")
    evaluator = Evaluator(**{k: v for k, v in ev.items() if k not in skipped},
                          generator=None, verifier=None)
    names = [b.name for b in evaluator.benchmarks]
    if option == "oxa6":
        assert names == ["AIME24", "AIME25", "HMMT25", "CMIMC25", "BRUMO25", "Minerva"]
        assert [b.n_samples for b in evaluator.benchmarks] == [128] * 5 + [64]
        assert list(ev.ks) == [1, 2, 4, 8, 16, 32, 64, 128]
        expected = [30, 30, 30, 40, 30, 272]
    else:
        expected = [500]
    for bench, count in zip(evaluator.benchmarks, expected):
        assert evaluator._resolve(bench.path).is_file(), bench.path
        problems, report = evaluator.problems(bench)
        assert len(problems) == count and report["skipped"] == 0
        assert all(problems["answer"]) and len(set(problems["prompt_id"])) == count


def test_toy_eval_config_instantiates(tmp_path):
    cfg = _compose(tmp_path, "toy")
    evaluator = instantiate(cfg.eval)
    assert isinstance(evaluator, Evaluator) and isinstance(evaluator.generator, HFGenerator)
    assert (evaluator.generator.temperature, evaluator.generator.top_p) == (0.6, 0.95)
    assert [(b.name, b.n_samples, b.temperature, b.limit) for b in evaluator.benchmarks] == [
        ("toy_test_greedy", 1, 0, None), ("toy_test", 8, None, 50)
    ]
    assert evaluator.benchmarks[0].split == "test" and evaluator.ks == [1, 2, 4, 8]
    dropped = instantiate(_compose(tmp_path, "toy", ["eval.benchmarks.toy_test_greedy=null"]).eval)
    assert [b.name for b in dropped.benchmarks] == ["toy_test"]
    assert evaluator.heldout == {"split": "test", "limit": 64}
    vllm_cfg = _compose(tmp_path, "toy", ["generate@eval.generator=vllm"])
    assert vllm_cfg.eval.generator._target_ == "reasonft.generation.vllm.VLLMGenerator"
    assert vllm_cfg.eval.generator.temperature == 0.6
