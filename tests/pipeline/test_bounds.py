"""Every signed or bounded knob of the methods stops the run at start-up, naming its full key."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

import reasonft  # noqa: F401  (resolvers)
from reasonft.config import CONF_DIR, compose_config
from reasonft.pipeline.bounds import bound_problems
from reasonft.pipeline.startup import start

# (overrides, the key the error must name first). The default run (toy OXA_FULL) builds every
# group: generate, verify, score, select (promote + suppress), loss, train, trainer, eval.
OUT_OF_BOUNDS = [
    (["loss.terms.ul.weight=-1e-4"], "loss.terms.ul.weight=-0.0001"),
    (["loss.terms.ce.weight=-1"], "loss.terms.ce.weight=-1"),
    (["select.promote.sigma=0"], "select.promote.sigma=0"),
    (["select.promote.sigma=-0.25"], "select.promote.sigma=-0.25"),
    (["select.promote.mu=0.5"], "select.promote.mu=0.5 must lie in"),
    (["select.promote.mu=7"], "select.promote.mu=7 must lie in"),
    (["select.promote.ppl_min=0.5"], "select.promote.ppl_min=0.5"),
    (["select.promote.ppl_max=0.9", "select.promote.mu=1"], "select.promote.ppl_max=0.9 must be >"),
    (["select.promote.bin_width=0"], "select.promote.bin_width=0"),
    (["select.promote.n=0"], "select.promote.n=0"),
    (["select.promote.max_per_prompt=0"], "select.promote.max_per_prompt=0"),
    (["select.promote.seed=-1"], "select.promote.seed=-1"),
    (["select.suppress.n=-5"], "select.suppress.n=-5"),
    (["select.suppress.min_ppl=-1"], "select.suppress.min_ppl=-1"),
    (["select.suppress.max_per_prompt=0"], "select.suppress.max_per_prompt=0"),
    (["train.optimizer.lr=0"], "train.optimizer.lr=0"),
    (["train.optimizer.lr=-1e-3"], "train.optimizer.lr=-0.001"),
    (["train.optimizer.weight_decay=-0.1"], "train.optimizer.weight_decay=-0.1"),
    (["train.scheduler.warmup_ratio=-0.1"], "train.scheduler.warmup_ratio=-0.1"),
    (["train.per_step.ce=-8", "train.per_step.ul=24"], "train.per_step.ce=-8"),
    (["train.max_length=1"], "train.max_length=1"),
    (["train.chunk_tokens=0"], "train.chunk_tokens=0"),
    (["train.micro_batch_size=0"], "train.micro_batch_size=0"),
    (["train.seed=-3"], "train.seed=-3"),
    (["seed=-1"], "seed=-1"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1"),
    (["score.batch_tokens=0"], "score.batch_tokens=0"),
    (["score.chunk_tokens=-1"], "score.chunk_tokens=-1"),
    (["score.window=-2"], "score.window=-2"),
    (["generate.temperature=-0.5"], "generate.temperature=-0.5"),
    (["generate.top_p=0"], "generate.top_p=0"),
    (["generate.n=0"], "generate.n=0"),
    (["verify.timeout=0"], "verify.timeout=0"),
    (["eval.generator.temperature=-1"], "eval.generator.temperature=-1"),
]


def _cfg(tmp_path, overrides):
    return compose_config(
        overrides=[f"paths.cache_dir={tmp_path}", f"paths.output_dir={tmp_path}", *overrides],
    )


@pytest.fixture(scope="module")
def default_cfg(tmp_path_factory):
    return _cfg(tmp_path_factory.mktemp("bounds"), [])


def _with(cfg, overrides):
    """`cfg` with `key=value` overrides applied (as Hydra would, without recomposing)."""
    cfg = cfg.copy()
    for override in overrides:
        key, _, value = override.partition("=")
        try:
            parsed = float(value) if "." in value or "e" in value else int(value)
        except ValueError:
            parsed = yaml.safe_load(value)
        OmegaConf.update(cfg, key, parsed, merge=False)
    return cfg


@pytest.mark.parametrize(("overrides", "named"), OUT_OF_BOUNDS, ids=[o[0][0] for o in OUT_OF_BOUNDS])
def test_out_of_bounds_knob_is_named_by_its_key(default_cfg, overrides, named):
    problems = bound_problems(_with(default_cfg, overrides))
    assert problems and problems[0].startswith(named), problems


@pytest.mark.parametrize("overrides", [o for o, _ in OUT_OF_BOUNDS[:3]] + [["train.optimizer.lr=0"]])
def test_start_up_stops_before_building_anything(tmp_path, overrides):
    with pytest.raises(ValueError) as raised:
        start(_cfg(tmp_path, overrides))
    assert str(raised.value).splitlines()[0].startswith(overrides[0].split("=")[0])


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["rank.confidence=1.5", "stages=[rank]"], "rank.confidence=1.5"),
        (["select=toy_random", "select.n=0"], "select.n=0"),
        (["select=toy_ppl_gaussian", "select.sigma=-1"], "select.sigma=-1"),
        (["score=lalp", "score.window=-1"], "score.window=-1"),
    ],
)
def test_the_same_rules_follow_a_component_to_another_place(tmp_path, overrides, named):
    with pytest.raises(ValueError) as raised:
        start(_cfg(tmp_path, overrides))
    assert str(raised.value).startswith(named)


@pytest.mark.slow
def test_every_shipped_preset_is_inside_its_bounds(tmp_path):
    experiments = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    assert len(experiments) >= 12
    for name in experiments:
        assert bound_problems(_cfg(tmp_path, [f"experiment={name}"])) == [], name


def test_edge_values_inside_the_bounds_pass(tmp_path):
    """Zero weight (λ = 0), mu on the window's edge, a fractional window, greedy sampling."""
    cfg = _cfg(tmp_path, ["loss.terms.ul.weight=0", "select.promote.mu=1.0", "generate.temperature=0",
                          "generate.n=1", "select.suppress.min_ppl=0"])
    assert bound_problems(cfg) == []
