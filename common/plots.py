"""The figures: of a sweep's summary (ArcFace accuracy against m2, each loss side by side, the combined-margin
heat map; common/summary.py), of the gains over softmax, of a tuning search's trials and of a trial's arms;
each draws every run as a dot."""
from __future__ import annotations

import math

import torch

from .grouping import format_p
from .rows import SETTING_KEYS, accuracy_of, budget_of, percent_values, row_key, setting_label


def error_bars(line: list[dict], field: str = "acc") -> tuple[list[float], list[float]]:
    """(below, above) lengths of mean ± std bars for summary rows' mean_<field> and std_<field> in % (test
    accuracy by default, or map_at_r): no bar for a single run, and none reaching past 100% (the bar above
    stops at 100; every run is drawn as a dot beside it)."""
    stds = [0.0 if math.isnan(r[f"std_{field}"]) else r[f"std_{field}"] for r in line]
    return stds, [min(std, 100.0 - r[f"mean_{field}"]) for std, r in zip(stds, line)]


def plot_arcface_m2(plt, arc: list[dict], rows: list[dict], path: str) -> str:
    """ArcFace accuracy against m2: mean ± std over seeds with every run as a dot, beside the source paper's
    single runs (left); our runs alone at their own scale (right: a spread of 0.1 points vanishes beside the
    paper's 3-point drop). `arc`: summary rows sorted by m2; `rows`: the runs."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    epochs = sorted({int(r["epochs"]) for r in rows if r.get("epochs", "") != ""})
    budget = f"{'/'.join(map(str, epochs))} epoch{'' if epochs == [1] else 's'}, " if epochs else ""  # beside the paper's
    runs = [(float(r["m2"]), 100 * a) for r in rows if r["loss"] == "arcface" and float(r["m1"]) == 1
            and float(r["m3"]) == 0 and (a := accuracy_of(r)) is not None]
    source = [(r["m2"], r["source_acc"]) for r in arc if r["source_acc"] is not None]
    for ax, with_source in zip(axes, (True, False)):
        for scale in sorted({r["s"] for r in arc}):  # one line per scale s: settings that differ in s are not one curve
            line = [r for r in arc if r["s"] == scale]
            ax.errorbar([r["m2"] for r in line], [r["mean_acc"] for r in line], yerr=error_bars(line), fmt="o-",
                        capsize=3, label=f"this repository: mean ± std over seeds, bars stop at 100% ({budget}s = {scale:g})")
        if runs:
            ax.plot(*zip(*runs), "o", color="black", markerfacecolor="none", markersize=5, label="each run")
        if source and with_source:
            ax.plot(*zip(*source), "x--", color="tab:red", label="source paper, Table 1 (20 epochs, one run, s = 30)")
        ax.set_xlabel("ArcFace margin m2 (radians)"), ax.set_ylabel("test accuracy (%)")
    axes[0].set_title("beside the source paper's Table 1")
    axes[1].set_title("this repository's runs alone, at their own scale")
    datasets = ", ".join(sorted({str(r.get("dataset", "")) for r in rows}))
    fig.suptitle(f"ArcFace on {datasets}: test accuracy against the additive angular margin ({budget_of(rows)})")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=1, fontsize=8)  # below the axes, one entry a line: never over a point
    fig.tight_layout(rect=(0, (0.25 + 0.2 * len(labels)) / 5.2, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_summary(summary: list[dict], out_stem: str, rows: list[dict] = ()) -> list[str]:
    """The ArcFace m2 plot (mean ± std, every run as a dot: a mean hides a collapsed seed) and the
    combined-margin heat map; `summary` and `rows` of the plain training set only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    arc = sorted((r for r in summary if r["loss"] == "arcface" and r["m1"] == 1 and r["m3"] == 0), key=lambda r: r["m2"])
    if len(arc) > 1:  # a curve needs two margins
        written.append(plot_arcface_m2(plt, arc, rows, f"{out_stem}_arcface_m2.png"))
    if len({r["loss"] for r in summary}) > 1 and len(summary) <= 8:  # a few settings side by side, not a grid
        written.append(plot_losses(plt, summary, rows, f"{out_stem}_losses.png"))
    combined = [r for r in summary if r["loss"] == "combined" and not math.isnan(r["mean_acc"])]
    if len({r["m2"] for r in combined}) > 1 and len({r["m3"] for r in combined}) > 1:
        written.append(plot_combined_grid(plt, combined, f"{out_stem}_combined_heatmap.png"))
    return written


def plot_losses(plt, summary: list[dict], rows: list[dict], path: str) -> str:
    """Test accuracy and MAP@R of every setting (each loss at its margins), in the summary's order: the mean
    ± std as a bar that stops at 100% (`error_bars`), every run as a dot beside it; the axis spans the runs
    (no bars from zero, which would hide a spread over seeds of tenths of a point). `summary` and `rows`:
    the summary lines and the runs of the plain training set."""
    runs: dict[tuple, list[dict]] = {}
    for row in rows:
        runs.setdefault(row_key(row)[0], []).append(row)
    keys = [tuple(line[k] for k in SETTING_KEYS) for line in summary]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, (field, column, name) in zip(axes, (("acc", "test_acc", "test accuracy (%)"),
                                                ("map_at_r", "map_at_r", "MAP@R (%)"))):
        for i, (line, key) in enumerate(zip(summary, keys)):
            mean = line[f"mean_{field}"]
            if math.isnan(mean):  # no finished run reports it
                continue
            ax.errorbar(i, mean, yerr=error_bars([line], field), fmt="_", markersize=18, color="tab:blue", capsize=4)
            values = percent_values(runs[key], column)
            ax.plot([i + 0.12] * len(values), values, "o", color="black", markerfacecolor="none", markersize=5)
            ax.annotate(f"{mean:.2f}", (i, mean), textcoords="offset points", xytext=(-8, 0), ha="right",
                        va="center", fontsize=8)
        ax.set_xticks(range(len(keys)), [setting_label(k).replace(" m", "\nm", 1).replace(", ", "\n") for k in keys], fontsize=8)
        ax.set_xlim(-0.6, len(keys) - 0.4)
        ax.set_ylabel(name)
        ax.grid(axis="y", alpha=0.3)
    seeds = sorted({int(r["seed"]) for r in rows})
    fig.suptitle(f"each loss at its margins: mean ± std (bar) over seeds {', '.join(map(str, seeds))}, every run a "
                 f"circle ({budget_of(rows)})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heatmap_label(row: dict) -> str:
    """The text of one combined-margin cell: our mean ± std (runs), the source paper's single run where it
    has one, and the collapsed runs where there are any (a mean alone hides them)."""
    text = f"{row['mean_acc']:.2f}" + ("" if math.isnan(row["std_acc"]) else f" ± {row['std_acc']:.2f}")
    text += f"\n({row['runs']} run{'s' * (row['runs'] != 1)})"
    if row.get("source_acc") is not None:
        text += f"\npaper {row['source_acc']:.2f}"
    if row.get("collapsed"):
        text += f"\n{row['collapsed']} collapsed"
    return text


def plot_combined_grid(plt, combined: list[dict], path: str) -> str:
    """The combined margin over (m2, m3): each cell coloured by our mean test accuracy and labelled with
    `heatmap_label` (mean ± std, runs, the paper's number, collapsed runs); cells without runs stay blank.
    The colours span our means only: on the paper's 3-point scale our 0.1-point spread would be one colour.
    `combined`: summary rows (mean_acc, std_acc, runs, collapsed, source_acc) of the combined loss."""
    m2s, m3s = sorted({r["m2"] for r in combined}), sorted({r["m3"] for r in combined})
    grid = torch.full((len(m3s), len(m2s)), math.nan)  # (m3, m2): rows up the m3 axis
    for r in combined:
        grid[m3s.index(r["m3"]), m2s.index(r["m2"])] = r["mean_acc"]
    # colours span the cells without a collapsed run: one collapse would make every other cell one colour
    # (such a cell shows as the scale's darkest, and its label counts the collapse)
    means = [r["mean_acc"] for r in combined if not r.get("collapsed")] or [r["mean_acc"] for r in combined]
    low, high = min(means), max(means)
    # the scale spans at least +-2 seed stds (the median cell's): differences within seed noise look alike
    stds = sorted(r["std_acc"] for r in combined if not math.isnan(r["std_acc"]))
    noise = 2 * stds[len(stds) // 2] if stds else 0.0
    if high - low < 2 * noise:
        low, high = (low + high) / 2 - noise, (low + high) / 2 + noise
    middle = (low + high) / 2  # viridis is dark below it: white text there, black above
    fig, ax = plt.subplots(figsize=(max(7.5, 2.0 + 1.6 * len(m2s)), 1.8 + 1.0 * len(m3s)))  # the title fits
    image = ax.imshow(grid.numpy(), cmap="viridis", origin="lower", aspect="auto", vmin=low, vmax=max(high, low + 1e-6))
    for r in combined:
        i, j = m3s.index(r["m3"]), m2s.index(r["m2"])
        ax.text(j, i, heatmap_label(r), ha="center", va="center", fontsize=7,
                color="white" if r["mean_acc"] < middle else "black")
    ax.set_xticks(range(len(m2s)), [f"{v:g}" for v in m2s]), ax.set_yticks(range(len(m3s)), [f"{v:g}" for v in m3s])
    ax.set_xlabel("m2 (ArcFace)"), ax.set_ylabel("m3 (CosFace)")
    ax.set_title("combined margin s·(cos(θ + m2) − m3):\nour mean test accuracy (%) ± std, beside the paper's run")
    bar = fig.colorbar(image, ax=ax, extend="min",
                       label="our mean test accuracy (%); the scale spans\nat least ±2 seed std (cells within noise alike)")
    bar.formatter.set_useOffset(False)  # 99.58, not 0.003 + 9.958e1
    bar.update_ticks()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path




def losses_with_a_trend(gains: list[dict]) -> list[str]:
    """The losses of `gains` measured at more than one data size (classes, images per class): only they have
    a line to draw against the size; a loss measured at one size stays in the gains table. All of them when
    none has two sizes, so a figure is never empty."""
    sizes: dict[str, set] = {}
    for g in gains:
        sizes.setdefault(g["loss"], set()).add((g["classes"], g["per_class"]))
    return sorted(loss for loss, seen in sizes.items() if len(seen) > 1) or sorted(sizes)


def plot_gains(gains: list[dict], path: str) -> str:
    """Gain in top-1 over softmax (points) against training images per class (left: at the most classes) and
    against the number of classes (right: at the most images per class), one line per loss measured at more
    than one size (`losses_with_a_trend`): the mean gain with its 95% interval as a bar, every run's own gain as
    a dot beside it, zero (no gain) as a dashed line. `gains`: `summary.gains_over_softmax` lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    most_classes, most_images = max(g["classes"] for g in gains), max(g["per_class"] for g in gains)
    panels = (("per_class", [g for g in gains if g["classes"] == most_classes],
               f"training images per class ({most_classes} classes)"),
              ("classes", [g for g in gains if g["per_class"] == most_images],
               f"number of classes ({most_images} images per class)"))
    losses = losses_with_a_trend(gains)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, (x_key, lines, xlabel) in zip(axes, panels):
        for i, loss in enumerate(losses):
            own = sorted((g for g in lines if g["loss"] == loss and "gain_acc" in g), key=lambda g: g[x_key])
            if not own:
                continue
            shift = 1 + 0.04 * (i - (len(losses) - 1) / 2)  # side by side on the log axis, never on top
            xs = [g[x_key] * shift for g in own]
            low = [0 if math.isnan(g["low_acc"]) else g["gain_acc"] - g["low_acc"] for g in own]
            high = [0 if math.isnan(g["high_acc"]) else g["high_acc"] - g["gain_acc"] for g in own]
            bars = ax.errorbar(xs, [g["gain_acc"] for g in own], yerr=(low, high), fmt="o-", capsize=3, label=loss)
            for x, g in zip(xs, own):
                dots = [float(v) for v in g["run_gains_acc"].split(";")]
                ax.plot([x * 1.02] * len(dots), dots, ".", color=bars[0].get_color(), alpha=0.5)
        ax.axhline(0, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        values = sorted({g[x_key] for g in lines})
        ax.set_xticks(values, [str(v) for v in values])  # the sizes measured, not powers of ten
        ax.set_xlim(values[0] / 1.5, values[-1] * 1.5)  # a margin that keeps one size's bars and dots together
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 gain over softmax (points)")
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("margin losses minus softmax: mean with 95% interval, every run a dot")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_trials(trials: dict[str, list[dict]], path: str, limits: dict[str, tuple[float, float]]) -> str:
    """A tuning search's trials: validation top-1 (%) against the learning rate for every arm (left), against
    ArcFace's m2 (middle; normalised softmax at m2 = 0) and against CosFace's m3 (right; a panel without
    trials is left out), each trial a dot labelled with its s; the best trial of each arm ringed; each axis
    spans its search range (`limits`: {key: (low, high)}), so a search part-way done is drawn on its final
    axes. `trials`: {arm: rows} (`search.trials_by_arm`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(list(trials), "lr", "learning rate (log scale)"),
              (["normsoftmax", "arcface"], "m2", "ArcFace margin m2 (radians; normalised softmax at 0)"),
              (["cosface"], "m3", "CosFace margin m3")]
    panels = [p for p in panels if any(trials.get(arm) for arm in p[0])]  # a triplet search: the lr panel only
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.8), sharey=True, squeeze=False)
    axes = axes[0]
    colours = dict(zip(trials, plt.get_cmap("tab10").colors))
    for ax, (arms, key, xlabel) in zip(axes, panels):
        for arm in arms:
            rows = [r for r in trials.get(arm, []) if accuracy_of(r) is not None]
            if not rows:
                continue
            xs, ys = [float(r[key]) for r in rows], [100 * accuracy_of(r) for r in rows]
            ax.plot(xs, ys, "o", color=colours[arm], label=arm)
            best = max(range(len(rows)), key=lambda i: ys[i])
            ax.plot(xs[best], ys[best], "o", markersize=13, markerfacecolor="none", color=colours[arm])
            if key != "lr" and arm != "softmax":
                for rank, i in enumerate(sorted(range(len(rows)), key=lambda i: (xs[i], ys[i]))):
                    # in order of (x, y) labels alternate below and above their dots, so trials stacked at one x
                    # (normalised softmax, all at m2 = 0) do not print over each other
                    ax.annotate(f"s={float(rows[i]['s']):g}", (xs[i], ys[i]), textcoords="offset points",
                                xytext=(4, 4 if rank % 2 else -10), fontsize=7)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        low, high = limits[key]
        if key == "lr":
            ax.set_xscale("log")
            ax.set_xlim(low / 1.2, high * 1.2)
            ticks = [low * 2 ** k for k in range(int(math.log2(high / low)) + 1)]  # 0.025, 0.05, ... 0.4
            ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        else:
            ax.set_xlim(min(low, 0.0 if key == "m2" else low) - 0.03, high + 0.03)
    axes[0].set_ylabel("validation top-1 (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle("tuning trials (seed 0, validation split);" + ("\n" if len(panels) == 1 else " ")  # fits one panel
                 + "the ringed trial of each arm is its chosen setting")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_arm_gains(lines: list[dict], fields: tuple[tuple[str, str], ...], path: str) -> str:
    """A trial's arms minus its softmax arm, one panel per field (`fields`: (column, title)): each arm's
    difference of means with its 95% interval as a bar, every run's own gain as a dot, the Holm-adjusted p
    written above; at the left softmax's own runs about their mean, the spread each gain is set against.
    `lines`: `comparisons.arms_against_softmax` lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fields), figsize=(4.2 * len(fields), 5.2), squeeze=False)
    names = ["softmax"] + [line["arm"].split(": ")[0] if ": " in line["arm"] else line["arm"] for line in lines]
    for ax, (field, title) in zip(axes[0], fields):
        base = [float(v) for v in lines[0].get(f"softmax_run_gains_{field}", "").split(";") if v]  # none: not measured
        ax.plot([0] * len(base), base, "o", color="grey", markerfacecolor="none", markersize=5)
        for i, line in enumerate(lines, start=1):
            if f"gain_{field}" not in line:  # the field was not measured for this arm
                continue
            gain, low, high = line[f"gain_{field}"], line[f"low_{field}"], line[f"high_{field}"]
            bar = ([0], [0]) if math.isnan(low) else ([gain - low], [high - gain])  # no interval from one run
            ax.errorbar(i, gain, yerr=bar, fmt="_", markersize=18, capsize=4, color="tab:blue")
            dots = [float(v) for v in line[f"run_gains_{field}"].split(";")]
            ax.plot([i + 0.15] * len(dots), dots, "o", color="black", markerfacecolor="none", markersize=5)
            top = max(dots + ([] if math.isnan(high) else [high]))
            ax.annotate(f"{gain:+.2f}\nHolm p {format_p(line[f'holm_{field}'])}", (i, top), textcoords="offset points",
                        xytext=(0, 4), ha="center", va="bottom", fontsize=8)
        ax.axhline(0, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.margins(y=0.2)  # room for the p above the highest bar
        ax.set_title(f"{title} (points)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    runs = sorted({(line["runs"], line["softmax_runs"]) for line in lines})
    fig.suptitle("each arm minus softmax: mean with 95% interval, every run a circle; softmax's runs about its "
                 f"mean at left (runs a side: {', '.join(f'{a} vs {b}' for a, b in runs)})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
