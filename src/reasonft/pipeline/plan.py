"""The plan: which stages a run builds, in dependency order.

`stages=` names the outputs a run asks for; the plan adds whatever those outputs read, as each
stage object's `needs` says, decided by the configured components (a selector that suppresses
the student's own samples makes `verify` need `generate`; one that ranks by LALP makes `select`
need `score`), never by the order or presence of other names in the list. `report`, the final
table, is not a stage: it is written when asked for, after every stage.

Stages of the shipped `pipeline` config (each one class under `reasonft/stages/`):

| stage    | reads (config)                              | reads (stages)                 | writes |
|----------|---------------------------------------------|--------------------------------|--------|
| base     | model.build                                 | -                              | a student checkpoint folder |
| generate | generate, data, prompt format, model load   | base                           | self-samples (records) |
| verify   | verify, data                                | generate (when self-samples)   | pool with `correct` |
| score    | score, prompt format, model load            | base, verify                   | pool with scores |
| select   | select                                      | score (when a score is read), else verify | a training set |
| rank     | rank                                        | score                          | a teacher ranking |
| train    | loss, train, trainer, strategy, prompt      | base, select                   | fine-tuned checkpoint |
| rl       | rl, data, trainer devices, strategy, model load | train when asked, else base | GRPO policy checkpoint |
| evaluate | eval, data, prompt format, model load       | base (train, rl when asked)    | metrics per benchmark |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from reasonft.pipeline.stage import Facts, Stage

REPORT = "report"


@dataclass(frozen=True)
class Plan:
    """The stages a run builds, in dependency order, and the facts that decided its edges."""

    requested: tuple[str, ...]
    stages: tuple[str, ...]  # ends with `report` when asked for
    facts: Facts
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        arrows = " -> ".join(self.stages)
        return arrows + (f"  ({'; '.join(self.notes)})" if self.notes else "")


def make_plan(
    requested: list[str] | tuple[str, ...],
    stages: Mapping[str, Stage],
    *,
    has_build: bool,
) -> Plan:
    """Resolve `requested` outputs into the stages that build them.

    Each stage's demands (self-samples, score columns) change its upstream's needs, so the closure
    is taken again until the demands of the stages in it stop growing.
    """
    names = [*stages, REPORT]
    unknown = [s for s in requested if s not in names]
    if unknown:
        raise ValueError(f"stages={list(requested)}: unknown {unknown}; choose from {names}")
    asked = tuple(str(s) for s in requested)
    facts = Facts(requested=asked, has_build=has_build)
    while True:
        wanted = _closure([s for s in asked if s != REPORT], stages, facts)
        demands = [stages[s].demands() for s in wanted]
        grown = replace(
            facts,
            self_samples=any(d.self_samples for d in demands),
            score_columns=tuple(sorted({c for d in demands for c in d.score_columns})),
        )
        if grown == facts:
            break
        facts = grown
    if not has_build:
        wanted.discard("base")  # a named checkpoint: nothing to build
    order = _ordered(wanted, stages, facts)
    notes = tuple(n for s in order if (n := stages[s].describe(facts)))
    return Plan(
        requested=asked,
        stages=(*order, REPORT) if REPORT in asked else order,
        facts=facts,
        notes=notes,
    )


def _closure(requested: list[str], stages: Mapping[str, Stage], facts: Facts) -> set[str]:
    wanted: set[str] = set()

    def add(stage: str) -> None:
        if stage in wanted:
            return
        wanted.add(stage)
        for upstream in stages[stage].needs(facts):
            if upstream not in stages:
                raise ValueError(
                    f"pipeline.{stage} needs stage {upstream!r}, which the pipeline config does "
                    f"not define; defined: {list(stages)}"
                )
            add(upstream)

    for stage in requested:
        add(stage)
    return wanted


def _ordered(wanted: set[str], stages: Mapping[str, Stage], facts: Facts) -> tuple[str, ...]:
    """Dependency order; among stages ready together, the pipeline config's order."""
    order: list[str] = []
    rest = [s for s in stages if s in wanted]
    while rest:
        ready = next(
            (s for s in rest if all(u in order or u not in wanted for u in stages[s].needs(facts))),
            None,
        )
        if ready is None:
            raise ValueError(f"pipeline: the stages {rest} need each other (a cycle)")
        order.append(ready)
        rest.remove(ready)
    return tuple(order)


def select_path(config: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of a plain nested dict (None when absent)."""
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
