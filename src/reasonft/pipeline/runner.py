"""Runs the stage plan over content-addressed artifacts.

Start-up (`pipeline/startup.py`) builds every component and resolves the plan (`pipeline/plan.py`)
before any stage runs. Each stage then sees only its own slice of the resolved config — the
paths `plan.STAGE_CONFIG` names, plus the identity of the model it loads and the keys of the
artifacts it reads — and that slice is exactly what its artifact key hashes, so a key cannot miss
an input. Every stage hands back its records or files and a report; the reports reach the final
summary.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig, OmegaConf, open_dict

from reasonft.data.prompt_examples import write_prompt_examples
from reasonft.data.prompts import PromptFormat
from reasonft.data.records import ANSWER_ALTERNATIVES
from reasonft.generation.hf import HFGenerator
from reasonft.io import read_records, remove_path, write_json, write_records
from reasonft.pipeline.artifacts import Artifact, ArtifactStore, content_key
from reasonft.pipeline.identity import path_identity
from reasonft.pipeline.plan import OUTPUT_ONLY, STAGE_CONFIG, select_path
from reasonft.pipeline.predict_ranks import PredictRanks, predict_ranks
from reasonft.pipeline.report import write_final_report
from reasonft.pipeline.startup import Components, start
from reasonft.selection.base import EmptySelection
from reasonft.selection.teacher_rank import TeacherRanking
from reasonft.sweep import is_rank_zero_process
from reasonft.training.precision import training_dtype
from reasonft.wandb_artifacts import (
    log_eval_table,
    log_model,
    log_objective,
    log_selection,
    wandb_session,
)

log = logging.getLogger(__name__)

RECORDS = "records.parquet"
PROMPTS = "prompts.md"
# 2: the base student is built inside its artifact (listed in its manifest, a relative path);
# 1 recorded an absolute path to a folder outside it.
BASE_LAYOUT = 2
UPSTREAM_ATTR = {
    "base": "base_artifact",
    "generate": "self_samples",
    "verify": "verified",
    "score": "scored",
    "select": "selected",
    "train": "trained",
    "rl": "reinforced",
}
# What a user looks at, copied from each artifact into the run folder.
SHOWN_FILES = (
    "*.md", "*.png", "report.json", "selection_report.json", "train_report.json", "rl_report.json"
)


class Pipeline:
    def __init__(self, cfg: DictConfig, wandb_run: Any = None) -> None:
        self.cfg = cfg
        # Plain, resolved values: what keys hash and what stages read.
        self.config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore[assignment]
        self.parts: Components = start(cfg)
        self.plan = self.parts.plan
        self.wandb_run = wandb_run
        self.store = ArtifactStore(cfg.paths.artifacts_dir, verify=cfg.paths.get("artifacts_verify", "size"))
        self.out_dir = Path(cfg.paths.output_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.artifacts: list[Artifact] = []
        self.results: dict[str, Any] = {}
        self.shown: list[Path] = []
        self.labels: dict[int, str] = {}  # artifact index -> its folder in the run folder

    # -- what a stage sees --------------------------------------------------------------------
    def slice(self, stage: str) -> dict[str, Any]:
        """The resolved config paths `stage` reads, minus the output-only ones."""
        view = {path: select_path(self.config, path) for path in STAGE_CONFIG[stage]}
        for path in OUTPUT_ONLY:
            head, _, leaf = path.rpartition(".")
            if head in view and isinstance(view[head], dict):
                view[head] = {k: v for k, v in view[head].items() if k != leaf}
        return view

    def _data_identity(self) -> Any:
        """What the data config cannot show: the files' sizes and modification times, or the
        toy world's generator version."""
        return getattr(self.parts.source, "content_version", None)

    @cached_property
    def model_identity(self) -> dict[str, Any]:
        """The base student as the stages load it: its weights and every load argument."""
        m = self.config["model"]
        # A built student is identified by its base artifact (an input of its own).
        weights = None if "base" in self.plan.stages else path_identity(m["path"])
        return {"weights": weights, "load": self._load_args(m)}

    @staticmethod
    def _load_args(m: dict[str, Any]) -> dict[str, Any]:
        return {
            "dtype": m.get("dtype"),
            "attn_implementation": m.get("attn_implementation"),
            "config_overrides": m.get("config_overrides") or {},
            "tokenizer": path_identity(m["tokenizer"]) if m.get("tokenizer") else None,
        }

    # -- what each artifact's key hashes ----------------------------------------------------------
    def spec(self, name: str, built: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
        """(config, inputs) of an artifact: the slice of resolved config its stage reads, and the
        identities of what it reads besides (model, upstream artifacts). `name` is a stage, or
        `evaluate:base` / `evaluate:trained`. With `built`, upstream artifacts are handed over as
        built `Artifact`s (the store checks their digests on reuse); else as their references,
        which hash the same, so keys are known before anything is built."""
        stage, _, tag = name.partition(":")
        config = self.slice(stage)

        def up(upstream: str) -> Artifact | str:
            if built:
                return getattr(self, UPSTREAM_ATTR[upstream])
            return f"{upstream}/{self.key(upstream)}"

        if stage == "base":
            builder = self.parts.builder
            # The builder's folder name hashes what the config cannot show (its code version, a
            # shipped student's files); the layout: the student lives inside the artifact.
            identity = {"folder": builder.folder_name()} if hasattr(builder, "folder_name") else {}
            return config, {**identity, "layout": BASE_LAYOUT}
        if stage in ("generate", "verify", "evaluate", "rl"):
            config["data_version"] = self._data_identity()
        model: dict[str, Any] = {"model": self.model_identity}
        if "base" in self.plan.stages:
            model["base"] = up("base")
        if stage == "generate":
            return config, model
        if stage == "verify":
            config["self_samples"] = self.plan.self_samples
            return config, {"generate": up("generate")} if self.plan.self_samples else {}
        if stage == "score":
            # What the (possibly widened) scorer produces, not what the selector asked for.
            config["produces"] = sorted(self.parts.scorer.produces)
            return config, {"verify": up("verify"), **model}
        if stage == "select":
            return config, {self._select_reads: up(self._select_reads)}
        if stage == "train":
            return config, {"select": up("select"), **model}
        if stage == "rl":
            # The policy is loaded in float32 whatever model.dtype is; a policy trained from a
            # 16-bit load (before that rule) has another key.
            if self.model_identity["load"]["dtype"] not in (None, "float32"):
                config["policy_dtype"] = "float32"
            # The starting checkpoint: the fine-tuned student when train is part of the run.
            if "train" in self.plan.stages:
                return config, {"train": up("train"), "load": self.model_identity["load"]}
            return config, model
        if stage == "evaluate" and tag == "trained":
            return config, {"train": up("train"), "load": self.model_identity["load"]}
        if stage == "evaluate" and tag == "rl":
            return config, {"rl": up("rl"), "load": self.model_identity["load"]}
        if stage == "evaluate":
            return config, model
        raise ValueError(f"no artifact {name!r}")

    @property
    def _select_reads(self) -> str:
        return "score" if self.plan.select_reads_scores else "verify"

    def key(self, name: str) -> str:
        return content_key(*self.spec(name))

    def keys(self) -> dict[str, str]:
        """The key of every artifact the plan builds, computed without building anything."""
        names = [s for s in self.plan.stages if s not in ("evaluate", "report")]
        if "evaluate" in self.plan.stages:
            names.append("evaluate:base")
            if self.plan.evaluate_trained:
                names.append("evaluate:trained")
            if self.plan.evaluate_rl:
                names.append("evaluate:rl")
        return {name: self.key(name) for name in names}

    def _record(self, artifact: Artifact, label: str | None = None) -> Artifact:
        self.artifacts.append(artifact)
        self.labels[len(self.artifacts) - 1] = label or artifact.stage
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

    @cached_property
    def predict_ranks(self) -> PredictRanks | None:
        """Where `generate` and `score` predict; None: in this process only."""
        return predict_ranks(self.cfg)

    def _shards(self, stage: str) -> Path:
        """Where the ranks of a multi-process stage write their parts, keyed like the artifact."""
        return self.store.path(stage, self.key(stage)).with_suffix(".shards")

    @staticmethod
    def _remove_shards(shards: Path) -> None:
        # Every rank has merged when the *_with_trainer call returns (its last barrier).
        if is_rank_zero_process():
            remove_path(shards)

    # -- base: the student before fine-tuning ----------------------------------------------------
    @cached_property
    def base_artifact(self) -> Artifact:
        # The student is built inside the artifact, so its manifest lists (and its reuse checks)
        # every file of it, and the summary holds a path relative to the artifact: a moved or
        # copied cache loads its own student; a damaged one is rebuilt like any artifact.
        def produce(tmp: Path) -> dict[str, Any]:
            builder = self.parts.builder
            if getattr(builder, "builds_anywhere", False):
                built = Path(builder.build(tmp))
            else:
                # A builder tied to its own cache (a fetched package, another run's artifact):
                # its folder is copied in, never linked, so damage here cannot reach the source.
                source = Path(builder.build(self.cfg.paths.cache_dir))
                built = tmp / source.name
                shutil.copytree(source, built)
            return {"model": str(built.relative_to(tmp))}

        return self._build("base", produce)

    @cached_property
    def base_path(self) -> str:
        if "base" in self.plan.stages:
            art = self.base_artifact
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

    @property
    def prompt_format(self) -> PromptFormat:
        return self.parts.prompt_format

    # -- generate: the base student's own samples on the training prompts ------------------------
    @cached_property
    def self_samples(self) -> Artifact:
        generator = self.parts.generator
        # Only the HF generator samples with the model it is handed; vLLM runs its own engine.
        ranks = self.predict_ranks if isinstance(generator, HFGenerator) else None

        def produce(tmp: Path) -> dict[str, Any]:
            model, tok = self.base_model
            problems = self.parts.source.problems("train")
            write_prompt_examples(
                tmp / PROMPTS, "generate", problems["prompt"][:3], self.prompt_format, tok
            )
            if ranks is None:
                samples = generator.generate(problems, model, tok, prompt_format=self.prompt_format)
            else:
                from reasonft.generation.predict import generate_with_trainer

                shards = self._shards("generate")
                samples, _ = generate_with_trainer(
                    problems, model, tok, generator, ranks.trainer_kwargs(), shards,
                    prompt_format=self.prompt_format,
                )
                self._remove_shards(shards)
            if not len(samples):
                raise RuntimeError("generate: no sample was produced (no training problem?)")
            write_records(samples, tmp / RECORDS)
            world = 1 if ranks is None else ranks.world_size
            return {"samples": len(samples), "problems": len(problems), "processes": world}

        if ranks is None:
            return self._build("generate", produce)
        return self._build_on_every_rank("generate", produce)

    # -- verify: teacher pool (+ self samples) marked correct/incorrect ------------------------
    @cached_property
    def verified(self) -> Artifact:
        def produce(tmp: Path) -> dict[str, Any]:
            parts = [self.parts.source.teacher_pool("train")]
            if self.plan.self_samples:
                parts.append(read_records(self.self_samples.path / RECORDS))
            alternatives = any(ANSWER_ALTERNATIVES in p.column_names for p in parts)
            pool = (
                datasets.concatenate_datasets([_common_columns(p, alternatives) for p in parts])
                if len(parts) > 1 else parts[0]
            )
            if not len(pool):
                raise RuntimeError("verify: the pool is empty (no teacher record, no self-sample)")
            verified, report = self.parts.verifier(pool)
            write_records(verified, tmp / RECORDS)
            write_json(report, tmp / "report.json")
            return report

        return self._build("verify", produce)

    # -- score: PPL / GALP / LALP under the frozen base student --------------------------------
    @cached_property
    def scored(self) -> Artifact:
        ranks = self.predict_ranks

        def produce(tmp: Path) -> dict[str, Any]:
            model, tok = self.base_model
            pool = read_records(self.verified.path / RECORDS)
            scorer = self.parts.scorer
            if scorer.condition_on_prompt:
                head = pool.select(range(min(3, len(pool))))
                write_prompt_examples(
                    tmp / PROMPTS, "score", head["prompt"], self.prompt_format, tok, head["response"]
                )
            if ranks is None:
                scored, report = scorer(pool, model, tok)
                report["processes"] = 1
            else:
                from reasonft.scoring.predict import score_with_trainer

                shards = self._shards("score")
                scored, report = score_with_trainer(
                    pool, model, tok, scorer, ranks.trainer_kwargs(), shards
                )
                self._remove_shards(shards)
            if not len(scored):
                raise RuntimeError(f"score: no record left after scoring; its report: {report}")
            write_records(scored, tmp / RECORDS)
            return {"records": len(scored), **report}

        if ranks is None:
            return self._build("score", produce)
        return self._build_on_every_rank("score", produce)

    # -- select: the training set, each record with its loss_type --------------------------------
    @cached_property
    def selected(self) -> Artifact:
        upstream = getattr(self, UPSTREAM_ATTR[self._select_reads])

        def produce(tmp: Path) -> dict[str, Any]:
            from reasonft.selection.report import write_report

            pool = read_records(upstream.path / RECORDS)
            try:
                selection = self.parts.selector(pool)
            except EmptySelection as empty:
                # The report of what every filter removed stays where the user looks.
                write_report(empty.selection, pool, self.out_dir / "select")
                raise
            if isinstance(selection, TeacherRanking):
                # Ranking teachers selects no training set: its table and plot are the result.
                selection.write(tmp)
                return {"teacher_ranking": selection.table, **selection.report}
            write_records(selection.records, tmp / RECORDS)
            write_report(selection, pool, tmp)
            log_selection(self.wandb_run, selection.report, tmp / RECORDS)
            return selection.report

        return self._build("select", produce)

    # -- train: fine-tune the student on the selection ------------------------------------------
    @cached_property
    def trained(self) -> Artifact:
        from reasonft.training.train import train_student

        # Checkpoints live beside the artifact, keyed like it: re-running the same command with
        # `train.ckpt_path=last` resumes an interrupted fit.
        ckpt_dir = self.store.path("train", self.key("train")).with_suffix(".checkpoints")
        c = self.cfg
        if c.callbacks.get("checkpoint") is not None:
            with open_dict(c):
                c.callbacks.checkpoint.dirpath = str(ckpt_dir)

        def produce(tmp: Path) -> dict[str, Any]:
            # fp32 master weights whatever model.dtype is (training/precision.py).
            dtype = training_dtype(c.trainer.get("precision"), self.config["model"]["dtype"])
            model, tok = self.load_model(self.base_path, dtype=dtype)
            records = read_records(self.selected.path / RECORDS)
            head = records.select(range(min(3, len(records))))
            write_prompt_examples(
                tmp / PROMPTS, "train", head["prompt"], self.prompt_format, tok, head["response"]
            )
            path = train_student(c, records, model, tok, tmp)
            log_model(self.wandb_run, path)
            return {"model": str(Path(path).relative_to(tmp))}

        # Ranks > 0 train alongside rank 0 but never write (or race to rename) the artifact; where
        # it is complete (ranks launched by an earlier stage's predict) nobody trains.
        return self._build_on_every_rank("train", produce)

    def trained_model_path(self) -> str:
        """The fine-tuned student's checkpoint folder (inside the train artifact)."""
        trained = self.trained
        return str(trained.path / trained.meta()["summary"]["model"])

    # -- rl: GRPO from the fine-tuned (or base) student ------------------------------------------
    @cached_property
    def reinforced(self) -> Artifact:
        from hydra.utils import instantiate

        from reasonft.rl.stage import run_grpo

        # Checkpoints beside the artifact, keyed like it: the same command resumes a killed run.
        ckpt_dir = self.store.path("rl", self.key("rl")).with_suffix(".checkpoints")
        start = self.trained_model_path() if "train" in self.plan.stages else self.base_path

        def produce(tmp: Path) -> dict[str, Any]:
            # The policy trains with fp32 master weights whatever model.dtype is, as the train
            # stage does (training/precision.py); rl.bf16 is TRL's autocast over them.
            model, tok = self.load_model(start, dtype="float32")
            model.train()
            loggers = []
            if is_rank_zero_process():
                loggers = [instantiate(n) for n in (self.cfg.get("logger") or {}).values() if n]
            recipe = self.parts.rl
            report = run_grpo(
                recipe, model, tok, self.parts.source.problems(recipe.split), tmp, ckpt_dir,
                prompt_format=self.prompt_format, data_source=self.parts.source, loggers=loggers,
                config_overrides=self.config["model"].get("config_overrides") or None,
                world_size=self.parts.rl_world_size, title=f"GRPO from {Path(start).name}",
            )
            if report:
                log_model(self.wandb_run, str(tmp / report["model"]))
            return {"start": start, **report}

        return self._build_on_every_rank("rl", produce)

    def rl_model_path(self) -> str:
        """The GRPO policy's checkpoint folder (inside the rl artifact)."""
        art = self.reinforced
        return str(art.path / art.meta()["summary"]["model"])

    # -- evaluate ------------------------------------------------------------------------------
    def evaluate(self, tag: str, model_path: str) -> dict[str, Any]:
        def produce(tmp: Path) -> dict[str, Any]:
            model, tok = self.load_model(model_path)
            model.eval()
            evaluator = self.parts.evaluator
            first = evaluator.benchmarks[0]
            problems = evaluator.problems(first, self.parts.source)[0]["prompt"][:3]
            write_prompt_examples(
                tmp / PROMPTS, f"evaluate {tag} ({first.name})", problems, self.prompt_format, tok
            )
            return self.parts.evaluator.evaluate(
                model, tok, tmp, data_source=self.parts.source, tag=tag,
                prompt_format=self.prompt_format,
            )

        return self._build(f"evaluate:{tag}", produce).meta()["summary"]

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> float | None:
        log.info("plan: %s", self.plan.describe())
        for stale in self.store.clean_stale():
            log.info("removed the temporary folder of an interrupted build: %s", stale)
        stages = self.plan.stages
        for stage, attr in (
            ("base", "base_artifact"),
            ("generate", "self_samples"),
            ("verify", "verified"),
            ("score", "scored"),
            ("select", "selected"),
            ("train", "trained"),
            ("rl", "reinforced"),
        ):
            if stage in stages:
                getattr(self, attr)
        if not is_rank_zero_process():
            return None
        if "evaluate" in stages:
            self.results["base"] = self.evaluate("base", self.base_path)
            if self.plan.evaluate_trained:
                self.results["trained"] = self.evaluate("trained", self.trained_model_path())
            if self.plan.evaluate_rl:
                self.results["rl"] = self.evaluate("rl", self.rl_model_path())
        if self.results:
            log_eval_table(self.wandb_run, self.results)
        self.shown = self._show_files()
        if "report" in stages:
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


def run_pipeline(cfg: DictConfig) -> float | None:
    """Build and check everything at start-up (not an hour in), then run the plan."""
    from reasonft.console import quiet_libraries

    quiet_libraries()
    pipeline = Pipeline(cfg)
    with wandb_session(cfg) as wandb_run:
        pipeline.wandb_run = wandb_run
        return pipeline.run()
