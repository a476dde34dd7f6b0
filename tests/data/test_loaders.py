import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BENCHMARK_FIELDS, BENCHMARKS, needs_shared
from hydra.utils import instantiate
from omegaconf import OmegaConf

from reasonft.config import CONF_DIR, register_resolvers
from reasonft.data.fields import FieldError, FieldPath, message_content, normalize_answer
from reasonft.data.loaders import load_records
from reasonft.data.prompts import OXA_SUFFIX
from reasonft.data.record_checks import RecordError
from reasonft.data.source import FileSource

# The mapping of each real benchmark file onto the record schema (usable as-is in eval configs).
BENCHMARK_SIZES = {
    "aime.json": 30,
    "aime25.json": 30,
    "HMMT25.json": 30,
    "CMIMC25.json": 40,
    "BRUMO25.json": 30,
    "minerva.json": 272,
    "math500.json": 500,
    "amc.json": 83,
    "deepscaler10k.parquet": 9998,
}
# (file, index, start of the problem text, gold answer string) read off the files by hand.
SPOT_CHECKS = [
    ("aime.json", 0, "Every morning Aya goes for a $9$-kilometer-long walk", "204"),
    ("aime.json", 1, "There exist real numbers $x$ and $y$, both greater than 1", "025"),
    ("aime25.json", 0, "Find the sum of all integer bases $b>9$", "70"),
    ("HMMT25.json", 0, "Compute the sum of the positive divisors (including $1$) of $9!$", "103"),
    ("HMMT25.json", 2, None, "\\frac{1}{576}"),
    ("CMIMC25.json", 0, "Four runners are preparing to begin a $1$-mile race", "\\frac{13}{32}"),
    ("BRUMO25.json", 0, "One hundred concentric circles are labelled", "2^{99}"),
    ("minerva.json", 0, "If the Bohr energy levels scale as $Z^{2}$", "9.6"),  # ["9.6\n"]
    (
        "minerva.json",
        1,
        "Preamble: A very hot star is detected in the galaxy M31",
        "8.7 \\times 10^{8}",
    ),
    (
        "minerva.json",
        10,
        None,
        "0.01",
    ),  # ["0.01\n", "0.02\n"]: first form kept, alternative counted
    (
        "math500.json",
        0,
        "Convert the point $(0,3)$ in rectangular coordinates",
        "\\left( 3, \\frac{\\pi}{2} \\right)",
    ),
    ("math500.json", 4, None, "\\text{Evelyn}"),
    ("amc.json", 0, "$\\frac{m}{n}$ is the Irreducible fraction value of", "142"),  # 142.0
    (
        "amc.json",
        1,
        "How many ways are there to split the integers $1$ through $14$",
        "144",
    ),  # 144.0
    (
        "deepscaler10k.parquet",
        0,
        "What is the sum of all possible values of $t$ between $0$ and $360$",
        "380",
    ),
    (
        "deepscaler10k.parquet",
        1,
        "Square $EFGH$ has one vertex on each side of square $ABCD$",
        "\\frac{25}{32}",
    ),
    ("deepscaler10k.parquet", 11, None, "$3\\sqrt{35}$"),
]


# -- the real files ------------------------------------------------------------------------------


@needs_shared(BENCHMARKS)
@pytest.mark.parametrize("name", sorted(BENCHMARK_FIELDS))
def test_every_benchmark_file_loads(name):
    ds, report = load_records(BENCHMARKS / name, BENCHMARK_FIELDS[name])
    assert len(ds) == BENCHMARK_SIZES[name]
    assert report.loaded == report.records_read == len(ds)
    assert report.skipped == 0
    extra = ["answer_alternatives"] if report.answers_with_alternatives else []
    assert ds.column_names == ["prompt_id", "prompt", "answer", *extra]
    stem = Path(name).stem
    assert ds["prompt_id"] == [f"{stem}-{i}" for i in range(len(ds))]
    for answer in ds["answer"]:
        assert isinstance(answer, str)
        assert answer
        assert answer == answer.strip()
    assert all(p.strip() for p in ds["prompt"])


@needs_shared(BENCHMARKS)
@pytest.mark.parametrize(("name", "index", "problem_start", "answer"), SPOT_CHECKS)
def test_spot_checked_items(name, index, problem_start, answer):
    ds, _ = load_records(BENCHMARKS / name, BENCHMARK_FIELDS[name])
    record = ds[index]
    assert record["answer"] == answer
    if problem_start is not None:
        assert record["prompt"].startswith(problem_start)


@needs_shared(BENCHMARKS)
def test_minerva_alternatives_are_kept_and_counted():
    raw = json.loads((BENCHMARKS / "minerva.json").read_text())
    ds, report = load_records(BENCHMARKS / "minerva.json", BENCHMARK_FIELDS["minerva.json"])
    with_alternatives = 0
    for item, record in zip(raw, ds, strict=True):
        forms = list(dict.fromkeys(a.strip() for a in item["answer"] if a.strip()))
        assert record["answer"] == forms[0]
        assert record["answer_alternatives"] == forms[1:]
        with_alternatives += len(forms) > 1
    assert with_alternatives > 0
    assert report.answers_with_alternatives == with_alternatives


@needs_shared(BENCHMARKS)
def test_files_without_list_answers_get_no_alternatives_column():
    ds, report = load_records(BENCHMARKS / "aime.json", BENCHMARK_FIELDS["aime.json"])
    assert "answer_alternatives" not in ds.column_names and report.answers_with_alternatives == 0


@needs_shared(BENCHMARKS)
def test_deepscaler_chat_prompt_and_suffix():
    path = BENCHMARKS / "deepscaler10k.parquet"
    by_index, _ = load_records(path, BENCHMARK_FIELDS["deepscaler10k.parquet"])
    by_messages, _ = load_records(path, {"prompt": "prompt", "answer": "reward_model.ground_truth"})
    assert by_index["prompt"][:50] == by_messages["prompt"][:50]
    assert all(p.endswith(OXA_SUFFIX) for p in by_index["prompt"][:50])
    stripped, report = load_records(
        path,
        {**BENCHMARK_FIELDS["deepscaler10k.parquet"], "prompt_id": "extra_info.index"},
        strip_suffix=OXA_SUFFIX,
    )
    assert report.suffix_missing == 0
    assert stripped[0]["prompt"].endswith("is isosceles? ")
    assert stripped[0]["prompt"] + OXA_SUFFIX == by_index[0]["prompt"]
    assert stripped["prompt_id"][:3] == ["0", "1", "2"]


@needs_shared(BENCHMARKS)
def test_deepscaler_data_config_builds_a_file_source():
    register_resolvers()
    cfg = OmegaConf.create(
        {
            "paths": OmegaConf.load(CONF_DIR / "paths" / "default.yaml"),
            "data": OmegaConf.load(CONF_DIR / "data" / "deepscaler.yaml"),
        }
    )
    assert cfg.data.prompt_suffix == OXA_SUFFIX
    assert cfg.data.source.teacher_pool.path is None
    source = instantiate(cfg.data.source)
    train = source.problems("train")
    test = source.problems("test")
    assert len(train) == 9998
    assert not any(p.endswith(OXA_SUFFIX) for p in train["prompt"])
    assert test[0]["prompt_id"] == "test/precalculus/807.json"
    assert not source.has_teacher_pool
    with pytest.raises(ValueError, match="teacher_pool.path"):
        source.teacher_pool("train")
    described = source.describe()
    assert described["sets"]["train"]["records"] == 9998
    assert described["sets"]["train"]["load"]["suffix_missing"] == 0


# -- bad records ---------------------------------------------------------------------------------

GOOD = {"problem": "1 + 1?", "answer": "2"}


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = _write_jsonl(
        tmp_path / "pool.jsonl",
        [json.dumps(GOOD), '{"problem": "2 + 2?", "answer": ', json.dumps(GOOD)],
    )
    with pytest.raises(RecordError) as info:
        load_records(path, {"prompt": "problem", "answer": "answer"})
    message = str(info.value)
    assert str(path) in message
    assert "line 2" in message
    assert "not valid JSON" in message


def test_missing_and_wrong_type_fields_in_jsonl_name_line_and_field(tmp_path):
    path = _write_jsonl(tmp_path / "pool.jsonl", [json.dumps(GOOD), json.dumps({"problem": "3?"})])
    with pytest.raises(
        RecordError, match=r"pool\.jsonl: line 2: field 'answer': key 'answer' not found"
    ):
        load_records(path, {"prompt": "problem", "answer": "answer"})
    path = _write_jsonl(
        tmp_path / "typed.jsonl",
        [json.dumps(GOOD), json.dumps({"problem": "3?", "answer": {"v": 1}})],
    )
    with pytest.raises(
        RecordError, match=r"typed\.jsonl: line 2: field 'answer': answer is a dict"
    ):
        load_records(path, {"prompt": "problem", "answer": "answer"})


def test_skip_counts_every_bad_record(tmp_path):
    lines = [
        json.dumps(GOOD),  # line 1
        "{not json",  # line 2
        "",  # line 3: blank, not a record
        json.dumps({"problem": "no answer"}),  # line 4
        json.dumps({"problem": "x", "answer": True}),  # line 5
        json.dumps(["not", "an", "object"]),  # line 6
        json.dumps({"problem": "5 + 5?", "answer": 10.0}),  # line 7
    ]
    path = _write_jsonl(tmp_path / "mixed.jsonl", lines)
    ds, report = load_records(path, {"prompt": "problem", "answer": "answer"}, on_bad_record="skip")
    assert ds["answer"] == ["2", "10"]
    assert ds["prompt_id"] == ["mixed-0", "mixed-5"]
    assert report.records_read == 6
    assert report.loaded == 2
    assert report.skipped == 4
    assert report.blank_lines == 1
    assert [r.split(": ")[1] for r in report.skip_reasons] == [
        "line 2",
        "line 4",
        "line 5",
        "line 6",
    ]
    assert "field 'answer'" in report.skip_reasons[1]


def test_all_records_bad_is_an_error_even_when_skipping(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", ["{", "}"])
    with pytest.raises(ValueError, match="no record could be loaded"):
        load_records(path, {"prompt": "problem", "answer": "answer"}, on_bad_record="skip")


def test_json_array_missing_field_names_item_and_field(tmp_path):
    path = tmp_path / "set.json"
    items = [
        {"problem": "a", "reward_model": {"ground_truth": "1"}},
        {"problem": "b", "reward_model": {"style": "rule"}},
    ]
    path.write_text(json.dumps(items))
    fields = {"prompt": "problem", "answer": "reward_model.ground_truth"}
    with pytest.raises(RecordError) as info:
        load_records(path, fields)
    message = str(info.value)
    assert f"{path}: item 1:" in message
    assert "field 'answer' (from 'reward_model.ground_truth')" in message
    assert "key 'ground_truth' not found in reward_model" in message
    ds, report = load_records(path, fields, on_bad_record="skip")
    assert len(ds) == 1
    assert report.skipped == 1


def test_broken_json_array_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"problem": "a", "answer": "1"},\n  {"problem": "b" "answer": "2"}\n]\n')
    with pytest.raises(RecordError, match=r"broken\.json: line 3: not valid JSON"):
        load_records(path, {"prompt": "problem", "answer": "answer"}, on_bad_record="skip")


def test_parquet_row_with_null_answer_names_row_and_field(tmp_path):
    path = tmp_path / "rows.parquet"
    table = pa.table(
        {
            "question": ["a", "b", "c"],
            "meta": [{"gold": "1"}, {"gold": "2"}, {"gold": None}],
        }
    )
    pq.write_table(table, path)
    fields = {"prompt": "question", "answer": "meta.gold"}
    with pytest.raises(
        RecordError,
        match=r"rows\.parquet: row 2: field 'answer' \(from 'meta\.gold'\): 'meta\.gold' is null",
    ):
        load_records(path, fields)
    ds, report = load_records(path, fields, on_bad_record="skip")
    assert ds["answer"] == ["1", "2"]
    assert report.skipped == 1
    with pytest.raises(ValueError, match="name column"):
        load_records(path, {"prompt": "problem", "answer": "meta.gold"}, on_bad_record="skip")


def test_mapping_errors_are_caught_before_reading(tmp_path):
    path = _write_jsonl(tmp_path / "ok.jsonl", [json.dumps(GOOD)])
    with pytest.raises(ValueError, match="unknown column"):
        load_records(path, {"prompt": "problem", "answer": "answer", "gold": "answer"})
    with pytest.raises(ValueError, match=r"must map \['answer'\]"):
        load_records(path, {"prompt": "problem"})
    with pytest.raises(ValueError, match="unsupported file type"):
        load_records(tmp_path / "x.csv", {"prompt": "problem", "answer": "answer"})
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        load_records(tmp_path / "absent.jsonl", {"prompt": "problem", "answer": "answer"})
    with pytest.raises(ValueError, match="on_bad_record"):
        load_records(path, {"prompt": "problem", "answer": "answer"}, on_bad_record="ignore")


# -- fields ------------------------------------------------------------------------------------


def test_field_paths_both_spellings():
    assert FieldPath.parse("prompt[0].content").parts == ("prompt", 0, "content")
    assert FieldPath.parse("prompt.0.content").parts == ("prompt", 0, "content")
    assert FieldPath.parse("a.b[1][-1]").parts == ("a", "b", 1, -1)
    record = {"prompt": [{"role": "user", "content": "hi"}], "a": {"b": [[0], [1, 2]]}}
    assert FieldPath.parse("prompt[0].content").resolve(record) == "hi"
    assert FieldPath.parse("a.b[1][-1]").resolve(record) == 2
    with pytest.raises(FieldError, match="index 3 out of range for prompt"):
        FieldPath.parse("prompt[3].content").resolve(record)
    with pytest.raises(FieldError, match="is a list; expected an index"):
        FieldPath.parse("prompt.content").resolve(record)
    for bad in ["", "a..b", "a[x]"]:
        with pytest.raises(ValueError, match="field path"):
            FieldPath.parse(bad)


@pytest.mark.parametrize(
    ("raw", "expected", "alternatives"),
    [
        (["9.6\n"], "9.6", ()),
        (["4", "4\n"], "4", ()),
        (["0.01\n", "0.02\n", "0.01"], "0.01", ("0.02",)),
        (142.0, "142", ()),
        (0.5, "0.5", ()),
        (-3, "-3", ()),
        ("  \\frac{1}{2}\n", "\\frac{1}{2}", ()),
        (1e20, "100000000000000000000", ()),
    ],
)
def test_answer_normalisation(raw, expected, alternatives):
    answer = normalize_answer(raw)
    assert answer.text == expected
    assert answer.alternatives == alternatives


@pytest.mark.parametrize("raw", [True, float("nan"), [], ["  "], "", {"a": 1}, [["x"]]])
def test_answer_normalisation_rejects(raw):
    with pytest.raises(FieldError):
        normalize_answer(raw)


def test_chat_messages():
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]
    assert message_content(messages, "user") == "2+2?"
    with pytest.raises(FieldError, match="no 'assistant' message"):
        message_content(messages, "assistant")


def test_pool_columns_source_steps_and_defaults(tmp_path):
    rows = [
        {
            "q": "1+1?",
            "a": 2,
            "msgs": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}],
            "steps": ["1+1", "=2"],
            "who": "r1",
            "id": 7,
        },
        {
            "q": "2+2?",
            "a": 4,
            "msgs": [{"role": "assistant", "content": "4"}],
            "steps": ["4"],
            "id": 8,
        },
    ]
    path = _write_jsonl(tmp_path / "pool.jsonl", [json.dumps(r) for r in rows])
    fields = {
        "prompt": "q",
        "answer": "a",
        "response": "msgs",
        "steps": "steps",
        "source": "who",
        "prompt_id": "id",
    }
    with pytest.raises(RecordError, match=r"line 2: field 'source' \(from 'who'\)"):
        load_records(path, fields)
    ds, _ = load_records(path, fields, defaults={"source": "unknown"})
    assert ds.column_names == ["prompt_id", "prompt", "answer", "response", "source", "steps"]
    assert ds.to_list()[0] == {
        "prompt_id": "7",
        "prompt": "1+1?",
        "answer": "2",
        "response": "2",
        "source": "r1",
        "steps": ["1+1", "=2"],
    }
    assert ds["source"] == ["r1", "unknown"]
    constant, _ = load_records(path, {"prompt": "q", "answer": "a"}, source="qwq")
    assert constant["source"] == ["qwq", "qwq"]
    bad_steps = _write_jsonl(
        tmp_path / "steps.jsonl", [json.dumps({"q": "x", "a": 1, "s": "one string"})]
    )
    with pytest.raises(RecordError, match="field 'steps' \\(from 's'\\): steps is a str"):
        load_records(bad_steps, {"prompt": "q", "answer": "a", "steps": "s"})


# -- FileSource ----------------------------------------------------------------------------------


def test_file_source_splits_pool_alignment_and_reports(tmp_path):
    problems = tmp_path / "train.json"
    problems.write_text(
        json.dumps([{"problem": "1+1?", "answer": 2}, {"problem": "2+2?", "answer": 4}])
    )
    test = _write_jsonl(tmp_path / "test.jsonl", [json.dumps({"problem": "3+3?", "answer": "6"})])
    pool = _write_jsonl(
        tmp_path / "pool.jsonl",
        [
            json.dumps({"problem": "2+2?", "answer": "4", "response": "4"}),
            json.dumps({"problem": "9+9?", "answer": "18", "response": "18"}),
            json.dumps({"problem": "2+2?", "answer": "4", "response": "four"}),
            json.dumps({"problem": "9+9?", "answer": "18"}),
            json.dumps({"problem": "1+1?", "answer": "2", "response": "2"}),
        ],
    )
    source = FileSource(
        problems={"path": str(problems), "fields": {"prompt": "problem", "answer": "answer"}},
        test={"path": str(test), "fields": {"prompt": "problem", "answer": "answer"}},
        teacher_pool={
            "path": str(pool),
            "fields": {"prompt": "problem", "answer": "answer", "response": "response"},
            "source": "r1",
        },
        on_bad_record="skip",
    )
    assert source.problems("train")["prompt_id"] == ["train-0", "train-1"]
    assert source.problems("test")["answer"] == ["6"]
    records = source.teacher_pool("train")
    assert records["prompt_id"] == ["train-1", "pool-p0", "train-1", "train-0"]
    assert records["source"] == ["r1"] * 4
    assert source.reports["teacher_pool"].skipped == 1
    described = source.describe()
    alignment = described["sets"]["teacher_pool"]["prompt_alignment"]
    assert {k: alignment[k] for k in ("matched_records", "unmatched_records", "unmatched_prompts")} == {
        "matched_records": 3,
        "unmatched_records": 1,
        "unmatched_prompts": 1,
    }
    assert alignment["joined_by"] == "prompt_text"
    assert alignment["unmatched_examples"] == [f"{pool}:line 2 ('9+9?')"]
    assert described["sets"]["teacher_pool"]["prompts"] == 3
    with pytest.raises(ValueError, match="unknown split"):
        source.problems("validation")
    with pytest.raises(ValueError, match="'train' prompts"):
        source.teacher_pool("test")
    # the files' identity (size, mtime) reaches the pipeline's artifact keys: an edit changes it
    version = source.content_version
    assert set(version) == {"train", "test", "teacher_pool"}
    assert version == source.content_version
    os.utime(test, ns=(version["test"][1] + 10**9, version["test"][1] + 10**9))
    assert source.content_version["test"] != version["test"]
    assert source.content_version["train"] == version["train"]


def test_file_source_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"data.source.problems.path is not set"):
        FileSource(problems={"path": None, "fields": {"prompt": "p", "answer": "a"}})
    with pytest.raises(ValueError, match="unknown key"):
        FileSource(problems={"path": "x.json", "fields": {}, "colums": {}})
    source = FileSource(
        problems={"path": str(tmp_path / "nowhere.json"), "fields": {"prompt": "p", "answer": "a"}}
    )
    with pytest.raises(FileNotFoundError, match=r"data.source.problems.path: no file"):
        source.problems("train")
    with pytest.raises(ValueError, match="no test set"):
        source.problems("test")
