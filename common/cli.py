"""The training scripts' command line: the flags of TrainConfig, --preset, one-line errors (exit 2) for
bad values before any data is read, and `cli_main`, which runs a script and turns its expected failures
into one-line errors."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields, replace

import torch

from .config import TrainConfig
from .data import DataError
from .device import device_flag, pick_device
from .heads import LOSSES
from .results import RowNotWrittenError
from .training import DivergedError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the script's docstring as written, and end each flag's help with its default as a user
    would type it: '64-256-64', '0/1', 'arcface 0.5' for lists, 'off' for a switch. A help text
    that already says its default, and a default of None, get nothing added."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS, []) or not action.option_strings:
            return text
        if isinstance(action, argparse.BooleanOptionalAction):  # --x / --no-x: on or off as the default says
            return f"{text} (default: {'on' if action.default else 'off'})"
        if action.nargs == 0:  # store_true / store_false: the switch is off unless given
            return f"{text} (default: off)"
        default = action.default
        if isinstance(default, (list, tuple)) and action.nargs in ("+", "*"):
            default = " ".join(map(str, default))
        return f"{text} (default: {str(default).replace('%', '%%')})"


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line on stderr and exits with status 2, and takes no
    abbreviations (so `--seed` never silently means `--seeds`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_known_args(self, args=None, namespace=None):
        """As argparse's, but a list flag (nargs + or *) given twice is an error: argparse would keep only the
        last list (`--losses a b --losses c` -> c) without a word."""
        argv = sys.argv[1:] if args is None else list(args)
        for action in self._actions:
            if action.nargs in ("+", "*") and action.option_strings:
                given = [a for a in argv if a.split("=", 1)[0] in action.option_strings]
                if len(given) > 1:
                    self.error(f"{action.option_strings[0]} is given {len(given)} times; give it once with every value "
                               f"(a second list would replace the first)")
        return super().parse_known_args(args, namespace)

    def check_losses(self, losses: list[str]) -> None:
        """Exit 2 naming the first entry of --losses that is not a known loss."""
        unknown = [loss for loss in losses if loss not in LOSSES]
        if unknown:
            self.error(f"--losses: unknown loss {unknown[0]!r}; choose from {', '.join(LOSSES)}")

    def check_minimums(self, args: argparse.Namespace, minimums: dict[str, int]) -> None:
        """Exit 2 naming the first flag (by its dest, in the given order) whose value is below its minimum."""
        for dest, low in minimums.items():
            value = getattr(args, dest)
            if value < low:
                self.error(f"--{dest.replace('_', '-')} must be >= {low}, got {value}")

    def device(self, requested: str) -> torch.device:
        """The --device to use; exit 2 if it is unavailable."""
        try:
            return pick_device(requested)
        except ValueError as exc:
            self.error(str(exc))


def _positive_int_list(text: str) -> tuple[int, ...]:
    """'64-256-64' or '64,256,64' -> (64, 256, 64): one argument, integers joined by '-' or ','."""
    try:
        return tuple(int(part) for part in text.replace(",", "-").split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers joined by '-' or ',' such as 64-256-64, got {text!r}") from None


def field_flag(parser: argparse.ArgumentParser, f, default) -> None:
    """The flag of one TrainConfig field, from its type, its `setting` help and choices, and `default`: a switch
    (--x / --no-x) for a bool, a typed value otherwise. Bounds are checked by `TrainConfig.validate`."""
    kind = f.type.__name__ if isinstance(f.type, type) else str(f.type).split(" | ")[0]  # 'float | None' -> 'float'
    flag = "--" + f.name.replace("_", "-")
    if kind == "bool":
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=f.metadata["help"])
        return
    choices = f.metadata.get("choices")
    parser.add_argument(flag, type={"int": int, "float": float, "str": str}[kind], default=default,
                        choices=list(choices) if choices else None, help=f.metadata["help"])


def build_parser(prog: str, defaults: TrainConfig, description: str) -> argparse.ArgumentParser:
    """Every field of `defaults` (TrainConfig or a subclass) as a flag: generated from the field (`field_flag`)
    unless its `setting` says flag=False; those few are written here by hand."""
    d = defaults
    p = OneLineErrorParser(prog=prog, description=description)
    described = {f.name: f.metadata.get("help", "") for f in fields(d)}
    # SUPPRESS: an absent margin flag leaves the config's None, i.e. the named loss's default.
    for name in ("s", "m1", "m2", "m3"):
        p.add_argument(f"--{name}", type=float, default=argparse.SUPPRESS, help=described[name])
    p.add_argument("--widths", type=_positive_int_list, default="-".join(map(str, d.widths)), help=described["widths"])
    p.add_argument("--device", default=d.device, type=device_flag, help=described["device"])
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=d.amp,
                   help=described["amp"] + " (default: " + ("on where bfloat16 is native" if d.amp is None
                                                            else "on" if d.amp else "off") + ")")
    p.add_argument("--no-download", dest="download", action="store_false", help="never download; fail if the data is missing")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm progress bars")
    for f in fields(d):
        if f.metadata.get("flag", True):
            field_flag(p, f, getattr(d, f.name))
    return p


def parse_config(argv: list[str] | None, defaults: TrainConfig, prog: str, description: str,
                 presets: dict[str, TrainConfig] | None = None) -> TrainConfig:
    """Parse the command line; a flag argparse cannot read prints one line and exits with 2 (the values are
    validated when the run starts, `training.start`, also as one line and exit 2).

    `presets` maps --preset names to other defaults (for example the source report's setting); the
    other flags given override the chosen preset's values."""
    presets = {defaults.preset: defaults, **(presets or {})}
    chooser = OneLineErrorParser(prog=prog, add_help=False)
    chooser.add_argument("--preset", choices=sorted(presets), default=defaults.preset)
    chosen = presets[chooser.parse_known_args(argv)[0].preset]
    parser = build_parser(prog, chosen, description)
    parser.add_argument("--preset", choices=sorted(presets), default=defaults.preset,
                        help="named defaults: " + "; ".join(f"{name}: {presets[name].preset_help()}"
                                                            for name in sorted(presets)))
    args = vars(parser.parse_args(argv))
    known = {f.name for f in fields(chosen)}
    # named, not yet validated: the run validates its settings once, first thing (`training.start`)
    return replace(chosen, **{k: v for k, v in args.items() if k in known}).named()


def fail(prog: str, message: str, code: int) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


def cli_main(run, defaults: TrainConfig, prog: str, description: str, argv: list[str] | None = None,
             presets: dict[str, TrainConfig] | None = None) -> dict:
    """Parse flags (--preset picks one of `presets` as the defaults), call run(config), and turn the
    expected failures into one-line errors."""
    config = parse_config(argv, defaults, prog, description, presets)
    try:
        return run(config)
    except (DataError, ValueError) as exc:
        fail(prog, str(exc), 2)
    except DivergedError as exc:  # name a checkpoint only when one was written (after the first epoch)
        kept = (f"; the last good checkpoint is {config.checkpoint}" if config.checkpoint and
                os.path.isfile(config.checkpoint) else "")
        fail(prog, f"{exc}: stopped, no result row written{kept}", 1)
    except (RowNotWrittenError, OSError) as exc:  # a full disk at a checkpoint or at the results
        fail(prog, str(exc), 1)
    except KeyboardInterrupt:
        hint = (f"; continue with --resume {config.checkpoint}" if config.checkpoint and
                os.path.isfile(config.checkpoint) else "")
        print(f"\n{prog}: interrupted{hint}", file=sys.stderr)
        sys.exit(130)
