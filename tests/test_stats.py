"""The statistics of common/stats.py at their edges and against answers worked by hand."""
import itertools
import math

import pytest
import torch

from common.stats import (all_labellings, between_groups, difference, holm, labelling_count, permutation_method,
                          permutation_p)


def test_between_group_sum_of_squares_matches_its_definition():
    values = torch.tensor([1.0, 2.0, 4.0, 7.0, 11.0], dtype=torch.float64)
    labels = torch.tensor([[0, 0, 1, 1, 1], [1, 0, 1, 0, 1]])
    got = between_groups(values, labels, 2)
    for row, label in zip(got, labels):
        grand = values.mean()
        want = sum(len(g) * (g.mean() - grand) ** 2 for g in (values[label == 0], values[label == 1]))
        assert row.item() == pytest.approx(want.item(), rel=1e-12)


def test_three_runs_against_three_have_twenty_labellings_and_a_floor_of_one_tenth():
    # separated groups: of the 20 labellings only the observed one and its mirror are as extreme, p = 2 / 20
    assert labelling_count([3, 3]) == 20 and permutation_method([3, 3]) == "exact (20 labellings)"
    assert permutation_p([[0.0, 0.1, 0.2], [10.0, 10.1, 10.2]]) == 0.1
    assert labelling_count([5, 5]) == 252
    assert permutation_p([[0.0, 0.1, 0.2, 0.3, 0.4], [10.0, 10.1, 10.2, 10.3, 10.4]]) == pytest.approx(2 / 252)


def test_the_exact_p_matches_a_hand_enumeration_of_the_twenty_splits():
    a, b = [1.0, 2.0, 4.0], [3.0, 5.0, 6.0]
    values = a + b
    observed = abs(sum(a) / 3 - sum(b) / 3)
    # by hand: every choice of 3 of the 6 values as the first group, the difference of means as extreme or more
    splits = list(itertools.combinations(range(6), 3))
    extreme = 0
    for chosen in splits:
        first = [values[i] for i in chosen]
        second = [values[i] for i in range(6) if i not in chosen]
        extreme += abs(sum(first) / 3 - sum(second) / 3) >= observed - 1e-12
    assert len(splits) == 20 and permutation_p([a, b]) == pytest.approx(extreme / 20, abs=1e-12)
    # by hand: first-group sums 6 ({1,2,3}) and 7 ({1,2,4}) and their mirrors reach |diff| 7/3: 4 of 20
    assert extreme == 4 and permutation_p([a, b]) == 0.2


def test_every_labelling_is_listed_once():
    every = all_labellings([2, 1, 2])
    assert every.shape == (labelling_count([2, 1, 2]), 5) == (30, 5)
    assert len({tuple(row.tolist()) for row in every}) == 30
    assert all(sorted(row.tolist()) == [0, 0, 1, 2, 2] for row in every)


def test_too_many_labellings_fall_back_to_stated_random_shuffles():
    sizes = [8, 8]  # 12,870 labellings: still exact; 20 groups of 3 are not
    assert permutation_method(sizes) == "exact (12870 labellings)"
    assert permutation_method([3] * 20) == "9999 random shuffles"
    groups = [[float(i) + 0.1 * j for j in range(3)] for i in range(20)]
    assert permutation_p(groups) == 1 / 10000  # no shuffle reaches groups this far apart: the floor


def test_holm_matches_a_worked_example():
    # p = (0.01, 0.04, 0.03, 0.005), m = 4. Sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04,
    # raised to 0.06 to keep the order. Back in the given order:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    got = holm([0.02, math.nan, 0.04])  # NaN is no test: m = 2
    assert got[0] == pytest.approx(0.04) and math.isnan(got[1]) and got[2] == pytest.approx(0.04)
    assert holm([]) == []


def test_the_p_value_agrees_with_full_enumeration_on_overlapping_groups():
    groups = [[0.3, 1.0, 0.2], [0.9, 1.4, 0.8], [0.5, 1.6]]
    values = torch.tensor([v for g in groups for v in g], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    observed = between_groups(values, labels.unsqueeze(0), 3)[0]
    every = torch.stack([labels[list(p)] for p in itertools.permutations(range(8))])  # all 40,320 orderings
    exact = (between_groups(values, every, 3) >= observed - 1e-12).double().mean().item()
    assert permutation_p(groups) == pytest.approx(exact, abs=1e-12)  # 8! / (3! 3! 2!) = 560 labellings: exact


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
