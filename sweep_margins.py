"""Sweep margins: many training runs over a grid of (loss, s, m1, m2, m3) and seeds, resumable and
shardable, then a summary with error bars, plots, and a quadratic fit that recommends margins (those
live in common/sweep_summary.py).

    python sweep_margins.py --preset table1 --seeds 0 1 2 --data-root ../shared/data
    python sweep_margins.py --losses arcface cosface softmax --m2 0.3 0.5 --m3 0.2 0.35 --seeds 0 1
    python sweep_margins.py --preset table1 --shard 3/8 --out results/sweep/shard3.csv   # one job of 8
    python sweep_margins.py --summarize results/sweep/shard*.csv --out results/sweep/merged.csv
    python sweep_margins.py --summarize results/sweep/table1_20epochs.csv --baseline results/sweep/table1.csv \
        --out results/sweep/table1_20epochs.csv     # also: does the budget change the ranking?
    python sweep_margins.py --preset claims --seeds 0 1 2 --data-root ../shared/data   # the report's other claims
    python sweep_margins.py --preset claims --train-preset report --seeds 0 1   # ... on the report's network (float32)

--preset claims trains every loss at its default margins in four scenarios (clean with corrupted test
copies, long-tailed training sets at imbalance 10 and 100, and 2 held-out classes for open-set
verification) and writes a comparison table with the losses as rows.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import multiprocessing
import os
import signal
import sys
import threading
from dataclasses import replace

from tqdm import tqdm

import train_cifar10
import train_mnist
from common import LOSSES, MARGIN_DEFAULTS
from common.cli import OneLineErrorParser, parse_config
from common.checkpoints import FORMER_VALUES
from common.data import DATASETS, DataError, is_image_folder, list_image_folder
from common.heads import check_margins
from common.device import pick_device
from common.grouped import run_group, ungrouped_settings
from common.results import append_row, check_writable, environment_info, read_rows, write_csv
from common.sweep_summary import CLAIM_SCENARIOS, collapse_threshold, row_key, scenario_of, setting, table1_grid, write_summary
from common.training import DivergedError

SCRIPTS = {"mnist": train_mnist, "cifar10": train_cifar10}


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


# Fields besides (setting, scenario, seed) that must match for a row in the CSV to count as this sweep's run:
# every training setting that changes the result, and the device type (shuffling and augmentation draw
# from a different generator on CPU and CUDA, and CUDA uses TF32). The data root is left out, so a
# sweep can move folders; what it holds is the user's to keep the same.
SIGNATURE_KEYS = ("dataset", "epochs", "num_classes", "val_per_class", "max_train_samples", "train_subset", "latent_dim", "widths", "convs_per_stage",
                  "batch_size", "lr", "momentum", "weight_decay", "warmup", "triplet_margin", "image_size", "amp",
                  "corruption_samples", "device", "head_weight_decay", "label_smoothing", "embedding_bn", "whiten",
                  "dirac_init", "activation", "pool_first", "global_pool", "bn_scale", "bn_bias_lr", "lookahead",
                  "margin_warmup", "margin_tail", "margin_grad", "crop_padding", "flip", "flip_tta", "translate_tta")
# Values of columns that rows from before the column existed lack (the value they were run with), as in CSV text.
SIGNATURE_DEFAULTS = {key: str(value) for key, value in FORMER_VALUES.items()}
# Rows from before --crop-padding and --flip: the augmentation each script then hard-coded.
AUGMENT_DEFAULTS = {"mnist": {"crop_padding": "0", "flip": "False"}, "cifar10": {"crop_padding": "4", "flip": "True"}}


def signature(row: dict) -> tuple:
    defaults = {**SIGNATURE_DEFAULTS, **AUGMENT_DEFAULTS.get(str(row.get("dataset", "")), {})}
    return tuple(str(row.get(k, "")) or defaults.get(k, "") for k in SIGNATURE_KEYS)


def base_row(base) -> dict:
    """The sweep's base config as a results row (None as an empty cell, as in the CSV)."""
    return {k: "" if v is None else v for k, v in base.as_row().items()}


def run_signature(base) -> tuple:
    """The signature that this sweep's rows carry: its run settings and the device type it trains on."""
    return signature({**base_row(base), "device": pick_device(base.device).type})


def checkpoint_name(job: tuple, base) -> str:
    """A file name for one job's checkpoint under --checkpoint-dir: its setting, scenario and seed, and a
    hash of the sweep's run settings (the signature), so sweeps of other settings never share a file."""
    (loss, s, m1, m2, m3), (imbalance, holdout, corruptions), seed = job
    digest = hashlib.sha1(repr(run_signature(base)).encode()).hexdigest()[:10]
    margins = "" if s is None else f"-s{s:g}-m1{m1:g}-m2{m2:g}-m3{m3:g}"
    return f"{loss}{margins}-imb{imbalance:g}-held{holdout}{'-corr' if corruptions else ''}-seed{seed}-{digest}.pt"


def config_for(job: tuple, base, threads: int, checkpoint_dir: str | None = None):
    """The training config of one job; with `checkpoint_dir` it saves there after every epoch and resumes
    from there when an earlier sweep left the file (an interrupted run goes on from its last epoch)."""
    (loss, s, m1, m2, m3), (imbalance, holdout, corruptions), seed = job
    config = replace(base, loss=loss, s=s, m1=m1, m2=m2, m3=m3, seed=seed, threads=threads, progress=False,
                     imbalance=imbalance, holdout_classes=holdout, corruptions=corruptions)
    if checkpoint_dir is None:
        return config
    path = os.path.join(checkpoint_dir, checkpoint_name(job, base))
    return replace(config, checkpoint=path, resume=path if os.path.isfile(path) else None)


def record_diverged(config, exc: DivergedError) -> dict:
    """A diverged run's row: diverged=1 and no accuracy."""
    row = {**config.as_row(), "diverged": 1, "error": str(exc), "device": pick_device(config.device).type,
           **environment_info()}
    append_row(config.out, row)
    return row


def run_job(job: tuple, base, dataset: str, threads: int, checkpoint_dir: str | None = None) -> dict:
    """Train one (setting, scenario, seed); a diverged run becomes a row with diverged=1 and no accuracy."""
    config = config_for(job, base, threads, checkpoint_dir)
    try:
        return SCRIPTS[dataset].run(config)
    except DivergedError as exc:
        return record_diverged(config, exc)


def run_unit(unit: list[tuple], base, dataset: str, threads: int, checkpoint_dir: str | None = None) -> list[dict]:
    """One job alone, or several margin settings of one (scenario, seed) trained together (common/grouped.py;
    never with checkpoints: `main` refuses --group-size > 1 with --checkpoint-dir)."""
    if len(unit) == 1:
        return [run_job(unit[0], base, dataset, threads, checkpoint_dir)]
    configs = [config_for(job, base, threads) for job in unit]
    results = run_group(configs, DATASETS[dataset])
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
        DATASETS[dataset].load(base)


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


def run_sweep(units: list[list[tuple]], base, dataset: str, workers: int, threads: int = 0,
              checkpoint_dir: str | None = None) -> None:
    """Run the units (jobs already filtered to those not done), `workers` processes at a time, with one
    overall bar over jobs. `threads` is torch's CPU threads per worker; 0 splits the cores between workers.
    With `checkpoint_dir` every run saves after each epoch there and resumes from what it finds."""
    threads = threads or (0 if workers == 1 else max(1, (os.cpu_count() or 1) // workers))
    with tqdm(total=sum(map(len, units)), desc="sweep", unit="run") as bar:  # closed on Ctrl-C too
        if workers == 1:
            for unit in units:
                run_unit(unit, base, dataset, threads, checkpoint_dir)
                bar.update(len(unit))
            return
        context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
        with exit_on_sigterm(), context.Pool(workers, maxtasksperchild=1) as pool:  # workers end with the sweep
            for rows in pool.imap_unordered(_worker, [(unit, base, dataset, threads, checkpoint_dir) for unit in units]):
                bar.update(len(rows))


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
                "--batch-size", "--lr", "--momentum", "--warmup", "--bn-bias-lr", "--weight-decay",
                "--head-weight-decay", "--label-smoothing", "--triplet-margin", "--margin-warmup", "--crop-padding",
                "--activation", "--global-pool", "--margin-tail", "--margin-grad", "--image-size", "--imbalance",
                "--holdout-classes", "--corruption-samples", "--eval-every", "--num-classes", "--val-per-class")
# On/off flags passed on as --flag / --no-flag when given.
SWITCHES = ("--embedding-bn", "--whiten", "--dirac-init", "--pool-first", "--bn-scale", "--lookahead", "--flip",
            "--flip-tta", "--translate-tta", "--amp")


def collapse_below(args, rows: list[dict]) -> float:
    """--collapse-below as given, or the default of the rows' dataset."""
    return collapse_threshold(rows) if args.collapse_below is None else args.collapse_below


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="sweep_margins.py", description=__doc__)
    p.add_argument("--preset", choices=["table1", "claims"], default=None,
                   help="table1: the source paper's 40 MNIST settings; claims: every loss in the four scenarios of "
                        "the comparison table (clean + corruptions, imbalance 10 and 100, 2 held-out classes)")
    p.add_argument("--dataset", choices=sorted(SCRIPTS), default="mnist", help="which training script runs")
    p.add_argument("--train-preset", choices=["default", *sorted({n for m in SCRIPTS.values() for n in m.PRESETS})],
                   default="default",
                   help="the training script's named defaults that every run starts from (its --preset): default, "
                        "the recipe; report, the source report's network and schedule; flags given here override them")
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
    p.add_argument("--baseline", nargs="+", default=None, metavar="CSV",
                   help="with --summarize: also compare, setting by setting, with these rows (the same settings at "
                        "another budget, for example Table 1 at 4 epochs against 20) in <out stem>_budget.md")
    p.add_argument("--collapse-below", type=float, default=None, metavar="PERCENT",
                   help="the summary counts a finished run below this test accuracy (%%) as collapsed, apart from "
                        "diverged runs (default: the rows' dataset's, 95 for MNIST and 50 for CIFAR-10)")
    for flag in PASS_THROUGH:
        p.add_argument(flag, default=None, help=f"passed to the training script's {flag} (default: the script's)")
    for flag in SWITCHES:
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                       help=f"passed to the training script's {flag} (default: the script's)")
    p.add_argument("--corruptions", action="store_true", help="passed to the training script's --corruptions")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="each run saves a checkpoint here after every epoch, and a rerun of the sweep resumes an "
                        "interrupted run from it instead of starting it again (default: no checkpoints)")
    p.add_argument("--dry-run", action="store_true", help="print the jobs this shard would run, and stop")
    return p


def base_config(args):
    """The training script's defaults (or its --train-preset) with the pass-through flags applied, validated
    up front."""
    script = SCRIPTS[args.dataset]
    flags = ["--preset", args.train_preset, "--out", args.out]
    flags += ["--epochs", str(args.epochs)] if args.epochs is not None else []  # else the preset's
    flags += ["--corruptions"] if args.corruptions else []
    for flag in PASS_THROUGH:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            flags += [flag, str(value)]
    for flag in SWITCHES:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            flags += [flag if value else f"--no-{flag[2:]}"]
    return parse_config(flags, script.DEFAULTS, "sweep_margins.py", "", script.PRESETS)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.out = args.out or os.path.join("results", "sweep", f"{args.dataset}.csv")
    if args.collapse_below is not None and not 0 <= args.collapse_below <= 100:
        parser.error(f"--collapse-below must be a test accuracy in percent, 0 to 100 (got {args.collapse_below:g})")
    if args.summarize:
        for flag, paths in (("--summarize", args.summarize), ("--baseline", args.baseline or [])):
            missing = [p for p in paths if not os.path.isfile(p)]
            if missing:
                parser.error(f"{flag}: no such file {missing[0]}")
        # one row per (run settings, setting, scenario, seed): the same run in two shards counts once
        merged = {(signature(r), row_key(r)): r for path in args.summarize for r in read_rows(path)}
        rows = list(merged.values())
        write_csv(args.out, rows)
        baseline = [r for path in args.baseline or [] for r in read_rows(path)]
        for path in write_summary(rows, args.out, collapse_below(args, rows), baseline):
            print(f"wrote {path}")
        return rows
    if args.baseline:
        parser.error("--baseline needs --summarize")
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
    ungrouped = ungrouped_settings(base)
    if args.group_size > 1 and ungrouped:
        name, value = ungrouped[0].replace("_", "-"), getattr(base, ungrouped[0])
        given = f"--{name}" if value is True else f"--no-{name}" if value is False else f"--{name} {value}"
        parser.error(f"--group-size > 1 cannot train {given} (common/grouped.py does not implement it); "
                     "use --group-size 1")
    if args.group_size > 1 and args.checkpoint_dir:
        parser.error("--checkpoint-dir needs --group-size 1 (grouped training saves no checkpoints)")
    if args.checkpoint_dir:
        try:
            check_writable(args.checkpoint_dir, "--checkpoint-dir", folder=True)
        except ValueError as exc:
            parser.error(str(exc))

    scenarios = list(CLAIM_SCENARIOS.values()) if args.preset == "claims" else [scenario_of(base_row(base))]
    jobs = jobs_for(grid, args.seeds, args.shard, scenarios)
    wanted = run_signature(base)
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
        run_sweep(group_jobs(todo, args.group_size), base, args.dataset, args.workers, args.threads, args.checkpoint_dir)
    except DataError as exc:
        parser.exit(2, f"sweep_margins.py: error: {exc}\n")
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are in the CSV; rerun the same command to continue", file=sys.stderr)
        sys.exit(130)
    rows = read_rows(args.out)
    for path in write_summary(rows, args.out, collapse_below(args, rows)):
        print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
