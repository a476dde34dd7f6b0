"""W&B offline: one run per job with the config, training curves, selection and evaluation
tables, and the data and model as reference artifacts, read back from the `.wandb` file.

wandb 0.31 writes the run in its transaction-log format (the LevelDB log layout: a 7-byte file
header `:W&B` + magic + version, then 32 KiB blocks of records, each with a 7-byte header
crc32/length/type where type 1 = full, 2/3/4 = first/middle/last fragment) whose records are
`wandb.proto.wandb_internal_pb2.Record` messages. It has no Python reader any more (the Go core
writes it), so `read_offline_run` below parses it.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from reasonft.config import compose_config

BLOCK = 32 * 1024
HEADER = struct.Struct("<IHB")  # crc32, length, record type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Any]:
    """Every `Record` message of a `.wandb` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log (header {data[:4]!r})")
    pos, pending, payloads = 7, b"", []
    while pos + HEADER.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER.size:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = HEADER.unpack_from(data, pos)
        pos += HEADER.size
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left - HEADER.size
            continue
        if pos + length > len(data):  # the writer is still appending this record
            break
        chunk, pos = data[pos : pos + length], pos + length
        if kind == FULL:
            payloads.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            payloads.append(pending + chunk)
        else:
            raise ValueError(
                f"{path}: unknown record type {kind} at byte {pos - length - HEADER.size}"
            )
    records = []
    for payload in payloads:
        record = pb.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def _item_key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    """The run's group, config, history rows, summary, artifacts and exit code."""
    (path,) = run_dir.glob("run-*.wandb")
    run: dict[str, Any] = {
        "config": {},
        "history": [],
        "summary": {},
        "artifacts": [],
        "exit_code": None,
    }
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["group"] = record.run.run_group
            run["id"] = record.run.run_id
            for item in record.run.config.update:
                run["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run["config"][_item_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run["history"].append(
                {_item_key(i): json.loads(i.value_json) for i in record.history.item}
            )
        elif kind == "summary":
            for item in record.summary.update:
                run["summary"][_item_key(item)] = json.loads(item.value_json)
        elif kind == "artifact":
            art = record.artifact
            run["artifacts"].append(
                {
                    "name": art.name,
                    "type": art.type,
                    "entries": {e.path: e.ref for e in art.manifest.contents},
                }
            )
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


def read_finished_run(run_dir: Path, timeout: float = 60.0) -> dict[str, Any]:
    """`read_offline_run` once the log holds the run's exit record. The log is written by the
    wandb-core process, which can still be flushing it when `run.finish()` has returned."""
    deadline = time.monotonic() + timeout
    while True:
        logged = read_offline_run(run_dir)
        if logged["exit_code"] is not None or time.monotonic() > deadline:
            return logged
        time.sleep(0.2)


def _table(run_dir: Path, history: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The JSON of the table logged under `key` (W&B stores it under files/media/table/)."""
    (row,) = [r for r in history if f"{key}/path" in r]
    assert row[f"{key}/_type"] == "table-file"
    return json.loads((run_dir / "files" / row[f"{key}/path"]).read_text())


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def _cfg(tmp_path: Path, task_name: str, logger: str = "wandb") -> Any:

    import reasonft  # noqa: F401

    overrides = [
        f"paths.output_dir={tmp_path}",
        f"task_name={task_name}",
        f"logger={logger}",
        *(["logger.wandb.offline=true"] if logger == "wandb" else []),
        "loss=sft",
        "callbacks.progress_bar=null",
        "callbacks.checkpoint=null",
        "++trainer.enable_checkpointing=false",
        "trainer.accelerator=cpu",
        "trainer.max_steps=3",
        "train.micro_batch_size=2",
        "train.per_step.ce=2",
        "train.per_step.ul=0",
        "train.max_length=64",
        "data.prompt_suffix=",
        "data.chat_template=false",
    ]
    return compose_config(overrides=overrides)


def _run_dir(tmp_path: Path) -> Path:
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    return run_dir


# A miniature toy world, SFT on random verified teacher responses (no self-samples): every
# stage builds, and the trained student is evaluated.
TINY_SFT = [
    "experiment=toy_sft",
    "data.source.n_train=24",
    "data.source.n_test=6",
    "data.source.max_ops=2",
    "model.build.steps=10",
    "model.build.n_pretrain=200",
    "model.build.vocab_size=400",
    "model.build.hidden_size=32",
    "model.build.intermediate_size=64",
    "verify.workers=1",
    "eval.benchmarks.toy_test.n_samples=2",
    "eval.benchmarks.toy_test.limit=4",
    "eval.benchmarks.toy_test_greedy.limit=4",
    "eval.ks=[1,2]",
    "eval.generator.max_new_tokens=24",
    "eval.heldout_entropy.limit=4",
    "select.n=24",
    "train.micro_batch_size=4",
    "train.per_step.ce=8",
    "trainer.max_epochs=1",
    "callbacks.progress_bar=null",
]


@pytest.mark.slow
def test_pipeline_run_logs_config_curves_tables_and_reference_artifacts(
    tmp_path: Path, offline: None
) -> None:
    """`run_pipeline` with logger=wandb offline: the run folder holds what the stages logged."""
    import wandb

    import reasonft  # noqa: F401
    from reasonft.pipeline.runner import run_pipeline

    overrides = [
        *TINY_SFT, f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
        "task_name=wbtest", "logger=wandb", "logger.wandb.offline=true",
    ]
    cfg = compose_config(overrides=overrides)
    objective = run_pipeline(cfg)
    assert wandb.run is None

    run_dir = _run_dir(tmp_path)
    logged = read_finished_run(run_dir)
    train_report = json.loads(next((tmp_path / "cache").rglob("train_report.json")).read_text())
    assert logged["group"] == "wbtest" and logged["exit_code"] == 0
    assert logged["config"]["train"]["per_step"]["ce"] == 8
    assert logged["config"]["task_name"] == "wbtest"

    # One row per optimiser step, logged by the WandbLogger into the pipeline's run.
    steps = [row for row in logged["history"] if "loss" in row]
    assert [row["trainer/global_step"] for row in steps] == list(range(train_report["global_step"]))
    assert steps and all(isinstance(row["loss"], float) for row in steps)

    report_table = _table(run_dir, logged["history"], "selection/report")
    assert report_table["columns"] == ["key", "value"]
    assert ["selector", "random"] in report_table["data"]
    records_table = _table(run_dir, logged["history"], "selection/records")
    n_selected = logged["summary"]["selection/n_selected"]
    assert len(records_table["data"]) == n_selected > 0
    eval_table = _table(run_dir, logged["history"], "evaluation/table")
    assert {(row[0], row[1]) for row in eval_table["data"]} == {
        (model, bench) for model in ("base", "trained") for bench in ("toy_test_greedy", "toy_test")
    }
    pass1 = eval_table["columns"].index("pass@1")
    trained = [row[pass1] for row in eval_table["data"] if row[0] == "trained"]
    assert logged["summary"]["evaluation/trained/pass@1"] == pytest.approx(sum(trained) / 2)
    assert logged["summary"]["objective"] == pytest.approx(objective) == pytest.approx(sum(trained) / 2)

    by_type = {a["type"]: a for a in logged["artifacts"]}
    assert by_type["dataset"]["name"] == "selection-wbtest"
    assert by_type["model"]["name"] == "student-wbtest"
    (records_uri,) = by_type["dataset"]["entries"].values()
    assert records_uri.startswith((tmp_path / "cache").resolve().as_uri()) and records_uri.endswith(
        "records.parquet"
    )
    assert {"config.json", "model.safetensors"} <= set(by_type["model"]["entries"])


def test_failed_job_finishes_its_run_with_exit_code_1(tmp_path: Path, offline: None) -> None:
    import wandb

    from reasonft.wandb_artifacts import wandb_session

    cfg = _cfg(tmp_path, "failing")
    with pytest.raises(RuntimeError, match="stage failed"), wandb_session(cfg) as run:
        run.log({"before_failure": 1.0})
        raise RuntimeError("stage failed")
    assert wandb.run is None, "a failed job must not leave its run open for the next job"
    logged = read_finished_run(_run_dir(tmp_path))
    assert logged["exit_code"] == 1
    assert logged["history"][0]["before_failure"] == 1.0


def test_no_wandb_logger_means_no_run(tmp_path: Path) -> None:
    import wandb

    from reasonft.wandb_artifacts import log_eval_table, wandb_session

    cfg = _cfg(tmp_path, "csv-only", logger="csv")
    with wandb_session(cfg) as run:
        assert run is None
        assert not log_eval_table(None, {"base": {"benchmarks": {}, "average": {}}})
    assert wandb.run is None
