"""The stage graph: what each stage reads and what it writes, and which stages a run needs.

`stages=` names the outputs a run asks for; the plan adds whatever those outputs read, decided
by the configured components (a selector that suppresses the student's own samples needs
`generate`; one that ranks by LALP needs `score`), never by the order or presence of other names
in the list. `report` is the final table and needs nothing of its own.

| stage    | reads (config)                              | reads (stages)                 | writes |
|----------|---------------------------------------------|--------------------------------|--------|
| base     | model.build                                 | -                              | a student checkpoint folder |
| generate | generate, data, prompt format, model load   | base                           | self-samples (records) |
| verify   | verify, data                                | generate (when self-samples)   | pool with `correct` |
| score    | score, prompt format, model load            | base, verify                   | pool with scores |
| select   | select                                      | score (when a score is read), else verify | a training set, or a teacher ranking |
| train    | loss, train, trainer, strategy, prompt      | base, select                   | fine-tuned checkpoint |
| rl       | rl, data, trainer devices, strategy, model load | train when asked, else base | GRPO policy checkpoint |
| evaluate | eval, data, prompt format, model load       | base (train, rl when asked)    | metrics per benchmark |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STAGES = ("base", "generate", "verify", "score", "select", "train", "rl", "evaluate", "report")

# The prompt format: how a problem becomes the text the student sees, and how a response ends.
PROMPT = ("data.prompt_suffix", "data.chat_template", "data.system_prompt", "data.response_end")
# Config paths each stage's key hashes (resolved values), besides the model identity and the
# keys of the stages it reads. Every other config path is output-only for that stage.
STAGE_CONFIG: dict[str, tuple[str, ...]] = {
    "base": ("model.build",),
    "generate": ("generate", "data"),
    "verify": ("verify", "data"),
    "score": ("score", *PROMPT),
    "select": ("select",),
    "train": ("loss", "train", "trainer", "strategy", *PROMPT),
    "rl": ("rl", "data", "trainer.devices", "trainer.num_nodes", "trainer.accelerator", "strategy"),
    "evaluate": ("eval", "data"),
}
# Read by a stage but never part of what it produces: where it writes, how it logs, and where a
# resumed fit finds its checkpoint.
OUTPUT_ONLY = (
    "train.ckpt_path", "rl.resume", "trainer.default_root_dir", "logger", "callbacks", "paths"
)


@dataclass(frozen=True)
class Plan:
    """The stages a run builds, in dependency order, and the edges that depend on components."""

    requested: tuple[str, ...]
    stages: tuple[str, ...]
    self_samples: bool          # the student's own samples join the verify pool
    select_reads_scores: bool   # select reads the scored pool (else the verified one)
    evaluate_trained: bool      # evaluate the fine-tuned student (train is part of the run)
    score_columns: tuple[str, ...] = field(default=())  # columns the score stage must produce
    evaluate_rl: bool = False   # evaluate the RL policy (rl is part of the run)

    def describe(self) -> str:
        arrows = " -> ".join(self.stages)
        extra = []
        if "verify" in self.stages:
            extra.append("self-samples in the pool" if self.self_samples else "teacher pool only")
        if "evaluate" in self.stages:
            extra.append(
                "evaluate base" + (" + trained" if self.evaluate_trained else "")
                + (" + rl" if self.evaluate_rl else "")
            )
        return arrows + (f"  ({'; '.join(extra)})" if extra else "")


def make_plan(
    requested: list[str] | tuple[str, ...],
    *,
    has_build: bool,
    self_samples: bool,
    score_columns: tuple[str, ...],
    is_ranking: bool,
) -> Plan:
    """Resolve `requested` outputs into the stages that build them.

    has_build: the model config builds its base student (the toy world) instead of naming a path.
    self_samples: the selector reads records of source `self`.
    score_columns: score columns the selector needs (empty: it reads the verified pool).
    is_ranking: the selector ranks teachers and selects no training set.
    """
    unknown = [s for s in requested if s not in STAGES]
    if unknown:
        raise ValueError(f"stages={list(requested)}: unknown {unknown}; choose from {list(STAGES)}")
    if is_ranking and "train" in requested:
        raise ValueError(
            "stages: select=teacher_rank ranks teachers and selects no training set, so `train` "
            "cannot run; ask for stages=[select,report] (the ranking is printed and written to "
            "results.md), or choose another select= option"
        )
    needs: dict[str, list[str]] = {
        "base": [],
        "generate": ["base"],
        "verify": ["generate"] if self_samples else [],
        "score": ["base", "verify"],
        "select": ["score" if score_columns else "verify"],
        "train": ["base", "select"],
        # GRPO from the fine-tuned student when train is asked for, else from the base student.
        "rl": ["base", "train"] if "train" in requested else ["base"],
        "evaluate": ["base"] + [s for s in ("train", "rl") if s in requested],
        "report": [],
    }
    wanted: set[str] = set()

    def add(stage: str) -> None:
        if stage in wanted:
            return
        wanted.add(stage)
        for upstream in needs[stage]:
            add(upstream)

    for stage in requested:
        add(stage)
    if not has_build:
        wanted.discard("base")  # a named checkpoint: nothing to build
    return Plan(
        requested=tuple(requested),
        stages=tuple(s for s in STAGES if s in wanted),
        self_samples=self_samples,
        select_reads_scores=bool(score_columns),
        evaluate_trained="evaluate" in wanted and "train" in wanted,
        evaluate_rl="evaluate" in wanted and "rl" in wanted,
        score_columns=tuple(score_columns),
    )


def select_path(config: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of a plain nested dict (None when absent)."""
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
