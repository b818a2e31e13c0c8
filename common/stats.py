"""Every statistic the summaries and tables use: mean and spread, the standard error and 95% interval of a
difference of means, permutation tests, Holm's correction for a family of tests, and rank correlation.

Permutation tests ask whether groups of runs (one group per setting, each run one seed) differ by more than
the seed-to-seed spread would give by chance. No normal distribution is assumed. The statistic is the
between-group sum of squares (with two groups, the two-sided test of their difference of means).
- Exact where the distinct labellings of the runs into groups of the observed sizes number at most
  EXACT_LIMIT: all are enumerated and p is the share at least as extreme as the observed one, which is
  among them. 3 runs against 3 have 20 labellings (the smallest p is 2/20 = 0.1), 5 against 5 have 252
  (2/252 = 0.008).
- Beyond that, DRAWS random shuffles from a fixed seed, the observed labelling counted as one of them:
  p = (hits + 1) / (DRAWS + 1), never 0.
Safeguards: a labelling within rounding of the observed statistic counts as a hit, so identical values give
p = 1; fewer than two non-empty groups, or one value in every group (no spread within a group to compare
with), give NaN. The same inputs always give the same p.
"""
from __future__ import annotations

import itertools
import math

import torch

DRAWS = 9999  # random shuffles where the labellings are too many to enumerate
EXACT_LIMIT = 100_000  # enumerate every distinct labelling up to this many


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN where undefined)."""
    mean = sum(values) / len(values) if values else math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
    return mean, std


def standard_error(a: list[float], b: list[float]) -> float:
    """Standard error of mean(a) - mean(b) from the two samples' spreads (NaN with fewer than 2 of either)."""
    return math.sqrt(mean_std(a)[1] ** 2 / len(a) + mean_std(b)[1] ** 2 / len(b)) if min(len(a), len(b)) > 1 else math.nan


def between_groups(values: torch.Tensor, labels: torch.Tensor, groups: int) -> torch.Tensor:
    """Between-group sum of squares, sum_i S_i^2 / n_i - N * mean^2, for each labelling.

    values: (N,) float64; labels: (P, N) group index of each value in each of P labellings -> (P,).
    Every labelling must have the same non-empty group sizes (true of the shuffles of one labelling)."""
    counts = torch.bincount(labels[0], minlength=groups).to(torch.float64)  # (groups,): a shuffle keeps them
    sums = torch.zeros(labels.shape[0], groups, dtype=torch.float64)
    sums.scatter_add_(1, labels, values.expand(labels.shape[0], -1))
    return (sums ** 2 / counts).sum(1) - len(values) * values.mean() ** 2


def labelling_count(sizes: list[int]) -> int:
    """Distinct labellings of sum(sizes) runs into groups of these sizes: the multinomial N! / prod(n_i!)."""
    count, left = 1, sum(sizes)
    for size in sizes:
        count *= math.comb(left, size)
        left -= size
    return count


def all_labellings(sizes: list[int]) -> torch.Tensor:
    """Every distinct labelling of sum(sizes) positions into groups of these sizes: (count, N) group indices."""
    def fill(free: tuple[int, ...], group: int):
        if group == len(sizes) - 1:
            yield {i: group for i in free}
            return
        for chosen in itertools.combinations(free, sizes[group]):
            rest = tuple(i for i in free if i not in chosen)
            for tail in fill(rest, group + 1):
                yield {**{i: group for i in chosen}, **tail}
    n = sum(sizes)
    return torch.tensor([[labels[i] for i in range(n)] for labels in fill(tuple(range(n)), 0)], dtype=torch.long)


def permutation_method(sizes: list[int]) -> str:
    """How `permutation_p` tests groups of these sizes: 'exact (20 labellings)' or '9999 random shuffles'."""
    count = labelling_count([s for s in sizes if s])
    return f"exact ({count} labellings)" if count <= EXACT_LIMIT else f"{DRAWS} random shuffles"


def permutation_p(groups: list[list[float]], draws: int = DRAWS, seed: int = 0) -> float:
    """p-value of "all groups come from one distribution" against "their means differ" (one-way: the
    between-group sum of squares), exact where the labellings are few enough (module docstring)."""
    groups = [list(g) for g in groups if len(g)]
    if len(groups) < 2 or max(map(len, groups)) < 2:  # one run per group: every labelling is as extreme
        return math.nan
    sizes = [len(g) for g in groups]
    values = torch.tensor([v for g in groups for v in g], dtype=torch.float64)  # (N,)
    labels = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor(sizes))  # (N,)
    observed = between_groups(values, labels.unsqueeze(0), len(groups))[0]
    rounding = 1e-9 * ((values - values.mean()) ** 2).sum()  # ties within float error count as hits
    if labelling_count(sizes) <= EXACT_LIMIT:
        every = all_labellings(sizes)  # the observed labelling is one of them
        return (between_groups(values, every, len(groups)) >= observed - rounding).double().mean().item()
    generator = torch.Generator().manual_seed(seed)
    shuffled = labels[torch.rand(draws, len(values), generator=generator).argsort(dim=1)]  # (draws, N)
    hits = (between_groups(values, shuffled, len(groups)) >= observed - rounding).sum().item()
    return (hits + 1) / (draws + 1)


def difference(a: list[float], b: list[float], draws: int = DRAWS, seed: int = 0) -> tuple[float, float]:
    """mean(a) - mean(b) and its two-sided permutation p-value (NaN where either is empty)."""
    if not a or not b:
        return math.nan, math.nan
    return sum(a) / len(a) - sum(b) / len(b), permutation_p([a, b], draws, seed)


def holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values, in the given order: the k-th smallest of m is
    multiplied by (m - k + 1), capped at 1 and made non-decreasing in that order. Rejecting where the adjusted
    p is below alpha keeps the chance of any false rejection in the family below alpha. NaN entries (no test)
    stay NaN and do not count in m."""
    found = sorted((p, i) for i, p in enumerate(ps) if not math.isnan(p))
    adjusted, running = [math.nan] * len(ps), 0.0
    for k, (p, i) in enumerate(found):
        running = max(running, min(1.0, (len(found) - k) * p))
        adjusted[i] = running
    return adjusted


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
    df = min(len(a), len(b)) - 1
    half = (T975[df - 1] if df <= len(T975) else 1.96) * standard_error(a, b)
    return diff, diff - half, diff + half


def ranks(values: list[float]) -> list[float]:
    """1 for the largest value; ties share the mean of their ranks."""
    order = sorted(values, reverse=True)
    return [sum(i + 1 for i, o in enumerate(order) if o == v) / order.count(v) for v in values]


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation of two equally long lists (NaN below 3 entries or where one list is constant)."""
    if len(a) < 3:
        return math.nan
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    norm = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / norm if norm else math.nan
