"""See what the margin does to the feature space: test embeddings on the unit sphere, angular
statistics, angle histograms, confusion matrices and training curves. Writes PNG and CSV files
and never opens a window.

    python plot_embeddings.py --train --data-root ../shared/data      # train 3-D models, then plot
    python plot_embeddings.py --checkpoints a.pt b.pt                 # plot models you trained
    python plot_embeddings.py --results results/train_mnist.csv       # confusion + training curves
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import math
import os
import sys
import textwrap
import warnings
from dataclasses import dataclass, field, fields, replace

import torch

from common import ArcNet, CentroidHead, Network, TrainConfig
from common.cli import OneLineErrorParser
from common.config import EMPTY_IN_ROWS, row_setting
from common.device import device_flag
from common.geometry import angles_to_centres, angular_statistics, target_and_nearest_other, to_sphere_3d
from common.checkpoints import load_checkpoint, read_checkpoint
from common.data import DataError, dataset_for
from common.image_folder import check_same_data, folder_name, is_image_folder
from common.evaluation import embed_as
from common.results import check_writable, read_rows, write_csv
from common.training import DivergedError, build_model
from sweep_margins import SCRIPTS

DEFAULT_LOSSES = ("softmax", "arcface", "combined", "triplet")
CENTRE_SAMPLES = 10_000  # training images whose mean embedding is a softmax model's class centre
SPHERE_POINTS = 2_000  # test embeddings drawn per sphere (all of them enter the statistics)
LEGEND_CLASSES = 20  # the sphere figure names its classes in a legend up to this many (tab20's colours)


@dataclass
class Model:
    name: str
    config: TrainConfig
    net: Network
    head: torch.nn.Module
    history: list[dict]
    path: str = ""  # the checkpoint it was read from
    data: dict = field(default_factory=dict)  # what it was trained on (`ImageData.identity`), {} if not recorded


def config_from_row(row: dict, **overrides) -> TrainConfig:
    """Rebuild the TrainConfig that a checkpoint saved as a row (widths as '64-256-64')."""
    known = {f.name: f for f in fields(TrainConfig)}
    values = {k: v for k, v in row.items() if k in known}
    values["widths"] = tuple(int(w) for w in str(values["widths"]).split("-"))
    for margin in ("s", "m1", "m2", "m3"):  # empty for softmax and triplet
        values[margin] = None if values.get(margin) in ("", None) else float(values[margin])
    for name in EMPTY_IN_ROWS:  # written empty at its value (`TrainConfig.as_row`): that value again
        values[name] = row_setting(values, name)
    return replace(TrainConfig(**values), **overrides)


def load_model(path: str, data_root: str | None, device: torch.device) -> Model:
    state = read_checkpoint(path)  # on the CPU; load_state_dict copies onto `device`
    config = config_from_row(state["config"], **({"data_root": data_root} if data_root else {}))
    num_classes = next(iter(state["head"].values())).shape[0]  # weight, linear.weight or centres: (C, ...)
    net, head = build_model(config, in_channels(state["net"].values()), num_classes, device)
    net.load_state_dict(state["net"])
    head.load_state_dict(state["head"])
    return Model(config.loss, config, net.eval(), head.eval(), state["history"], path, state.get("data", {}))


def in_channels(weights) -> int:
    """Image channels a backbone takes: the in-channels of its first 4-D weight (out, in, kh, kw); `weights`
    is a Network or an iterable of its state dict's tensors."""
    tensors = weights.parameters() if isinstance(weights, torch.nn.Module) else weights
    return next(w for w in tensors if w.dim() == 4).shape[1]


def class_centres(model: Model, embeddings_of, data) -> torch.Tensor:
    """(C, D) class centres: ArcNet's weight rows, the triplet head's fitted centres, or, for softmax,
    the normalised mean embedding of the first CENTRE_SAMPLES training images."""
    if isinstance(model.head, ArcNet):
        return model.head.weight.detach()
    if isinstance(model.head, CentroidHead):
        return model.head.centres
    head = CentroidHead(model.config.latent_dim, data.num_classes).to(data.train_y.device)
    head.fit_centres(embeddings_of(data.train_x[:CENTRE_SAMPLES]), data.train_y[:CENTRE_SAMPLES])
    return head.centres


def analyse(model: Model, device: torch.device) -> dict:
    """Test embeddings, centres, accuracy and angular statistics of one model, on the data it was trained on
    (its classes: --num-classes, held-out classes left out), embedded as its training run evaluated it (its
    --amp precision and test-time augmentation: `evaluation.embed_as`), so the accuracy is its row's. Data that
    is not what the checkpoint recorded (other classes or files) is refused (ValueError)."""
    config = model.config
    dataset = dataset_for(config.dataset, in_channels(model.net))
    data = dataset.load(config).keep_classes(config.num_classes).hold_out_classes(config.holdout_classes)[0]
    check_same_data(model.data, data.identity(), "--checkpoints", model.path, config.data_root)
    data = data.to(device)
    normalize = dataset.normalizer(device)
    embeddings_of = lambda images: embed_as(config, model.net, images, normalize)  # noqa: E731
    embeddings = embeddings_of(data.test_x)
    centres = class_centres(model, embeddings_of, data)
    accuracy = (model.head(embeddings).argmax(1) == data.test_y).double().mean().item()
    return {"model": model, "embeddings": embeddings.cpu(), "labels": data.test_y.cpu(), "centres": centres.cpu(),
            "classes": data.classes, "accuracy": accuracy,
            "stats": angular_statistics(embeddings.cpu(), data.test_y.cpu(), centres.cpu())}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no window: works without a display
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    warnings.filterwarnings("ignore", message="Glyph .* missing from font")  # `class_ticks` shows the index then
    installed = {font.name for font in font_manager.fontManager.ttflist}  # fallbacks for CJK and other scripts
    plt.rcParams["font.family"] = ["DejaVu Sans", *[f for f in FALLBACK_FONTS if f in installed]]
    return plt


FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans", "WenQuanYi Zen Hei", "Droid Sans Fallback",
                  "Arial Unicode MS")


def drawable(names: list[str]) -> bool:
    """Whether every character of these class names has a glyph in the fonts the figures use."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    fonts = [FT2Font(font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False))
             for family in _pyplot().rcParams["font.family"]]
    return all(any(font.get_char_index(ord(c)) for font in fonts) for name in names for c in name)


def class_ticks(names: list[str]) -> list[str]:
    """Tick labels for class names: the names, or '3: name' with the index where a name has a character no
    installed font can draw (it would show as an empty box)."""
    return list(names) if drawable(names) else [f"{i}: {name}" for i, name in enumerate(names)]


def class_colours(count: int):
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(count)]  # class k always gets colour k


def plot_spheres(results: list[dict], path: str) -> list[str]:
    """One 3-D panel per model; returns the panel titles."""
    plt = _pyplot()
    titles = []
    classes = max(len(result["classes"]) for result in results)
    width = max(8.0, 4.6 * len(results))  # one panel alone still fits the title and a legend of 10 classes
    ncol = min(classes, 10 if width >= 12 else 5)
    legend = classes <= LEGEND_CLASSES  # beyond, colours repeat (tab20) and a legend could not tell classes apart
    legend_inches = 0.45 + 0.3 * math.ceil(classes / ncol) if legend else 0.0  # its title and rows, under the panels
    height = 5.0 + legend_inches
    fig = plt.figure(figsize=(width, height))
    u, v = torch.meshgrid(torch.linspace(0, 2 * torch.pi, 30), torch.linspace(0, torch.pi, 15), indexing="ij")
    for i, result in enumerate(results):
        ax = fig.add_subplot(1, len(results), i + 1, projection="3d")
        points, centres, projected = to_sphere_3d(result["embeddings"], result["centres"])
        shown = torch.randperm(len(points), generator=torch.Generator().manual_seed(0))[:SPHERE_POINTS]
        colours = class_colours(len(result["classes"]))
        ax.plot_wireframe((torch.cos(u) * torch.sin(v)).numpy(), (torch.sin(u) * torch.sin(v)).numpy(),
                          torch.cos(v).numpy(), color="0.85", linewidth=0.4)
        for k, name in enumerate(result["classes"]):
            mine = shown[result["labels"][shown] == k]
            ax.scatter(*points[mine].t().numpy(), s=4, color=colours[k], alpha=0.6, label=name, depthshade=False)
            ax.quiver(0, 0, 0, *(centres[k] * 1.25).tolist(), color=colours[k], linewidth=2.0, arrow_length_ratio=0.12)
        stats = result["stats"]
        dim = result["embeddings"].shape[1]
        title = f"{result['model'].name}: test acc {100 * result['accuracy']:.2f}%\n"
        title += f"intra {stats['intra_mean_deg']:.1f}°, min inter {stats['inter_min_deg']:.1f}°"
        title += f"\nPCA of {dim}-D embeddings" if projected else f"\n{dim}-D embeddings"
        ax.set_title(title, fontsize=10)
        titles.append(title)
        ax.set_box_aspect((1, 1, 1))
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            axis.set_ticks([-1, 0, 1])
        ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.set_zlim(-1, 1)
        ax.set_xlabel("x"), ax.set_ylabel("y"), ax.set_zlabel("z")
    # every class once, from the panel that has the most of them (a class with no test point shown has no handle)
    handles, labels = max((ax.get_legend_handles_labels() for ax in fig.axes), key=lambda hl: len(hl[1]))
    if legend:
        fig.legend(handles, labels, loc="lower center", ncol=ncol, markerscale=4, title="class", frameon=False)
    fig.suptitle("Normalised test embeddings and class centres (arrows) on the unit sphere"
                 + ("" if legend else f"\n{classes} classes: colours repeat every 20, no legend"))
    # the panels sit above the legend, with room for the 3-D axes' tick labels, which hang below their boxes
    fig.tight_layout(rect=(0, (legend_inches + 0.2) / height, 1, 1 - (0.45 if legend else 0.7) / height))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return titles


def plot_angle_histograms(results: list[dict], path: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)  # own y scales
    bins = torch.linspace(0, 180, 73).tolist()
    for ax, result in zip(axes[0], results):
        target, nearest = target_and_nearest_other(angles_to_centres(result["embeddings"], result["centres"]),
                                                    result["labels"])
        ax.hist(target.tolist(), bins=bins, alpha=0.6, color="tab:blue", label="own class centre")
        ax.hist(nearest.tolist(), bins=bins, alpha=0.6, color="tab:red", label="nearest other centre")
        # softmax and triplet learn no class centres: theirs are the classes' normalised mean embeddings
        centres = "centre" if isinstance(result["model"].head, ArcNet) else "mean embedding"
        ax.set_title(f"{result['model'].name} (wrong {centres} nearer: {result['stats']['wrong_nearer']:.2%})", fontsize=10)
        ax.set_xlabel("angle to centre (degrees)")
    axes[0][0].set_ylabel("test embeddings")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(confusion_csv: str, path: str, title: str) -> None:
    plt = _pyplot()
    with open(confusion_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = [r["true"] for r in rows]
    counts = torch.tensor([[int(r[n]) for n in names] for r in rows], dtype=torch.float64)
    share = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    few = len(names) <= CONFUSION_LABELLED  # beyond it, counts and names would not fit: the shares alone
    side = 1.2 + 0.45 * len(names) if few else 7.0  # inches of the matrix itself, fitted to the class count
    width = side + 2.8  # tick labels on the left, the colour bar and its label on the right
    lines = textwrap.wrap(title, width=int(11 * width))  # never cut at the sides
    fig, ax = plt.subplots(figsize=(width, side + 1.6 + 0.2 * len(lines)), layout="constrained")
    image = ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    if few:
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
        ticks = class_ticks(names)
        ax.set_xticks(range(len(names)), ticks, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), ticks)
    ax.set_xlabel("predicted class"), ax.set_ylabel("true class")
    fig.suptitle("\n".join(lines), fontsize=9)  # above the colour bar too: its label never runs into the title
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=min(1.0, 0.4 + 0.1 * len(names)))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(runs: list[tuple[str, list[dict]]], path: str, title: str, scored: str = "test") -> None:
    """Accuracy (on `scored`: the test set, or a validation split) and training loss per epoch, a line per run."""
    plt = _pyplot()
    legend_rows = math.ceil(len(runs) / 2)
    height = 3.8 + 0.22 * legend_rows  # the legend goes below the panels, two labels a line
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, height))
    every = set()
    for label, history in runs:
        tested = [h for h in history if str(h.get("test_acc", "")) != ""]  # --eval-every leaves some blank
        every |= {int(h["epoch"]) for h in history}
        acc_ax.plot([int(h["epoch"]) for h in tested], [100 * float(h["test_acc"]) for h in tested], marker="o",
                    label=label)
        loss_ax.plot([int(h["epoch"]) for h in history], [float(h["train_loss"]) for h in history], marker="o",
                     label=label)
    from matplotlib.ticker import MaxNLocator

    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.set_xlim(min(every) - 0.5, max(every) + 0.5)  # whole epochs, even for a run of one
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    acc_ax.set_ylabel(f"{scored} accuracy (%)"), acc_ax.set_title(f"{title}: {scored} accuracy")
    loss_ax.set_ylabel("training loss (log scale; losses differ in kind)"), loss_ax.set_yscale("log")
    loss_ax.set_title(f"{title}: training loss")
    handles, labels = acc_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8)  # below the panels: long labels fit
    fig.tight_layout(rect=(0, (0.25 + 0.22 * legend_rows) / height, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


CONFUSION_LABELLED = 30  # classes up to which a confusion figure names every class and prints every count
LABEL_KEYS = ("s", "m1", "m2", "m3", "triplet_mining", "epochs", "lr", "widths", "max_train_samples", "imbalance",
              "holdout_classes")


def run_labels(rows: list[dict]) -> list[str]:
    """'loss seed N', plus every setting of LABEL_KEYS that differs among the rows of the same loss (for
    example 'arcface m2=0.3 seed 0' and 'arcface m2=0.5 seed 0'); a label still shared ends in its run id."""
    labels = []
    for row in rows:
        same_loss = [r for r in rows if r["loss"] == row["loss"]]
        varying = [k for k in LABEL_KEYS if len({row_setting(r, k) for r in same_loss}) > 1]
        settings = "".join(f" {k}={row_setting(row, k)}" for k in varying)
        labels.append(f"{row['loss']}{settings} seed {row['seed']}")
    return [f"{label} ({row['run_id']})" if labels.count(label) > 1 else label for label, row in zip(labels, rows)]


def scored_on(row: dict) -> str:
    """What a row's accuracy was measured on: 'validation' (a split held out of training) or 'test'."""
    return "validation" if int(row.get("val_per_class") or 0) else "test"


def plot_results_csv(results_csv: str, out_dir: str) -> list[str]:
    """A confusion heat map per run, and one training-curve figure, for a training script's CSV."""
    written, runs = [], []
    stem = os.path.splitext(results_csv)[0]
    found = read_rows(results_csv, strict=True)
    if found and "run_id" not in found[0]:
        raise ValueError(f"--results {results_csv} has no run_id column: give a CSV a training script or sweep wrote "
                         "(its runs' folders lie beside it)")
    rows = [row for row in found if os.path.isdir(os.path.join(stem, row["run_id"]))]
    if not rows:
        raise ValueError(f"--results {results_csv}: none of its {len(found)} runs has its folder in {stem}/ "
                         "(history.csv, confusion.csv); was the CSV moved without them?")
    for row, label in zip(rows, run_labels(rows)):
        run_dir = os.path.join(stem, row["run_id"])
        path = os.path.join(out_dir, f"{row['run_id']}_confusion.png")
        plot_confusion(os.path.join(run_dir, "confusion.csv"), path,
                       f"{row['dataset']} {label}: {scored_on(row)} "
                       f"acc {100 * float(row['test_acc']):.2f}%")
        written.append(path)
        runs.append((label, read_rows(os.path.join(run_dir, "history.csv"))))
    if runs:
        path = os.path.join(out_dir, f"{os.path.basename(stem)}_curves.png")
        plot_curves(runs, path, os.path.basename(stem), " or ".join(sorted({scored_on(row) for row in rows})))
        written.append(path)
    return written


def checkpoint_progress(path: str, config: TrainConfig) -> int:
    """Epochs a checkpoint at `path` has done under exactly these settings; 0 if absent or trained otherwise."""
    if not os.path.exists(path):
        return 0
    try:
        return load_checkpoint(path, config)["epoch"]
    except ValueError:  # other settings (learning rate, samples, ...): train afresh over it
        return 0


def data_tag(data_root: str, dataset: str) -> str:
    """The data part of a --train checkpoint's name: an image folder's own name and a hash of where it is (two
    folders never share a checkpoint, even of one name), else the torchvision dataset's name."""
    if not is_image_folder(data_root):
        return dataset
    return f"{folder_name(data_root)}-{hashlib.sha1(os.path.realpath(data_root).encode()).hexdigest()[:8]}"


def train_missing(args, device: torch.device) -> list[str]:
    """Train (or resume) one latent-dim model per loss; existing finished checkpoints are reused."""
    script = SCRIPTS[args.dataset]
    data_root = args.data_root or "data"
    paths = []
    for loss in args.losses:
        path = os.path.join(args.checkpoint_dir, f"{data_tag(data_root, args.dataset)}-{loss}-d{args.latent_dim}-seed{args.seed}.pt")
        defaults = script.PRESETS.get(args.preset, script.DEFAULTS)
        config = replace(defaults, loss=loss, latent_dim=args.latent_dim, epochs=args.epochs, seed=args.seed,
                         lr=args.lr, device=str(device), data_root=data_root,
                         max_train_samples=args.max_train_samples, checkpoint=path,
                         out=os.path.join(args.out, "trained_models.csv"), progress=args.progress,
                         threads=args.threads).resolved()  # as the run records it: a finished one is reused
        epochs_done = checkpoint_progress(path, config)
        if epochs_done < args.epochs:
            print(f"training {loss} ({config.dataset}, latent dim {args.latent_dim}) -> {path}", flush=True)
            script.run(replace(config, resume=path if epochs_done > 0 else None))
        paths.append(path)
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="plot_embeddings.py", description=__doc__)
    p.add_argument("--checkpoints", nargs="*", default=[], help="checkpoints written by the training scripts' --checkpoint")
    p.add_argument("--train", action="store_true", help="train (or resume) one model per --losses first, then plot them")
    p.add_argument("--losses", nargs="+", default=list(DEFAULT_LOSSES), help="losses that --train trains")
    p.add_argument("--dataset", default="mnist", choices=sorted(SCRIPTS), help="dataset that --train uses")
    p.add_argument("--preset", choices=["default", *sorted({n for m in SCRIPTS.values() for n in m.PRESETS})],
                   default="default",
                   help="the training script's defaults that --train starts from: its recipe, or the source report's "
                        "setting (its --preset report)")
    p.add_argument("--latent-dim", type=int, default=3, help="embedding dimension that --train uses")
    p.add_argument("--epochs", type=int, default=5, help="epochs that --train uses")
    # At the 128-D learning rate (0.05) the 3-D ArcFace, normalised-softmax and triplet models collapsed;
    # likely cause: a 3-D embedding has a small norm and the gradient through L2 normalisation scales as 1/norm.
    p.add_argument("--lr", type=float, default=0.005, help="peak learning rate that --train uses")
    p.add_argument("--max-train-samples", type=int, default=None,
                   help="--train trains on N images: a random subset fixed by --seed that keeps every class's share "
                        "(default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed that --train uses")
    p.add_argument("--checkpoint-dir", default="checkpoints/embeddings", help="where --train keeps its checkpoints")
    p.add_argument("--results", nargs="*", default=[], help="training results CSVs: confusion heat maps and curves")
    p.add_argument("--data-root", default=None,
                   help="dataset folder (default: each checkpoint's own; --train: data); data whose classes or files "
                        "differ from what a checkpoint trained on is refused")
    p.add_argument("--device", default="auto", type=device_flag,
                   help="device for training and embeddings: auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--out", default="runs/embeddings", help="folder for the PNG and CSV files")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm progress bars")
    return p


def main(argv: list[str] | None = None) -> list[str]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.checkpoints or args.train or args.results):
        parser.error("nothing to do: give --train, --checkpoints PATH ... or --results CSV ...")
    parser.check_losses(args.losses)
    parser.check_minimums(args, {"latent_dim": 2, "epochs": 1})
    if not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if args.max_train_samples is not None and args.max_train_samples < 1:
        parser.error(f"--max-train-samples must be >= 1, got {args.max_train_samples}")
    missing = [p for p in args.checkpoints + args.results if not os.path.isfile(p)]
    if missing:
        parser.error(f"no such file: {missing[0]}")
    folders = [("--out", args.out)] + ([("--checkpoint-dir", args.checkpoint_dir)] if args.train else [])
    for flag, folder in folders:
        try:
            check_writable(folder, flag, folder=True)
        except ValueError as exc:
            parser.error(str(exc))
    device = parser.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return plot(args, device)
    except (DataError, ValueError) as exc:  # missing or broken data, a checkpoint that cannot be used
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    except KeyboardInterrupt:  # finished models keep their checkpoints; --train resumes the unfinished one
        parser.exit(130, f"\n{parser.prog}: interrupted; rerun the same command to continue\n")
    except DivergedError as exc:
        parser.exit(1, f"{parser.prog}: error: training diverged: {exc}; try a smaller --lr\n")


def plot(args, device: torch.device) -> list[str]:
    """Everything main() was asked for, flags already checked: returns the files written."""
    os.makedirs(args.out, exist_ok=True)
    written = [p for csv_path in args.results for p in plot_results_csv(csv_path, args.out)]
    checkpoints = args.checkpoints + (train_missing(args, device) if args.train else [])
    if checkpoints:
        with torch.no_grad():
            results = [analyse(load_model(path, args.data_root, device), device) for path in checkpoints]
        rows = [{"checkpoint": path, "loss": r["model"].name, "dataset": r["model"].config.dataset,
                 "latent_dim": r["model"].config.latent_dim, "test_acc": r["accuracy"],
                 "precision": "bfloat16" if r["model"].config.amp else "float32", **r["stats"]}
                for path, r in zip(checkpoints, results)]
        for row in rows:
            print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        written += [os.path.join(args.out, name) for name in ("angular_stats.csv", "spheres.png", "angles.png")]
        write_csv(written[-3], rows)
        plot_spheres(results, written[-2])
        plot_angle_histograms(results, written[-1])
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
