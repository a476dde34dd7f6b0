"""Nothing dropped silently at load time: skipped records by reason and file, the bad-record
cap, prompt-id conflicts, and the join of teacher records to the training problems."""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from pathlib import Path

import pytest

from reasonft.data.fields import normalize_prompt_text
from reasonft.data.loaders import load_records
from reasonft.data.record_checks import PromptIdConflict, TooManyBadRecords
from reasonft.data.source import FileSource, UnmatchedTeacherRecords

FIELDS = {"prompt": "problem", "answer": "answer"}
POOL_FIELDS = {"prompt": "problem", "answer": "answer", "response": "response"}


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _bad_pool(path: Path) -> Path:
    """Four bad records (invalid JSON, missing field, two wrong types) among six."""
    return _jsonl(
        path,
        [
            {"problem": "1+1?", "answer": "2", "response": "2"},  # line 1
            "{broken",  # line 2: invalid JSON
            {"problem": "1+1?", "answer": "2"},  # line 3: missing response
            {"problem": "1+1?", "answer": True, "response": "2"},  # line 4: wrong type
            {"problem": "1+1?", "answer": "2", "response": 7},  # line 5: wrong type
            {"problem": "2+2?", "answer": "4", "response": "4"},  # line 6
        ],
    )


def _source(tmp_path: Path, pool: Path, **kwargs) -> FileSource:
    problems = _jsonl(
        tmp_path / "train.jsonl",
        [{"problem": "1+1?", "answer": 2}, {"problem": "2+2?", "answer": 4}, "not json"],
    )
    return FileSource(
        problems={"path": str(problems), "fields": FIELDS},
        teacher_pool={"path": str(pool), "fields": POOL_FIELDS, "source": "r1"},
        on_bad_record="skip",
        **kwargs,
    )


# -- 1. skipped records are counted by file and reason, with positions ---------------------------


def test_load_report_counts_skips_by_file_and_reason(tmp_path, caplog):
    pool = _bad_pool(tmp_path / "pool.jsonl")
    source = _source(tmp_path, pool)
    with caplog.at_level(logging.WARNING):
        assert len(source.teacher_pool("train")) == 2
    report = source.load_report()
    assert json.loads(json.dumps(report)) == report  # plain, JSON-ready
    assert (report["records_read"], report["loaded"], report["skipped"]) == (9, 4, 5)
    assert report["skipped_by_file"] == {
        str(pool): {
            "invalid_json": {"count": 1, "examples": ["line 2"]},
            "missing_field:response": {"count": 1, "examples": ["line 3"]},
            "bad_value:answer": {"count": 1, "examples": ["line 4"]},
            "bad_value:response": {"count": 1, "examples": ["line 5"]},
        },
        str(tmp_path / "train.jsonl"): {"invalid_json": {"count": 1, "examples": ["line 3"]}},
    }
    assert report["sets"]["teacher_pool"]["skipped"] == 4
    # ... and a terminal line names each file's skips
    lines = [r.getMessage() for r in caplog.records if "records skipped" in r.getMessage()]
    assert any("pool.jsonl" in line and "4 of 6 records skipped" in line for line in lines)
    assert any("train.jsonl" in line and "1 of 3" in line for line in lines)


def test_max_bad_records_count_and_share(tmp_path):
    pool = _bad_pool(tmp_path / "pool.jsonl")
    ds, _ = load_records(pool, POOL_FIELDS, on_bad_record="skip", max_bad_records=4)
    assert len(ds) == 2
    with pytest.raises(TooManyBadRecords, match=r"pool\.jsonl: 4 bad records.*max_bad_records=3"):
        load_records(pool, POOL_FIELDS, on_bad_record="skip", max_bad_records=3)
    # a share of the records read: 4 of 6 is 0.67
    load_records(pool, POOL_FIELDS, on_bad_record="skip", max_bad_records=0.7)
    with pytest.raises(TooManyBadRecords, match=r"max_bad_records=0.5 of the 6 read"):
        load_records(pool, POOL_FIELDS, on_bad_record="skip", max_bad_records=0.5)
    with pytest.raises(TooManyBadRecords, match="pool.jsonl"):
        _source(tmp_path, pool, max_bad_records=2).teacher_pool("train")
    for bad in (-1, 1.0, "10", True):
        with pytest.raises((TypeError, ValueError), match="data.max_bad_records"):
            load_records(pool, POOL_FIELDS, on_bad_record="skip", max_bad_records=bad)


# -- 2. prompt ids ------------------------------------------------------------------------------


def _reference_normalisation(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()


@pytest.mark.parametrize(
    "a, b, same",
    [
        ("What is 1+1?", "What is 1+1? ", True),
        ("What is\r\n1+1?", "What  is 1+1?", True),
        ("caf\u00e9 costs 3", "cafe\u0301 costs 3", True),
        ("x\u00a0=\u20032", "x = 2", True),
        ("What is 1+1?", "What is 1+2?", False),
        ("ab", "a b", False),
    ],
)
def test_prompt_text_normalisation_against_reference(a, b, same):
    assert (normalize_prompt_text(a) == normalize_prompt_text(b)) is same
    assert normalize_prompt_text(a) == _reference_normalisation(a)


def test_one_id_with_two_prompts_stops_the_load_naming_both_positions(tmp_path):
    path = _jsonl(
        tmp_path / "train.jsonl",
        [
            {"id": "p1", "problem": "1+1?", "answer": "2"},
            {"id": "p2", "problem": "2+2?", "answer": "4"},
            {"id": "p1", "problem": "1+1? ", "answer": "2"},  # the same problem: fine
            {"id": "p2", "problem": "3+3?", "answer": "6"},
        ],
    )
    with pytest.raises(PromptIdConflict) as info:
        load_records(path, {**FIELDS, "prompt_id": "id"})
    message = str(info.value)
    assert "'p2'" in message
    assert f"{path}:line 2" in message and f"{path}:line 4" in message
    parquet = tmp_path / "train.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"id": ["a", "a"], "problem": ["x?", "y?"], "answer": ["1", "2"]}), parquet
    )
    with pytest.raises(PromptIdConflict, match=r"train\.parquet:row 0.*train\.parquet:row 1"):
        load_records(parquet, {**FIELDS, "prompt_id": "id"})


def test_teacher_prompts_differing_by_whitespace_join_their_problem(tmp_path):
    pool = _jsonl(
        tmp_path / "pool.jsonl",
        [
            {"problem": "1+1? ", "answer": "2", "response": "2"},
            {"problem": "2+2?\n", "answer": "4", "response": "4"},
            {"problem": "2  +2?", "answer": "4", "response": "4"},  # other text: no match
        ],
    )
    source = _source(tmp_path, pool)
    records = source.teacher_pool("train")
    assert records["prompt_id"] == ["train-0", "train-1", "pool-p0"]
    # joined records carry the problem's exact text, so one id has one prompt everywhere
    assert records["prompt"] == ["1+1?", "2+2?", "2  +2?"]
    join = source.load_report()["teacher_join"]
    assert join["matched_records"] == 2
    assert join["matched_with_other_whitespace"] == 2
    assert join["unmatched_records"] == 1
    assert join["unmatched_examples"] == [f"{pool}:line 3 ('2  +2?')"]


def test_unmatched_teacher_policies(tmp_path):
    pool = _jsonl(
        tmp_path / "pool.jsonl",
        [
            {"problem": "1+1?", "answer": "2", "response": "2"},
            {"problem": "9+9?", "answer": "18", "response": "18"},
        ],
    )
    kept = _source(tmp_path, pool, unmatched_teacher="keep").teacher_pool("train")
    assert kept["prompt_id"] == ["train-0", "pool-p0"]
    dropped_source = _source(tmp_path, pool, unmatched_teacher="drop")
    assert dropped_source.teacher_pool("train")["prompt_id"] == ["train-0"]
    assert dropped_source.load_report()["teacher_join"]["dropped_records"] == 1
    # positions still point at the file's lines after the drop
    assert dropped_source.reports["teacher_pool"].location(0) == f"{pool}:line 1"
    with pytest.raises(UnmatchedTeacherRecords, match=r"1 of 2 teacher records.*line 2.*unmatched_teacher"):
        _source(tmp_path, pool, unmatched_teacher="error").teacher_pool("train")
    with pytest.raises(ValueError, match="data.unmatched_teacher='ignore'"):
        _source(tmp_path, pool, unmatched_teacher="ignore")


def test_teacher_join_by_id_checks_the_prompt_text(tmp_path):
    problems = _jsonl(
        tmp_path / "train.jsonl",
        [{"id": 1, "problem": "1+1?", "answer": 2}, {"id": 2, "problem": "2+2?", "answer": 4}],
    )
    fields = {**POOL_FIELDS, "prompt_id": "id"}

    def source(pool_rows):
        pool = _jsonl(tmp_path / "pool.jsonl", pool_rows)
        return FileSource(
            problems={"path": str(problems), "fields": {**FIELDS, "prompt_id": "id"}},
            teacher_pool={"path": str(pool), "fields": fields, "source": "r1"},
        )

    ok = source([{"id": 2, "problem": " 2+2?", "answer": "4", "response": "4"}])
    assert ok.teacher_pool("train")["prompt"] == ["2+2?"]
    assert ok.load_report()["teacher_join"]["joined_by"] == "prompt_id"
    wrong = source(
        [
            {"id": 2, "problem": "2+2?", "answer": "4", "response": "4"},
            {"id": 1, "problem": "5+5?", "answer": "10", "response": "10"},
        ]
    )
    with pytest.raises(PromptIdConflict, match=r"'1'.*pool\.jsonl:line 2.*train\.jsonl:line 1"):
        wrong.teacher_pool("train")
    other_numbering = source([{"id": 7, "problem": "1+1?", "answer": "2", "response": "2"}])
    assert other_numbering.teacher_pool("train")["prompt_id"] == ["7"]
    join = other_numbering.load_report()["teacher_join"]
    assert join["unmatched_id_but_known_text"] == 1
