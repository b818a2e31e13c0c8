"""Sweep margins: many training runs over a grid of (loss, s, m1, m2, m3) and seeds, resumable and
shardable, then a summary with error bars, plots, and a quadratic fit that recommends margins (those
live in common/summary.py and common/plots.py).

    python sweep_margins.py --grid table1 --seeds 0 1 2 --data-root ../shared/data
    python sweep_margins.py --losses arcface cosface softmax --m2 0.3 0.5 --m3 0.2 0.35 --seeds 0 1
    python sweep_margins.py --dataset folder --data-root path/to/images --losses softmax arcface --workers 2
    python sweep_margins.py --grid table1 --shard 3/8 --out results/sweep/shard3.csv   # one job of 8
    python sweep_margins.py --summarize results/sweep/shard*.csv --out results/sweep/merged.csv
    python sweep_margins.py --summarize results/sweep/table1_20epochs.csv --baseline results/sweep/table1.csv \\
        --out results/sweep/table1_20epochs.csv     # also: does the budget change the ranking?
    python sweep_margins.py --grid claims --seeds 0 1 2 --data-root ../shared/data   # the report's other claims
    python sweep_margins.py --grid claims --preset report --seeds 0 1   # ... on the report's network (float32)

Every flag of the training script that the sweep does not set per run (python train_mnist.py --help:
--epochs, --lr, --data-root, --num-classes, ...) is passed to every run as given. --grid claims trains
every loss at its default margins in four scenarios (clean with corrupted test copies, long-tailed
training sets at imbalance 10 and 100, and 2 held-out classes for open-set verification) and writes a
comparison table with the losses as rows.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
from dataclasses import replace

from tqdm import tqdm

import train_cifar10
import train_mnist
from common import LOSSES, MARGIN_DEFAULTS
from common.cli import OneLineErrorParser, parse_config
from common.data import DATASETS, DataError
from common.grouping import collapse_threshold
from common.heads import check_margins
from common.image_folder import is_image_folder, list_image_folder
from common.jobs import claimed, config_for, job_name, record_diverged, set_aside
from common.merge import merge_into_out, published_together, read_summary_rows, usable
from common.results import CsvDamageError, RowNotWrittenError, check_writable, read_rows
from common.rows import CLAIM_SCENARIOS, PLAIN, Job, run_key, scenario_of, setting, table1_grid
from common.summary import write_summary
from common.training import DivergedError
from common.workers import WorkerDied, exit_on_sigterm, run_in_processes

# --dataset: which training script every run uses; "folder" is any RGB image folder (--data-root), read as cifar10 is
SCRIPTS = {"mnist": train_mnist, "cifar10": train_cifar10, "folder": train_cifar10}
# Training flags a sweep sets per run itself, and the flag of the sweep to use instead.
SET_PER_RUN = {"--loss": "--losses", "--s": "--s", "--m1": "--m1", "--m2": "--m2", "--m3": "--m3",
               "--seed": "--seeds", "--checkpoint": "--checkpoint-dir", "--resume": "--checkpoint-dir"}


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


def jobs_for(grid: list[tuple], seeds: list[int], shard: tuple[int, int], scenarios: list[tuple] = (PLAIN,)) -> list[Job]:
    """All jobs in a fixed order, then every N-th from index I: shards are disjoint and cover all."""
    index, count = shard
    everything = (Job(g, scenario, seed) for scenario in scenarios for g in grid for seed in seeds)
    return [job for i, job in enumerate(everything) if i % count == index]


def run_job(job: Job, base, dataset: str, threads: int, checkpoint_dir: str | None = None) -> dict | None:
    """Train one job, unless its row is already in --out or another sweep is running it (None then); a
    diverged run becomes a row with diverged=1 and no accuracy."""
    config = config_for(job, base, threads, checkpoint_dir)
    with claimed(config) as mine:
        done = {run_key(r) for r in read_rows(config.out)}
        if not mine or run_key(config.as_row()) in done:
            return None
        try:
            try:
                return SCRIPTS[dataset].run(config)
            except ValueError as exc:  # the run reads its checkpoint once, first thing: only that file is at fault
                if config.resume is None or not str(exc).startswith(f"--resume {config.resume} "):
                    raise
                return SCRIPTS[dataset].run(set_aside(config, exc))
        except DivergedError as exc:
            return record_diverged(config, exc)


def check_data(base, dataset: str) -> None:
    """Raise DataError if the training script could not read its dataset: an image folder is listed and
    checked (no image decoded); a torchvision dataset is loaded (downloaded if missing and allowed)."""
    if is_image_folder(base.data_root):
        list_image_folder(base.data_root)
    else:
        DATASETS[dataset].load(base)


def run_sweep(jobs: list[Job], base, dataset: str, workers: int, threads: int = 0,
              checkpoint_dir: str | None = None) -> tuple[int, list[str]]:
    """Run the jobs (already filtered to those not done), `workers` processes at a time (`common.workers`),
    with one overall bar. `threads` is torch's CPU threads per worker; 0 splits the cores between workers.
    With `checkpoint_dir` every run saves after each epoch there and resumes from what it finds. Returns how
    many jobs another sweep on the same --out had in progress (skipped here), and one line per job whose
    worker died (the others go on)."""
    threads = threads or (0 if workers == 1 else max(1, (os.cpu_count() or 1) // workers))
    skipped, failed = 0, []
    with tqdm(total=len(jobs), desc="sweep", unit="run") as bar:  # closed on Ctrl-C too
        def done(task, row):
            nonlocal skipped
            if isinstance(row, WorkerDied):
                failed.append(f"{job_name(config_for(task[0], base))}: {row}")
                tqdm.write(f"sweep_margins.py: run {failed[-1]}; the sweep goes on", file=sys.stderr)
            skipped += row is None
            bar.update(1)

        tasks = [(job, base, dataset, threads, checkpoint_dir) for job in jobs]
        if workers == 1:
            for task in tasks:
                done(task, run_job(*task))
        else:
            with exit_on_sigterm():  # `kill` of the sweep ends its workers too
                run_in_processes(run_job, tasks, workers, done)
    return skipped, failed


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/4, got {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise argparse.ArgumentTypeError(f"need 0 <= I < N, got {text!r}")
    return index, count


def collapse_below(args, rows: list[dict]) -> float:
    """--collapse-below as given, or the default of the rows' dataset."""
    return collapse_threshold(rows) if args.collapse_below is None else args.collapse_below


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="sweep_margins.py", description=__doc__)
    p.add_argument("--grid", choices=["table1", "claims"], default=None,
                   help="a named grid instead of --losses and the margins: table1: the source paper's 40 MNIST "
                        "settings; claims: every loss in the four scenarios of "
                        "the comparison table (clean + corruptions, imbalance 10 and 100, 2 held-out classes)")
    p.add_argument("--dataset", choices=sorted(SCRIPTS), default="mnist",
                   help="mnist, cifar10, or folder: your own RGB image folder given as --data-root (train/<class>/*, "
                        "test/<class>/*), its rows and files named after the folder")
    p.add_argument("--preset", choices=["default", *sorted({n for m in SCRIPTS.values() for n in m.PRESETS})],
                   default="default",
                   help="the training script's named defaults that every run starts from, as its own --preset: "
                        "default, the recipe; the others as the script's --help says; training flags given override them")
    p.add_argument("--losses", nargs="+", default=["arcface"], help=f"losses of a custom grid: {', '.join(LOSSES)}")
    for name, what in (("s", "scales"), ("m1", "SphereFace margins"), ("m2", "ArcFace margins"), ("m3", "CosFace margins")):
        p.add_argument(f"--{name}", nargs="+", type=float, default=None, help=f"{what} of a custom grid (default: the loss's)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds; each setting runs once per seed")
    p.add_argument("--workers", type=int, default=1, help="runs at once on this machine; CPU threads are split between them")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads per worker (0: the machine's cores split between the workers)")
    p.add_argument("--shard", type=parse_shard, default="0/1", help="run only slice I of N (a job-array index)")
    p.add_argument("--out", default=None,
                   help="results CSV (default runs/sweep/<dataset>.csv, an image folder's own name as the dataset; with "
                        "--summarize, the first CSV given, which keeps every row it had); rows already in it are skipped")
    p.add_argument("--summarize", nargs="+", default=None, metavar="CSV",
                   help="train nothing: merge these CSVs into --out and summarise them")
    p.add_argument("--baseline", nargs="+", default=None, metavar="CSV",
                   help="with --summarize: also compare, setting by setting, with these rows (the same settings at "
                        "another budget, for example Table 1 at 4 epochs against 20) in <out stem>_budget.md")
    p.add_argument("--collapse-below", type=float, default=None, metavar="PERCENT",
                   help="the summary counts a finished run below this test accuracy (%%) as collapsed, apart from "
                        "diverged runs (default: the rows' dataset's, 95 for MNIST and 50 for CIFAR-10)")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="each run saves a checkpoint here after every epoch, and a rerun of the sweep resumes an "
                        "interrupted run from it instead of starting it again (default: no checkpoints)")
    p.add_argument("--dry-run", action="store_true", help="print the jobs this shard would run, and stop")
    return p


def base_config(args, training_flags: list[str], parser: OneLineErrorParser):
    """The training script's defaults (or its --preset) with the training flags given to the sweep
    applied, validated up front (one line and exit 2 for a bad one, before any data is read)."""
    for flag in training_flags:
        name = flag.split("=")[0]
        if name in SET_PER_RUN:
            parser.error(f"{name} is set per run by the sweep; use {SET_PER_RUN[name]}")
    script = SCRIPTS[args.dataset]
    flags = ["--preset", args.preset, *(["--out", args.out] if args.out else []), *training_flags]
    base = parse_config(flags, script.DEFAULTS, "sweep_margins.py", "", script.PRESETS).resolved()
    if args.dataset == "folder" and not is_image_folder(base.data_root):
        parser.error(f"--dataset folder needs --data-root to be an image folder (train/<class>/*, test/<class>/*); "
                     f"{base.data_root} is not one")
    if not args.out:  # named after what it trains on: an image folder by its own name
        args.out = os.path.join("runs", "sweep", f"{base.dataset}.csv")
        base = replace(base, out=args.out)
    try:
        base.validate()
        check_writable(base.out, "--out", companions=(".lock",))
    except ValueError as exc:
        parser.error(str(exc))
    return base


def summarize_only(args, parser: OneLineErrorParser) -> list[dict]:
    for flag, paths in (("--summarize", args.summarize), ("--baseline", args.baseline or [])):
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            parser.error(f"{flag}: no such file {missing[0]}")
    rows = read_summary_rows(args.summarize)
    if not rows:
        parser.error(f"--summarize: no usable rows in {', '.join(args.summarize)}")
    baseline = [r for path in args.baseline or [] for r in read_rows(path) if usable(r)]
    with published_together(args.out) as staged:  # all new files appear together, or none
        merged = merge_into_out(args.out, args.summarize, rows, write_to=staged)
        written = write_summary(merged, staged, collapse_below(args, merged), baseline)
    for path in written:
        print(f"wrote {os.path.join(os.path.dirname(args.out), os.path.basename(path))}")
    return merged


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args, training_flags = parser.parse_known_args(argv)
    if args.collapse_below is not None and not 0 <= args.collapse_below <= 100:
        parser.error(f"--collapse-below must be a test accuracy in percent, 0 to 100 (got {args.collapse_below:g})")
    if args.summarize:
        if training_flags:
            parser.error(f"unrecognized arguments: {' '.join(training_flags)}")
        args.out = args.out or args.summarize[0]  # beside the (first) input, named after it; the input is kept
        return summarize_only(args, parser)
    if args.baseline:
        parser.error("--baseline needs --summarize")
    parser.check_losses(args.losses)
    parser.check_minimums(args, {"workers": 1, "threads": 0})
    grid = {"table1": table1_grid, "claims": claims_grid}.get(args.grid, lambda: custom_grid(args))()
    for _, s, m1, m2, m3 in grid:
        if s is not None:
            try:
                check_margins(s, m1, m2, m3)
            except ValueError as exc:
                parser.error(str(exc))
    base = base_config(args, training_flags, parser)  # exits 2 on a bad training flag, before any data is read
    if args.checkpoint_dir:
        try:
            check_writable(args.checkpoint_dir, "--checkpoint-dir", folder=True)
        except ValueError as exc:
            parser.error(str(exc))
    scenarios = list(CLAIM_SCENARIOS.values()) if args.grid == "claims" else [scenario_of(base.as_row())]
    jobs = jobs_for(grid, args.seeds, args.shard, scenarios)
    try:
        done = {run_key(r) for r in read_rows(args.out, strict=True)}
    except CsvDamageError as exc:
        parser.exit(2, f"sweep_margins.py: error: {exc}\n")
    todo = [job for job in jobs if run_key(config_for(job, base).as_row()) not in done]
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
        skipped, failed = run_sweep(todo, base, args.dataset, args.workers, args.threads, args.checkpoint_dir)
    except (DataError, ValueError) as exc:
        parser.exit(2, f"sweep_margins.py: error: {exc}\n")
    except (RowNotWrittenError, OSError) as exc:  # --out replaced by a folder, a full disk: the row is printed
        parser.exit(1, f"sweep_margins.py: error: {exc}\n")
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are in the CSV; rerun the same command to continue", file=sys.stderr)
        sys.exit(130)
    if skipped:
        print(f"{skipped} runs were done or in progress in another sweep on {args.out}: skipped here", flush=True)
    rows = read_rows(args.out)
    for path in write_summary(rows, args.out, collapse_below(args, rows)):
        print(f"wrote {path}")
    if failed:
        print(f"sweep_margins.py: {len(failed)} runs failed, their workers died: {'; '.join(failed)}; "
              "rerun the same command to retry them", file=sys.stderr)
        sys.exit(1)
    return rows


if __name__ == "__main__":
    main()
