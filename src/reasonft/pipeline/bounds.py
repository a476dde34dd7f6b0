"""The signed and bounded knobs of the methods, checked at start-up with their config keys.

A value on the wrong side of its bound often does not fail anywhere: a negative unlikelihood
weight rewards the confident wrong answers, a learning rate of 0 trains nothing, a Gaussian
centred outside the PPL range fills only its edge bin. Each such knob is declared here once —
by the class its node builds (`_target_`), so that the rule follows the component wherever it is
nested (`select.sigma`, `select.promote.sigma`) — or by its config path for the keys no class
owns (`train.*`, `seed`). `check_bounds` walks the composed config before any component is
built and stops on the first value out of bounds, naming its full key.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# Groups whose nodes are not method components (paths need Hydra's runtime to resolve).
SKIPPED_GROUPS = ("hydra", "paths")


@dataclass(frozen=True)
class Bound:
    """`ok(value)` for a number; `text` says what is allowed; `why` what a violation does."""

    ok: Callable[[float], bool]
    text: str
    why: str = ""
    allow_none: bool = False


def at_least(low: float, why: str = "", allow_none: bool = False) -> Bound:
    return Bound(lambda v: v >= low, f">= {low:g}", why, allow_none)


def above(low: float, why: str = "", allow_none: bool = False) -> Bound:
    return Bound(lambda v: v > low, f"> {low:g}", why, allow_none)


def inside(low: float, high: float, closed_high: bool = False, closed_low: bool = True) -> Bound:
    def ok(v: float) -> bool:
        return (v >= low if closed_low else v > low) and (v <= high if closed_high else v < high)

    text = f"in {'[' if closed_low else '('}{low:g}, {high:g}{']' if closed_high else ')'}"
    return Bound(ok, text)


POSITIVE_COUNT = at_least(1)
OPTIONAL_COUNT = at_least(1, allow_none=True)
SEED = at_least(0, "numpy and torch refuse negative seeds, after the stages before have run")
LOSS_WEIGHT = at_least(
    0,
    "a negative weight turns the term around: CE would push the teacher data down, UL would "
    "reward the confident wrong answers it is meant to suppress",
)
LEARNING_RATE = above(0, "at 0 the optimiser takes steps that change nothing")
WEIGHT_DECAY = at_least(0, "a negative decay grows the weights every step")
PPL_FLOOR = at_least(1.0, "a perplexity is never below 1, so bins below it are never filled")

# Rules by the class a node builds (`_target_`); subclasses inherit their parents' rules.
TARGET_BOUNDS: dict[str, dict[str, Bound]] = {
    "reasonft.selection.gaussian.PPLGaussianSelector": {
        "n": POSITIVE_COUNT,
        "sigma": above(0, "N(mu, sigma) needs a positive spread"),
        "ppl_min": PPL_FLOOR,
        "bin_width": above(0),
        "max_per_prompt": OPTIONAL_COUNT,
        "seed": SEED,
    },
    "reasonft.selection.confident_incorrect.ConfidentIncorrectSelector": {
        "n": POSITIVE_COUNT,
        "min_ppl": at_least(0),
        "max_per_prompt": OPTIONAL_COUNT,
    },
    "reasonft.selection.simple.RandomSelector": {
        "n": POSITIVE_COUNT, "max_per_prompt": OPTIONAL_COUNT, "seed": SEED,
    },
    "reasonft.selection.simple.LowestPPLSelector": {
        "n": POSITIVE_COUNT, "max_per_prompt": OPTIONAL_COUNT,
    },
    "reasonft.selection.teacher_rank.TeacherRanker": {
        "n_prompts": POSITIVE_COUNT,
        "n_bootstrap": POSITIVE_COUNT,
        "confidence": inside(0, 1, closed_low=False),
        "seed": SEED,
    },
    "reasonft.training.losses.LossTerm": {"weight": LOSS_WEIGHT},
    "reasonft.scoring.scorer.Scorer": {
        "window": at_least(0),
        "batch_tokens": POSITIVE_COUNT,
        "chunk_tokens": POSITIVE_COUNT,
        "max_length": at_least(2, allow_none=True),
    },
    "reasonft.generation.hf.HFGenerator": {
        "n": POSITIVE_COUNT,
        "temperature": at_least(0),
        "top_p": inside(0, 1, closed_high=True, closed_low=False),
        "max_new_tokens": OPTIONAL_COUNT,
        "batch_size": POSITIVE_COUNT,
        "seed": SEED,
    },
    "reasonft.generation.vllm.VLLMGenerator": {
        "n": POSITIVE_COUNT,
        "temperature": at_least(0),
        "top_p": inside(0, 1, closed_high=True, closed_low=False),
        "max_new_tokens": OPTIONAL_COUNT,
        "seed": SEED,
    },
    "reasonft.verify.verifier.Verifier": {"timeout": above(0)},
    "reasonft.evaluation.evaluate.Evaluator": {"seed": SEED},
    "torch.optim.optimizer.Optimizer": {
        "lr": LEARNING_RATE,
        "weight_decay": WEIGHT_DECAY,
        "momentum": at_least(0),
        "eps": above(0),
    },
    "reasonft.training.schedules.warmup_cosine": {"warmup_ratio": inside(0, 1)},
    "pytorch_lightning.trainer.trainer.Trainer": {
        "gradient_clip_val": at_least(0, "clipping to a negative norm", allow_none=True),
        "max_epochs": at_least(-1, allow_none=True),
    },
}

# Rules by config path, for keys no class owns.
PATH_BOUNDS: dict[str, Bound] = {
    "seed": SEED,
    "train.seed": SEED,
    "train.micro_batch_size": POSITIVE_COUNT,
    "train.max_length": at_least(2),
    "train.chunk_tokens": POSITIVE_COUNT,
    "train.num_workers": at_least(0),
}
# Rules for every value of a mapping whose keys are open: the record kinds of train.per_step.
MAPPING_BOUNDS: dict[str, Bound] = {"train.per_step": at_least(0)}


def _relations(path: str, target: str, node: DictConfig) -> Iterator[str]:
    """Bounds between two keys of one node."""
    if target == "reasonft.selection.gaussian.PPLGaussianSelector":
        mu, low, high = (_number(node, k) for k in ("mu", "ppl_min", "ppl_max"))
        if None not in (low, high) and not low < high:
            yield f"{path}.ppl_max={high:g} must be > {path}.ppl_min={low:g}"
        elif None not in (mu, low, high) and not low <= mu <= high:
            yield (
                f"{path}.mu={mu:g} must lie in [{path}.ppl_min, {path}.ppl_max] = [{low:g}, "
                f"{high:g}]: centred outside the window, the Gaussian only fills the edge bins"
            )


def _number(node: DictConfig, key: str) -> float | None:
    value = node.get(key) if key in node else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _class_names(target: str) -> list[str]:
    """`target` and its base classes, as dotted names (only the target when it does not import)."""
    module, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):  # the component's own build names what is missing
        return [target]
    if not isinstance(cls, type):  # a function (a schedule)
        return [target]
    names = [f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__]
    return list(dict.fromkeys([target, *names]))


def _violation(key: str, value: Any, bound: Bound) -> str | None:
    if value is None:
        return None if bound.allow_none else f"{key}=null: must be {bound.text}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # a wrongly typed value is the constructor's (or the schema's) to name
    if math.isnan(value) or not bound.ok(value):
        why = f" ({bound.why})" if bound.why else ""
        return f"{key}={value!r}: must be {bound.text}{why}"
    return None


def _walk(node: Any, path: str) -> Iterator[str]:
    if isinstance(node, ListConfig):
        for index, item in enumerate(node):
            if isinstance(item, (DictConfig, ListConfig)):
                yield from _walk(item, f"{path}[{index}]")
        return
    if not isinstance(node, DictConfig):
        return
    target = node.get("_target_") if "_target_" in node else None
    if isinstance(target, str):
        for name in _class_names(target):
            for key, bound in TARGET_BOUNDS.get(name, {}).items():
                if key in node:
                    problem = _violation(f"{path}.{key}", node[key], bound)
                    if problem:
                        yield problem
        yield from _relations(path, target, node)
    for key in node:
        if not path and key in SKIPPED_GROUPS:
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_missing():
            yield from _walk(node[key], f"{path}.{key}" if path else str(key))


def bound_problems(cfg: DictConfig) -> list[str]:
    """Every value out of its bound, each naming its full key."""
    problems = []
    for key, bound in PATH_BOUNDS.items():
        head, _, leaf = key.rpartition(".")
        node = cfg.get(head) if head else cfg
        if isinstance(node, DictConfig) and leaf in node:
            problem = _violation(key, node[leaf], bound)
            if problem:
                problems.append(problem)
    for key, bound in MAPPING_BOUNDS.items():
        node = OmegaConf.select(cfg, key)
        if isinstance(node, DictConfig):
            for name in node:
                problem = _violation(f"{key}.{name}", node[name], bound)
                if problem:
                    problems.append(problem)
    problems.extend(_walk(cfg, ""))
    return list(dict.fromkeys(problems))


def check_bounds(cfg: DictConfig) -> None:
    """Stop, naming the key, on the first knob out of bounds (the others listed after it)."""
    problems = bound_problems(cfg)
    if problems:
        more = "" if len(problems) == 1 else "; also " + "; ".join(problems[1:])
        raise ValueError(problems[0] + more)
