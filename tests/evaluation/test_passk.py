import itertools
import math
from fractions import Fraction

import pytest

from reasonft.evaluation.passk import (
    counts_by_prompt,
    counts_from_correct,
    pass_at_k,
    pass_at_k_table,
)


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Share of all k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(any(i < c for i in subset) for subset in subsets)
    return Fraction(hits, len(subsets))


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


@pytest.mark.parametrize("n", range(1, 11))
def test_matches_enumeration_of_all_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            expected = brute_force_pass_at_k(n, c, k)
            assert pass_at_k(n, c, k) == pytest.approx(float(expected), rel=1e-13, abs=1e-15), (
                n,
                c,
                k,
            )


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [
        (2000, 1, 1),
        (2000, 1, 10),
        (2000, 3, 1000),
        (2000, 1000, 1),
        (2000, 1990, 5),
        (2000, 17, 128),
        (1024, 1, 1023),
    ],
)
def test_large_n_is_finite_and_exact(n, c, k):
    value = pass_at_k(n, c, k)
    assert math.isfinite(value)
    assert value == pytest.approx(float(exact_pass_at_k(n, c, k)), rel=1e-12)


def test_special_cases():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 6, 5) == 1.0  # n - c < k: every draw of 5 holds a correct one
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 5, 5) == 1.0


@pytest.mark.parametrize(
    ("n", "c", "k", "error"),
    [
        (5, 2, 6, ValueError),
        (5, 6, 1, ValueError),
        (-1, 0, 1, ValueError),
        (5, -1, 1, ValueError),
        (5, 2, 0, ValueError),
        (5, 2, 1.5, TypeError),
        (5, True, 1, TypeError),
    ],
)
def test_rejects_impossible_arguments(n, c, k, error):
    with pytest.raises(error):
        pass_at_k(n, c, k)


def test_table_from_flags_and_counts_agree():
    flags = [[True, False, False, False], [False] * 4, [True, True, False, True]]
    from_flags = pass_at_k_table([2, 4], correct=flags)
    from_counts = pass_at_k_table([2, 4], counts=[(4, 1), (4, 0), (4, 3)])
    assert from_flags == from_counts
    all_samples = [x for row in flags for x in row]
    assert from_flags["pass@1"] == pytest.approx(sum(all_samples) / len(all_samples))
    # pass@2 per problem by enumeration of pairs, then the mean
    expected = [brute_force_pass_at_k(4, c, 2) for c in (1, 0, 3)]
    assert from_flags["pass@2"] == pytest.approx(float(sum(expected) / 3))
    assert from_flags["pass@4"] == pytest.approx(2 / 3)
    assert from_flags["any_correct"] == pytest.approx(2 / 3)
    assert from_flags["n_problems"] == 3
    assert from_flags["n_samples"] == 12


def test_table_errors_name_the_problem():
    with pytest.raises(ValueError, match="problem 1 has only 2 samples"):
        pass_at_k_table([4], counts=[(4, 1), (2, 0)])
    with pytest.raises(ValueError, match="exactly one"):
        pass_at_k_table([1])
    with pytest.raises(ValueError, match="no problems"):
        pass_at_k_table([1], counts=[])


def test_counts_by_prompt_and_flags():
    records = [
        {"prompt_id": "a", "correct": True},
        {"prompt_id": "a", "correct": False},
        {"prompt_id": "b", "correct": False},
    ]
    assert counts_by_prompt(records) == {"a": (2, 1), "b": (1, 0)}
    assert counts_from_correct([[1, 0, 1], []]) == [(3, 2), (0, 0)]
