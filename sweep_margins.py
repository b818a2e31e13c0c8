"""Sweep margins: many training runs over a grid of (loss, s, m1, m2, m3) and seeds, resumable and
shardable, then a summary with error bars, plots, and a quadratic fit that recommends margins.

    python sweep_margins.py --preset table1 --seeds 0 1 2 --data-root ../shared/data
    python sweep_margins.py --losses arcface cosface softmax --m2 0.3 0.5 --m3 0.2 0.35 --seeds 0 1
    python sweep_margins.py --preset table1 --shard 3/8 --out results/sweep/shard3.csv   # one job of 8
    python sweep_margins.py --summarize results/sweep/shard*.csv --out results/sweep/merged.csv
    python sweep_margins.py --preset claims --seeds 0 1 2 --data-root ../shared/data   # the report's other claims

--preset claims trains every loss at its default margins in four scenarios (clean with corrupted test
copies, long-tailed training sets at imbalance 10 and 100, and 2 held-out classes for open-set
verification) and writes a comparison table with the losses as rows.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import multiprocessing
import os
import signal
import sys
import threading
from dataclasses import replace

import torch
from tqdm import tqdm

import train_cifar10
import train_mnist
from common import LOSSES, MARGIN_DEFAULTS
from common.config import OneLineErrorParser, parse_config
from common.checkpoints import FORMER_VALUES
from common.data import DataError, is_image_folder, list_image_folder
from common.heads import check_margins
from common.results import append_row, atomic_write_text, environment_info, read_rows, write_csv
from common.device import pick_device
from common.grouped import UNGROUPED, run_group
from common.training import DivergedError

SCRIPTS = {"mnist": train_mnist, "cifar10": train_cifar10}
SETTING_KEYS = ("loss", "s", "m1", "m2", "m3")
# What a run trains on and reports besides the margins: (imbalance, holdout_classes, corruptions).
SCENARIO_KEYS = ("imbalance", "holdout_classes", "corruptions")
SCENARIO_DEFAULTS = {"imbalance": "1.0", "holdout_classes": "0", "corruptions": "False"}  # for rows that predate them
CLAIM_SCENARIOS = {"clean": (1.0, 0, True), "imbalance10": (10.0, 0, False), "imbalance100": (100.0, 0, False),
                   "open_set": (1.0, 2, False)}

# Table 1 of the source paper: MNIST test accuracy (%) after 20 epochs, one run per setting.
TABLE1_ARCFACE = dict(zip([round(0.40 + 0.01 * i, 2) for i in range(20)],
                          [98.84, 98.75, 98.66, 98.77, 98.77, 98.70, 98.85, 98.71, 98.79, 98.66,
                           98.93, 98.84, 98.65, 98.70, 98.87, 98.76, 97.58, 98.86, 98.83, 96.01]))
TABLE1_COMBINED = {(0.40, 0.20): 98.97, (0.41, 0.20): 95.93, (0.42, 0.20): 98.80, (0.43, 0.20): 98.89,
                   (0.44, 0.20): 98.82, (0.40, 0.25): 98.78, (0.41, 0.25): 98.69, (0.42, 0.25): 98.83,
                   (0.43, 0.25): 98.80, (0.44, 0.25): 98.88, (0.40, 0.30): 98.84, (0.41, 0.30): 97.73,
                   (0.42, 0.30): 98.77, (0.43, 0.30): 98.69, (0.44, 0.30): 98.81, (0.40, 0.35): 98.73,
                   (0.41, 0.35): 98.71, (0.42, 0.35): 98.71, (0.43, 0.35): 98.95, (0.44, 0.35): 96.83}


def setting(loss: str, s=None, m1=None, m2=None, m3=None) -> tuple:
    """(loss, s, m1, m2, m3) with the loss's defaults filled in; margins are None for softmax and triplet."""
    if loss not in MARGIN_DEFAULTS:
        return (loss, None, None, None, None)
    defaults = MARGIN_DEFAULTS[loss]
    return (loss, *(round(float(d if v is None else v), 6) for v, d in zip((s, m1, m2, m3), defaults)))


def table1_grid() -> list[tuple]:
    arcface = [setting("arcface", 30.0, 1.0, m2, 0.0) for m2 in TABLE1_ARCFACE]
    combined = [setting("combined", 30.0, 1.0, m2, m3) for m2, m3 in TABLE1_COMBINED]
    return arcface + combined


def source_value(row_setting: tuple) -> float | None:
    """The source table's accuracy (%) for a setting, if it has one (s = 30 assumed)."""
    loss, _, m1, m2, m3 = row_setting
    if m1 != 1.0:
        return None
    if loss in ("arcface", "combined") and m3 == 0.0:
        return TABLE1_ARCFACE.get(m2)
    return TABLE1_COMBINED.get((m2, m3)) if loss == "combined" else None


def claims_grid() -> list[tuple]:
    return [setting(loss) for loss in LOSSES]


def custom_grid(args) -> list[tuple]:
    grid = []
    for loss in args.losses:
        if loss not in MARGIN_DEFAULTS:
            grid.append(setting(loss))
            continue
        values = [args.s or [None], args.m1 or [None], args.m2 or [None], args.m3 or [None]]
        grid += [setting(loss, *combo) for combo in itertools.product(*values)]
    return list(dict.fromkeys(grid))  # drop duplicates, keep order


def jobs_for(grid: list[tuple], seeds: list[int], shard: tuple[int, int],
             scenarios: list[tuple] = ((1.0, 0, False),)) -> list[tuple[tuple, tuple, int]]:
    """All (setting, scenario, seed) triples in a fixed order, then every N-th from index I: shards are
    disjoint and cover all."""
    index, count = shard
    everything = ((g, scenario, seed) for scenario in scenarios for g in grid for seed in seeds)
    return [job for i, job in enumerate(everything) if i % count == index]


def is_true(value) -> bool:
    """A CSV cell (or a Python value) that says yes: 1 / True / true."""
    return str(value).strip() in ("1", "True", "true")


def scenario_of(row: dict) -> tuple:
    """(imbalance, holdout_classes, corruptions) of a results row or a config's row."""
    values = {k: str(row.get(k, "")) or SCENARIO_DEFAULTS[k] for k in SCENARIO_KEYS}
    return (float(values["imbalance"]), int(values["holdout_classes"]), is_true(values["corruptions"]))


def plain_training_set(imbalance: float, holdout: int) -> bool:
    """The whole (balanced) training set, all classes: the setting of Table 1."""
    return imbalance == 1.0 and holdout == 0


def row_key(row: dict) -> tuple:
    """(setting, scenario, seed) of a results row, matching `jobs_for`."""
    loss = row["loss"]
    margins = (setting(loss) if loss not in MARGIN_DEFAULTS
               else setting(loss, *(float(row[k]) for k in SETTING_KEYS[1:])))
    return (margins, scenario_of(row), int(row["seed"]))


# Fields besides (setting, scenario, seed) that must match for a row in the CSV to count as this sweep's run:
# every training setting that changes the result, and the device type (shuffling and augmentation draw
# from a different generator on CPU and CUDA, and CUDA uses TF32). The data root is left out, so a
# sweep can move folders; what it holds is the user's to keep the same.
SIGNATURE_KEYS = ("dataset", "epochs", "max_train_samples", "train_subset", "latent_dim", "widths", "convs_per_stage",
                  "batch_size", "lr", "momentum", "weight_decay", "warmup", "triplet_margin", "image_size", "amp",
                  "corruption_samples", "device", "head_weight_decay", "label_smoothing", "embedding_bn", "whiten",
                  "dirac_init", "bn_bias_lr", "margin_warmup", "margin_tail", "margin_grad", "crop_padding", "flip",
                  "flip_tta")
# Values of columns that rows from before the column existed lack (the value they were run with), as in CSV text.
SIGNATURE_DEFAULTS = {key: str(value) for key, value in FORMER_VALUES.items()}
# Rows from before --crop-padding and --flip: the augmentation each script then hard-coded.
AUGMENT_DEFAULTS = {"mnist": {"crop_padding": "0", "flip": "False"}, "cifar10": {"crop_padding": "4", "flip": "True"}}


def signature(row: dict) -> tuple:
    defaults = {**SIGNATURE_DEFAULTS, **AUGMENT_DEFAULTS.get(str(row.get("dataset", "")), {})}
    return tuple(str(row.get(k, "")) or defaults.get(k, "") for k in SIGNATURE_KEYS)


def config_for(job: tuple, base, threads: int):
    (loss, s, m1, m2, m3), (imbalance, holdout, corruptions), seed = job
    return replace(base, loss=loss, s=s, m1=m1, m2=m2, m3=m3, seed=seed, threads=threads, progress=False,
                   imbalance=imbalance, holdout_classes=holdout, corruptions=corruptions)


def record_diverged(config, exc: DivergedError) -> dict:
    """A diverged run's row: diverged=1 and no accuracy."""
    row = {**config.as_row(), "diverged": 1, "error": str(exc), "device": pick_device(config.device).type,
           **environment_info()}
    append_row(config.out, row)
    return row


def run_job(job: tuple, base, dataset: str, threads: int) -> dict:
    """Train one (setting, scenario, seed); a diverged run becomes a row with diverged=1 and no accuracy."""
    config = config_for(job, base, threads)
    try:
        return SCRIPTS[dataset].run(config)
    except DivergedError as exc:
        return record_diverged(config, exc)


def run_unit(unit: list[tuple], base, dataset: str, threads: int) -> list[dict]:
    """One job alone, or several margin settings of one (scenario, seed) trained together (common/grouped.py)."""
    if len(unit) == 1:
        return [run_job(unit[0], base, dataset, threads)]
    configs = [config_for(job, base, threads) for job in unit]
    results = run_group(configs, SCRIPTS[dataset])
    return [record_diverged(c, r) if isinstance(r, DivergedError) else r for c, r in zip(configs, results)]


def group_jobs(jobs: list[tuple], group_size: int) -> list[list[tuple]]:
    """Units of work: margin-loss jobs sharing (scenario, seed) in chunks of at most `group_size`, trained
    together; softmax and triplet jobs alone. Order follows the first job of each unit."""
    units: list[list[tuple]] = []
    open_units: dict[tuple, list[tuple]] = {}
    for job in jobs:
        key = (job[1], job[2])
        if group_size <= 1 or job[0][0] not in MARGIN_DEFAULTS:
            units.append([job])
            continue
        unit = open_units.get(key)
        if unit is None or len(unit) == group_size:
            unit = open_units[key] = []
            units.append(unit)
        unit.append(job)
    return units


def check_data(base, dataset: str) -> None:
    """Raise DataError if the training script could not read its dataset: an image folder is listed and
    checked (no image decoded); a torchvision dataset is loaded (downloaded if missing and allowed)."""
    if is_image_folder(base.data_root):
        list_image_folder(base.data_root)
    else:
        SCRIPTS[dataset].load_data(base)


def _worker(payload):
    return run_unit(*payload)


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def exit_on_sigterm():
    """Within this block SIGTERM (`kill`, a scheduler's time limit) raises SystemExit instead of ending the
    process at once, so an enclosing `with Pool` terminates its workers rather than leaving them to run
    on, orphaned, after the sweep is gone. Outside the main thread (where no handler can be set) it does
    nothing. The previous handler comes back on leaving."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_sweep(units: list[list[tuple]], base, dataset: str, workers: int, threads: int = 0) -> None:
    """Run the units (jobs already filtered to those not done), `workers` processes at a time, with one
    overall bar over jobs. `threads` is torch's CPU threads per worker; 0 splits the cores between workers."""
    threads = threads or (0 if workers == 1 else max(1, (os.cpu_count() or 1) // workers))
    with tqdm(total=sum(map(len, units)), desc="sweep", unit="run") as bar:  # closed on Ctrl-C too
        if workers == 1:
            for unit in units:
                run_unit(unit, base, dataset, threads)
                bar.update(len(unit))
            return
        context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
        with exit_on_sigterm(), context.Pool(workers, maxtasksperchild=1) as pool:  # workers end with the sweep
            for rows in pool.imap_unordered(_worker, [(unit, base, dataset, threads) for unit in units]):
                bar.update(len(rows))


def accuracy_of(row: dict) -> float | None:
    return None if is_true(row.get("diverged", "")) or row.get("test_acc", "") == "" else float(row["test_acc"])


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN where undefined)."""
    mean = sum(values) / len(values) if values else math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
    return mean, std


def format_mean_std(mean: float, std: float) -> str:
    """'99.13 ± 0.04', '99.13' for a single run, '—' for none."""
    if math.isnan(mean):
        return "—"
    return f"{mean:.2f}" + ("" if math.isnan(std) else f" ± {std:.2f}")


def is_plain(row: dict) -> bool:
    return plain_training_set(*scenario_of(row)[:2])


def summarize(rows: list[dict]) -> list[dict]:
    """Per (setting, training set): mean, std and count of test accuracy (%), diverged runs, and the
    source table's value (MNIST on the plain training set only)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key, (imbalance, holdout, _), _ = row_key(row)
        groups.setdefault((key, imbalance, holdout, row.get("dataset", "mnist")), []).append(row)
    summary = []
    for (key, imbalance, holdout, dataset), members in groups.items():
        accs = [100 * a for a in map(accuracy_of, members) if a is not None]
        mean, std = mean_std(accs)
        plain = plain_training_set(imbalance, holdout)
        summary.append({**dict(zip(SETTING_KEYS, key)), "dataset": dataset, "imbalance": imbalance,
                        "holdout_classes": holdout, "mean_acc": mean, "std_acc": std, "runs": len(accs),
                        "diverged": len(members) - len(accs),
                        "source_acc": source_value(key) if plain and dataset == "mnist" else None})
    return summary


def markdown_table(summary: list[dict]) -> str:
    """One line per summary row; a "training set" column appears only when some row is not the plain one."""
    special = not all(plain_training_set(r["imbalance"], r["holdout_classes"]) for r in summary)
    lines = ["| loss | s | m1 | m2 | m3 |" + (" training set |" if special else "") +
             " test acc % (mean ± std) | runs | diverged | source paper % |",
             "|---|---|---|---|---|" + ("---|" if special else "") + "---|---|---|---|"]
    fmt = lambda v: "" if v is None else f"{v:g}"  # noqa: E731
    for r in summary:
        acc = format_mean_std(r["mean_acc"], r["std_acc"])
        source = "" if r["source_acc"] is None else f"{r['source_acc']:.2f}"
        trained = f" imbalance {r['imbalance']:g}, {r['holdout_classes']} classes held out |" if special else ""
        lines.append(f"| {r['loss']} | {fmt(r['s'])} | {fmt(r['m1'])} | {fmt(r['m2'])} | {fmt(r['m3'])} |{trained} {acc} | "
                     f"{r['runs']} | {r['diverged']} | {source} |")
    return "\n".join(lines) + "\n"


# The comparison table of --preset claims: (column, heading, which runs, result field, x100 for percent).
COMPARISON = [
    ("clean_acc", "clean acc %", "clean", "test_acc", True),
    ("clean_f1", "macro F1 %", "clean", "test_f1", True),
    ("imb10_acc", "acc, imbalance 10 %", "imbalance10", "test_acc", True),
    ("imb100_acc", "acc, imbalance 100 %", "imbalance100", "test_acc", True),
    ("imb100_tail", "rarest-30% recall, imbalance 100 %", "imbalance100", "tail_recall", True),
    ("corrupted_acc", "mean corrupted acc %", "clean", "corrupted_acc", True),
    ("map_at_r", "MAP@R %", "clean", "map_at_r", True),
    ("verify_tar", "open-set TAR@FAR=1e-3 %", "open_set", "verify_tar", True),
    ("verify_auc", "open-set ROC AUC %", "open_set", "verify_auc", True),
    ("seconds_per_epoch", "s / epoch", "clean", "seconds_per_epoch", False),
]


def comparison_table(rows: list[dict]) -> list[dict]:
    """One row per setting (loss and margins): mean, std and count over seeds of each COMPARISON column."""
    by_setting: dict[tuple, dict[str, list[dict]]] = {}
    names = {scenario: name for name, scenario in CLAIM_SCENARIOS.items()}
    for row in rows:
        key, scenario, _ = row_key(row)
        if scenario in names and accuracy_of(row) is not None:
            by_setting.setdefault(key, {}).setdefault(names[scenario], []).append(row)
    table = []
    for key, runs in by_setting.items():
        line = dict(zip(SETTING_KEYS, key))
        for column, _, scenario, field, percent in COMPARISON:
            values = [float(r[field]) * (100 if percent else 1) for r in runs.get(scenario, [])
                      if str(r.get(field, "")) not in ("", "nan")]
            line[f"{column}_mean"], line[f"{column}_std"] = mean_std(values)
            line[f"{column}_runs"] = len(values)
        table.append(line)
    return table


def comparison_markdown(table: list[dict]) -> str:
    def cell(line, column):
        runs = line[f"{column}_runs"]
        return f"{format_mean_std(line[f'{column}_mean'], line[f'{column}_std'])} ({runs})" if runs else "—"

    header = "| loss | " + " | ".join(heading for _, heading, *_ in COMPARISON) + " |"
    lines = [header, "|---" * (len(COMPARISON) + 1) + "|"]
    for line in table:
        margins = "" if line["s"] is None else f" (s={line['s']:g}, m1={line['m1']:g}, m2={line['m2']:g}, m3={line['m3']:g})"
        lines.append(f"| {line['loss']}{margins} | " + " | ".join(cell(line, c) for c, *_ in COMPARISON) + " |")
    return "\n".join(lines) + "\n\nmean ± std (number of seeds) over finished runs.\n"


def quadratic_features(v: torch.Tensor, curved: tuple[bool, ...] | None = None) -> torch.Tensor:
    """(N, k) margins -> (N, features): constant, linear, cross terms, and the square of each margin whose
    `curved` entry is True (default: all). A margin swept at only two values has no square term: there
    its square is a linear function of it, and a fit with both is underdetermined."""
    k = v.shape[1]
    curved = curved if curved is not None else (True,) * k
    cols = [torch.ones(len(v), dtype=torch.float64), *v.t()]
    cols += [v[:, a] * v[:, b] for a in range(k) for b in range(a, k) if a != b or curved[a]]
    return torch.stack(cols, 1)


def fit_quadratic(points: list[tuple[tuple[float, ...], float]], bootstrap: int = 200, seed: int = 0) -> dict | None:
    """Least-squares quadratic (with cross terms) of accuracy over the margins that vary, its maximiser on
    a grid spanning the sweep, and the bootstrap (over runs) standard deviation of that maximiser. Only
    margins swept at three or more values get a square term (`quadratic_features`); None with fewer than
    3k + 1 runs for k varying margins."""
    names = [i for i in range(len(points[0][0])) if len({p[0][i] for p in points}) > 1] if points else []
    curved = tuple(len({p[0][i] for p in points}) >= 3 for i in names)
    if not names or len(points) < 3 * len(names) + 1:
        return None
    x = torch.tensor([[p[0][i] for i in names] for p in points], dtype=torch.float64)
    y = torch.tensor([p[1] for p in points], dtype=torch.float64)
    axes = [torch.linspace(x[:, j].min().item(), x[:, j].max().item(), 41, dtype=torch.float64) for j in range(len(names))]
    grid = torch.cartesian_prod(*axes).view(-1, len(names))

    def best(xs, ys):
        coef = torch.linalg.lstsq(quadratic_features(xs, curved), ys.view(-1, 1)).solution
        predicted = (quadratic_features(grid, curved) @ coef).squeeze(1)
        return grid[predicted.argmax()], predicted.max().item(), coef

    where, value, coef = best(x, y)
    generator = torch.Generator().manual_seed(seed)
    draws = [best(x[i], y[i])[0] for i in (torch.randint(0, len(y), (len(y),), generator=generator) for _ in range(bootstrap))]
    spread = torch.stack(draws).std(dim=0)
    return {"varying": names, "curved": curved, "best": where.tolist(), "best_std": spread.tolist(),
            "predicted_acc": value, "coefficients": coef.squeeze(1).tolist()}


def recommend(rows: list[dict], loss: str) -> str | None:
    """One line: the fitted best margins for `loss`, their bootstrap spread and the gain over the loss's default."""
    points = [((*(float(r[k]) for k in SETTING_KEYS[1:]),), 100 * a) for r in rows
              if r["loss"] == loss and is_plain(r) and (a := accuracy_of(r)) is not None]
    fit = fit_quadratic(points)
    if fit is None:
        return None
    names = [SETTING_KEYS[1 + i] for i in fit["varying"]]
    default = setting(loss)
    default_x = torch.tensor([[default[1 + i] for i in fit["varying"]]], dtype=torch.float64)
    features = quadratic_features(default_x, fit["curved"])
    at_default = (features @ torch.tensor(fit["coefficients"], dtype=torch.float64)).item()
    swept = [sorted({p[0][i] for p in points}) for i in fit["varying"]]
    outside = any(not lo[0] <= v <= lo[-1] for lo, v in zip(swept, default_x[0].tolist()))
    best = ", ".join(f"{n} = {b:.3f} ± {e:.3f}" for n, b, e in zip(names, fit["best"], fit["best_std"]))
    return (f"{loss}: quadratic fit over {len(points)} runs recommends {best} (predicted {fit['predicted_acc']:.2f}%); "
            f"at the default {', '.join(f'{n} = {default[1 + i]:g}' for n, i in zip(names, fit['varying']))} "
            f"it predicts {at_default:.2f}%{' (extrapolated: outside the swept range)' if outside else ''} "
            f"(gain {fit['predicted_acc'] - at_default:+.2f} points)")


def plot_summary(summary: list[dict], out_stem: str, rows: list[dict] = ()) -> list[str]:
    """The ArcFace m2 plot (mean ± std, every run as a dot: a mean hides a collapsed seed) and the
    combined-margin heat map; `summary` and `rows` of the plain training set only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    arc = sorted((r for r in summary if r["loss"] == "arcface" and r["m1"] == 1 and r["m3"] == 0), key=lambda r: r["m2"])
    if arc:
        fig, ax = plt.subplots(figsize=(7, 4))
        scales = sorted({r["s"] for r in arc})
        epochs = sorted({int(r["epochs"]) for r in rows if r.get("epochs", "") != ""})
        budget = f"{'/'.join(map(str, epochs))} epochs, " if epochs else ""  # the budget beside the paper's
        for scale in scales:  # one line per scale s: settings that differ in s are not one curve
            line = [r for r in arc if r["s"] == scale]
            ax.errorbar([r["m2"] for r in line], [r["mean_acc"] for r in line],
                        yerr=[0 if math.isnan(r["std_acc"]) else r["std_acc"] for r in line], fmt="o-", capsize=3,
                        label=f"this repository: mean ± std over seeds ({budget}s = {scale:g})")
        runs = [(float(r["m2"]), 100 * a) for r in rows if r["loss"] == "arcface" and float(r["m1"]) == 1
                and float(r["m3"]) == 0 and (a := accuracy_of(r)) is not None]
        if runs:
            ax.plot(*zip(*runs), "o", color="black", markerfacecolor="none", markersize=5, label="each run")
        source = [(r["m2"], r["source_acc"]) for r in arc if r["source_acc"] is not None]
        if source:
            ax.plot(*zip(*source), "x--", color="tab:red", label="source paper, Table 1 (20 epochs, one run, s = 30)")
        ax.set_xlabel("ArcFace margin m2 (radians)"), ax.set_ylabel("test accuracy (%)")
        ax.set_title("ArcFace (this repository): test accuracy against the additive angular margin")
        fig.legend(loc="lower center", ncol=2, fontsize=8)  # below the axes: never over a point
        fig.tight_layout(rect=(0, 0.12, 1, 1))
        written.append(f"{out_stem}_arcface_m2.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    combined = [r for r in summary if r["loss"] == "combined" and not math.isnan(r["mean_acc"])]
    m2s, m3s = sorted({r["m2"] for r in combined}), sorted({r["m3"] for r in combined})
    if len(m2s) > 1 and len(m3s) > 1:
        grid = torch.full((len(m3s), len(m2s)), math.nan)
        for r in combined:
            grid[m3s.index(r["m3"]), m2s.index(r["m2"])] = r["mean_acc"]
        fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(m2s), 1.2 + 0.8 * len(m3s)))
        image = ax.imshow(grid.numpy(), cmap="viridis", origin="lower")
        for i in range(len(m3s)):
            for j in range(len(m2s)):
                if not math.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="white", fontsize=8)
        ax.set_xticks(range(len(m2s)), [f"{v:g}" for v in m2s]), ax.set_yticks(range(len(m3s)), [f"{v:g}" for v in m3s])
        ax.set_xlabel("m2 (ArcFace)"), ax.set_ylabel("m3 (CosFace)"), ax.set_title("combined margin: mean test accuracy (%)")
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        written.append(f"{out_stem}_combined_heatmap.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def write_summary(rows: list[dict], out_csv: str) -> list[str]:
    """<stem>_summary.{csv,md} and plots; the regression and plots use plain-training-set runs only.
    With runs of --preset claims, also <stem>_comparison.{csv,md}."""
    stem = os.path.splitext(out_csv)[0]
    summary = summarize(rows)
    lines = [line for line in (recommend(rows, loss) for loss in ("arcface", "combined", "cosface", "sphereface")) if line]
    write_csv(f"{stem}_summary.csv", summary)
    atomic_write_text(f"{stem}_summary.md", markdown_table(summary) + "".join(f"\n{line}\n" for line in lines))
    for line in lines:
        print(line)
    plain = [r for r in summary if plain_training_set(r["imbalance"], r["holdout_classes"])]
    written = [f"{stem}_summary.csv", f"{stem}_summary.md", *plot_summary(plain, stem, [r for r in rows if is_plain(r)])]
    table = comparison_table(rows)
    if table:
        write_csv(f"{stem}_comparison.csv", table)
        markdown = comparison_markdown(table)
        atomic_write_text(f"{stem}_comparison.md", markdown)
        print(markdown)
        written += [f"{stem}_comparison.csv", f"{stem}_comparison.md"]
    return written


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/4, got {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise argparse.ArgumentTypeError(f"need 0 <= I < N, got {text!r}")
    return index, count


# Training-script flags the sweep passes on when given (default: the script's).
PASS_THROUGH = ("--data-root", "--max-train-samples", "--device", "--latent-dim", "--widths", "--convs-per-stage",
                "--batch-size", "--lr", "--bn-bias-lr", "--weight-decay", "--head-weight-decay", "--label-smoothing",
                "--margin-warmup", "--crop-padding", "--margin-tail", "--margin-grad",
                "--imbalance", "--holdout-classes", "--corruption-samples")
# On/off flags passed on as --flag / --no-flag when given.
SWITCHES = ("--embedding-bn", "--whiten", "--dirac-init", "--flip", "--flip-tta", "--amp")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="sweep_margins.py", description=__doc__)
    p.add_argument("--preset", choices=["table1", "claims"], default=None,
                   help="table1: the source paper's 40 MNIST settings; claims: every loss in the four scenarios of "
                        "the comparison table (clean + corruptions, imbalance 10 and 100, 2 held-out classes)")
    p.add_argument("--dataset", choices=sorted(SCRIPTS), default="mnist", help="which training script runs")
    p.add_argument("--losses", nargs="+", default=["arcface"], help=f"losses of a custom grid: {', '.join(LOSSES)}")
    for name, what in (("s", "scales"), ("m1", "SphereFace margins"), ("m2", "ArcFace margins"), ("m3", "CosFace margins")):
        p.add_argument(f"--{name}", nargs="+", type=float, default=None, help=f"{what} of a custom grid (default: the loss's)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds; each setting runs once per seed")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per run, the schedule scaled to them (default: the training script's; Table 1 used 20)")
    p.add_argument("--workers", type=int, default=1, help="runs at once on this machine; CPU threads are split between them")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads per worker (0: the machine's cores split between the workers)")
    p.add_argument("--group-size", type=int, default=1,
                   help="train up to this many margin settings of one (scenario, seed) together as one wide model "
                        "(common/grouped.py); 1: each alone. Opt-in: its speed-up is not yet measured on a GPU")
    p.add_argument("--shard", type=parse_shard, default="0/1", help="run only slice I of N (a job-array index)")
    p.add_argument("--out", default=None, help="results CSV (default results/sweep/<dataset>.csv); rows already in it are skipped")
    p.add_argument("--summarize", nargs="+", default=None, metavar="CSV",
                   help="train nothing: merge these CSVs into --out and summarise them")
    for flag in PASS_THROUGH:
        p.add_argument(flag, default=None, help=f"passed to the training script's {flag} (default: the script's)")
    for flag in SWITCHES:
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                       help=f"passed to the training script's {flag} (default: the script's)")
    p.add_argument("--corruptions", action="store_true", help="passed to the training script's --corruptions")
    p.add_argument("--dry-run", action="store_true", help="print the jobs this shard would run, and stop")
    return p


def base_config(args):
    """The training script's defaults with the pass-through flags applied, validated up front."""
    script = SCRIPTS[args.dataset]
    epochs = args.epochs if args.epochs is not None else script.DEFAULTS.epochs
    flags = ["--epochs", str(epochs), "--out", args.out]
    flags += ["--corruptions"] if args.corruptions else []
    for flag in PASS_THROUGH:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            flags += [flag, str(value)]
    for flag in SWITCHES:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            flags += [flag if value else f"--no-{flag[2:]}"]
    return parse_config(flags, script.DEFAULTS, "sweep_margins.py", "")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.out = args.out or os.path.join("results", "sweep", f"{args.dataset}.csv")
    if args.summarize:
        missing = [p for p in args.summarize if not os.path.isfile(p)]
        if missing:
            parser.error(f"--summarize: no such file {missing[0]}")
        # one row per (run settings, setting, scenario, seed): the same run in two shards counts once
        merged = {(signature(r), row_key(r)): r for path in args.summarize for r in read_rows(path)}
        rows = list(merged.values())
        write_csv(args.out, rows)
        for path in write_summary(rows, args.out):
            print(f"wrote {path}")
        return rows
    parser.check_losses(args.losses)
    parser.check_minimums(args, {"workers": 1, "threads": 0, "group_size": 1})
    grid = {"table1": table1_grid, "claims": claims_grid}.get(args.preset, lambda: custom_grid(args))()
    for _, s, m1, m2, m3 in grid:
        if s is not None:
            try:
                check_margins(s, m1, m2, m3)
            except ValueError as exc:
                parser.error(str(exc))
    base = base_config(args)  # exits 2 on a bad pass-through flag, before any data is read
    ungrouped = [name for name in UNGROUPED if getattr(base, name)]
    if args.group_size > 1 and ungrouped:
        parser.error(f"--group-size > 1 cannot train --{ungrouped[0].replace('_', '-')} (common/grouped.py does not "
                     "implement it); use --group-size 1")

    base_row = {k: "" if v is None else v for k, v in base.as_row().items()}
    scenarios = list(CLAIM_SCENARIOS.values()) if args.preset == "claims" else [scenario_of(base_row)]
    jobs = jobs_for(grid, args.seeds, args.shard, scenarios)
    wanted = signature({**base_row, "device": pick_device(base.device).type})
    done = {row_key(r) for r in read_rows(args.out) if signature(r) == wanted}
    todo = [job for job in jobs if job not in done]
    print(f"{len(grid)} settings x {len(scenarios)} scenarios x {len(args.seeds)} seeds; shard {args.shard[0]}/{args.shard[1]}: {len(jobs)} runs, "
          f"{len(jobs) - len(todo)} already in {args.out}, {len(todo)} to run", flush=True)
    if args.dry_run:
        for (loss, s, m1, m2, m3), (imbalance, holdout, corruptions), seed in todo:
            print(f"{loss} s={s} m1={m1} m2={m2} m3={m3} imbalance={imbalance:g} holdout_classes={holdout} "
                  f"corruptions={corruptions} seed={seed}")
        return []
    try:
        if todo:
            check_data(base, args.dataset)  # a missing or broken dataset is one line, before the first run
        run_sweep(group_jobs(todo, args.group_size), base, args.dataset, args.workers, args.threads)
    except DataError as exc:
        parser.exit(2, f"sweep_margins.py: error: {exc}\n")
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are in the CSV; rerun the same command to continue", file=sys.stderr)
        sys.exit(130)
    rows = read_rows(args.out)
    for path in write_summary(rows, args.out):
        print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
