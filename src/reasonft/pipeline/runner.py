"""Runs the plan: a loop over stage objects, each building or reusing its content-addressed
artifact.

Start-up (`pipeline/startup.py`) binds every stage object to its config slice, resolves the plan
(`pipeline/plan.py`) and builds every component before any stage runs. A stage's key hashes its
slice (`Stage.reads`, resolved), plus what its `identity` names: the model it loads, the keys of
the artifacts it reads, the data's version. `produce` receives that slice and those artifacts, and
this object as the run's services (model loading, the data source, where the run writes). Every
stage hands back a report; the reports reach the final summary.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from reasonft.data.prompts import PromptFormat
from reasonft.io import remove_path
from reasonft.pipeline.artifacts import Artifact, ArtifactStore, content_key
from reasonft.pipeline.identity import path_identity
from reasonft.pipeline.plan import REPORT, select_path
from reasonft.pipeline.predict_ranks import PredictRanks, predict_ranks
from reasonft.pipeline.report import write_final_report
from reasonft.pipeline.stage import KeyParts, Stage, StageInputs
from reasonft.pipeline.startup import config_slice, start
from reasonft.sweep import is_rank_zero_process
from reasonft.wandb_artifacts import log_eval_table, log_objective, wandb_session

log = logging.getLogger(__name__)

# What a user looks at, copied from each artifact into the run folder.
SHOWN_FILES = (
    "*.md", "*.png", "report.json", "selection_report.json", "train_report.json", "rl_report.json"
)


class Pipeline:
    def __init__(self, cfg: DictConfig, wandb_run: Any = None) -> None:
        self.cfg = cfg
        started = start(cfg)
        self.config = started.config  # plain, resolved values: what keys hash
        self.plan = started.plan
        self.stages: dict[str, Stage] = started.stages
        self.source = started.source
        self.prompt_format: PromptFormat = started.prompt_format
        self.wandb_run = wandb_run
        self.store = ArtifactStore(cfg.paths.artifacts_dir, verify=cfg.paths.get("artifacts_verify", "size"))
        self.out_dir = Path(cfg.paths.output_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.built: dict[str, Artifact] = {}  # artifact name (stage or stage:tag) -> artifact
        self.artifacts: list[Artifact] = []
        self.results: dict[str, Any] = {}
        self.shown: list[Path] = []
        self.labels: dict[int, str] = {}  # artifact index -> its folder in the run folder

    @property
    def planned(self) -> list[Stage]:
        return [self.stages[s] for s in self.plan.stages if s != REPORT]

    # -- what each artifact's key hashes ----------------------------------------------------------
    def slice(self, stage: Stage) -> dict[str, Any]:
        """The resolved config paths `stage` reads, minus the leaves it declares `unhashed`
        (where it writes, where a resumed run finds its checkpoint)."""
        view = {path: select_path(self.config, path) for path in stage.reads}
        for path in stage.unhashed:
            head, _, leaf = path.rpartition(".")
            if head in view and isinstance(view[head], dict):
                view[head] = {k: v for k, v in view[head].items() if k != leaf}
        return view

    def _data_identity(self) -> Any:
        """What the data config cannot show: the files' sizes and modification times, or the
        toy world's generator version."""
        return getattr(self.source, "content_version", None)

    @cached_property
    def model_identity(self) -> dict[str, Any]:
        """The base student as the stages load it: its weights and every load argument; asked
        for only by a stage that loads it."""
        m = self.config["model"]
        # A built student is identified by its base artifact (an input of its own).
        weights = None if "base" in self.plan.stages else path_identity(m["path"])
        return {"weights": weights, "load": self._load_args()}

    def _load_args(self) -> dict[str, Any]:
        m = self.config["model"]
        return {
            "dtype": m.get("dtype"),
            "attn_implementation": m.get("attn_implementation"),
            "config_overrides": m.get("config_overrides") or {},
            "tokenizer": path_identity(m["tokenizer"]) if m.get("tokenizer") else None,
        }

    def _key_parts(self, built: bool) -> KeyParts:
        def upstream(name: str) -> Artifact | str:
            if built:
                return self.built[name]
            return f"{name}/{self.key(name)}"

        def base_model() -> dict[str, Any]:
            model: dict[str, Any] = {"model": self.model_identity}
            if "base" in self.plan.stages:
                model["base"] = upstream("base")
            return model

        return KeyParts(
            upstream=upstream, base_model=base_model, load_args=self._load_args,
            data_version=self._data_identity, facts=self.plan.facts, stages=self.plan.stages,
        )

    def spec(self, name: str, built: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
        """(config, inputs) of an artifact: the slice of resolved config its stage reads, and the
        identities of what it reads besides (model, upstream artifacts). `name` is a stage, or
        `evaluate:base` / `evaluate:trained`. With `built`, upstream artifacts are handed over as
        built `Artifact`s (the store checks their digests on reuse); else as their references,
        which hash the same, so keys are known before anything is built."""
        stage_name, _, tag = name.partition(":")
        if stage_name not in self.stages:
            raise ValueError(f"no artifact {name!r}")
        stage = self.stages[stage_name]
        extra, inputs = stage.identity(self._key_parts(built), tag)
        return {**self.slice(stage), **extra}, inputs

    def key(self, name: str) -> str:
        return content_key(*self.spec(name))

    def keys(self) -> dict[str, str]:
        """The key of every artifact the plan builds, computed without building anything."""
        return {
            stage.label(tag): self.key(stage.label(tag))
            for stage in self.planned for tag in stage.tags(self.plan.facts)
        }

    # -- the run's services, for `produce` ------------------------------------------------------
    @cached_property
    def predict_ranks(self) -> PredictRanks | None:
        """Where `generate` and `score` predict; None: in this process only."""
        return predict_ranks(config_slice(self.config, ("trainer", "strategy")))

    @contextmanager
    def shards(self, stage: str) -> Iterator[Path]:
        """Where the ranks of a multi-process stage write their parts, keyed like the artifact;
        removed once every rank has merged (the with-block's last barrier)."""
        shards = self.store.path(stage, self.key(stage)).with_suffix(".shards")
        yield shards
        if is_rank_zero_process():
            remove_path(shards)

    def checkpoints(self, stage: str) -> Path:
        """Where a training stage's checkpoints live: beside its artifact, keyed like it, so the
        same command resumes a killed run."""
        return self.store.path(stage, self.key(stage)).with_suffix(".checkpoints")

    @cached_property
    def base_path(self) -> str:
        if "base" in self.plan.stages:
            art = self.build_stage("base")
            return str(art.path / art.meta()["summary"]["model"])
        return str(self.config["model"]["path"])

    def _model_key(self, path: str) -> str:
        """The config key a user set to get the student at `path` (for error messages)."""
        if "base" in self.plan.stages and path == self.base_path:
            return f"model.build (the base student built into {path})"
        if "base" not in self.plan.stages and path == str(self.config["model"]["path"]):
            return "model.path"
        return f"the fine-tuned student at {path} (train artifact)"

    def load_model(self, path: str, dtype: str | None = None) -> tuple[Any, Any]:
        """The student at `path` as configured (`model.dtype` unless `dtype` is given)."""
        from reasonft.models.loading import load_student, load_tokenizer

        m = self.config["model"]
        model = load_student(
            path,
            dtype=dtype or m["dtype"],
            attn_implementation=m["attn_implementation"],
            config_overrides=m.get("config_overrides") or None,
            key=self._model_key(path),
        )
        return model, load_tokenizer(m.get("tokenizer") or path)

    @cached_property
    def base_model(self) -> tuple[Any, Any]:
        model, tok = self.load_model(self.base_path)
        model.eval()
        return model, tok

    def trained_model_path(self) -> str:
        """The fine-tuned student's checkpoint folder (inside the train artifact)."""
        art = self.build_stage("train")
        return str(art.path / art.meta()["summary"]["model"])

    # -- building ---------------------------------------------------------------------------------
    def build_stage(self, name: str) -> Artifact:
        """The artifact `name` (a stage, or `stage:tag`), built (with what it reads) or reused."""
        if name in self.built:
            return self.built[name]
        stage_name, _, tag = name.partition(":")
        stage = self.stages[stage_name]
        upstream = [u for u in stage.needs(self.plan.facts) if u in self.plan.stages]
        for u in upstream:
            self.build_stage(u)
        inputs = StageInputs(
            config=stage.config.copy(),
            tag=tag,
            upstream={u: self.built[u] for u in upstream},
            run=self,
        )

        def produce(tmp: Path) -> dict[str, Any]:
            return stage.produce(inputs, tmp)

        if stage.on_every_rank(self):
            art = self._build_on_every_rank(name, produce)
        else:
            art = self._build(name, produce)
        self.built[name] = art
        return art

    def _record(self, artifact: Artifact, label: str) -> Artifact:
        self.artifacts.append(artifact)
        self.labels[len(self.artifacts) - 1] = label
        how = "reused" if artifact.reused else f"built in {artifact.seconds:.1f}s"
        log.info("stage %-8s %s  %s", artifact.stage, how, artifact.path)
        return artifact

    def _build(self, name: str, produce: Any) -> Artifact:
        stage, _, tag = name.partition(":")
        art = self.store.build(stage, *self.spec(name, built=True), produce)
        return self._record(art, f"{stage}-{tag}" if tag else stage)

    def _build_on_every_rank(self, name: str, produce: Any) -> Artifact:
        """`_build` for a stage whose `produce` every rank runs together (a collective).

        Lightning's DDP launcher re-runs this script for ranks > 0 once rank 0 first predicts or
        fits; they walk the stages from the top. Where the artifact is complete they reuse it
        (rank 0 does too, so nobody enters the collective); else they take part in rank 0's
        build in a scratch folder, never writing or renaming the artifact, then wait for rank 0's
        lock and reuse what it wrote.
        """
        if is_rank_zero_process():
            return self._build(name, produce)
        stage = name.partition(":")[0]
        config, inputs = self.spec(name, built=True)
        found = self.store.find(stage, config, inputs)
        if found is not None:
            return found
        with tempfile.TemporaryDirectory() as scratch:
            produce(Path(scratch))
        return self.store.wait_for(stage, config, inputs)

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> float | None:
        log.info("plan: %s", self.plan.describe())
        for stale in self.store.clean_stale():
            log.info("removed the temporary folder of an interrupted build: %s", stale)
        rank_zero = is_rank_zero_process()
        for stage in self.planned:
            if stage.rank_zero_only and not rank_zero:
                continue
            for tag in stage.tags(self.plan.facts):
                art = self.build_stage(stage.label(tag))
                result = stage.result(tag, art)
                if result is not None:
                    self.results[tag] = result
        if not rank_zero:
            return None
        if self.results:
            log_eval_table(self.wandb_run, self.results)
        self.shown = self._show_files()
        if REPORT in self.plan.stages:
            objective = write_final_report(
                self.cfg, self.plan, self.artifacts, self.results, self.out_dir, self.shown
            )
            log_objective(self.wandb_run, self.cfg.objective, objective)
            return objective
        return None

    def _show_files(self) -> list[Path]:
        """Copy every table and plot the run's artifacts hold into the run folder."""
        shown: list[Path] = []
        for n, art in enumerate(self.artifacts):
            files = sorted({f for pattern in SHOWN_FILES for f in art.path.glob(pattern)})
            if not files:
                continue
            folder = self.out_dir / self.labels[n]
            folder.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy2(f, folder / f.name)
                shown.append(folder / f.name)
        return shown


def run_pipeline(cfg: DictConfig) -> float | None:
    """Build and check everything at start-up (not an hour in), then run the plan."""
    from reasonft.console import quiet_libraries

    quiet_libraries()
    pipeline = Pipeline(cfg)
    with wandb_session(cfg) as wandb_run:
        pipeline.wandb_run = wandb_run
        return pipeline.run()
