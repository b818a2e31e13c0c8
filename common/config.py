"""The training configuration (one frozen dataclass, one field per flag) and its up-front validation."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace

from .checkpoints import check_resume
from .data import folder_name, is_image_folder
from .device import has_native_bf16, pick_device
from .heads import LOSSES, MARGIN_DEFAULTS, NO_MARGINS, check_margin_options, check_margins
from .network import ACTIVATIONS, GLOBAL_POOLS
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
    activation: str = "relu"  # of every conv (and the whitening stem): relu or gelu (airbench's)
    pool_first: bool = False  # each stage's first conv max-pools before its BatchNorm and activation, as airbench's
    global_pool: str = "avg"  # after the last stage: avg, or max (airbench's)
    bn_scale: bool = True  # train the BatchNorm2d scales; off: fixed at 1, as airbench's
    bn_bias_lr: float = 1.0  # BatchNorm biases train at this multiple of --lr, with --weight-decay divided by it
    lookahead: bool = False  # airbench's lookahead averaging of the weights (training.Lookahead)
    margin_warmup: float = 0.0  # fraction of the steps over which the margins grow linearly from none to full
    margin_tail: str = "sphereface"  # psi beyond (pi - m2) / m1: see heads.margin_target
    margin_grad: str = "exact"  # "unit": the margin is a constant in the backward pass (heads.ArcNet)
    crop_padding: int = 0  # random-crop augmentation: zero padding in pixels (0: no crop)
    flip: bool = False  # random horizontal flips in training
    flip_tta: bool = False  # evaluate on the mean embedding of each test image and its mirror image
    translate_tta: bool = False  # also on copies shifted one pixel up-left and down-right (evaluation.embed)
    seed: int = 0
    device: str = "auto"
    amp: bool | None = False  # bfloat16 autocast of the backbone; None: on where bfloat16 is native (`resolved`)
    threads: int = 0
    data_root: str = "data"
    download: bool = True
    image_size: int = 32
    num_classes: int | None = None  # keep this many classes, a nested subset fixed once (data.class_order)
    val_per_class: int = 0  # evaluate on this many held-out training images per class instead of the test set
    max_train_samples: int | None = None
    imbalance: float = 1.0  # largest / smallest training class; 1 keeps the training set as it is
    holdout_classes: int = 0  # last K classes never trained on, used for open-set verification
    corruptions: bool = False  # also evaluate on corrupted copies of the test set
    corruption_samples: int = 2000  # test images corrupted per (corruption, severity)
    eval_every: int = 1  # evaluate the test set after every N-th epoch and after the last (training is unchanged)
    out: str = "results/train_mnist.csv"
    checkpoint: str | None = None
    resume: str | None = None
    progress: bool = True

    def margins(self) -> tuple[float, float, float, float]:
        """(s, m1, m2, m3): the loss's defaults with explicit values overriding them."""
        defaults = MARGIN_DEFAULTS.get(self.loss, NO_MARGINS)
        chosen = (self.s, self.m1, self.m2, self.m3)
        return tuple(float(d if c is None else c) for c, d in zip(chosen, defaults))

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
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"--activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.global_pool not in GLOBAL_POOLS:
            raise ValueError(f"--global-pool must be one of {', '.join(GLOBAL_POOLS)}, got {self.global_pool!r}")
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
