"""Loss terms (CE, unlikelihood), their reductions and composition, against plain references."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from reasonft.config import compose_option
from reasonft.training.losses import (
    CrossEntropyTerm,
    LossComposition,
    LossInputs,
    LossTerm,
    UnlikelihoodTerm,
    unlikelihood,
)
from reasonft.training.step_totals import StepTotals


def reference_ul(logp: float) -> float:
    """-log(1 - p), written directly."""
    return -math.log(1.0 - math.exp(logp))


def reference_reduce(per_token, mask, selector, reduction: str) -> float:
    """Plain loops: mean over tokens, or mean of per-sequence means, of selected sequences."""
    rows = [
        [per_token[b][t] for t in range(len(mask[b])) if mask[b][t]]
        for b in range(len(mask))
        if selector[b]
    ]
    rows = [r for r in rows if r]
    if not rows:
        return 0.0
    if reduction == "token":
        flat = [v for r in rows for v in r]
        return sum(flat) / len(flat)
    return sum(sum(r) / len(r) for r in rows) / len(rows)


def test_unlikelihood_matches_direct_formula_on_moderate_values():
    logp = torch.linspace(-6.0, -0.02, 301, dtype=torch.float64)
    got = unlikelihood(logp)
    want = torch.tensor([reference_ul(x) for x in logp.tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_unlikelihood_is_continuous_across_log_half():
    eps = 1e-9
    logp = torch.tensor(
        [math.log(0.5) - eps, math.log(0.5), math.log(0.5) + eps], dtype=torch.float64
    )
    got = unlikelihood(logp)
    want = torch.tensor([reference_ul(x) for x in logp.tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unlikelihood_extremes_are_finite_with_finite_gradients(dtype):
    logp = torch.tensor([0.0, -1e-12, -1e-7, -50.0], dtype=dtype, requires_grad=True)
    loss = unlikelihood(logp)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logp.grad).all()
    cap = -math.log(1e-6)  # p clamped to 1 - 1e-6
    assert loss[0].item() == pytest.approx(cap, rel=1e-4)
    assert loss[1].item() == pytest.approx(cap, rel=1e-4)
    assert loss[2].item() == pytest.approx(cap, rel=1e-4)  # log p = -1e-7 is above the clamp too
    assert 0.0 <= loss[3].item() < 1e-20  # p = e^-50: nothing to push down
    assert logp.grad[0].item() == 0.0  # clamped: no gradient


def test_unlikelihood_gradient_matches_formula():
    logp = torch.tensor([-3.0, -0.7, -0.2], dtype=torch.float64, requires_grad=True)
    unlikelihood(logp).sum().backward()
    # d/dlogp [-log(1 - e^l)] = e^l / (1 - e^l)
    want = [math.exp(x) / (1 - math.exp(x)) for x in logp.tolist()]
    torch.testing.assert_close(logp.grad, torch.tensor(want, dtype=torch.float64))


@pytest.mark.parametrize("term_cls", [CrossEntropyTerm, UnlikelihoodTerm])
@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_reductions_against_loops(term_cls, reduction):
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(5, 9, generator=gen, dtype=torch.float64) * 4 - 0.01
    mask = torch.rand(5, 9, generator=gen) < 0.6
    mask[3] = False  # a selected sequence without scored tokens does not count
    selector = torch.tensor([True, False, True, True, True])
    term = term_cls(reduction=reduction, loss_type="ce")
    kinds = (~selector).long()  # the other rows are records of another kind
    got = term(LossInputs.of(logp, mask, kinds, ("ce", "other"))).item()
    reference = (lambda x: -x) if term_cls is CrossEntropyTerm else reference_ul
    per_token = [[reference(x) for x in row] for row in logp.tolist()]
    want = reference_reduce(per_token, mask.tolist(), selector.tolist(), reduction)
    assert got == pytest.approx(want, rel=1e-12)


def test_term_without_tokens_is_zero_and_differentiable():
    logp = torch.full((2, 4), -1.0, requires_grad=True)
    mask = torch.ones(2, 4, dtype=torch.bool)
    for reduction in ("token", "sequence"):
        inputs = LossInputs.of(logp, mask, torch.zeros(2, dtype=torch.long), ("ce",))
        value = UnlikelihoodTerm(reduction=reduction, loss_type="ul")(inputs)
        value.backward()
        assert value.item() == 0.0
        assert torch.equal(logp.grad, torch.zeros_like(logp))


def test_composition_weights_terms_by_loss_type():
    gen = torch.Generator().manual_seed(1)
    logp = -torch.rand(4, 6, generator=gen, dtype=torch.float64) * 3 - 0.05
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[:, :2] = False  # the prompt
    loss_types = ("ce", "ul")
    ids = torch.tensor([0, 1, 0, 1])
    comp = LossComposition(
        {
            "ce": CrossEntropyTerm(weight=1.0, reduction="token", loss_type="ce"),
            "ul": UnlikelihoodTerm(weight=0.5, reduction="sequence", loss_type="ul"),
        }
    )
    out = comp(LossInputs.of(logp, mask, ids, loss_types))
    rows = logp.tolist()
    ce = [-x for b in (0, 2) for x in rows[b][2:]]
    ul = [sum(reference_ul(x) for x in rows[b][2:]) / 4 for b in (1, 3)]
    want_ce, want_ul = sum(ce) / len(ce), sum(ul) / len(ul)
    assert out.terms["ce"].value.item() == pytest.approx(want_ce, rel=1e-12)
    assert out.terms["ul"].value.item() == pytest.approx(want_ul, rel=1e-12)
    assert out.terms["ce"].count.item() == 8 and out.terms["ul"].count.item() == 2
    assert out.total.item() == pytest.approx(want_ce + 0.5 * want_ul, rel=1e-12)
    assert comp.loss_types == ("ce", "ul")


def test_composition_divides_each_term_by_the_steps_count():
    """With step totals a micro-batch's term is its sum over the step's count, so the parts of a
    step add up to the step's term (checked on a step cut into two micro-batches)."""
    gen = torch.Generator().manual_seed(2)
    logp = -torch.rand(6, 7, generator=gen, dtype=torch.float64) * 3 - 0.05
    mask = torch.rand(6, 7, generator=gen) < 0.7
    mask[:, 0] = False
    ids = torch.tensor([0, 1, 0, 0, 1, 0])
    loss_types = ("ce", "ul")
    rows, masks = logp.tolist(), mask.tolist()
    ce_tokens = [-x for b in (0, 2, 3, 5) for x, m in zip(rows[b], masks[b]) if m]
    ul_means = [
        sum(reference_ul(x) for x, m in zip(rows[b], masks[b]) if m) / sum(masks[b])
        for b in (1, 4)
    ]
    totals = StepTotals(
        sequences={"ce": 4, "ul": 2}, tokens={"ce": len(ce_tokens), "ul": int(mask[[1, 4]].sum())}
    )
    comp = LossComposition(
        {
            "ce": CrossEntropyTerm(reduction="token", loss_type="ce"),
            "ul": UnlikelihoodTerm(weight=0.5, reduction="sequence", loss_type="ul"),
        }
    )
    parts = [
        comp(LossInputs.of(logp[rows_], mask[rows_], ids[rows_], loss_types), totals)
        for rows_ in (slice(0, 3), slice(3, 6))
    ]
    want = sum(ce_tokens) / len(ce_tokens) + 0.5 * sum(ul_means) / 2
    assert sum(p.total.item() for p in parts) == pytest.approx(want, rel=1e-12)
    assert sum(p.terms["ce"].value.item() for p in parts) == pytest.approx(
        sum(ce_tokens) / len(ce_tokens), rel=1e-12
    )
    # without step totals each micro-batch is its own step: its term is its own mean
    alone = comp(LossInputs.of(logp[:3], mask[:3], ids[:3], loss_types))
    assert alone.terms["ul"].value.item() == pytest.approx(ul_means[0], rel=1e-12)


def test_composition_term_for_absent_type_contributes_zero():
    logp = torch.full((2, 3), -0.5)
    comp = LossComposition({"ul": UnlikelihoodTerm(loss_type="ul")})
    out = comp(LossInputs.of(logp, torch.ones(2, 3, dtype=torch.bool), torch.tensor([0, 0]), ("ce",)))
    assert out.total.item() == 0.0 and out.terms["ul"].count.item() == 0


def test_a_new_term_is_just_a_subclass():
    class SquaredLogp(LossTerm):
        def token_loss(self, inputs):
            return inputs.logp**2

    comp = LossComposition({"sq": SquaredLogp(weight=2.0, loss_type="ce")})
    logp = torch.tensor([[0.0, -1.0, -3.0]])
    out = comp(LossInputs.of(logp, torch.tensor([[False, True, True]]), torch.tensor([0]), ("ce",)))
    assert out.total.item() == pytest.approx(2.0 * (1.0 + 9.0) / 2)


def test_a_term_reads_the_entropy_and_a_record_column():
    """Every term sees the entropy beside the log-probs and the batch's columns it names."""

    class WeightedEntropy(LossTerm):
        columns = ("weight",)

        def token_loss(self, inputs):
            return -inputs.entropy * inputs.columns["weight"][:, None]

    comp = LossComposition({"h": WeightedEntropy(reduction="token", loss_type="ce")})
    assert comp.columns == ("weight",)
    entropy = torch.tensor([[0.0, 1.0, 2.0], [0.0, 3.0, 5.0]], requires_grad=True)
    inputs = LossInputs.of(
        torch.full((2, 3), -0.5), torch.tensor([[False, True, True]] * 2), torch.tensor([0, 1]),
        ("ce", "ul"), entropy=entropy, columns={"weight": torch.tensor([0.5, 9.0])},
    )
    out = comp(inputs)
    assert out.total.item() == pytest.approx(-0.5 * (1.0 + 2.0) / 2)  # the ul row is not its kind
    out.total.backward()
    assert entropy.grad.tolist() == [[0.0, -0.25, -0.25], [0.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("sft", {"ce": (CrossEntropyTerm, 1.0, "token", "ce")}),
        ("oxa_mle", {"ce": (CrossEntropyTerm, 1.0, "token", "ce")}),
        (
            "oxa_full",
            {
                "ce": (CrossEntropyTerm, 1.0, "sequence", "ce"),
                "ul": (UnlikelihoodTerm, 1e-4, "sequence", "ul"),
            },
        ),
    ],
)
def test_loss_configs_instantiate(name, want):
    comp = instantiate(compose_option("loss", name))  # its defaults list composed
    assert isinstance(comp, LossComposition)
    got = {key: (type(t), t.weight, t.reduction, t.loss_type) for key, t in comp.terms.items()}
    assert got == want


def test_bad_term_settings_fail_clearly():
    with pytest.raises(ValueError, match="reduction='tokens'"):
        CrossEntropyTerm(reduction="tokens")
    with pytest.raises(ValueError, match="empty"):
        LossComposition({})
    with pytest.raises(TypeError, match="loss.terms.ce"):
        LossComposition({"ce": {"weight": 1.0}})
