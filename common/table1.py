"""Does the margin's size matter? The source paper's Table 1 claims checked on a sweep's rows (do the ArcFace
m2 cells differ beyond their seeds, is m2 = 0.5 better than its neighbours, is the combined margin better,
are the paper's low cells low here), and the quadratic fit over the margins that recommends a setting,
with its bootstrap interval and a null of runs shuffled across margins."""
from __future__ import annotations

import math
import statistics

import torch

from .grouping import COLLAPSE_BELOW, described, format_p
from .rows import SETTING_KEYS, accuracy_of, is_plain, setting, table1
from .stats import difference, mean_std, permutation_p


def quadratic_features(v: torch.Tensor, curved: tuple[bool, ...] | None = None) -> torch.Tensor:
    """(N, k) margins -> (N, features): constant, linear, cross terms, and the square of each margin whose
    `curved` entry is True (default: all). A margin swept at only two values has no square term: there
    its square is a linear function of it, and a fit with both is underdetermined."""
    k = v.shape[1]
    curved = curved if curved is not None else (True,) * k
    cols = [torch.ones(len(v), dtype=torch.float64), *v.t()]
    cols += [v[:, a] * v[:, b] for a in range(k) for b in range(a, k) if a != b or curved[a]]
    return torch.stack(cols, 1)


def varying_margins(points: list[tuple[tuple[float, ...], float]]) -> list[int]:
    """Indices of the margins that take more than one value among `points` ((margins, accuracy) pairs)."""
    return [i for i in range(len(points[0][0])) if len({p[0][i] for p in points}) > 1] if points else []


def fit_quadratic(points: list[tuple[tuple[float, ...], float]], bootstrap: int = 200, seed: int = 0,
                  at: tuple[float, ...] | None = None) -> dict | None:
    """Least-squares quadratic (with cross terms) of accuracy over the margins that vary, its maximiser on
    a grid spanning the sweep, and the bootstrap (over runs) standard deviation of that maximiser. With
    `at` (all margins of a point, for example the loss's default) also the predicted gain of the maximum
    over the fit's value there, that gain's bootstrap standard deviation (a gain within about one of those
    is not a recommendation the runs support). Also the fit's R^2 and `surface_p`, the share of fits to the
    runs with their accuracies shuffled across margins (`bootstrap` of them, seeded) that explain as much:
    a fitted maximum lies above its surface's other points even on pure noise, so a gain means nothing
    where the surface is no better than noise. Only margins swept at three or more values get a
    square term (`quadratic_features`); None with fewer than 3k + 1 runs for k varying margins."""
    names = varying_margins(points)
    curved = tuple(len({p[0][i] for p in points}) >= 3 for i in names)
    if not names or len(points) < 3 * len(names) + 1:
        return None
    x = torch.tensor([[p[0][i] for i in names] for p in points], dtype=torch.float64)
    y = torch.tensor([p[1] for p in points], dtype=torch.float64)
    axes = [torch.linspace(x[:, j].min().item(), x[:, j].max().item(), 41, dtype=torch.float64) for j in range(len(names))]
    grid = torch.cartesian_prod(*axes).view(-1, len(names))

    point = None if at is None else quadratic_features(torch.tensor([[at[i] for i in names]], dtype=torch.float64), curved)

    def best(xs, ys):
        coef = torch.linalg.lstsq(quadratic_features(xs, curved), ys.view(-1, 1)).solution
        predicted = (quadratic_features(grid, curved) @ coef).squeeze(1)
        gain = math.nan if point is None else predicted.max().item() - (point @ coef).item()
        return grid[predicted.argmax()], predicted.max().item(), coef, gain

    where, value, coef, gain = best(x, y)
    generator = torch.Generator().manual_seed(seed)
    draws = [best(x[i], y[i]) for i in (torch.randint(0, len(y), (len(y),), generator=generator) for _ in range(bootstrap))]
    spread = torch.stack([d[0] for d in draws]).std(dim=0)
    gain_std = torch.tensor([d[3] for d in draws], dtype=torch.float64).std().item()
    # A fitted maximum lies above the surface's other points even when the margins do nothing, so the surface
    # itself is tested: does it explain more of the runs' variance (R^2) than fits to shuffled runs do?
    features = quadratic_features(x, curved)

    def explained(ys):  # R^2; 0 where the runs do not vary at all
        residual = ys.view(-1, 1) - features @ torch.linalg.lstsq(features, ys.view(-1, 1)).solution
        total = ((ys - ys.mean()) ** 2).sum().item()
        return 1 - (residual ** 2).sum().item() / total if total > 0 else 0.0

    r2 = explained(y)
    null = [explained(y[torch.randperm(len(y), generator=generator)]) for _ in range(bootstrap)]
    return {"varying": names, "curved": curved, "best": where.tolist(), "best_std": spread.tolist(),
            "predicted_acc": value, "coefficients": coef.squeeze(1).tolist(), "gain": gain, "gain_std": gain_std,
            "r2": r2, "surface_p": (1 + sum(n >= r2 - 1e-12 for n in null)) / (1 + len(null))}


def reference_margins(default: tuple, points: list[tuple[tuple[float, ...], float]], varying: list[int]) -> tuple:
    """Where the regression's gain is measured from: the loss's default margins when the sweep spans them,
    else the swept setting nearest to them (a quadratic's value outside its data is extrapolation, and
    Table 1's combined grid, m2 0.40-0.44, does not reach the combined default m2 = 0.3)."""
    inside = all(min(p[0][i] for p in points) <= default[i] <= max(p[0][i] for p in points) for i in varying)
    if inside:
        return default
    return min({p[0] for p in points}, key=lambda m: sum((m[i] - default[i]) ** 2 for i in varying))


def recommend(rows: list[dict], loss: str, collapse_below: float = COLLAPSE_BELOW) -> str | None:
    """One line: the fitted best margins for `loss`, their bootstrap spread and the predicted gain over the
    loss's default (or the swept setting nearest to it, `reference_margins`), weighed against the gain's own
    bootstrap spread, and the fitted surface against fits to shuffled runs (`fit_quadratic`'s surface_p).
    Collapsed runs (below `collapse_below` %) are left out of the fit and counted: one run at 50% would
    bend a quadratic fitted to 0.1-point differences, as it does the means."""
    runs = [(tuple(float(r[k]) for k in SETTING_KEYS[1:]), 100 * a) for r in rows
            if r["loss"] == loss and is_plain(r) and (a := accuracy_of(r)) is not None]
    points = [p for p in runs if p[1] >= collapse_below]
    default = setting(loss)[1:]
    varying = varying_margins(points)
    if not varying:
        return None
    at = reference_margins(default, points, varying)
    fit = fit_quadratic(points, at=at)
    if fit is None:
        return None
    names = [SETTING_KEYS[1 + i] for i in varying]
    at_reference = fit["predicted_acc"] - fit["gain"]  # the fit's value at the reference margins
    best = ", ".join(f"{n} = {b:.3f} ± {e:.3f}" for n, b, e in zip(names, fit["best"], fit["best_std"]))
    margins = lambda m: ", ".join(f"{n} = {m[i]:g}" for n, i in zip(names, varying))  # noqa: E731
    where = (f"at the default {margins(default)}" if at == default else
             f"the default {margins(default)} lies outside the swept range; at the nearest swept setting {margins(at)}")
    left_out = len(runs) - len(points)
    return (f"{loss}: quadratic fit over {len(points)} runs{f' ({left_out} collapsed left out)' if left_out else ''} "
            f"recommends {best} (predicted {fit['predicted_acc']:.2f}%"
            f"{', above 100%: the quadratic does not fit' if fit['predicted_acc'] > 100 else ''}); "
            f"{where} it predicts {at_reference:.2f}% (gain {fit['gain']:+.2f} ± {fit['gain_std']:.2f} points, bootstrap std"
            f"{'' if fit['gain'] > fit['gain_std'] else ': within it, no evidence for the recommendation'}); "
            f"the fit explains R^2 = {fit['r2']:.2f} of the runs' variance, fits to the runs shuffled across margins "
            f"as much: p = {fit['surface_p']:.3f}{'' if fit['surface_p'] < 0.05 else ', no evidence that the margins matter'}")


def table1_cells(rows: list[dict], loss: str) -> dict[tuple, list[float]]:
    """{(m2, m3): test accuracies in %} of the finished MNIST runs of `loss` on the plain training set at
    Table 1's s = 30 and m1 = 1, one entry per run (seed)."""
    cells: dict[tuple, list[float]] = {}
    for row in rows:
        if (row["loss"] == loss and row.get("dataset", "mnist") == "mnist" and is_plain(row)
                and float(row["s"]) == 30 and float(row["m1"]) == 1 and (a := accuracy_of(row)) is not None):
            cells.setdefault((float(row["m2"]), float(row["m3"])), []).append(100 * a)
    return cells


def pooled(cells: dict[tuple, list[float]]) -> list[float]:
    return [a for runs in cells.values() for a in runs]


def arcface_margin_lines(arc: dict[tuple, list[float]], runs: int, collapsed: int) -> list[str]:
    """Do the ArcFace m2 cells differ, and is m2 = 0.5 better than its neighbours; `arc` holds the runs that
    did not collapse, `runs` and `collapsed` count all of them."""
    ranked = sorted((k for k in arc if arc[k]), key=lambda k: -mean_std(arc[k])[0])
    if len(ranked) < 2:
        return []
    head = (f"ArcFace, {len(arc)} m2 cells, {runs} runs ({collapsed} collapsed, left out below): best mean at "
            f"m2 = {ranked[0][0]:g} ({described(arc[ranked[0]])})")
    if (0.5, 0.0) in ranked:
        head += f"; m2 = 0.5 {described(arc[(0.5, 0.0)])}, rank {ranked.index((0.5, 0.0)) + 1} of {len(ranked)}"
    lines = [f"{head}; cells differ beyond their seeds: permutation p = {format_p(permutation_p(list(arc.values())))}"]
    if (0.5, 0.0) in ranked:
        order = sorted(ranked)
        at = order.index((0.5, 0.0))
        near = [k for k in order[max(0, at - 1):at + 2] if k != (0.5, 0.0)]
        gain, p = difference(arc[(0.5, 0.0)], pooled({k: arc[k] for k in near}))
        lines.append(f"ArcFace m2 = 0.5 against its neighbours m2 = {', '.join(f'{k[0]:g}' for k in near)} "
                     f"(runs pooled): {gain:+.2f} points, p = {format_p(p)}")
    return lines


def low_cell_line(loss: str, cell: tuple, source: float, median: float, runs: list[float],
                  others: list[float], collapse_below: float) -> str:
    """Is one of the paper's low cells low here: its runs that did not collapse against `others` (those of
    the loss's other cells), and its collapsed runs counted."""
    kept = [a for a in runs if a >= collapse_below]
    gain, p = difference(kept, others)
    low = len(runs) - len(kept)
    verdict = ("reproduced: every run collapsed" if not kept else "reproduced" if gain < 0 and p < 0.05
               else f"not reproduced, but {low} of {len(runs)} runs collapsed" if low else "not reproduced")
    name = f"m2 = {cell[0]:g}" + (f", m3 = {cell[1]:g}" if loss == "combined" else "")
    return (f"paper's low cell {loss} {name} (paper {source:.2f}, its median {median:.2f}): {described(runs)} "
            f"over {len(runs)} runs, lowest {min(runs):.2f}, {low} collapsed; without those {gain:+.2f} points "
            f"against the other {loss} cells, p = {format_p(p)}: {verdict}")


def table1_checks(rows: list[dict], collapse_below: float = COLLAPSE_BELOW) -> list[str]:
    """The source paper's claims about its Table 1, tested on a sweep's runs (`table1_cells`): do the ArcFace
    m2 cells differ beyond their seeds, is m2 = 0.5 better than its neighbours, is the combined margin
    (m3 > 0) better than ArcFace, and are the paper's low cells (more than 1 point below the median of its
    table) low here too, or low only through collapsed runs. Means are compared over the runs that did not
    collapse (one collapse would outweigh every other difference), and the collapsed runs are counted
    beside them. Permutation p-values (common/significance.py), each uncorrected for the number of tests
    made; a question the runs do not cover (fewer than two cells, no runs at m2 = 0.5) has no line."""
    cells = {"arcface": {k: v for k, v in table1_cells(rows, "arcface").items() if k[1] == 0},
             "combined": {k: v for k, v in table1_cells(rows, "combined").items() if k[1] > 0}}
    kept = {loss: {k: [a for a in v if a >= collapse_below] for k, v in c.items()} for loss, c in cells.items()}
    runs = {loss: len(pooled(cells[loss])) for loss in cells}
    collapsed = {loss: runs[loss] - len(pooled(kept[loss])) for loss in cells}
    lines = arcface_margin_lines(kept["arcface"], runs["arcface"], collapsed["arcface"])
    if pooled(kept["arcface"]) and pooled(kept["combined"]):
        gain, p = difference(pooled(kept["combined"]), pooled(kept["arcface"]))
        count = len(cells["combined"])
        lines.append(f"combined margin ({count} cell{'s' * (count != 1)} with m3 > 0, {runs['combined']} runs, "
                     f"{collapsed['combined']} collapsed) against ArcFace ({len(cells['arcface'])} cells, "
                     f"{runs['arcface']} runs, {collapsed['arcface']} collapsed), over the runs that did not "
                     f"collapse: {gain:+.2f} points, p = {format_p(p)}")
    median = statistics.median(table1().values())
    for (loss, _, _, m2, m3), source in table1().items():
        if source < median - 1 and (m2, m3) in cells[loss] and len(cells[loss]) >= 2:
            others = pooled({k: v for k, v in kept[loss].items() if k != (m2, m3)})
            lines.append(low_cell_line(loss, (m2, m3), source, median, cells[loss][(m2, m3)], others, collapse_below))
    return lines
