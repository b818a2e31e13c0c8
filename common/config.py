"""The training configuration (one frozen dataclass, one field per flag) and its up-front validation."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from .image_folder import folder_name, is_image_folder
from .device import has_native_bf16, pick_device
from .heads import LOSSES, MARGIN_DEFAULTS, check_margin_options, check_margins, margins_of
from .network import ACTIVATIONS, GLOBAL_POOLS


# Every field has one role, given where it is defined, and every list of run settings derives from the roles:
TRAINING = "training"  # changes the trained model: a --resume must match it, and it tells one result from another
EVALUATION = "evaluation"  # changes only the scores: tells results apart, but a --resume may change it
RUN = "run"  # how and where a run goes (files, threads, progress): never part of what a result is


def training(default):
    return field(default=default, metadata={"role": TRAINING})


def evaluation(default):
    return field(default=default, metadata={"role": EVALUATION})


def run(default):
    return field(default=default, metadata={"role": RUN})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; the scripts' flags map one to one onto it. Each field is tagged
    with its role (TRAINING, EVALUATION or RUN); `keys_with_role` lists them for --resume, the sweep and
    the summaries.

    s, m1, m2, m3 left as None take the named loss's defaults (`heads.margins_of`).
    """

    dataset: str = training("mnist")  # an image folder's own name (`named`), else the torchvision dataset's
    preset: str = run("default")  # the named set of defaults the flags started from (--preset); a label only
    loss: str = training("arcface")
    s: float | None = training(None)
    m1: float | None = training(None)
    m2: float | None = training(None)
    m3: float | None = training(None)
    triplet_margin: float = training(0.2)
    latent_dim: int = training(128)
    widths: tuple[int, ...] = training((64, 256, 64))
    convs_per_stage: int = training(1)
    epochs: int = training(4)
    batch_size: int = training(100)
    lr: float = training(0.05)
    momentum: float = training(0.9)
    weight_decay: float = training(5e-4)
    warmup: float = training(0.2)
    head_weight_decay: float | None = training(None)  # weight decay of the head (class centres); None: --weight-decay
    label_smoothing: float = training(0.0)  # of the cross-entropy heads (softmax and the margin losses)
    embedding_bn: bool = training(False)  # BatchNorm1d on the embedding, as insightface's backbones
    whiten: bool = training(False)  # a fixed patch-whitening first layer (network.WhiteningStem), as airbench's
    dirac_init: bool = training(False)  # 3x3 convs start as partly the identity (network.dirac_init), as airbench's
    activation: str = training("relu")  # of every conv (and the whitening stem): relu or gelu (airbench's)
    pool_first: bool = training(False)  # each stage's first conv max-pools before its BatchNorm and activation
    global_pool: str = training("avg")  # after the last stage: avg, or max (airbench's)
    bn_scale: bool = training(True)  # train the BatchNorm2d scales; off: fixed at 1, as airbench's
    margin_warmup: float = training(0.0)  # fraction of the steps over which the margins grow from none to full
    margin_tail: str = training("sphereface")  # psi beyond (pi - m2) / m1: see heads.margin_target
    margin_grad: str = training("exact")  # "unit": the margin is a constant in the backward pass (heads.ArcNet)
    crop_padding: int = training(0)  # random-crop augmentation: zero padding in pixels (0: no crop)
    flip: bool = training(False)  # random horizontal flips in training
    flip_tta: bool = evaluation(False)  # evaluate on the mean embedding of each test image and its mirror image
    translate_tta: bool = evaluation(False)  # also on copies shifted one pixel up-left and down-right
    seed: int = training(0)
    device: str = training("auto")  # recorded as the device type it ran on (cpu, cuda, mps): see `as_row`
    amp: bool | None = training(False)  # bfloat16 autocast of the backbone; None: on where bfloat16 is native
    threads: int = run(0)
    data_root: str = run("data")  # where the data is; what it holds is named by `dataset`
    download: bool = run(True)
    image_size: int = training(32)
    num_classes: int | None = training(None)  # keep this many classes, a nested subset fixed once (data.class_order)
    val_per_class: int = training(0)  # evaluate on this many held-out training images per class, not the test set
    max_train_samples: int | None = training(None)
    imbalance: float = training(1.0)  # largest / smallest training class; 1 keeps the training set as it is
    holdout_classes: int = training(0)  # last K classes never trained on, used for open-set verification
    corruptions: bool = evaluation(False)  # also evaluate on corrupted copies of the test set
    corruption_samples: int = evaluation(2000)  # test images corrupted per (corruption, severity)
    eval_every: int = run(1)  # evaluate after every N-th epoch and after the last (the result is the same for any N)
    out: str = run("runs/train.csv")
    checkpoint: str | None = run(None)
    resume: str | None = run(None)
    progress: bool = run(True)

    def margins(self) -> tuple[float, float, float, float]:
        """(s, m1, m2, m3): the loss's defaults with explicit values overriding them (`heads.margins_of`)."""
        return margins_of(self.loss, self.s, self.m1, self.m2, self.m3)

    def preset_help(self) -> str:
        """A one-line description of these defaults for --help: network, epochs, batch and augmentation."""
        augment = (f"crop {self.crop_padding}" if self.crop_padding else "no crop") + (" + flip" if self.flip else "")
        return (f"widths {'-'.join(map(str, self.widths))} x{self.convs_per_stage}, {self.epochs} epochs, "
                f"batch {self.batch_size}, lr {self.lr:g}, {augment}")

    def resolved(self) -> TrainConfig:
        """This config with what depends on the machine and the data root decided: --amp auto (None) on
        where bfloat16 runs in hardware (`has_native_bf16`: CUDA from Ampere on, CPUs with AVX512-BF16 or
        AMX), off elsewhere; and `dataset` named after the folder when --data-root is an image folder (so a
        user's folder, or the JPEG copy of CIFAR-10, is never recorded as the script's torchvision dataset).
        Picks the device, so call it after `validate`."""
        config = self.named()
        if config.amp is None:
            config = replace(config, amp=has_native_bf16(pick_device(self.device)))
        return config

    def named(self) -> TrainConfig:
        """This config with `dataset` named after --data-root when that is an image folder (`resolved`)."""
        return replace(self, dataset=folder_name(self.data_root)) if is_image_folder(self.data_root) else self

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
                         "--threads": (self.threads, 0), "--eval-every": (self.eval_every, 1)}
        for flag, (value, low) in positive_ints.items():
            if value < low:
                raise ValueError(f"{flag} must be >= {low}, got {value}")
        if not 0 <= self.seed < 2 ** 32:
            raise ValueError(f"--seed must be between 0 and 2**32 - 1, got {self.seed}")
        if not (math.isfinite(self.imbalance) and self.imbalance >= 1):
            raise ValueError(f"--imbalance must be >= 1 (largest / smallest class), got {self.imbalance}")
        if self.holdout_classes < 0 or self.holdout_classes == 1:
            raise ValueError(f"--holdout-classes must be 0 (off) or >= 2 (verification needs pairs of classes), "
                             f"got {self.holdout_classes}")
        if self.corruption_samples < 1:
            raise ValueError(f"--corruption-samples must be >= 1, got {self.corruption_samples}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"--num-classes must be >= 2, got {self.num_classes}")
        if self.val_per_class < 0:
            raise ValueError(f"--val-per-class must be >= 0 (0: evaluate on the test set), got {self.val_per_class}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"--max-train-samples must be >= 1, got {self.max_train_samples}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"--widths must be positive integers, got {self.widths}")
        for flag, value in {"--lr": self.lr, "--triplet-margin": self.triplet_margin}.items():
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
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"--activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.global_pool not in GLOBAL_POOLS:
            raise ValueError(f"--global-pool must be one of {', '.join(GLOBAL_POOLS)}, got {self.global_pool!r}")
        if not 0 <= self.margin_warmup <= 1:
            raise ValueError(f"--margin-warmup must be in [0, 1], got {self.margin_warmup}")
        pick_device(self.device)  # raises for an unavailable device

    def as_row(self) -> dict:
        """The config as a results row: every field (the device as the type it resolves to), the margins the
        loss applies (empty for softmax and triplet), widths as '64-256-64', and how --max-train-samples
        picks its images (`train_subset`)."""
        row = asdict(self)
        margins = self.margins() if self.loss in MARGIN_DEFAULTS else ("",) * 4
        row["s"], row["m1"], row["m2"], row["m3"] = margins
        row["widths"] = "-".join(map(str, self.widths))
        row["head_weight_decay"] = self.head_decay()
        row["device"] = pick_device(self.device).type  # shuffling draws from another generator on each type
        row["train_subset"] = "" if self.max_train_samples is None else "stratified"
        return row


def keys_with_role(*roles: str) -> tuple[str, ...]:
    """The TrainConfig fields with one of these roles, in definition order."""
    return tuple(f.name for f in fields(TrainConfig) if f.metadata["role"] in roles)


def resume_keys() -> tuple[str, ...]:
    """What a checkpoint must share with the config that resumes it: every TRAINING field."""
    return keys_with_role(TRAINING)


def identity_keys() -> tuple[str, ...]:
    """What tells one result from another: every TRAINING and EVALUATION field. A sweep skips a job whose
    identity a row in its CSV has; a summary averages only rows whose identities differ in the seed alone."""
    return keys_with_role(TRAINING, EVALUATION)


def cell(value) -> str:
    """A setting as a CSV cell compares: numbers by value ('1', '1.0' -> '1.0'), None as empty, the rest as text."""
    if value is None:
        return ""
    text = str(value)
    if text in ("True", "False") or isinstance(value, bool):
        return text
    try:
        return repr(float(text))
    except ValueError:
        return text


def identity(row: dict, keys: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """A results row's (or `TrainConfig.as_row()`'s) values of `keys` (default: `identity_keys()`) as compared
    cells; a column the row lacks counts as empty."""
    return tuple(cell(row.get(k)) for k in (identity_keys() if keys is None else keys))
