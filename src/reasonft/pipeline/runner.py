"""Runs the configured stages in order over content-addressed artifacts.

Each stage reads the artifacts of the stages before it and adds columns or files; the key of an
artifact hashes the stage's config and its inputs' keys, so changing a selection parameter
re-runs `select` and what follows, never `score`.
"""

from __future__ import annotations

import logging
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Any

import datasets
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from reasonft.data.prompts import PromptFormat
from reasonft.data.records import ANSWER_ALTERNATIVES
from reasonft.io import read_records, write_json, write_records
from reasonft.pipeline.artifacts import Artifact, ArtifactStore, content_key
from reasonft.pipeline.report import write_final_report
from reasonft.selection.teacher_rank import TeacherRanking
from reasonft.sweep import check_launch, is_rank_zero_process
from reasonft.training.strategies import check_strategy
from reasonft.wandb_artifacts import (
    log_eval_table,
    log_model,
    log_objective,
    log_selection,
    wandb_session,
)

log = logging.getLogger(__name__)

STAGES = ("base", "generate", "verify", "score", "select", "train", "evaluate", "report")
RECORDS = "records.parquet"


class Pipeline:
    def __init__(self, cfg: DictConfig, wandb_run: Any = None) -> None:
        unknown = [s for s in cfg.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"stages={list(cfg.stages)}: unknown {unknown}; choose from {list(STAGES)}")
        self.cfg = cfg
        self.wandb_run = wandb_run
        self.store = ArtifactStore(cfg.paths.artifacts_dir)
        self.out_dir = Path(cfg.paths.output_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.artifacts: list[Artifact] = []
        self.results: dict[str, Any] = {}

    # -- helpers ---------------------------------------------------------------------------
    def _record(self, artifact: Artifact) -> Artifact:
        self.artifacts.append(artifact)
        how = "reused" if artifact.reused else f"built in {artifact.seconds:.1f}s"
        log.info("stage %-8s %s  %s", artifact.stage, how, artifact.path)
        return artifact

    @cached_property
    def prompt_format(self) -> PromptFormat:
        return PromptFormat.from_config(self.cfg.data)

    @cached_property
    def source(self) -> Any:
        return instantiate(self.cfg.data.source)

    def _data_identity(self) -> dict[str, Any]:
        """The data config and the source's content version (the toy world's generator version;
        the files' sizes and modification times): the same config can name other records."""
        return {"config": self.cfg.data, "version": getattr(self.source, "content_version", None)}

    # -- base: the student before fine-tuning ----------------------------------------------------
    @cached_property
    def base(self) -> tuple[str, str]:
        """(path of the base student, its identity key)."""
        model_cfg = self.cfg.model
        if model_cfg.get("build") is not None:
            builder = instantiate(model_cfg.build)
            # The builder's folder name hashes what the config cannot show (its code version).
            identity = {"folder": builder.folder_name()} if hasattr(builder, "folder_name") else {}
            art = self.store.build(
                "base",
                model_cfg.build,
                identity,
                lambda tmp: {"path": builder.build(self.cfg.paths.cache_dir)},
            )
            self._record(art)
            return art.meta()["summary"]["path"], art.key
        path = model_cfg.path
        return str(path), f"path:{path}:{OmegaConf.to_container(model_cfg.config_overrides)}"

    def load_model(self, path: str) -> tuple[Any, Any]:
        from reasonft.models.loading import load_student, load_tokenizer

        m = self.cfg.model
        model = load_student(
            path,
            dtype=m.dtype,
            attn_implementation=m.attn_implementation,
            config_overrides=OmegaConf.to_container(m.config_overrides) or None,
        )
        return model, load_tokenizer(m.get("tokenizer") or path)

    @cached_property
    def base_model(self) -> tuple[Any, Any]:
        model, tok = self.load_model(self.base[0])
        model.eval()
        return model, tok

    # -- generate: the base student's own samples on the training prompts ------------------------
    @cached_property
    def self_samples(self) -> Artifact:
        cfg = {"generate": self.cfg.generate, "data": self._data_identity(), "model": self.base[1]}

        def produce(tmp: Path) -> dict[str, Any]:
            model, tok = self.base_model
            problems = self.source.problems("train")
            samples = instantiate(self.cfg.generate).generate(
                problems, model, tok, prompt_format=self.prompt_format
            )
            write_records(samples, tmp / RECORDS)
            return {"samples": len(samples), "problems": len(problems)}

        return self._record(self.store.build("generate", cfg, {}, produce))

    # -- verify: teacher pool (+ self samples) marked correct/incorrect ------------------------
    @cached_property
    def verified(self) -> Artifact:
        inputs = {}
        if "generate" in self.cfg.stages:
            inputs["generate"] = self.self_samples.key
        cfg = {"verify": self.cfg.verify, "data": self._data_identity()}

        def produce(tmp: Path) -> dict[str, Any]:
            parts = [self.source.teacher_pool("train")]
            if "generate" in inputs:
                parts.append(read_records(self.self_samples.path / RECORDS))
            alternatives = any(ANSWER_ALTERNATIVES in p.column_names for p in parts)
            pool = (
                datasets.concatenate_datasets([_common_columns(p, alternatives) for p in parts])
                if len(parts) > 1 else parts[0]
            )
            verified, report = instantiate(self.cfg.verify)(pool)
            write_records(verified, tmp / RECORDS)
            write_json(report, tmp / "report.json")
            return report

        return self._record(self.store.build("verify", cfg, inputs, produce))

    # -- score: PPL / GALP / LALP under the frozen base student --------------------------------
    @cached_property
    def scored(self) -> Artifact:
        cfg = {
            "score": self.cfg.score, "model": self.base[1],
            "prompt_format": self.prompt_format.as_dict(),
        }

        def produce(tmp: Path) -> dict[str, Any]:
            model, tok = self.base_model
            ds = read_records(self.verified.path / RECORDS)
            scorer = instantiate(self.cfg.score, prompt_format=self.prompt_format.as_dict())
            scored = scorer.score(ds, model, tok)
            write_records(scored, tmp / RECORDS)
            return {"records": len(scored)}

        return self._record(self.store.build("score", cfg, {"verify": self.verified.key}, produce))

    # -- select: the training set, each record with its loss_type --------------------------------
    @cached_property
    def selected(self) -> Artifact:
        # Selectors that need no scores (random, all, single_teacher) can run without `score`.
        upstream = self.scored if "score" in self.cfg.stages else self.verified

        def produce(tmp: Path) -> dict[str, Any]:
            from reasonft.selection.report import write_report

            pool = read_records(upstream.path / RECORDS)
            selection = instantiate(self.cfg.select)(pool)
            if isinstance(selection, TeacherRanking):
                # Ranking teachers selects no training set: its table and plot are the result.
                selection.write(tmp)
                return {"teacher_ranking": selection.table, **selection.report}
            write_records(selection.records, tmp / RECORDS)
            write_report(selection, pool, tmp)
            if len(selection.records):
                log_selection(self.wandb_run, selection.report, tmp / RECORDS)
            return selection.report

        art = self.store.build("select", self.cfg.select, {upstream.stage: upstream.key}, produce)
        return self._record(art)

    # -- train: fine-tune the student on the selection ------------------------------------------
    @cached_property
    def trained(self) -> Artifact:
        from reasonft.training.train import train_student

        c = self.cfg
        # Where the run writes (and `train.ckpt_path` does not) never changes what is trained.
        trainer_cfg = _without(c.trainer, "default_root_dir")
        cfg = {
            "loss": c.loss,
            "train": _without(c.train, "ckpt_path"),
            "trainer": trainer_cfg,
            "strategy": c.strategy,
            "prompt_format": self.prompt_format.as_dict(),
        }
        inputs = {"select": self.selected.key, "model": self.base[1]}
        # Checkpoints live beside the artifact, keyed like it: re-running the same command with
        # `train.ckpt_path=last` resumes an interrupted fit.
        ckpt_dir = self.store.path("train", content_key(cfg, inputs)).with_suffix(".checkpoints")
        if c.callbacks.get("checkpoint") is not None:
            with open_dict(c):
                c.callbacks.checkpoint.dirpath = str(ckpt_dir)

        def produce(tmp: Path) -> dict[str, Any]:
            model, tok = self.load_model(self.base[0])
            records = read_records(self.selected.path / RECORDS)
            path = train_student(c, records, model, tok, tmp)
            log_model(self.wandb_run, path)
            return {"model": str(Path(path).relative_to(tmp))}

        if not is_rank_zero_process():
            # Lightning's DDP re-runs this script for ranks > 0: they train alongside rank 0 but
            # never write (or race to rename) the artifact.
            with tempfile.TemporaryDirectory() as scratch:
                produce(Path(scratch))
            return None
        return self._record(self.store.build("train", cfg, inputs, produce))

    # -- evaluate ------------------------------------------------------------------------------
    def evaluate(self, tag: str, model_path: str, model_key: str) -> dict[str, Any]:
        def produce(tmp: Path) -> dict[str, Any]:
            model, tok = self.load_model(model_path)
            model.eval()
            evaluator = instantiate(self.cfg.eval)
            return evaluator.evaluate(
                model, tok, tmp, data_source=self.source, tag=tag, prompt_format=self.prompt_format
            )

        cfg = {"eval": self.cfg.eval, "data": self._data_identity()}
        art = self._record(self.store.build("evaluate", cfg, {"model": model_key}, produce))
        return art.meta()["summary"]

    def run(self) -> float | None:
        stages = list(self.cfg.stages)
        if "base" in stages:
            _ = self.base
        if "generate" in stages:
            _ = self.self_samples
        if "verify" in stages:
            _ = self.verified
        if "score" in stages:
            _ = self.scored
        if "select" in stages:
            _ = self.selected
        if "train" in stages:
            _ = self.trained
        if not is_rank_zero_process():
            return None
        if "evaluate" in stages:
            self.results["base"] = self.evaluate("base", *self.base)
            if "train" in stages:
                trained = self.trained
                path = str(trained.path / trained.meta()["summary"]["model"])
                self.results["trained"] = self.evaluate("trained", path, f"train:{trained.key}")
        if self.results:
            log_eval_table(self.wandb_run, self.results)
        if "report" in stages:
            objective = write_final_report(self.cfg, self.artifacts, self.results, self.out_dir)
            log_objective(self.wandb_run, self.cfg.objective, objective)
            return objective
        return None


def _common_columns(ds: datasets.Dataset, alternatives: bool = False) -> datasets.Dataset:
    """Teacher and self records share the base schema; keep the columns both can have
    (`answer_alternatives` too when either part has it)."""
    keep = ["prompt_id", "prompt", "answer", "response", "source", "steps", "sample_idx"]
    if alternatives:
        keep.append(ANSWER_ALTERNATIVES)
    ds = ds.select_columns([c for c in keep if c in ds.column_names])
    if "steps" not in ds.column_names:
        ds = ds.add_column("steps", [None] * len(ds))
    if "sample_idx" not in ds.column_names:
        ds = ds.add_column("sample_idx", [0] * len(ds))
    if alternatives and ANSWER_ALTERNATIVES not in ds.column_names:
        ds = ds.add_column(
            ANSWER_ALTERNATIVES, [[] for _ in range(len(ds))],
            feature=datasets.List(datasets.Value("string")),
        )
    return ds.select_columns(keep)


def _without(node: DictConfig, *keys: str) -> dict[str, Any]:
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in keys}


def run_pipeline(cfg: DictConfig) -> float | None:
    """Check the launch set-up at start-up (not an hour in), then run the stages."""
    if "train" in cfg.stages:
        check_strategy(cfg.get("strategy"))
    check_launch(cfg)
    with wandb_session(cfg) as wandb_run:
        return Pipeline(cfg, wandb_run).run()
