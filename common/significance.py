"""Permutation tests for the sweep's verdicts: do groups of runs (one group per margin setting, each run
one seed) differ by more than the seed-to-seed spread would give by chance?

No normal distribution is assumed: the labelling of runs into groups is shuffled at random `draws` times,
and the p-value is the share of shuffles whose groups lie at least as far apart as the observed ones.
Safeguards: the observed labelling counts as one of the shuffles, ((hits + 1) / (draws + 1)), so a
p-value is never 0; a shuffle within rounding of the observed statistic counts as a hit, so identical
values give p = 1; fewer than two non-empty groups, or one value in every group (no spread within a group
to compare with), give NaN. Seeded: the same
inputs always give the same p-value."""
from __future__ import annotations

import math

import torch

DRAWS = 9999


def between_groups(values: torch.Tensor, labels: torch.Tensor, groups: int) -> torch.Tensor:
    """Between-group sum of squares, sum_i S_i^2 / n_i - N * mean^2, for each labelling.

    values: (N,) float64; labels: (P, N) group index of each value in each of P labellings -> (P,).
    Every labelling must have the same non-empty group sizes (true of the shuffles of one labelling)."""
    counts = torch.bincount(labels[0], minlength=groups).to(torch.float64)  # (groups,): a shuffle keeps them
    sums = torch.zeros(labels.shape[0], groups, dtype=torch.float64)
    sums.scatter_add_(1, labels, values.expand(labels.shape[0], -1))
    return (sums ** 2 / counts).sum(1) - len(values) * values.mean() ** 2


def permutation_p(groups: list[list[float]], draws: int = DRAWS, seed: int = 0) -> float:
    """p-value of "all groups come from one distribution" against "their means differ" (one-way: the
    between-group sum of squares). With two groups this is the two-sided test of their difference of means."""
    groups = [list(g) for g in groups if len(g)]
    if len(groups) < 2 or max(map(len, groups)) < 2:  # one run per group: every shuffle is as extreme, p says nothing
        return math.nan
    values = torch.tensor([v for g in groups for v in g], dtype=torch.float64)  # (N,)
    labels = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor([len(g) for g in groups]))  # (N,)
    generator = torch.Generator().manual_seed(seed)
    shuffled = labels[torch.rand(draws, len(values), generator=generator).argsort(dim=1)]  # (draws, N)
    observed = between_groups(values, labels.unsqueeze(0), len(groups))[0]
    rounding = 1e-9 * ((values - values.mean()) ** 2).sum()  # ties within float error count as hits
    hits = (between_groups(values, shuffled, len(groups)) >= observed - rounding).sum().item()
    return (hits + 1) / (draws + 1)


def difference(a: list[float], b: list[float], draws: int = DRAWS, seed: int = 0) -> tuple[float, float]:
    """mean(a) - mean(b) and its two-sided permutation p-value (NaN where either is empty)."""
    if not a or not b:
        return math.nan, math.nan
    return sum(a) / len(a) - sum(b) / len(b), permutation_p([a, b], draws, seed)


# Two-sided 95% quantiles of Student's t, t_{0.975}(df), for df = 1 ... 30 (beyond 30 the normal's 1.96 is
# within 2.5% of them).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def difference_interval(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its 95% interval (low, high): the difference ± t_{0.975}(df) x its standard error
    sqrt(var_a / n_a + var_b / n_b), with the conservative df = min(n_a, n_b) - 1 (Welch's df is at least
    that), so with 3 runs a side t = 4.303. Safeguard: NaN bounds with fewer than 2 runs on either side
    (no spread to measure)."""
    diff = sum(a) / len(a) - sum(b) / len(b) if a and b else math.nan
    if min(len(a), len(b)) < 2:
        return diff, math.nan, math.nan
    var = lambda x: sum((v - sum(x) / len(x)) ** 2 for v in x) / (len(x) - 1)  # noqa: E731
    df = min(len(a), len(b)) - 1
    half = (T975[df - 1] if df <= len(T975) else 1.96) * math.sqrt(var(a) / len(a) + var(b) / len(b))
    return diff, diff - half, diff + half
