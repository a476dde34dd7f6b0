"""Identity by construction: perturb every leaf of the composed config, and exactly the artifacts
whose stage reads it (directly, through an interpolation, or through an upstream artifact) get a
new key; output-only keys (where a run writes, how it logs) change none.

The oracle below is written here, from the stage table of the README/DESIGN, not from the
runner's own tables.
"""

from __future__ import annotations

from typing import Any

import pytest
from omegaconf import OmegaConf, open_dict

import reasonft  # noqa: F401  (resolvers)
from reasonft.config import compose_config
from reasonft.pipeline.runner import Pipeline

# Which artifacts read a config path directly (prefix match on the resolved config).
MODEL_LOAD = ("model.dtype", "model.attn_implementation", "model.config_overrides", "model.tokenizer")
PROMPT = ("data.prompt_suffix", "data.chat_template", "data.system_prompt", "data.response_end")
READERS: dict[str, tuple[str, ...]] = {
    "base": ("model.build",),
    "generate": ("generate", "data", *MODEL_LOAD),
    "verify": ("verify", "data"),
    "score": ("score", *PROMPT, *MODEL_LOAD),
    "select": ("select",),
    "train": ("loss", "train", "trainer", "strategy", *PROMPT, *MODEL_LOAD),
    "evaluate:base": ("eval", "data", *MODEL_LOAD),
    "evaluate:trained": ("eval", "data", *MODEL_LOAD),
}
NOT_HASHED = ("train.ckpt_path", "trainer.default_root_dir")
# What each artifact reads from upstream, for the default run (OXA: self-samples, scores).
UPSTREAM = {
    "generate": ("base",),
    "verify": ("generate",),
    "score": ("base", "verify"),
    "select": ("score",),
    "train": ("base", "select"),
    "evaluate:base": ("base",),
    "evaluate:trained": ("train",),
}


# Leaves whose generic perturbation (int + 1, str + "_x", null -> 1, ...) a component rightly
# refuses get a valid other value instead, so that they are checked too.
VALID_OTHER: dict[str, Any] = {
    "train.micro_batch_size": 4,
    "train.per_step.ce": 16,
    "train.per_step.ul": 16,
    # a kind with neither a share nor a term stops start-up: swap the two kinds instead
    "loss.terms.ce.loss_type": "ul",
    "loss.terms.ul.loss_type": "ce",
    "train.epoch_end": "shortest",
    "train.overlength": "truncate",
    "paths.artifacts_verify": "checksum",
    "data.system_prompt": "You are a careful tutor.",
    "data.response_end": "template",
    "data.overlength": "truncate",
    "model.build.hidden_size": 64,
    "model.build.num_heads": 4,
    "model.build.num_kv_heads": 2,
    "model.build.pretrain_operators": ["+", "-", "*"],
    "model.build.prompt_format.system_prompt": "You are a careful tutor.",
    "model.build.prompt_format.response_end": "template",
    "generate.top_p": 0.9,
    "generate.max_total_tokens": 512,
    "verify.verify_fn": "operator.eq",
    "verify.answer_rule": "official",
    "verify.start_method": "spawn",
    "score.method": "galp",
    "score.window_rounding": "floor",
    "score.max_length": 512,
    "score.overlength": "drop",
    "score.ppl_numerics": "official_bf16",
    "select.promote.tie_break": "official",
    "rank.confidence": 0.9,
    "select.suppress.cutoff_ties": "official_heap",
    "select.promote.ppl_min": 1.5,
    "select.promote.ppl_max": 6.0,
    "select.promote.bin_width": 0.25,
    "select.promote.sources": ["terse"],
    "select.suppress.exclude_sources": ["terse"],
    "loss.terms.ce.reduction": "token",
    "loss.terms.ul.reduction": "token",
    "trainer.accelerator": "cpu",
    "trainer.max_steps": 100,
    "trainer.precision": "bf16-mixed",
    "strategy.name": "ddp",
    "eval.generator.top_p": 0.9,
    "eval.generator.max_total_tokens": 512,
    "eval.verifier.verify_fn": "operator.eq",
    "eval.verifier.answer_rule": "official",
    "eval.verifier.start_method": "spawn",
    "eval.second_verifier.verify_fn": "operator.eq",
    "eval.second_verifier.start_method": "spawn",
}
# Leaves no other value of which the run can take, each with the reason; every one must be
# refused (a stale entry fails the test), and nothing else may be.
REFUSED: dict[str, str] = {
    "train.optimizer._partial_": "structural: the optimiser node must be a partial",
    "train.scheduler._partial_": "structural: the schedule node must be a partial",
    "model.tokenizer": "names a tokenizer folder, and none exists here",
    "eval.benchmarks.toy_test_greedy.path": "a split benchmark given a file: path and split exclude each other",
    "eval.benchmarks.toy_test.path": "a split benchmark given a file: path and split exclude each other",
    "eval.benchmarks.toy_test_greedy.n_samples": "greedy (temperature 0): more samples would be identical",
    "eval.second_verifier.answer_rule": "the second grader would be the first one (compare_graders)",
    "settings_for": "a toy / real enum read by start-up only (tests/models/test_real_student.py)",
    "model.pretrained": "the toy student called pretrained: start-up refuses its toy settings",
    "rl.validation.evaluator.generator.top_p": "a probability: the perturbed value leaves (0, 1]",
}
# Leaves that change which stages run: their keys are the plan's business (test_pipeline).
CHANGES_PLAN = {
    "select.promote.prefer_long": "longest-first reads n_tokens: the scorer is widened",
}


def _compose(*overrides: str):
    return compose_config(overrides=["paths.output_dir=/tmp/reasonft-identity-run", *overrides])


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        out = []
        for k, v in node.items():
            out += _leaves(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, node)]


def _perturbed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 1.5 + 0.1
    if isinstance(value, str):
        return value + "_x"
    if isinstance(value, list):
        return [*value, value[-1] if value else 1]
    if value is None:
        return 1
    raise TypeError(value)


def _reads(path: str, prefixes: tuple[str, ...]) -> bool:
    if any(path == p or path.startswith(p + ".") for p in NOT_HASHED):
        return False
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def _expected(changed_paths: set[str], names: list[str]) -> set[str]:
    hit = {n for n in names if any(_reads(p, READERS[n]) for p in changed_paths)}
    grew = True
    while grew:  # downstream of a changed artifact changes too
        more = {n for n in names if any(u in hit for u in UPSTREAM.get(n, ()))}
        grew = not more <= hit
        hit |= more
    return hit


@pytest.mark.slow
def test_every_leaf_changes_exactly_the_artifacts_that_read_it(tmp_path):
    cfg = _compose(f"paths.cache_dir={tmp_path}")
    base = Pipeline(cfg)
    keys = base.keys()
    names = list(keys)
    assert names == [
        "base", "generate", "verify", "score", "select", "train", "evaluate:base", "evaluate:trained"
    ]
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    flat = dict(_leaves(resolved))
    raw_leaves = _leaves(OmegaConf.to_container(cfg, resolve=False))
    checked, refused, plan_changed, node_aliases = 0, {}, set(), set()
    for path, value in raw_leaves:
        if path.endswith("_target_") or path == "stages" or path.startswith("paths.cache_dir"):
            continue
        if isinstance(value, dict):  # an empty mapping ({}): nothing to perturb
            continue
        if path not in flat and any(p.startswith(path + ".") for p in flat):
            # `${data.source}`: an alias of a whole node, whose own leaves are perturbed there
            node_aliases.add(path)
            continue
        # An interpolation (`${seed}`) is replaced by a perturbed copy of what it resolves to.
        value = flat.get(path, value)
        new = cfg.copy()
        try:
            with open_dict(new):
                other = VALID_OTHER[path] if path in VALID_OTHER else _perturbed(value)
                OmegaConf.update(new, path, other, force_add=True, merge=False)
            pipeline = Pipeline(new)
            new_keys = pipeline.keys()
        except Exception as err:  # noqa: BLE001 - a perturbation the components refuse
            refused[path] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            continue
        if pipeline.plan != base.plan:
            plan_changed.add(path)
            continue
        now = dict(_leaves(OmegaConf.to_container(new, resolve=True, enum_to_str=True)))
        changed_paths = {p for p in set(flat) | set(now) if flat.get(p) != now.get(p)}
        changed = {n for n, k in new_keys.items() if keys[n] != k}
        assert changed == _expected(changed_paths, names), (path, changed_paths)
        checked += 1
    # Each kind of leaf left unchecked is the explained one, and all of its members are.
    assert refused.keys() == REFUSED.keys(), {p: refused.get(p, "accepted") for p in refused.keys() ^ REFUSED.keys()}
    assert plan_changed == CHANGES_PLAN.keys(), plan_changed
    assert node_aliases == {"model.build.world"}, node_aliases
    skipped = len(refused) + len(plan_changed) + len(node_aliases)
    assert checked > 170, (checked, skipped)
    assert skipped <= 0.06 * (checked + skipped), (checked, skipped)


def test_output_only_keys_change_no_key(tmp_path):
    keys = Pipeline(_compose(f"paths.cache_dir={tmp_path}")).keys()
    for override in (
        "paths.output_dir=/elsewhere",
        "logger=tensorboard",
        "callbacks.progress_bar=null",
        "task_name=renamed",
        "objective=toy_test/pass@8",
        "train.ckpt_path=last",
        "stages=[base,generate,verify,score,select,train,evaluate,report]",
    ):
        assert Pipeline(_compose(f"paths.cache_dir={tmp_path}", override)).keys() == keys, override


def test_seed_reaches_every_seeded_stage(tmp_path):
    """`seed=7` seeds everything: sampling, selection, data order, evaluation sampling."""
    keys = Pipeline(_compose(f"paths.cache_dir={tmp_path}")).keys()
    other = Pipeline(_compose(f"paths.cache_dir={tmp_path}", "seed=7")).keys()
    changed = {n for n in keys if keys[n] != other[n]}
    assert changed == {
        "generate", "verify", "score", "select", "train", "evaluate:base", "evaluate:trained"
    }
    cfg = OmegaConf.to_container(_compose("seed=7"), resolve=True)
    seeds = {p: v for p, v in _leaves(cfg) if p.endswith("seed") and not p.startswith(("data.", "model."))}
    assert seeds and set(seeds.values()) == {7}, seeds
