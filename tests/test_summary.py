"""What a sweep's rows say (common/rows.py, summary.py, plots.py): Table 1, summaries, the comparison table, the
quadratic fit."""
import math
import re

import pytest

import sweep_margins
from common import comparisons, grouping, merge, plots, rows as row_keys, stats, summary as summaries, table1
from common.results import read_rows, write_csv
from common.summary import summarize
from helpers import one_line_exit_2

PLAIN = {"dataset": "mnist", "imbalance": 1.0, "holdout_classes": 0, "corruptions": False}  # columns every row has


def synthetic_rows(best_m2=0.47, best_m3=0.27):
    """Accuracy a known concave quadratic of the margins, +-0.05 by seed, and one diverged run."""
    rows = []
    for m2 in (0.40, 0.42, 0.44, 0.46, 0.48, 0.50, 0.52):
        for seed in (0, 1):
            acc = 99.0 - 40 * (m2 - best_m2) ** 2 + (0.05 if seed else -0.05)
            rows.append({"loss": "arcface", "s": 30, "m1": 1, "m2": m2, "m3": 0, **PLAIN, "seed": seed, "test_acc": acc / 100})
    for m2 in (0.40, 0.42, 0.44):
        for m3 in (0.20, 0.25, 0.30, 0.35):
            acc = 99.0 - 40 * (m2 - 0.42) ** 2 - 30 * (m3 - best_m3) ** 2
            rows.append({"loss": "combined", "s": 30, "m1": 1, "m2": m2, "m3": m3, **PLAIN, "seed": 0, "test_acc": acc / 100})
    rows.append({"loss": "combined", "s": 30, "m1": 1, "m2": 0.41, "m3": 0.2, **PLAIN, "seed": 0, "test_acc": "", "diverged": 1})
    return rows


def recommended(line, name):
    """The value that a `recommend` line gives for margin `name`."""
    return float(re.search(rf"recommends .*?{name} = ([0-9.]+)", line).group(1))


def test_table1_grid_is_exactly_the_papers_40_settings():
    grid = row_keys.table1_grid()
    assert len(grid) == 40 and len(set(grid)) == 40
    arcface, combined = grid[:20], grid[20:]
    assert [g[3] for g in arcface] == [round(0.40 + 0.01 * i, 2) for i in range(20)]
    assert all(g[0] == "arcface" and g[1:3] == (30.0, 1.0) and g[4] == 0.0 for g in arcface)
    assert [(g[3], g[4]) for g in combined] == [(m2, m3) for m3 in (0.20, 0.25, 0.30, 0.35)
                                               for m2 in (0.40, 0.41, 0.42, 0.43, 0.44)]
    assert all(g[0] == "combined" and g[2] == 1.0 for g in combined)
    assert row_keys.source_value(arcface[10]) == 98.93 and row_keys.source_value(combined[1]) == 95.93


def test_summary_statistics_and_markdown_on_a_synthetic_csv(tmp_path, capsys):
    path = str(tmp_path / "runs.csv")
    write_csv(path, synthetic_rows())
    sweep_margins.main(["--summarize", path, "--out", path])
    summary = {(r["loss"], float(r["m2"]), float(r["m3"])): r for r in read_rows(str(tmp_path / "runs_summary.csv"))}
    cell = summary[("arcface", 0.46, 0.0)]
    assert float(cell["mean_acc"]) == pytest.approx(99.0 - 40 * 0.01 ** 2) and cell["runs"] == "2"
    assert float(cell["std_acc"]) == pytest.approx(math.sqrt(2 * 0.05 ** 2))
    assert summary[("combined", 0.41, 0.2)]["diverged"] == "1" and summary[("combined", 0.41, 0.2)]["runs"] == "0"
    assert summary[("arcface", 0.5, 0.0)]["source_acc"] == "98.93"
    markdown = (tmp_path / "runs_summary.md").read_text()
    assert "| runs | collapsed (< 95%) | diverged | macro F1 % | MAP@R % | source paper % |" in markdown
    assert "| arcface | 30 | 1 | 0.46 | 0 | 99.00 ± 0.07 | 2 | 0 | 0 | — | — | 98.85 |" in markdown  # no F1 in these rows
    for name in ("runs_arcface_m2.png", "runs_combined_heatmap.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_collapsed_runs_are_counted_apart_from_diverged_ones_at_the_given_threshold(tmp_path, capsys):
    cell = {**PLAIN, "loss": "arcface", "s": 30, "m1": 1, "m2": 0.5, "m3": 0}
    rows = [{**cell, "seed": 0, "test_acc": 0.9940}, {**cell, "seed": 1, "test_acc": 0.9499},  # just below 95%
            {**cell, "seed": 2, "test_acc": 0.9500}, {**cell, "seed": 3, "test_acc": "", "diverged": 1}]
    (line,) = summaries.summarize(rows)
    assert (line["runs"], line["collapsed"], line["diverged"]) == (3, 1, 1)
    assert line["mean_acc"] == pytest.approx((99.40 + 94.99 + 95.00) / 3)  # collapsed runs stay in the mean
    assert summaries.summarize(rows, collapse_below=99.5)[0]["collapsed"] == 3
    path = str(tmp_path / "runs.csv")
    write_csv(path, rows)
    sweep_margins.main(["--summarize", path, "--out", path, "--collapse-below", "99"])
    assert "| 3 | 2 | 1 | — | — | 98.93 |" in (tmp_path / "runs_summary.md").read_text()
    assert "collapsed (< 99%)" in (tmp_path / "runs_summary.md").read_text()
    for bad in ("101", "-1", "nan"):
        with pytest.raises(SystemExit) as exit_info:
            sweep_margins.main(["--summarize", path, "--out", path, "--collapse-below", bad])
        assert exit_info.value.code == 2 and "--collapse-below must be a test accuracy in percent" in capsys.readouterr().err


def test_summary_gives_macro_f1_and_map_at_r_over_the_finished_runs():
    cell = {"loss": "softmax", "s": "", "m1": "", "m2": "", "m3": "", **PLAIN, "dataset": "cifar10"}
    rows = [{**cell, "seed": 0, "test_acc": 0.90, "test_f1": 0.89, "map_at_r": 0.70},
            {**cell, "seed": 1, "test_acc": 0.92, "test_f1": 0.91, "map_at_r": 0.74},
            {**cell, "seed": 2, "test_acc": "", "test_f1": "", "map_at_r": "", "diverged": 1}]
    (line,) = summaries.summarize(rows)
    assert line["mean_f1"] == pytest.approx(90.0) and line["std_f1"] == pytest.approx(math.sqrt(2))
    assert line["mean_map_at_r"] == pytest.approx(72.0) and line["std_map_at_r"] == pytest.approx(2 * math.sqrt(2))
    assert "| 90.00 ± 1.41 | 72.00 ± 2.83 |" in summaries.markdown_table([line])


def test_regression_recovers_the_best_margins():
    rows = synthetic_rows()
    points = [((float(r["s"]), float(r["m1"]), r["m2"], r["m3"]), 100 * r["test_acc"]) for r in rows if r["loss"] == "arcface"]
    fit = table1.fit_quadratic(points)
    assert fit["varying"] == [2] and fit["best"][0] == pytest.approx(0.47, abs=0.004)
    assert fit["best_std"][0] < 0.02 and fit["predicted_acc"] == pytest.approx(99.0, abs=0.01)
    line = table1.recommend(rows, "combined")
    assert recommended(line, "m2") == pytest.approx(0.42, abs=0.004)  # within one grid step
    assert recommended(line, "m3") == pytest.approx(0.27, abs=0.004)
    # the combined default (0.3, 0.2) lies outside m2 in [0.40, 0.44]: the gain is measured from the nearest swept cell
    assert "the default m2 = 0.3, m3 = 0.2 lies outside the swept range; at the nearest swept setting m2 = 0.4, m3 = 0.2" in line
    assert recommended(table1.recommend(rows, "arcface"), "m2") == pytest.approx(0.47, abs=0.004)


def arcface_rows(accuracy, seeds=3):
    return [{"loss": "arcface", "s": 30, "m1": 1, "m2": m2, "m3": 0, **PLAIN, "seed": seed, "test_acc": accuracy(m2, seed) / 100}
            for m2 in (0.40, 0.45, 0.50, 0.55, 0.59) for seed in range(seeds)]


def test_regression_gain_is_weighed_against_its_bootstrap_spread():
    # a clear optimum at 0.45, 1 point above the default 0.5, with 0.01-point seed noise: a supported gain
    clear = arcface_rows(lambda m2, seed: 99.0 - 400 * (m2 - 0.45) ** 2 + 0.01 * (seed - 1))
    fit = table1.fit_quadratic([((30.0, 1.0, r["m2"], 0.0), 100 * r["test_acc"]) for r in clear], at=(30.0, 1.0, 0.5, 0.0))
    assert fit["gain"] == pytest.approx(1.0, abs=0.01) and fit["gain_std"] < 0.05
    assert fit["r2"] > 0.99 and fit["surface_p"] == pytest.approx(1 / 201)  # no shuffle of the runs explains as much
    line = table1.recommend(clear, "arcface")
    assert "gain +1.00 ±" in line and "no evidence" not in line and "as much: p = 0.005" in line
    # one collapsed run (50%) is left out of the fit and counted, not allowed to bend it
    collapsed = clear + [{**clear[0], **PLAIN, "seed": 9, "test_acc": 0.50}]
    line = table1.recommend(collapsed, "arcface", collapse_below=90)  # the clear optimum's runs end above 91%
    assert recommended(line, "m2") == pytest.approx(0.45, abs=0.004) and "(1 collapsed left out)" in line
    assert "gain +1.00 ±" in line and "above 100%" not in line
    assert "(1 collapsed left out)" not in table1.recommend(collapsed, "arcface", collapse_below=40)
    # no effect of m2 at all, 0.3-point seed noise: whatever the fit's maximum, its gain is within the spread
    flat = arcface_rows(lambda m2, seed: 99.0 + 0.3 * ((7 * seed + int(100 * m2)) % 5 - 2) / 2)
    assert "within it, no evidence for the recommendation" in table1.recommend(flat, "arcface")
    # pure noise over a two-margin grid: the fitted maximum can beat the reference point by more than its
    # bootstrap std, yet fits to shuffled runs explain as much; the shuffle test is what tells
    noise = [{"loss": "combined", "s": 30, "m1": 1, "m2": m2, "m3": m3, **PLAIN, "seed": seed,
              "test_acc": (99.6 + 0.04 * ((13 * seed + int(100 * m2) * 7 + int(100 * m3) * 3) % 5 - 2)) / 100}
             for m2 in (0.40, 0.41, 0.42, 0.43, 0.44) for m3 in (0.20, 0.25, 0.30, 0.35) for seed in range(3)]
    line = table1.recommend(noise, "combined")
    p = float(re.search(r"as much: p = ([0-9.]+)", line).group(1))
    assert p > 0.05 and "no evidence that the margins matter" in line


def test_a_margin_swept_at_two_values_gets_no_square_term():
    # accuracy quadratic in m2 (five values), linear in m3 (two values): the fit must recover both,
    # where a square term for m3 would leave the least-squares problem underdetermined
    points = [((30.0, 1.0, m2, m3), 99.0 - 40 * (m2 - 0.42) ** 2 + 4 * (m3 - 0.2))
              for m2 in (0.40, 0.41, 0.42, 0.43, 0.44) for m3 in (0.2, 0.3) for _ in range(2)]
    fit = table1.fit_quadratic(points)
    assert fit["varying"] == [2, 3] and fit["curved"] == (True, False)
    assert fit["best"] == pytest.approx([0.42, 0.3], abs=1e-9)
    assert fit["predicted_acc"] == pytest.approx(99.4, abs=1e-6)


def test_comparison_table_on_a_synthetic_csv():
    def row(scenario, seed, acc, **extra):
        imbalance, holdout, corruptions = row_keys.CLAIM_SCENARIOS[scenario]
        return {"loss": "softmax", "s": "", "m1": "", "m2": "", "m3": "", **PLAIN, "seed": seed, "test_acc": acc,
                "test_f1": acc, "imbalance": imbalance, "holdout_classes": holdout, "corruptions": corruptions, **extra}

    rows = [row("clean", 0, 0.90, corrupted_acc=0.5, seconds_per_epoch=10), row("clean", 1, 0.92, corrupted_acc=0.7,
                                                                                  seconds_per_epoch=12),
            row("imbalance100", 0, 0.60, tail_recall=0.2), row("open_set", 0, 0.99, verify_tar=0.25, verify_auc=0.9),
            {**row("imbalance10", 0, ""), "diverged": 1}]
    (line,) = comparisons.comparison_table(rows)
    assert line["clean_acc_mean"] == pytest.approx(91.0) and line["clean_acc_std"] == pytest.approx(math.sqrt(2))
    assert line["corrupted_acc_mean"] == pytest.approx(60.0) and line["seconds_per_epoch_mean"] == pytest.approx(11.0)
    assert line["imb100_tail_mean"] == pytest.approx(20.0) and line["verify_tar_mean"] == pytest.approx(25.0)
    assert line["imb10_acc_runs"] == 0 and line["map_at_r_runs"] == 0  # diverged, and a column never reported
    markdown = comparisons.comparison_markdown([line])
    assert "| softmax | 91.00 ± 1.41 (2) | 91.00 ± 1.41 (2) | — |" in markdown
    summary = summaries.summarize(rows)
    assert {(r["imbalance"], r["holdout_classes"]) for r in summary} == {(1.0, 0), (100.0, 0), (1.0, 2), (10.0, 0)}
    assert "imbalance 100, 0 classes held out" in summaries.markdown_table(summary)


def test_source_number_only_beside_plain_mnist_runs():
    base = {"loss": "arcface", "s": 30, "m1": 1, "m2": 0.5, "m3": 0, **PLAIN, "seed": 0, "test_acc": 0.99}
    summary = summaries.summarize([base, {**base, "imbalance": 10}, {**base, "dataset": "cifar10"}])
    assert sorted((r["dataset"], r["imbalance"], r["source_acc"]) for r in summary) == [
        ("cifar10", 1.0, None), ("mnist", 1.0, 98.93), ("mnist", 10.0, None)]


def test_error_bars_never_reach_past_100_percent():
    line = [{"mean_acc": 91.06, "std_acc": 19.92}, {"mean_acc": 99.13, "std_acc": 0.04}, {"mean_acc": 99.5, "std_acc": math.nan}]
    below, above = plots.error_bars(line)
    assert below == [19.92, 0.04, 0.0]
    assert above == pytest.approx([100 - 91.06, 0.04, 0.0])
    assert all(r["mean_acc"] + a <= 100 for r, a in zip(line, above))


def table1_rows(accuracy, seeds=3):
    """Rows of all 40 Table 1 cells, accuracy(loss, m2, m3, seed) in %."""
    return [{"loss": loss, "s": 30, "m1": 1, "m2": m2, "m3": m3, **PLAIN, "seed": seed, "test_acc": accuracy(loss, m2, m3, seed) / 100}
            for loss, _, _, m2, m3 in row_keys.table1_grid() for seed in range(seeds)]


def test_table1_checks_find_a_real_low_cell_and_clear_the_others():
    def accuracy(loss, m2, m3, seed):  # 0.02-point seed noise; the 0.59 cell 2 points low, nothing else differs
        return 99.5 + 0.02 * (seed - 1) - (2.0 if (loss, m2) == ("arcface", 0.59) else 0)
    lines = table1.table1_checks(table1_rows(accuracy))
    cells, neighbours, combined, *low = lines
    assert "20 m2 cells, 60 runs (0 collapsed" in cells and float(cells.rsplit("p = ", 1)[1]) < 0.01
    assert "neighbours m2 = 0.49, 0.51" in neighbours and "+0.00 points" in neighbours
    assert "20 cells with m3 > 0, 60 runs" in combined
    assert len(low) == 5  # the paper's cells more than 1 point below its median of 98.77
    verdicts = {line.split(" (paper")[0]: line.rsplit(": ", 1)[1] for line in low}
    assert verdicts["paper's low cell arcface m2 = 0.59"] == "reproduced"
    assert "lowest 97.48, 0 collapsed" in next(line for line in low if "m2 = 0.59" in line)
    assert [v for k, v in verdicts.items() if "0.59" not in k] == ["not reproduced"] * 4


def test_table1_checks_compare_runs_that_did_not_collapse_and_name_the_collapsed_ones():
    def accuracy(loss, m2, m3, seed):  # combined 0.3 points above ArcFace; seed 2 of (0.41, 0.2) collapses
        collapsed = (loss, m2, m3, seed) == ("combined", 0.41, 0.2, 2)
        return 11.35 if collapsed else 99.3 + 0.05 * ((seed * 7 + int(100 * m2)) % 3 - 1) + 0.3 * (loss == "combined")
    lines = table1.table1_checks(table1_rows(accuracy))
    combined = next(line for line in lines if line.startswith("combined margin"))
    assert "60 runs, 1 collapsed) against ArcFace (20 cells, 60 runs, 0 collapsed)" in combined
    assert float(combined.split("collapse: ")[1].split(" points")[0]) == pytest.approx(0.3, abs=0.01)
    assert float(combined.rsplit("p = ", 1)[1]) < 0.01
    low = next(line for line in lines if "m2 = 0.41, m3 = 0.2 " in line)
    assert "lowest 11.35, 1 collapsed" in low and low.endswith(": not reproduced, but 1 of 3 runs collapsed")


def test_table1_checks_need_cells_to_compare():
    one_cell = [{"loss": "arcface", "s": 30, "m1": 1, "m2": 0.5, "m3": 0, **PLAIN, "seed": s, "test_acc": 0.995} for s in range(3)]
    assert table1.table1_checks(one_cell) == []
    cifar = [dict(r, dataset="cifar10") for r in table1_rows(lambda *a: 90.0)]
    assert table1.table1_checks(cifar) == []


def test_a_low_cell_whose_every_run_collapsed_is_reproduced():
    line = table1.low_cell_line("arcface", (0.59, 0.0), 96.01, 98.77, [11.35, 10.1, 9.8], [99.5, 99.6, 99.55], 95.0)
    assert "3 collapsed" in line and line.endswith(": reproduced: every run collapsed")


def budget_rows(epochs, accuracy):
    """Three settings x 3 seeds at `epochs`; accuracy(label, seed) in %."""
    settings = {"softmax": ("softmax", "", "", "", ""), "arc": ("arcface", 30, 1, 0.5, 0),
                "comb": ("combined", 30, 1, 0.41, 0.2)}
    return [{**dict(zip(row_keys.SETTING_KEYS, key)), "epochs": epochs, **PLAIN, "seed": seed,
             "test_acc": accuracy(label, seed) / 100} for label, key in settings.items() for seed in range(3)]


def test_budget_comparison_finds_a_reversed_ranking_and_counts_collapsed_runs(tmp_path, capsys):
    order = {"softmax": 0, "arc": 1, "comb": 2}
    short = budget_rows(4, lambda label, seed: 99.0 + 0.2 * order[label] + 0.01 * seed)
    long = budget_rows(20, lambda label, seed: 11.35 if (label, seed) == ("arc", 2)  # one collapsed run
                       else 99.5 - 0.2 * order[label] + 0.01 * seed)
    table, (verdict,) = comparisons.budget_comparison(long, short)
    assert "20 epochs against 4 epochs, 3 settings" in verdict and "(Spearman) -1.00" in verdict
    assert float(verdict.split("p = ")[1].split(" at")[0]) < 0.01  # at 4 epochs the settings differ
    assert "| arcface m2 = 0.5 | 99.21 ± 0.01 (3) | 2 | 0 | 99.31 ± 0.01 (2) | 2 | 1 | +0.10 |" in table
    assert "| combined m2 = 0.41, m3 = 0.2 | 99.41 ± 0.01 (3) | 1 | 0 | 99.11 ± 0.01 (3) | 3 | 0 | -0.30 |" in table
    a, b = str(tmp_path / "long.csv"), str(tmp_path / "short.csv")
    write_csv(a, long), write_csv(b, short)
    sweep_margins.main(["--summarize", a, "--baseline", b, "--out", a])
    assert verdict in (tmp_path / "long_budget.md").read_text()
    other_margins = [dict(r, m2=0.3) for r in short if r["loss"] != "softmax"]  # no setting in common
    assert comparisons.budget_comparison(long, other_margins) == ("", [])


def test_a_comparison_at_one_budget_names_the_settings_that_differ():
    unit = budget_rows(4, lambda label, seed: 99.5)
    exact = [dict(r, margin_grad="exact", margin_warmup=0.0) for r in budget_rows(4, lambda label, seed: 99.4)]
    _, (verdict,) = comparisons.budget_comparison(exact, [dict(r, margin_grad="unit", margin_warmup=0.3) for r in unit])
    assert verdict.startswith("margin_warmup 0.0, margin_grad exact against margin_warmup 0.3, margin_grad unit, 3 "
                              "settings: mean change -0.10 points")


def test_ranks_share_ties_and_spearman_needs_three_varying_values():
    assert stats.ranks([3.0, 1.0, 3.0, 2.0]) == [1.5, 4, 1.5, 3]
    assert stats.spearman([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert stats.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(stats.spearman([1, 2], [2, 1])) and math.isnan(stats.spearman([1, 1, 1], [1, 2, 3]))


@pytest.mark.parametrize("argv, message", [
    (["--baseline", "x.csv"], "--baseline needs --summarize"),
    (["--summarize", "{a}", "--baseline", "{a}.missing"], "--baseline: no such file"),
])
def test_baseline_flag_errors_are_one_line(tmp_path, capsys, argv, message):
    a = str(tmp_path / "a.csv")
    write_csv(a, budget_rows(4, lambda label, seed: 99.0))
    with pytest.raises(SystemExit) as exit_info:
        sweep_margins.main([arg.format(a=a) for arg in argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_each_loss_at_its_defaults_is_compared_with_softmax():
    def run(loss, seed, acc, map_r="", **margins):
        key = row_keys.setting(loss)
        return {**dict(zip(row_keys.SETTING_KEYS, ("" if v is None else v for v in key))), **margins,
                **PLAIN, "seed": seed, "test_acc": acc, "map_at_r": map_r}
    rows = [run("softmax", s, 0.990 + 0.001 * s, 0.90 + 0.01 * s) for s in range(3)]
    rows += [run("arcface", s, 0.993 + 0.001 * s, 0.95 + 0.01 * s) for s in range(3)]
    rows += [run("arcface", s, 0.5, m2=0.3) for s in range(3)]  # not the loss's default margins: left out
    rows += [run("cosface", 0, 0.992), run("cosface", 1, 0.1135)]  # one run collapsed
    arcface, cosface = comparisons.against_softmax(rows)
    assert arcface.startswith("arcface m2 = 0.5 (3 runs, 0 collapsed) against softmax (3 runs, 0 collapsed): ")
    # std 0.1 each: sqrt(2 * 0.01 / 3) = 0.08; 3 runs a side fully apart: the exact floor 2 / 20. The top-1 family
    # holds ArcFace's and CosFace's tests, so Holm doubles the smaller p; MAP@R's holds ArcFace's alone.
    assert "test acc +0.30 ± 0.08 points (p = 0.100, Holm 0.200)" in arcface
    assert "MAP@R +5.00 ± 0.82 points (p = 0.100, Holm 0.100)" in arcface
    assert arcface.endswith("exact (20 labellings) permutation p, Holm over the 2 losses")
    assert cosface.startswith("cosface m3 = 0.35 (1 runs, 1 collapsed)") and "test acc +0.10 ± nan points" in cosface
    assert "MAP@R" not in cosface  # these runs report none
    assert comparisons.against_softmax([r for r in rows if r["loss"] != "softmax"]) == []


def test_the_gain_is_measured_from_the_default_when_swept_else_from_the_nearest_swept_setting():
    points = [((30.0, 1.0, m2, m3), 99.0) for m2 in (0.40, 0.42, 0.44) for m3 in (0.20, 0.30)]
    assert table1.reference_margins((30.0, 1.0, 0.42, 0.25), points, [2, 3]) == (30.0, 1.0, 0.42, 0.25)
    assert table1.reference_margins((30.0, 1.0, 0.30, 0.20), points, [2, 3]) == (30.0, 1.0, 0.40, 0.20)
    assert table1.reference_margins((30.0, 1.0, 0.43, 0.40), points, [2, 3]) == (30.0, 1.0, 0.44, 0.30)
    # on an edge of the swept range counts as inside
    assert table1.reference_margins((30.0, 1.0, 0.44, 0.20), points, [2, 3]) == (30.0, 1.0, 0.44, 0.20)


def test_heatmap_labels_carry_the_spread_the_paper_and_collapsed_runs():
    cell = {"mean_acc": 99.581, "std_acc": 0.034, "runs": 3, "source_acc": 95.93, "collapsed": 0}
    assert plots.heatmap_label(cell) == "99.58 ± 0.03\n(3 runs)\npaper 95.93"
    single = {**cell, "std_acc": math.nan, "runs": 1, "source_acc": None, "collapsed": 1}
    assert plots.heatmap_label(single) == "99.58\n(1 run)\n1 collapsed"


def test_summary_lines_come_in_table_order_whatever_the_row_order():
    cell = lambda loss, m2=None, m3=None: {"loss": loss, "s": 30 if m2 is not None else "", "m1": 1 if m2 is not None else "",  # noqa: E731
                                           "m2": "" if m2 is None else m2, "m3": "" if m3 is None else m3,
                                           **PLAIN, "seed": 0, "test_acc": 0.99}
    rows = [cell("combined", 0.41, 0.25), cell("triplet"), cell("arcface", 0.59, 0), cell("combined", 0.44, 0.2),
            cell("softmax"), cell("arcface", 0.4, 0), cell("combined", 0.40, 0.25)]
    order = [(r["loss"], r["m2"], r["m3"]) for r in summaries.summarize(rows)]
    assert order == [("softmax", None, None), ("arcface", 0.4, 0.0), ("arcface", 0.59, 0.0), ("combined", 0.44, 0.2),
                     ("combined", 0.4, 0.25), ("combined", 0.41, 0.25), ("triplet", None, None)]


def test_the_default_collapse_threshold_is_the_datasets(tmp_path):
    cell = {"loss": "triplet", "s": "", "m1": "", "m2": "", "m3": ""}
    cifar = [{**cell, **PLAIN, "dataset": "cifar10", "seed": 0, "test_acc": 0.61}, {**cell, **PLAIN, "dataset": "cifar10", "seed": 1, "test_acc": 0.45}]
    mnist = [{**row, "dataset": "mnist", "test_acc": 0.94} for row in cifar]
    assert grouping.collapse_threshold(cifar) == 50.0 and grouping.collapse_threshold(mnist) == 95.0
    assert grouping.collapse_threshold(cifar + mnist) == 50.0  # mixed: no dataset's healthy runs count as collapsed
    assert grouping.collapse_threshold([{"test_acc": 0.9, "dataset": "my-photos"}]) == 0.0  # no threshold of its own
    assert grouping.collapse_threshold([{"test_acc": 0.4, "dataset": "tiny-imagenet-200"}]) == 10.0
    few = {"test_acc": 0.09, "dataset": "tiny-imagenet-200", "max_train_samples": 2000}  # 10 images a class: healthy
    assert grouping.collapse_threshold([few]) == 0.0
    assert grouping.collapse_threshold([{**few, "max_train_samples": "", "num_classes": 10}]) == 0.0
    path = str(tmp_path / "cifar.csv")
    write_csv(path, cifar)
    sweep_margins.main(["--summarize", path, "--out", path])  # no --collapse-below: CIFAR-10's 50%
    text = (tmp_path / "cifar_summary.md").read_text()
    assert "collapsed (< 50%)" in text and "| 2 | 1 | 0 |" in text  # 61% healthy, 45% collapsed
    write_csv(path, mnist)
    sweep_margins.main(["--summarize", path, "--out", path])
    assert "collapsed (< 95%)" in (tmp_path / "cifar_summary.md").read_text()


def test_a_few_losses_get_a_side_by_side_figure_and_one_margin_no_curve(tmp_path):
    rows = [{**PLAIN, "dataset": "cifar10", "epochs": 10, "loss": loss, "s": s, "m1": 1 if s else "",
             "m2": 0.5 if s else "", "m3": 0 if s else "", "seed": seed, "test_acc": 0.89 + 0.001 * seed, "map_at_r": 0.7}
            for loss, s in (("softmax", ""), ("arcface", 30)) for seed in range(3)]
    path = str(tmp_path / "losses.csv")
    write_csv(path, rows)
    sweep_margins.main(["--summarize", path, "--out", path])
    assert (tmp_path / "losses_losses.png").stat().st_size > 1000
    assert not (tmp_path / "losses_arcface_m2.png").exists()  # one ArcFace margin: no curve to draw


def test_gains_over_softmax_per_data_size_with_intervals_and_a_figure(tmp_path):
    def row(loss, per_class, seed, acc):
        margins = {"s": 30, "m1": 1, "m2": 0.5, "m3": 0} if loss == "arcface" else {"s": "", "m1": "", "m2": "", "m3": ""}
        return {**PLAIN, "dataset": "tiny-imagenet-200", "loss": loss, **margins, "seed": seed, "epochs": 500 // per_class,
                "max_train_samples": "" if per_class == 50 else 200 * per_class, "test_acc": acc, "test_top5": acc,
                "map_at_r": acc / 2, "train_class_counts": ";".join([str(per_class)] * 200)}

    rows = [row("softmax", n, s, 0.30 + 0.01 * s) for n in (10, 50) for s in range(3)]
    rows += [row("arcface", 10, s, 0.35 + 0.01 * s) for s in range(3)]  # +5 points with few images
    rows += [row("arcface", 50, s, 0.30 + 0.01 * s) for s in range(3)]  # no gain with more
    gains = comparisons.gains_over_softmax(rows)
    few, many = sorted(gains, key=lambda g: g["per_class"])
    assert (few["per_class"], few["classes"], few["runs"]) == (10, 200, 3)
    assert few["gain_acc"] == pytest.approx(5.0) and few["low_acc"] == pytest.approx(5.0 - 4.303 * (2 / 3) ** 0.5)
    assert many["gain_acc"] == pytest.approx(0.0) and many["p_acc"] == pytest.approx(1.0)
    assert [float(v) for v in few["run_gains_acc"].split(";")] == pytest.approx([4.0, 5.0, 6.0])
    path = str(tmp_path / "tiny.csv")
    write_csv(path, rows)
    sweep_margins.main(["--summarize", path, "--out", path])
    assert "| 200 | 10 | arcface m2 = 0.5 | 3 (3) | +5.00" in (tmp_path / "tiny_gains.md").read_text()
    assert (tmp_path / "tiny_gains.png").stat().st_size > 1000


def test_the_gains_figure_draws_only_losses_measured_at_several_sizes():
    from common.plots import losses_with_a_trend
    gains = [{"loss": "arcface", "classes": 200, "per_class": n} for n in (10, 500)]
    gains += [{"loss": "triplet", "classes": 200, "per_class": 500}]  # one size: the table holds it
    assert losses_with_a_trend(gains) == ["arcface"]
    one_each = [{"loss": "arcface", "classes": 200, "per_class": 10}, {"loss": "cosface", "classes": 10, "per_class": 500}]
    assert losses_with_a_trend(one_each) == ["arcface", "cosface"]  # no trend anywhere: every loss, never empty


def test_the_95_percent_interval_uses_t_with_the_smaller_sides_degrees_of_freedom():
    from common.stats import difference_interval
    diff, low, high = difference_interval([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert diff == pytest.approx(2.0) and high - diff == pytest.approx(4.303 * (1 / 3) ** 0.5)
    assert math.isnan(difference_interval([1.0], [0.0, 1.0])[1])  # one run: no spread, no interval


PLAIN_ROW = {"dataset": "mnist", "imbalance": 1.0, "holdout_classes": 0, "corruptions": False, "loss": "arcface",
             "s": 30, "m1": 1, "m2": 0.5, "m3": 0}


def test_parts_are_named_by_the_settings_they_set_never_none():
    rows = [{**PLAIN_ROW, "seed": 0, "test_acc": 0.9, "epochs": 7, "num_classes": ""},
            {**PLAIN_ROW, "seed": 0, "test_acc": 0.9, "epochs": 35, "num_classes": 10},
            {**PLAIN_ROW, "seed": 0, "test_acc": 0.9, "epochs": 7, "num_classes": 50}]
    labels = sorted(row_keys.settings_labels(rows).values())
    assert labels == ["epochs 35, num_classes 10", "epochs 7", "epochs 7, num_classes 50"]
    only_unset = [{**PLAIN_ROW, "seed": 0, "test_acc": 0.9, "num_classes": n} for n in ("", 10)]
    assert sorted(row_keys.settings_labels(only_unset).values()) == ["defaults", "num_classes 10"]


def test_long_part_labels_that_share_their_start_get_distinct_file_names():
    common = "margin_tail sphereface, " * 5
    names = {grouping.slug(common + end) for end in ("epochs 1", "epochs 2", "epochs 3")}
    assert len(names) == 3 and all(len(n) <= grouping.SLUG_CHARACTERS for n in names)
    assert grouping.slug("epochs 2, lr 0.1") == "epochs2_lr0.1"  # a short label is kept as it reads


def test_summarize_into_its_own_input_keeps_every_row_it_had(tmp_path):
    path = tmp_path / "x.csv"
    row = {**PLAIN_ROW, "epochs": 1, "test_acc": 0.9}
    write_csv(str(path), [{**row, "seed": 0, "run_id": "a"}, {**row, "seed": 0, "run_id": "b", "test_acc": 0.8},
                          {**row, "seed": 1, "run_id": "c"}])  # two rows of one run (seed 0)
    before = path.read_bytes()
    rows = sweep_margins.main(["--summarize", str(path), "--out", str(path)])
    assert path.read_bytes() == before  # nothing dropped, nothing rewritten
    assert sorted(r["run_id"] for r in rows) == ["a", "c"]  # each run once, its first row (as the summary counts)
    other = tmp_path / "y.csv"
    write_csv(str(other), [{**row, "seed": 2, "run_id": "d"}])
    sweep_margins.main(["--summarize", str(path), str(other), "--out", str(path)])
    assert [r["run_id"] for r in read_rows(str(path))] == ["a", "b", "c", "d"]  # the new run added, the rest kept


def test_the_summary_keeps_runs_of_other_settings_apart_and_says_which_differ():
    rows = [{**PLAIN_ROW, "epochs": epochs, "seed": seed, "test_acc": acc}
            for epochs, acc in ((2, 0.90), (20, 0.99)) for seed in (0, 1)]
    lines = summarize(rows)
    assert [(line["settings"], line["runs"], round(line["mean_acc"], 2)) for line in lines] == [
        ("epochs 2", 2, 90.0), ("epochs 20", 2, 99.0)]


def test_one_run_counts_once_however_often_its_row_appears():
    row = {**PLAIN_ROW, "epochs": 4, "test_acc": 0.99}
    rows = [{**row, "seed": 0}, {**row, "seed": 1, "test_acc": 0.97}, {**row, "seed": 1, "test_acc": 0.97}]
    (line,) = summarize(rows)
    assert line["runs"] == 2 and line["mean_acc"] == pytest.approx(98.0)


def test_summarize_counts_what_it_skips_and_refuses_nothing_usable(tmp_path, capsys):
    rows = [{**PLAIN_ROW, "epochs": 4, "seed": s, "test_acc": 0.9 + s / 100} for s in range(3)]
    path = tmp_path / "rows.csv"
    write_csv(str(path), rows)
    path.write_text(path.read_text()[:-4])  # the last row cut mid-line
    sweep_margins.main(["--summarize", str(path), "--out", str(tmp_path / "merged.csv")])
    assert "3 rows read, 2 used, 1 skipped (the last line is cut mid-way)" in capsys.readouterr().out
    empty = tmp_path / "empty.csv"
    empty.write_text("loss,seed\n")
    err = one_line_exit_2(sweep_margins.main, ["--summarize", str(empty), "--out", str(tmp_path / "e.csv")], capsys)
    assert "no usable rows" in err and not (tmp_path / "e_summary.csv").exists()


def test_a_summarize_killed_partway_leaves_the_old_files_whole(tmp_path, monkeypatch):
    path = tmp_path / "x.csv"
    row = {**PLAIN_ROW, "epochs": 1, "test_acc": 0.9}
    write_csv(str(path), [{**row, "seed": s} for s in (0, 1)])
    sweep_margins.main(["--summarize", str(path), "--out", str(tmp_path / "m.csv")])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    write_csv(str(path), [{**row, "seed": s, "test_acc": 0.5} for s in (0, 1, 2)])  # new rows to summarise

    def killed(*args, **kwargs):
        raise SystemExit(143)  # SIGTERM, after the merged CSV and the summary table were written to the stage

    monkeypatch.setattr(summaries, "plot_summary", killed)
    with pytest.raises(SystemExit):
        sweep_margins.main(["--summarize", str(path), "--out", str(tmp_path / "m.csv")])
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != "x.csv"}
    assert after == {k: v for k, v in before.items() if k != "x.csv"}  # the old set, whole: no new CSV beside it
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []  # and no staging folder left
    (tmp_path / merge.STAGING.format(pid=999999999)).mkdir()  # left by a summarize that was SIGKILLed
    monkeypatch.undo()
    sweep_margins.main(["--summarize", str(path), "--out", str(tmp_path / "m.csv")])
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []
    assert len(read_rows(str(tmp_path / "m.csv"))) == 3  # the new rows, all files together
