"""Benchmark records skipped as unreadable (on_bad_record=skip) are counted, capped and shown:
in the load report, in the results' `data` (what the final report lists) and in the notes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest

from reasonft.data.record_checks import TooManyBadRecords
from reasonft.data.source import FileSource
from reasonft.evaluation.evaluate import Evaluator
from reasonft.evaluation.tables import RESULTS_MD
from reasonft.pipeline.report import skipped_lines

# Three readable problems among five bad records of two kinds.
ITEMS = [
    {"problem": "Compute 3 + 4.", "answer": "7"},
    5,
    {"problem": "No answer here."},
    {"problem": "Compute 2 * 5.", "answer": "10"},
    "text",
    {"answer": "3"},
    [1, 2],
    {"problem": "What is 9 - 1?", "answer": "8"},
]


def _plain_skip_counts(items: list) -> dict[str, int]:
    """The reference: each item that is not an object, or lacks a field, counted by kind."""
    counts: dict[str, int] = {}
    for item in items:
        if not isinstance(item, dict):
            kind = "not_an_object"
        elif "problem" not in item:
            kind = "missing_field:prompt"
        elif "answer" not in item:
            kind = "missing_field:answer"
        else:
            continue
        counts[kind] = counts.get(kind, 0) + 1
    return counts


class EchoGenerator:
    """Answers every problem correctly once per sample."""

    temperature, top_p, max_new_tokens = 0.6, 0.95, 8

    def generate(self, problems, model, tokenizer, prompt_format=None, *, n=None, seed=None):
        return datasets.Dataset.from_list([
            {"prompt_id": p["prompt_id"], "prompt": p["prompt"], "answer": p["answer"],
             "response": f"<think>x</think> \\boxed{{{p['answer']}}}", "source": "self",
             "sample_idx": s, "gen_tokens": 4, "finish_reason": "stop"}
            for p in problems for s in range(n)
        ])


class AnswerVerifier:
    def __call__(self, ds):
        correct = [f"\\boxed{{{a}}}" in r for r, a in zip(ds["response"], ds["answer"])]
        ds = ds.add_column("correct", correct).add_column("pred_answer", list(ds["answer"]))
        return ds.add_column("verify_status", ["correct" if c else "incorrect" for c in correct]), {}


@pytest.fixture()
def bad_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(ITEMS))
    return path


def _evaluator(benchmarks, **kwargs) -> Evaluator:
    return Evaluator(benchmarks=benchmarks, generator=EchoGenerator(), ks=[1], verifier=AnswerVerifier(),
                     progress=False, **kwargs)


def test_skipped_benchmark_records_are_in_the_results(tiny_model, tiny_tokenizer, bad_file, tmp_path):
    expected = _plain_skip_counts(ITEMS)
    n_bad = sum(expected.values())
    evaluator = _evaluator({"bad": {"path": str(bad_file), "on_bad_record": "skip", "max_bad_records": n_bad}})
    results = evaluator.evaluate(tiny_model, tiny_tokenizer, tmp_path / "out")

    assert results["benchmarks"]["bad"]["problems"] == len(ITEMS) - n_bad
    load = results["reports"]["bad"]["load"]
    assert (load["records_read"], load["skipped"], load["evaluated"]) == (len(ITEMS), n_bad, len(ITEMS) - n_bad)
    counts = {reason: entry["count"] for reason, entry in results["data"]["skipped_by_file"][str(bad_file)].items()}
    assert counts == expected and results["data"]["skipped"] == n_bad
    note = next(n for n in results["notes"] if n.startswith("bad: "))
    assert f"{n_bad} of {len(ITEMS)} records" in note and "not_an_object 3" in note
    assert note in (tmp_path / "out" / RESULTS_MD).read_text()
    # The run's final report lists the file with its counts by reason.
    lines = skipped_lines([(SimpleNamespace(stage="evaluate"), results)])
    assert lines == [f"evaluate: skipped records in {bad_file}: "
                     + ", ".join(f"{reason} {count}" for reason, count in counts.items())]


def test_clean_benchmarks_report_no_skips(tiny_model, tiny_tokenizer, bad_file, tmp_path):
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps([item for item in ITEMS if isinstance(item, dict) and len(item) == 2]))
    results = _evaluator({"clean": {"path": str(clean)}}).evaluate(tiny_model, tiny_tokenizer, tmp_path / "out")
    assert results["data"] == {"skipped": 0, "skipped_by_file": {}}
    assert not any("skipped as unreadable" in n for n in results["notes"])


def test_max_bad_records_caps_the_skips_and_names_the_benchmark_key(bad_file):
    n_bad = sum(_plain_skip_counts(ITEMS).values())
    for cap in (n_bad - 1, 0.5):  # a count, and a share of the 8 records read (4 < 5)
        evaluator = _evaluator({"bad": {"path": str(bad_file), "on_bad_record": "skip", "max_bad_records": cap}})
        with pytest.raises(TooManyBadRecords, match=r"eval\.benchmarks\.bad\.max_bad_records"):
            evaluator.problems(evaluator.benchmarks[0])
    evaluator = _evaluator({"bad": {"path": str(bad_file)}})  # on_bad_record=error
    with pytest.raises(ValueError, match="item 1: expected an object"):
        evaluator.problems(evaluator.benchmarks[0])


def test_bad_skip_settings_fail_at_construction_with_their_key():
    with pytest.raises(ValueError, match=r"eval\.benchmarks\.a\.on_bad_record='drop'"):
        _evaluator({"a": {"path": "a.json", "on_bad_record": "drop"}})
    with pytest.raises(ValueError, match=r"eval\.benchmarks\.a\.max_bad_records=1\.5"):
        _evaluator({"a": {"path": "a.json", "on_bad_record": "skip", "max_bad_records": 1.5}})
    with pytest.raises(TypeError, match=r"eval\.benchmarks\.a\.max_bad_records='x'"):
        _evaluator({"a": {"path": "a.json", "max_bad_records": "x"}})
    with pytest.raises(ValueError, match=r"eval\.benchmarks\.a: on_bad_record/max_bad_records apply to a file"):
        _evaluator({"a": {"split": "test", "on_bad_record": "skip"}})


def test_a_file_source_split_reports_what_the_source_skipped(tiny_model, tiny_tokenizer, bad_file, tmp_path):
    """A benchmark on the data source's `test` split shows the records data.on_bad_record=skip
    left out of that file."""
    train = tmp_path / "train.json"
    train.write_text(json.dumps([{"problem": "Compute 1 + 1.", "answer": "2"}]))
    fields = {"prompt": "problem", "answer": "answer"}
    source = FileSource(problems={"path": str(train), "fields": fields},
                        test={"path": str(bad_file), "fields": fields}, on_bad_record="skip")
    results = _evaluator({"toy_test": {"split": "test"}}).evaluate(
        tiny_model, tiny_tokenizer, tmp_path / "out", data_source=source
    )
    expected = _plain_skip_counts(ITEMS)
    load = results["reports"]["toy_test"]["load"]
    assert load["skipped"] == sum(expected.values()) and load["source"]["path"] == str(bad_file)
    counts = {reason: entry["count"] for reason, entry in results["data"]["skipped_by_file"][str(bad_file)].items()}
    assert counts == expected
    assert any(n.startswith("toy_test: 5 of 8 records") for n in results["notes"])
