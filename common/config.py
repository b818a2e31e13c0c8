"""The training configuration (one frozen dataclass, one field per flag) and its up-front validation."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from .image_folder import folder_name, is_image_folder
from .device import has_native_bf16, pick_device
from .heads import (LOSSES, MARGIN_DEFAULTS, MARGIN_GRADS, TAILS, TRIPLET_MINING, TRIPLET_MININGS, check_margins,
                    margins_of)
from .network import ACTIVATIONS, GLOBAL_POOLS


TRIPLET_PER_CLASS = 4  # images per class in a triplet loss batch by default (`TrainConfig.per_class`)
# Settings a results row writes empty at this value, as the rows from before the setting have no column for it
# (`TrainConfig.as_row`; a row read back as a config takes the value again, `plot_embeddings.config_from_row`).
# Not the default: every triplet row before --triplet-mining mined batch-hard negatives, now an option.
EMPTY_IN_ROWS = {"triplet_mining": "hard"}


def row_setting(row: dict, name: str):
    """A results row's value of a setting: an EMPTY_IN_ROWS setting's empty (or absent) cell is the value written
    so; another setting's absent cell is ''."""
    value = row.get(name, "")
    return EMPTY_IN_ROWS[name] if name in EMPTY_IN_ROWS and value in ("", None) else value


# Every field has one role, given where it is defined, and every list of run settings derives from the roles:
TRAINING = "training"  # changes the trained model: a --resume must match it, and it tells one result from another
EVALUATION = "evaluation"  # changes only the scores: tells results apart, but a --resume may change it
RUN = "run"  # how and where a run goes (files, threads, progress): never part of what a result is


def setting(role: str, default, help: str = "", *, low=None, high=None, above=None, below=None, choices=None,
            flag: bool = True):
    """A TrainConfig field: its role, its --help text and its simple bounds, written once, beside it. `low`/`high`
    are inclusive bounds, `above`/`below` exclusive ones, `choices` the allowed values; `TrainConfig.validate`
    checks them all (None passes: 'not set') and `cli.build_parser` turns the field into its flag. flag=False:
    no flag of its own (set from other flags, or written by hand in cli.py)."""
    bounds = {"low": low, "high": high, "above": above, "below": below, "choices": choices}
    return field(default=default, metadata={"role": role, "help": help, "flag": flag, **bounds})


def training(default, help: str = "", **bounds):
    return setting(TRAINING, default, help, **bounds)


def evaluation(default, help: str = "", **bounds):
    return setting(EVALUATION, default, help, **bounds)


def run(default, help: str = "", **bounds):
    return setting(RUN, default, help, **bounds)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; the scripts' flags map one to one onto it (`cli.build_parser`
    makes each from its field's help and bounds). Each field is tagged with its role (TRAINING, EVALUATION or
    RUN); `keys_with_role` lists them for --resume, the sweep and the summaries.

    s, m1, m2, m3 left as None take the named loss's defaults (`heads.margins_of`).
    """

    dataset: str = training("mnist", flag=False)  # an image folder's own name (`named`), else the torchvision dataset's
    preset: str = run("default", flag=False)  # the named set of defaults the flags started from (--preset); a label only
    loss: str = training("arcface", "training loss", choices=LOSSES)
    s: float | None = training(None, "scale s of the margin logits (default: the loss's, 30)", flag=False)
    m1: float | None = training(None, "SphereFace multiplicative angular margin, >= 1 (default: the loss's)", flag=False)
    m2: float | None = training(None, "ArcFace additive angular margin in radians, [0, pi) (default: the loss's)",
                                flag=False)
    m3: float | None = training(None, "CosFace additive cosine margin, >= 0 (default: the loss's)", flag=False)
    triplet_margin: float = training(0.2, "margin of the triplet loss", above=0)
    triplet_mining: str = training(TRIPLET_MINING, "the triplets of triplet loss in a batch: semihard: every "
                                                   "anchor-positive pair with its nearest negative beyond the "
                                                   "positive (FaceNet); hard: each anchor's farthest positive and "
                                                   "nearest negative (Hermans et al.; it collapsed on CIFAR-10 and "
                                                   "Tiny-ImageNet)", choices=tuple(TRIPLET_MININGS))
    latent_dim: int = training(128, "embedding dimension", low=2)
    widths: tuple[int, ...] = training((64, 256, 64), "conv widths per stage: one argument, integers joined by '-' or "
                                                      "',', e.g. 64-256-64", flag=False)
    convs_per_stage: int = training(1, "3x3 convs per stage", low=1)
    epochs: int = training(4, "training epochs", low=1)
    batch_size: int = training(100, "training batch size (a last batch of one image is dropped)", low=1)
    batch_per_class: int | None = training(None, "class-balanced batches of --batch-size / K groups of K images of "
                                                 "one class (distinct classes when the data has enough; 0: shuffled "
                                                 "batches) (default: 4 for triplet loss, whose "
                                                 "anchors need a same-class partner; 0 for the others)", low=0)
    lr: float = training(0.05, "peak learning rate of SGD", above=0)
    momentum: float = training(0.9, "SGD Nesterov momentum", low=0, below=1)
    weight_decay: float = training(5e-4, "SGD weight decay", low=0)
    warmup: float = training(0.2, "fraction of steps of linear LR warm-up before linear decay to 0", low=0, below=1)
    head_weight_decay: float | None = training(None, "weight decay of the head's parameters (the class centres) "
                                                     "(default: --weight-decay)", low=0)
    label_smoothing: float = training(0.0, "label smoothing of the cross-entropy losses (softmax and margin heads; "
                                           "not triplet)", low=0, below=1)
    embedding_bn: bool = training(False, "BatchNorm1d on the embedding, as in insightface's backbones")
    whiten: bool = training(False, "a first layer of fixed 2x2 filters that whiten the training images' patches (and "
                                   "their negatives), then --activation, before the first stage, as airbench's")
    dirac_init: bool = training(False, "start every 3x3 conv with its first min(out, in) filters as the identity, as "
                                       "airbench's")
    activation: str = training("relu", "activation after every BatchNorm (and the whitening stem); gelu as airbench's",
                               choices=ACTIVATIONS)
    pool_first: bool = training(False, "each stage's first conv max-pools before its BatchNorm and activation "
                                       "(airbench's order: the statistics are those of the pooled map) instead of after")
    global_pool: str = training("avg", "pooling of the last stage's map before the embedding layer: avg, or max as "
                                       "airbench's", choices=GLOBAL_POOLS)
    bn_scale: bool = training(True, "train the scales of the conv BatchNorms; --no-bn-scale fixes them at 1, as "
                                    "airbench (the shifts always train)")
    margin_warmup: float = training(0.0, "fraction of the training steps over which the margins grow linearly from "
                                         "none to full (0: full margins from the first step)", low=0, high=1)
    margin_tail: str = training("sphereface", "target logit beyond theta_b = (pi - m2) / m1, where cos(m1*theta + m2) "
                                              "bottoms out: sphereface: its periodic extension (slope 0 at theta_b); "
                                              "cosine: cos(theta) minus a constant (slope 1)", choices=TAILS)
    margin_grad: str = training("exact", "exact: differentiate the margin logit; unit: hold the margin cos(theta) - "
                                         "psi(theta) constant in the backward pass, so the target's gradient is that "
                                         "of cos(theta), as for CosFace", choices=MARGIN_GRADS)
    crop_padding: int = training(0, "random-crop augmentation: pad each side by this many zero pixels, crop back "
                                    "(0: no crop)", low=0)
    flip: bool = training(False, "random horizontal flips in training")
    flip_tta: bool = evaluation(False, "test-time augmentation: classify (and embed) each test image by the mean "
                                       "embedding of it and its mirror image")
    translate_tta: bool = evaluation(False, "test-time augmentation: also embed each test image shifted one pixel "
                                            "up-left and one down-right (reflect padding; each with its mirror under "
                                            "--flip-tta) and weight the shifted copies 1/4 each, the image 1/2, as "
                                            "airbench's")
    seed: int = training(0, "seed of initialisation, shuffling and augmentation", low=0, below=2 ** 32)
    # recorded as the device type it ran on (cpu, cuda, mps): see `as_row`
    device: str = training("auto", "auto, cpu, cuda, cuda:N or mps; auto picks cuda, then mps, then cpu", flag=False)
    amp: bool | None = training(False, "bfloat16 autocast for the backbone: fast on Ampere+ GPUs and AVX512-BF16/AMX "
                                       "CPUs, emulated and slow on others", flag=False)  # None: on where native
    threads: int = run(0, "CPU threads for torch (0: torch's default)", low=0)
    data_root: str = run("data", "dataset folder: torchvision's layout (downloaded on first use) or train/<class>/*, "
                                 "test/<class>/*")  # what it holds is named by `dataset`
    download: bool = run(True, flag=False)  # --no-download: never download; fail if the data is missing
    image_size: int = training(32, "side length that image-folder images are resized to", low=2)
    num_classes: int | None = training(None, "train and test on this many classes: the first of a fixed shuffle of "
                                             "the class names, so a smaller count keeps a subset of a larger one "
                                             "(default: all)", low=2)
    val_per_class: int = training(0, "hold out this many training images per class (the same for every run) and "
                                     "report them in the test columns instead of the test set, which is then never "
                                     "scored (0: the test set)", low=0)
    max_train_samples: int | None = training(None, "train on N images: a random subset fixed by --seed that keeps "
                                                   "every class's share (stratified; taken after --holdout-classes, "
                                                   "before --imbalance) (default: all)", low=1)
    imbalance: float = training(1.0, "long-tailed training set: class sizes fall exponentially from class 0 to the "
                                     "last, largest/smallest = this ratio (1: as it is); the test set stays balanced",
                                low=1)
    holdout_classes: int = training(0, "never train on the last K classes; score open-set verification on their test "
                                       "images (0: off; else >= 2)", low=0)
    corruptions: bool = evaluation(False, "also report accuracy on corrupted test images (noise, blur, contrast, "
                                          "rotation, shift; severities 1-5)")
    corruption_samples: int = evaluation(2000, "test images corrupted per corruption and severity", low=1)
    eval_every: int = run(1, "evaluate the test set after every N-th epoch and after the last; the others get blank "
                             "test columns in history.csv (training, and so the result row, is the same for any N)",
                          low=1)
    out: str = run("runs/train.csv", "results CSV; one row is appended per finished run")
    checkpoint: str | None = run(None, "save a checkpoint here at the end of every epoch")
    resume: str | None = run(None, "resume from this checkpoint")
    progress: bool = run(True, flag=False)  # --no-progress: no tqdm progress bars

    def margins(self) -> tuple[float, float, float, float]:
        """(s, m1, m2, m3): the loss's defaults with explicit values overriding them (`heads.margins_of`)."""
        return margins_of(self.loss, self.s, self.m1, self.m2, self.m3)

    def per_class(self) -> int:
        """K of class-balanced batches (`batches.balanced_batches`), 0 for shuffled ones: --batch-per-class, by
        default TRIPLET_PER_CLASS for triplet loss and 0 for the others."""
        if self.batch_per_class is not None:
            return self.batch_per_class
        return TRIPLET_PER_CLASS if self.loss == "triplet" else 0

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
        Reads no data. With --amp auto it picks the device, so an unavailable --device raises ValueError here,
        naming the flag as `validate` would: the scripts and the sweep call it first, then validate the rest."""
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
        """Raise ValueError naming the offending flag; reads no data. Every field's bounds and choices
        (`setting`), then what no single bound says: the margins, the image size the network needs, and the
        device."""
        for f in fields(self):
            check_bounds(f, getattr(self, f.name))
        check_margins(*self.margins())
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"--widths must be positive integers, got {self.widths}")
        smallest = 2 ** len(self.widths) + self.whiten  # each stage halves the map; the whitening stem crops 1
        if self.image_size < smallest:
            raise ValueError(f"--image-size must be >= {smallest} for {len(self.widths)} stages, got {self.image_size}")
        if self.per_class() and (self.batch_size % self.per_class() or self.batch_size // self.per_class() < 2):
            raise ValueError(f"--batch-per-class {self.per_class()} needs a --batch-size that is a multiple of it and "
                             f"holds at least 2 classes, got {self.batch_size}")
        if self.holdout_classes == 1:
            raise ValueError("--holdout-classes must be 0 (off) or >= 2 (verification needs pairs of classes), got 1")
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
        row["batch_per_class"] = self.per_class() or ""  # shuffled batches: empty, as in rows from before the setting
        row.update({name: "" for name, value in EMPTY_IN_ROWS.items() if row[name] == value})
        return row


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_bounds(f, value) -> None:
    """ValueError naming the field's flag when `value` breaks the bounds or choices its `setting` gives; None
    (not set) passes, and a float must be finite."""
    meta = f.metadata
    if value is None:
        return
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ValueError(f"{flag_of(f.name)} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{flag_of(f.name)} must be a finite number, got {value}")
    low, high, above, below = (meta.get(k) for k in ("low", "high", "above", "below"))
    broken = ((low is not None and value < low) or (high is not None and value > high)
              or (above is not None and value <= above) or (below is not None and value >= below))
    if broken:
        shown = lambda v: str(v) if isinstance(v, int) else f"{v:g}"  # noqa: E731 - 4294967296, not 4.29e+09
        if high is None and below is None:
            want = f">= {shown(low)}" if low is not None else f"> {shown(above)}"
        else:
            lower = f"[{shown(low)}" if low is not None else f"({shown(above)}" if above is not None else "(-inf"
            upper = f"{shown(high)}]" if high is not None else f"{shown(below)})"
            want = f"in {lower}, {upper}"
        raise ValueError(f"{flag_of(f.name)} must be {want}, got {value}")


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
