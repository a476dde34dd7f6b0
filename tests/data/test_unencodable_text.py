"""Text the columnar store cannot encode (a lone surrogate, which JSON can escape) is a bad
record like any other: named with its file, line and field, and skipped by on_bad_record=skip."""

from __future__ import annotations

import json

import pytest

from reasonft.data.loaders import load_records
from reasonft.data.record_checks import RecordError

FIELDS = {"prompt": "problem", "answer": "answer", "response": "generation", "steps": "steps"}


def _pool(tmp_path):
    lines = [
        {"problem": "Compute 1 + 1.", "answer": "2", "generation": "fine \\boxed{2}", "steps": ["a"]},
        # json.dumps escapes the lone surrogate as \ud83d: valid JSON, invalid UTF-8 once decoded
        {"problem": "Compute 2 + 2.", "answer": "4", "generation": "smile \ud83d \\boxed{4}", "steps": ["b"]},
        {"problem": "Compute 3 + 3.", "answer": "6", "generation": "ok \\boxed{6}", "steps": ["c", "x\udc00"]},
        {"problem": "Compute 4 + 4.", "answer": "8", "generation": "ok \\boxed{8}", "steps": ["d"]},
    ]
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_a_lone_surrogate_names_file_line_and_field(tmp_path):
    path = _pool(tmp_path)
    with pytest.raises(RecordError) as raised:
        load_records(path, FIELDS, source="teacher")
    message = str(raised.value)
    assert message.startswith(f"{path}: line 2: field 'response' (from 'generation'):")
    assert "lone surrogate U+D83D at character 6" in message


def test_skip_leaves_it_out_and_counts_it(tmp_path):
    ds, report = load_records(_pool(tmp_path), FIELDS, source="teacher", on_bad_record="skip")
    assert ds["prompt"] == ["Compute 1 + 1.", "Compute 4 + 4."]
    assert report.skipped == 2
    assert report.skipped_by_reason == {
        "bad_value:response": {"count": 1, "examples": ["line 2"]},
        "bad_value:steps": {"count": 1, "examples": ["line 3"]},
    }
