"""Training configuration, its command line, and up-front validation."""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import asdict, dataclass, fields, replace

import torch

from .checkpoints import check_resume
from .device import device_flag, has_native_bf16, pick_device
from .heads import LOSSES, MARGIN_DEFAULTS, MARGIN_GRADS, TAILS, check_margin_options, check_margins
from .results import check_writable


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; the scripts' flags map one to one onto it.

    s, m1, m2, m3 left as None take the named loss's defaults (`MARGIN_DEFAULTS`).
    """

    dataset: str = "mnist"
    preset: str = "default"  # the named set of defaults the flags started from (--preset)
    loss: str = "arcface"
    s: float | None = None
    m1: float | None = None
    m2: float | None = None
    m3: float | None = None
    triplet_margin: float = 0.2
    latent_dim: int = 128
    widths: tuple[int, ...] = (64, 256, 64)
    convs_per_stage: int = 1
    epochs: int = 4
    batch_size: int = 100
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.2
    head_weight_decay: float | None = None  # weight decay of the head (class centres); None: --weight-decay
    label_smoothing: float = 0.0  # of the cross-entropy heads (softmax and the margin losses)
    embedding_bn: bool = False  # BatchNorm1d on the embedding, as insightface's backbones
    whiten: bool = False  # a fixed patch-whitening first layer (network.WhiteningStem), as airbench's
    dirac_init: bool = False  # 3x3 convs start as partly the identity (network.dirac_init), as airbench's
    bn_bias_lr: float = 1.0  # BatchNorm biases train at this multiple of --lr, with --weight-decay divided by it
    margin_warmup: float = 0.0  # fraction of the steps over which the margins grow linearly from none to full
    margin_tail: str = "sphereface"  # psi beyond (pi - m2) / m1: see heads.margin_target
    margin_grad: str = "exact"  # "unit": the margin is a constant in the backward pass (heads.ArcNet)
    crop_padding: int = 0  # random-crop augmentation: zero padding in pixels (0: no crop)
    flip: bool = False  # random horizontal flips in training
    flip_tta: bool = False  # evaluate on the mean embedding of each test image and its mirror image
    seed: int = 0
    device: str = "auto"
    amp: bool | None = False  # bfloat16 autocast of the backbone; None: on where bfloat16 is native (`resolved`)
    threads: int = 0
    data_root: str = "data"
    download: bool = True
    image_size: int = 32
    max_train_samples: int | None = None
    imbalance: float = 1.0  # largest / smallest training class; 1 keeps the training set as it is
    holdout_classes: int = 0  # last K classes never trained on, used for open-set verification
    corruptions: bool = False  # also evaluate on corrupted copies of the test set
    corruption_samples: int = 2000  # test images corrupted per (corruption, severity)
    out: str = "results/train_mnist.csv"
    checkpoint: str | None = None
    resume: str | None = None
    progress: bool = True

    def margins(self) -> tuple[float, float, float, float]:
        """(s, m1, m2, m3): the loss's defaults with explicit values overriding them."""
        defaults = MARGIN_DEFAULTS.get(self.loss, (30.0, 1.0, 0.0, 0.0))
        chosen = (self.s, self.m1, self.m2, self.m3)
        return tuple(float(d if c is None else c) for c, d in zip(chosen, defaults))

    def preset_help(self) -> str:
        """A one-line description of these defaults for --help: network, epochs, batch and augmentation."""
        augment = (f"crop {self.crop_padding}" if self.crop_padding else "no crop") + (" + flip" if self.flip else "")
        return (f"widths {'-'.join(map(str, self.widths))} x{self.convs_per_stage}, {self.epochs} epochs, "
                f"batch {self.batch_size}, lr {self.lr:g}, {augment}")

    def resolved(self) -> TrainConfig:
        """This config with --amp auto (None) decided for its device: on where bfloat16 runs in hardware
        (`has_native_bf16`: CUDA from Ampere on, CPUs with AVX512-BF16 or AMX), off elsewhere. Picks the
        device, so call it after `validate`; a config with amp True or False is returned as it is."""
        if self.amp is not None:
            return self
        return replace(self, amp=has_native_bf16(pick_device(self.device)))

    def head_decay(self) -> float:
        """The head's weight decay: --head-weight-decay, or --weight-decay when that is not given."""
        return self.weight_decay if self.head_weight_decay is None else self.head_weight_decay

    def validate(self) -> None:
        """Raise ValueError naming the offending flag; reads no data."""
        if self.loss not in LOSSES:
            raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        check_margins(*self.margins())
        positive_ints = {"--latent-dim": (self.latent_dim, 2), "--epochs": (self.epochs, 1),
                         "--batch-size": (self.batch_size, 1), "--convs-per-stage": (self.convs_per_stage, 1),
                         "--crop-padding": (self.crop_padding, 0),
                         "--image-size": (self.image_size, 2 ** len(self.widths) + self.whiten),
                         "--threads": (self.threads, 0)}
        for flag, (value, low) in positive_ints.items():
            if value < low:
                raise ValueError(f"{flag} must be >= {low}, got {value}")
        if not (math.isfinite(self.imbalance) and self.imbalance >= 1):
            raise ValueError(f"--imbalance must be >= 1 (largest / smallest class), got {self.imbalance}")
        if self.holdout_classes < 0 or self.holdout_classes == 1:
            raise ValueError(f"--holdout-classes must be 0 (off) or >= 2 (verification needs pairs of classes), "
                             f"got {self.holdout_classes}")
        if self.corruption_samples < 1:
            raise ValueError(f"--corruption-samples must be >= 1, got {self.corruption_samples}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"--max-train-samples must be >= 1, got {self.max_train_samples}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"--widths must be positive integers, got {self.widths}")
        for flag, value in {"--lr": self.lr, "--triplet-margin": self.triplet_margin,
                            "--bn-bias-lr": self.bn_bias_lr}.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{flag} must be > 0, got {value}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.weight_decay:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"--warmup must be in [0, 1), got {self.warmup}")
        if self.head_weight_decay is not None and not 0 <= self.head_weight_decay:
            raise ValueError(f"--head-weight-decay must be >= 0, got {self.head_weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        check_margin_options(self.margin_tail, self.margin_grad)
        if not 0 <= self.margin_warmup <= 1:
            raise ValueError(f"--margin-warmup must be in [0, 1], got {self.margin_warmup}")
        if self.resume is not None and not os.path.isfile(self.resume):
            raise ValueError(f"--resume: no checkpoint file at {self.resume}")
        device = pick_device(self.device)  # raises for an unavailable device
        check_writable(self.out, "--out")
        if self.checkpoint is not None:
            check_writable(self.checkpoint, "--checkpoint")
        if self.resume is not None:
            check_resume(self.resume, self.as_row(), device)  # reads the checkpoint file, not the data

    def as_row(self) -> dict:
        row = asdict(self)
        # softmax and triplet have no margins: leave the columns empty rather than record unused defaults
        margins = self.margins() if self.loss in MARGIN_DEFAULTS else ("",) * 4
        row["s"], row["m1"], row["m2"], row["m3"] = margins
        row["widths"] = "-".join(map(str, self.widths))
        row["head_weight_decay"] = self.head_decay()
        # how --max-train-samples picks its images; rows and checkpoints from before it was stratified lack it
        row["train_subset"] = "" if self.max_train_samples is None else "stratified"
        return row


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the script's docstring as written, and end each flag's help with its default as a user
    would type it: '64-256-64', '0/1', 'arcface 0.5' for lists, 'off' for a switch. A help text
    that already says its default, and a default of None, get nothing added."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS, []) or not action.option_strings:
            return text
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

    def device(self, requested: str, threads: int = 0) -> torch.device:
        """The --device to use (exit 2 if it is unavailable); sets torch's CPU threads when threads > 0."""
        try:
            device = pick_device(requested)
        except ValueError as exc:
            self.error(str(exc))
        if threads:
            torch.set_num_threads(threads)
        return device


def _positive_int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(",", "-").split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers joined by '-' such as 64-256-64, got {text!r}") from None


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
                   help="conv widths per stage, e.g. 64-256-64")
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
                        "negatives), then ReLU, before the first stage, as airbench's")
    p.add_argument("--dirac-init", action=argparse.BooleanOptionalAction, default=d.dirac_init,
                   help="start every 3x3 conv with its first min(out, in) filters as the identity, as airbench's")
    p.add_argument("--bn-bias-lr", type=float, default=d.bn_bias_lr,
                   help="BatchNorm biases train at this multiple of --lr, with --weight-decay divided by it "
                        "(airbench: 64)")
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
    p.add_argument("--out", default=d.out, help="results CSV; one row is appended per finished run")
    p.add_argument("--checkpoint", default=d.checkpoint, help="save a checkpoint here at the end of every epoch")
    p.add_argument("--resume", default=d.resume, help="resume from this checkpoint")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm progress bars")
    return p


def parse_config(argv: list[str] | None, defaults: TrainConfig, prog: str, description: str,
                 presets: dict[str, TrainConfig] | None = None) -> TrainConfig:
    """Parse and validate the command line; a bad flag prints one line and exits with 2.

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
    config = replace(chosen, **{k: v for k, v in args.items() if k in known})
    try:
        config.validate()
    except ValueError as exc:
        parser.error(str(exc))
    return config.resolved()


def fail(prog: str, message: str, code: int) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)

