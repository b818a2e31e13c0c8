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
from .heads import LOSSES, MARGIN_GRADS, TAILS
from .network import ACTIVATIONS, GLOBAL_POOLS
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


def build_parser(prog: str, defaults: TrainConfig, description: str) -> argparse.ArgumentParser:
    d = defaults
    p = OneLineErrorParser(prog=prog, description=description)
    p.add_argument("--loss", default=d.loss, help=f"training loss: {', '.join(LOSSES)}")
    # SUPPRESS: an absent margin flag leaves the config's None, i.e. the named loss's default.
    p.add_argument("--s", type=float, default=argparse.SUPPRESS, help="scale s of the margin logits (default: the loss's, 30)")
    p.add_argument("--m1", type=float, default=argparse.SUPPRESS, help="SphereFace multiplicative angular margin, >= 1 (default: the loss's)")
    p.add_argument("--m2", type=float, default=argparse.SUPPRESS, help="ArcFace additive angular margin in radians, [0, pi) (default: the loss's)")
    p.add_argument("--m3", type=float, default=argparse.SUPPRESS, help="CosFace additive cosine margin, >= 0 (default: the loss's)")
    p.add_argument("--triplet-margin", type=float, default=d.triplet_margin, help="margin of the batch-hard triplet loss")
    p.add_argument("--latent-dim", type=int, default=d.latent_dim, help="embedding dimension")
    p.add_argument("--widths", type=_positive_int_list, default="-".join(map(str, d.widths)),
                   help="conv widths per stage: one argument, integers joined by '-' or ',', e.g. 64-256-64")
    p.add_argument("--convs-per-stage", type=int, default=d.convs_per_stage, help="3x3 convs per stage")
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch size")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate of SGD")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD Nesterov momentum")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="SGD weight decay")
    p.add_argument("--warmup", type=float, default=d.warmup, help="fraction of steps of linear LR warm-up before linear decay to 0")
    p.add_argument("--head-weight-decay", type=float, default=d.head_weight_decay,
                   help="weight decay of the head's parameters (the class centres) (default: --weight-decay)")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                   help="label smoothing of the cross-entropy losses (softmax and margin heads; not triplet)")
    p.add_argument("--embedding-bn", action=argparse.BooleanOptionalAction, default=d.embedding_bn,
                   help="BatchNorm1d on the embedding, as in insightface's backbones")
    p.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=d.whiten,
                   help="a first layer of fixed 2x2 filters that whiten the training images' patches (and their "
                        "negatives), then --activation, before the first stage, as airbench's")
    p.add_argument("--dirac-init", action=argparse.BooleanOptionalAction, default=d.dirac_init,
                   help="start every 3x3 conv with its first min(out, in) filters as the identity, as airbench's")
    p.add_argument("--activation", choices=ACTIVATIONS, default=d.activation,
                   help="activation after every BatchNorm (and the whitening stem); gelu as airbench's")
    p.add_argument("--pool-first", action=argparse.BooleanOptionalAction, default=d.pool_first,
                   help="each stage's first conv max-pools before its BatchNorm and activation (airbench's order: "
                        "the statistics are those of the pooled map) instead of after them")
    p.add_argument("--global-pool", choices=GLOBAL_POOLS, default=d.global_pool,
                   help="pooling of the last stage's map before the embedding layer: avg, or max as airbench's")
    p.add_argument("--bn-scale", action=argparse.BooleanOptionalAction, default=d.bn_scale,
                   help="train the scales of the conv BatchNorms; --no-bn-scale fixes them at 1, as airbench "
                        "(the shifts always train)")
    p.add_argument("--margin-tail", choices=TAILS, default=d.margin_tail,
                   help="target logit beyond theta_b = (pi - m2) / m1, where cos(m1*theta + m2) bottoms out: "
                        "sphereface: its periodic extension (slope 0 at theta_b); cosine: cos(theta) minus a constant "
                        "(slope 1)")
    p.add_argument("--margin-grad", choices=MARGIN_GRADS, default=d.margin_grad,
                   help="exact: differentiate the margin logit; unit: hold the margin cos(theta) - psi(theta) constant "
                        "in the backward pass, so the target's gradient is that of cos(theta), as for CosFace")
    p.add_argument("--margin-warmup", type=float, default=d.margin_warmup,
                   help="fraction of the training steps over which the margins grow linearly from none to full "
                        "(0: full margins from the first step)")
    p.add_argument("--crop-padding", type=int, default=d.crop_padding,
                   help="random-crop augmentation: pad each side by this many zero pixels, crop back (0: no crop)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=d.flip,
                   help="random horizontal flips in training")
    p.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=d.flip_tta,
                   help="test-time augmentation: classify (and embed) each test image by the mean embedding of it "
                        "and its mirror image")
    p.add_argument("--translate-tta", action=argparse.BooleanOptionalAction, default=d.translate_tta,
                   help="test-time augmentation: also embed each test image shifted one pixel up-left and one "
                        "down-right (reflect padding; each with its mirror under --flip-tta) and weight the "
                        "shifted copies 1/4 each, the image 1/2, as airbench's")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of initialisation, shuffling and augmentation")
    p.add_argument("--device", default=d.device, type=device_flag,
                   help="auto, cpu, cuda, cuda:N or mps; auto picks cuda, then mps, then cpu")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=d.amp,
                   help="bfloat16 autocast for the backbone: fast on Ampere+ GPUs and AVX512-BF16/AMX CPUs, emulated "
                        "and slow on others (default: " + ("on where bfloat16 is native" if d.amp is None
                                                           else "on" if d.amp else "off") + ")")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--data-root", default=d.data_root,
                   help="dataset folder: torchvision's layout (downloaded on first use) or train/<class>/*, test/<class>/*")
    p.add_argument("--no-download", dest="download", action="store_false", help="never download; fail if the data is missing")
    p.add_argument("--image-size", type=int, default=d.image_size, help="side length that image-folder images are resized to")
    p.add_argument("--num-classes", type=int, default=d.num_classes,
                   help="train and test on this many classes: the first of a fixed shuffle of the class names, so "
                        "a smaller count keeps a subset of a larger one (default: all)")
    p.add_argument("--val-per-class", type=int, default=d.val_per_class,
                   help="hold out this many training images per class (the same for every run) and report them in "
                        "the test columns instead of the test set, which is then never scored (0: the test set)")
    p.add_argument("--max-train-samples", type=int, default=d.max_train_samples,
                   help="train on N images: a random subset fixed by --seed that keeps every class's share "
                        "(stratified; taken after --holdout-classes, before --imbalance) (default: all)")
    p.add_argument("--imbalance", type=float, default=d.imbalance,
                   help="long-tailed training set: class sizes fall exponentially from class 0 to the last, "
                        "largest/smallest = this ratio (1: as it is); the test set stays balanced")
    p.add_argument("--holdout-classes", type=int, default=d.holdout_classes,
                   help="never train on the last K classes; score open-set verification on their test images (0: off)")
    p.add_argument("--corruptions", action="store_true", default=d.corruptions,
                   help="also report accuracy on corrupted test images (noise, blur, contrast, rotation, shift; severities 1-5)")
    p.add_argument("--corruption-samples", type=int, default=d.corruption_samples,
                   help="test images corrupted per corruption and severity")
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="evaluate the test set after every N-th epoch and after the last; the others get blank test "
                        "columns in history.csv (training, and so the result row, is the same for any N)")
    p.add_argument("--out", default=d.out, help="results CSV; one row is appended per finished run")
    p.add_argument("--checkpoint", default=d.checkpoint, help="save a checkpoint here at the end of every epoch")
    p.add_argument("--resume", default=d.resume, help="resume from this checkpoint")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm progress bars")
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
    known = {f.name for f in fields(TrainConfig)}
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
