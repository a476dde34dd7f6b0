"""Weights & Biases side of a pipeline run: one W&B run per job, the data and model as artifacts.

The pipeline opens the run at start-up with `wandb_session(cfg)` (only when `logger=wandb` and
only on global rank 0); Lightning's WandbLogger, built later by `train_student`, reuses it, so
the training curves, the resolved config, the selection report and the evaluation tables all
land in the same run, grouped by `task_name`. Large files are logged *by reference*
(`file://` URIs: W&B records paths, sizes and checksums, and uploads nothing), so a 7B student
costs no upload.

Every function takes a `target`: a `WandbLogger`, a `wandb` Run, or None for the active run
(`wandb.run`); with no run they do nothing and return False, so the pipeline can call them
unconditionally.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from reasonft.sweep import is_rank_zero_process

SELECTION_TABLE_ROWS = 200
RECORD_TABLE_COLUMNS = (
    "prompt_id",
    "source",
    "loss_type",
    "selected_by",
    "correct",
    "ppl",
    "n_tokens",
    "lalp",
)


def _run(target: Any) -> Any:
    """The wandb Run behind `target` (WandbLogger, Run or None), or None if there is none."""
    import wandb

    if target is None:
        return wandb.run
    experiment = getattr(target, "experiment", None)
    if experiment is not None and hasattr(experiment, "log_artifact"):
        return experiment
    return target if hasattr(target, "log_artifact") else None


def _artifact_name(run: Any, name: str) -> str:
    """One artifact collection per experiment (`<name>-<group>`); each run adds a version, and
    W&B keeps one version for identical content."""
    group = getattr(run, "group", None) or run.id
    return re.sub(r"[^\w.-]", "_", f"{name}-{group}")


def wandb_settings(cfg: DictConfig) -> dict[str, Any] | None:
    """`wandb.init` arguments from `cfg.logger.wandb` (None when W&B is not configured).

    The run is grouped by `logger.wandb.group`, or by `task_name` when that is null.
    """
    node = (cfg.get("logger") or {}).get("wandb")
    if not node:
        return None
    offline = bool(node.get("offline", False))
    save_dir = node.get("save_dir")
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
    return {
        "project": node.get("project"),
        "name": node.get("name"),
        "group": node.get("group") or cfg.get("task_name"),
        "dir": save_dir,
        "mode": "offline" if offline else None,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "job_type": node.get("job_type", "pipeline"),
    }


@contextmanager
def wandb_session(cfg: DictConfig) -> Iterator[Any]:
    """Open (or reuse) the job's W&B run for the duration of the block, then finish it.

    Yields the run, or None when `logger` has no `wandb` entry or this is not global rank 0.
    The run is finished with exit code 1 if the block raises (the error propagates), so a failed
    job in a sweep never leaves a run open for the next job in the same process.
    """
    settings = wandb_settings(cfg)
    if settings is None or not is_rank_zero_process():
        yield None
        return
    import wandb

    run = wandb.run or wandb.init(**{k: v for k, v in settings.items() if v is not None})
    try:
        yield run
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish(exit_code=0)


def log_config(target: Any, cfg: DictConfig) -> bool:
    """The resolved config as the run's config (keys as in the YAML, nested)."""
    run = _run(target)
    if run is None:
        return False
    run.config.update(OmegaConf.to_container(cfg, resolve=True), allow_val_change=True)
    return True


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> `{"a/b/c": leaf}`; lists of scalars are kept, lists of dicts indexed."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{path}/"))
        elif (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, Mapping) for v in value)
        ):
            for i, item in enumerate(value):
                flat.update(flatten(item, f"{path}/{i}/"))
        else:
            flat[path] = value
    return flat


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def log_selection(
    target: Any,
    report: Mapping[str, Any],
    records_path: str | Path,
    name: str = "selection",
    max_rows: int = SELECTION_TABLE_ROWS,
    checksum: bool = True,
) -> bool:
    """The selected training data as a `dataset` artifact (by reference), the selection report
    as a key/value table and `selection/...` summary numbers, and the first `max_rows` records
    (light columns only) as a table."""
    run = _run(target)
    if run is None:
        return False
    import wandb

    records_path = Path(records_path).resolve()
    if not records_path.exists():
        raise FileNotFoundError(f"log_selection: records file {records_path} does not exist")
    artifact = wandb.Artifact(_artifact_name(run, name), type="dataset", metadata=flatten(report))
    artifact.add_reference(records_path.as_uri(), name=records_path.name, checksum=checksum)
    run.log_artifact(artifact)

    flat = flatten(report)
    table = wandb.Table(columns=["key", "value"], data=[[k, str(v)] for k, v in flat.items()])
    run.log({f"{name}/report": table, f"{name}/records": _records_table(records_path, max_rows)})
    run.summary.update({f"{name}/{k}": v for k, v in flat.items() if _is_number(v)})
    return True


def _records_table(path: Path, max_rows: int) -> Any:
    import wandb

    from reasonft.io import read_records

    ds = read_records(path)
    columns = [c for c in RECORD_TABLE_COLUMNS if c in ds.column_names]
    head = ds.select(range(min(max_rows, len(ds)))).select_columns(columns)
    return wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in head])


def log_model(
    target: Any,
    model_dir: str | Path,
    name: str = "student",
    aliases: list[str] | None = None,
    checksum: bool = True,
) -> bool:
    """The fine-tuned model folder as a `model` artifact, by reference (nothing is uploaded)."""
    run = _run(target)
    if run is None:
        return False
    import wandb

    model_dir = Path(model_dir).resolve()
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"log_model: {model_dir} is not a saved model (no config.json)")
    artifact = wandb.Artifact(
        _artifact_name(run, name), type="model", metadata={"path": str(model_dir)}
    )
    artifact.add_reference(model_dir.as_uri(), checksum=checksum)
    run.log_artifact(artifact, aliases=aliases or ["latest"])
    return True


def eval_rows(results: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of an evaluation table from `{tag: evaluator summary}`: one row per
    (model tag, benchmark), one column per numeric metric (nested metrics joined with '/')."""
    metrics: list[str] = []
    flat_rows: list[tuple[str, str, dict[str, Any]]] = []
    for tag, summary in results.items():
        for bench, values in (summary or {}).get("benchmarks", {}).items():
            flat = {k: v for k, v in flatten(values).items() if _is_number(v)}
            metrics.extend(k for k in flat if k not in metrics)
            flat_rows.append((tag, bench, flat))
    rows = [[tag, bench, *[flat.get(m) for m in metrics]] for tag, bench, flat in flat_rows]
    return ["model", "benchmark", *metrics], rows


def log_eval_table(target: Any, results: Mapping[str, Any], key: str = "evaluation") -> bool:
    """The evaluation table (model x benchmark x metric) and `evaluation/<model>/<metric>`
    summary numbers of each model's average."""
    run = _run(target)
    if run is None:
        return False
    import wandb

    columns, rows = eval_rows(results)
    run.log({f"{key}/table": wandb.Table(columns=columns, data=rows)})
    summary = {}
    for tag, result in results.items():
        for metric, value in flatten((result or {}).get("average", {})).items():
            if _is_number(value):
                summary[f"{key}/{tag}/{metric}"] = value
    run.summary.update(summary)
    return True


def log_objective(target: Any, name: str, value: float | None) -> bool:
    """The sweep objective as summary `objective` (what sweeps/oxa_wandb.yaml maximises) and
    `objective/<name>`. A missing value (no evaluation ran) is logged as NaN, so a W&B sweep
    sees the run as worthless rather than absent."""
    run = _run(target)
    if run is None:
        return False
    number = math.nan if value is None else float(value)
    run.summary.update({"objective": number, f"objective/{name}": number})
    return True
