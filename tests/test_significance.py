"""Permutation tests (common/significance.py) at their edges and against exact answers."""
import itertools
import math

import pytest
import torch

from common.significance import between_groups, difference, permutation_p


def test_between_group_sum_of_squares_matches_its_definition():
    values = torch.tensor([1.0, 2.0, 4.0, 7.0, 11.0], dtype=torch.float64)
    labels = torch.tensor([[0, 0, 1, 1, 1], [1, 0, 1, 0, 1]])
    got = between_groups(values, labels, 2)
    for row, label in zip(got, labels):
        grand = values.mean()
        want = sum(len(g) * (g.mean() - grand) ** 2 for g in (values[label == 0], values[label == 1]))
        assert row.item() == pytest.approx(want.item(), rel=1e-12)


def test_separated_groups_get_the_exact_permutation_p_value():
    # 2 groups of 3: of the 20 labellings only the observed one and its mirror are as extreme, p = 2 / 20
    a, b = [0.0, 0.1, 0.2], [10.0, 10.1, 10.2]
    assert permutation_p([a, b]) == pytest.approx(0.1, abs=0.015)
    # with 8 runs a side no shuffle of 9,999 reaches the observed split: the smallest p-value there is
    assert permutation_p([[float(i) for i in range(8)], [100.0 + i for i in range(8)]]) == 1 / 10000


def test_the_p_value_agrees_with_full_enumeration_on_overlapping_groups():
    groups = [[0.3, 1.0, 0.2], [0.9, 1.4, 0.8], [0.5, 1.6]]
    values = torch.tensor([v for g in groups for v in g], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    observed = between_groups(values, labels.unsqueeze(0), 3)[0]
    every = torch.stack([labels[list(p)] for p in itertools.permutations(range(8))])  # all 40,320 orderings
    exact = (between_groups(values, every, 3) >= observed - 1e-12).double().mean().item()
    assert permutation_p(groups) == pytest.approx(exact, abs=0.015)


def test_identical_values_give_p_one_and_nothing_to_compare_gives_nan():
    assert permutation_p([[99.5] * 3, [99.5] * 3, [99.5] * 4]) == 1.0
    assert math.isnan(permutation_p([[1.0, 2.0]]))
    assert math.isnan(permutation_p([[1.0, 2.0], []]))
    assert all(math.isnan(v) for v in difference([], [1.0]))


def test_difference_is_signed_and_seeded():
    gain, p = difference([99.6, 99.7, 99.65], [99.5, 99.55, 99.45])
    assert gain == pytest.approx(0.15) and 0 < p < 0.2
    assert difference([99.5, 99.55, 99.45], [99.6, 99.7, 99.65])[0] == pytest.approx(-0.15)
    assert difference([1.0, 2.0, 3.0], [2.0, 3.0, 4.0], seed=5) == difference([1.0, 2.0, 3.0], [2.0, 3.0, 4.0], seed=5)
