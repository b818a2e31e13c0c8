"""A seeded hyper-parameter search, fixed before its first trial: the same number of trials for every loss,
each trial a point of a Latin hypercube over that loss's ranges (every range is cut into `trials` equal
strata and each stratum is used exactly once, so 8 trials cover each setting's range evenly, as a grid of
8 values would, while the settings vary together).

    python -m common.search                  # the trials of results/README.md "A fair trial", one per line
    python -m common.search --trials 8 --seed 0 --arms softmax arcface
    python -m common.search --pick results/tinyimagenet/tuning.csv --figure results/tinyimagenet/tuning.png
    python -m common.search --arms triplet --trials 4       # triplet loss's learning rate, searched apart
    python -m common.search --trial results/tinyimagenet/trial.csv --figure results/tinyimagenet/trial.png

Each line holds the sweep flags of one trial (`--losses arcface --s 21.3 --m2 0.284 --lr 0.0731`); trials are
interleaved across losses (trial 0 of every loss, then trial 1, ...), so a search stopped part-way has given
every loss the same number of trials, give or take one.
"""
from __future__ import annotations

import argparse
import os
import random

from .arms import ARMS, TRIAL_ARMS, arm_of
from .comparisons import ARM_FIELDS, arms_against_softmax
from .plots import plot_arm_gains, plot_trials
from .results import read_rows
from .rows import accuracy_of, run_key

# One range per setting: (low, high, scale). 'log': uniform in log(value), for settings that act by ratio.
RANGES = {"lr": (0.025, 0.4, "log"), "label_smoothing": (0.0, 0.2, "linear"), "s": (8.0, 64.0, "log"),
          "m2": (0.1, 0.5, "linear"), "m3": (0.1, 0.5, "linear")}
SWEEP_FLAGS = ("s", "m1", "m2", "m3")  # set by the sweep's own grid flags; the others are training flags


def scaled(unit: float, low: float, high: float, scale: str) -> float:
    """A point of [0, 1) mapped onto [low, high), uniformly or uniformly in log; 3 significant digits."""
    value = low * (high / low) ** unit if scale == "log" else low + unit * (high - low)
    return float(f"{value:.3g}")


def latin_hypercube(names: tuple[str, ...], trials: int, rng: random.Random) -> list[dict]:
    """`trials` points; for each setting, one random point in each of its `trials` strata, in a random order."""
    columns = {}
    for name in names:
        strata = list(range(trials))
        rng.shuffle(strata)
        columns[name] = [scaled((k + rng.random()) / trials, *RANGES[name]) for k in strata]
    return [{name: columns[name][i] for name in names} for i in range(trials)]


def draw(arm: str, trials: int, seed: int) -> list[dict]:
    """The trials of one arm: its tuned settings drawn (`latin_hypercube`) with its fixed ones added. The
    generator is seeded by (seed, arm), so adding an arm never changes another's trials."""
    loss, fixed, names = ARMS[arm]
    rng = random.Random(f"{seed}:{arm}")
    return [{**point, **fixed} for point in latin_hypercube(names, trials, rng)]


def flags(arm: str, trial: dict) -> str:
    """One trial as sweep_margins.py flags."""
    parts = ["--losses", ARMS[arm][0]]
    for name, value in sorted(trial.items(), key=lambda item: item[0] not in SWEEP_FLAGS):
        parts += [f"--{name.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else value]
    return " ".join(parts)


def plan(arms: list[str], trials: int, seed: int) -> list[str]:
    """Every trial's flags, interleaved across arms."""
    drawn = {arm: draw(arm, trials, seed) for arm in arms}
    return [flags(arm, drawn[arm][i]) for i in range(trials) for arm in arms]


def trials_by_arm(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows of a search grouped by arm, in ARMS' order, each run once; rows without a result left out."""
    grouped: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for row in {run_key(r): r for r in rows}.values():
        if arm_of(row) and accuracy_of(row) is not None:
            grouped[arm_of(row)].append(row)
    return {arm: found for arm, found in grouped.items() if found}


def chosen(rows: list[dict]) -> dict[str, dict]:
    """Each arm's trial with the highest validation top-1 (the rule of results/README.md "A fair trial")."""
    return {arm: max(found, key=accuracy_of) for arm, found in trials_by_arm(rows).items()}


def choice_flags(arm: str, row: dict) -> str:
    """The flags that train an arm's chosen trial again (`flags` of its tuned settings)."""
    return flags(arm, {name: float(row[name]) for name in ARMS[arm][2]} | ARMS[arm][1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m common.search", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(TRIAL_ARMS),
                   help=f"what to tune (default: {' '.join(TRIAL_ARMS)}): " + "; ".join(f"{a}: {', '.join(n)}" for a, (_, _, n) in ARMS.items()))
    p.add_argument("--trials", type=int, default=8, help="trials per arm (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default: 0)")
    p.add_argument("--pick", metavar="CSV", default=None,
                   help="draw nothing: print each arm's chosen trial in this CSV of trials (the highest validation "
                        "top-1), as flags, and its trial count")
    p.add_argument("--trial", metavar="CSV", default=None,
                   help="draw nothing: draw the arms of this CSV of the trial's runs, each minus its softmax arm, "
                        "into --figure (plots.plot_arm_gains; the numbers of its kind=arms table)")
    p.add_argument("--figure", metavar="PNG", default=None,
                   help="with --pick: also draw the trials (plots.plot_trials); with --trial: the figure to write")
    args = p.parse_args(argv)
    if args.trials < 1:
        p.exit(2, f"{p.prog}: error: --trials must be >= 1, got {args.trials}\n")
    if args.pick and args.trial:
        p.exit(2, f"{p.prog}: error: --trial: give --pick or --trial, not both\n")
    if args.figure and not (args.pick or args.trial):
        p.exit(2, f"{p.prog}: error: --figure: needs --pick or --trial\n")
    for flag, path in (("--pick", args.pick), ("--trial", args.trial)):
        if path and not os.path.isfile(path):
            p.exit(2, f"{p.prog}: error: {flag}: no such file {path}\n")
    if args.trial:
        if not args.figure:
            p.exit(2, f"{p.prog}: error: --trial: needs --figure PNG\n")
        try:
            lines = arms_against_softmax(read_rows(args.trial, strict=True))
        except ValueError as exc:
            p.exit(2, f"{p.prog}: error: --trial: {exc}\n")
        print(f"wrote {plot_arm_gains(lines, ARM_FIELDS, args.figure)}")
        return
    if args.pick:
        rows = read_rows(args.pick, strict=True)
        grouped = trials_by_arm(rows)
        if not grouped:  # e.g. only batch-hard triplet rows: no arm trains like that
            p.exit(2, f"{p.prog}: error: --pick: {args.pick} holds no finished trial of an arm "
                      f"({', '.join(ARMS)}; triplet mines semi-hard negatives)\n")
        for arm, row in chosen(rows).items():
            if row.get("val_per_class") in ("", "0", 0, None):
                p.exit(2, f"{p.prog}: error: --pick: trial {row.get('run_id')} scored the test set; trials are chosen "
                          f"on validation data only\n")
            print(f"{arm}: {len(grouped[arm])} trials, chosen {100 * accuracy_of(row):.2f}%: {choice_flags(arm, row)}")
        if args.figure:
            print(f"wrote {plot_trials(grouped, args.figure, {k: RANGES[k][:2] for k in ('lr', 'm2', 'm3')})}")
        return
    for line in plan(args.arms, args.trials, args.seed):
        print(line)


if __name__ == "__main__":
    main()
