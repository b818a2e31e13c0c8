"""plot_embeddings.py: angular statistics on known angles, PCA above 3-D, figures from tiny checkpoints."""
import math
import os
from types import SimpleNamespace

import pytest
import torch

import plot_embeddings
import train_mnist
from common.geometry import angular_statistics, to_sphere_3d
from common.results import read_rows, write_csv

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def on_circle(*degrees):
    return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d)), 0.0] for d in degrees])


def test_angular_statistics_on_known_angles():
    centres = on_circle(0, 90, 180) * 4.0  # norms must not matter
    embeddings = on_circle(10, -10, 100, 60, 170) * 0.5
    labels = torch.tensor([0, 0, 1, 1, 2])
    stats = angular_statistics(embeddings, labels, centres)
    intra = torch.tensor([10.0, 10.0, 10.0, 30.0, 10.0])
    assert stats["intra_mean_deg"] == pytest.approx(intra.mean().item(), abs=1e-6)
    assert stats["intra_std_deg"] == pytest.approx(intra.std(unbiased=False).item(), abs=1e-6)
    assert stats["inter_min_deg"] == pytest.approx(90.0, abs=1e-6)
    assert stats["inter_mean_deg"] == pytest.approx((90 + 180 + 90) / 3, abs=1e-6)
    assert stats["wrong_nearer"] == pytest.approx(0.0)
    moved = on_circle(10, -10, 100, 30, 170)  # class-1 sample at 30 degrees: 60 from its centre, 30 from class 0's
    assert angular_statistics(moved, labels, centres)["wrong_nearer"] == pytest.approx(1 / 5)


def test_pca_is_used_and_announced_above_three_dimensions():
    torch.manual_seed(0)
    points, centres, projected = to_sphere_3d(torch.randn(50, 7), torch.randn(4, 7))
    assert projected and points.shape == (50, 3) and centres.shape == (4, 3)
    torch.testing.assert_close(points.norm(dim=1), torch.ones(50, dtype=torch.float64))
    same, _, projected = to_sphere_3d(torch.randn(50, 3) * 3, torch.randn(4, 3))
    assert not projected and torch.allclose(same.norm(dim=1), torch.ones(50, dtype=torch.float64))


@pytest.fixture(scope="module")
def tiny_checkpoints(gray_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for loss, dim in (("arcface", 3), ("softmax", 5), ("triplet", 3)):
        paths[loss] = str(folder / f"{loss}.pt")
        train_mnist.main(["--widths", "8-16-8", "--latent-dim", str(dim), "--epochs", "2", "--batch-size", "12",
                          "--device", "cpu", "--no-amp", "--no-progress", "--data-root", gray_folder, "--loss", loss,
                          "--checkpoint", paths[loss], "--out", str(folder / "runs.csv")])
    return paths, str(folder / "runs.csv")


def test_figures_and_statistics_from_tiny_checkpoints(tiny_checkpoints, gray_folder, tmp_path, capsys, monkeypatch):
    paths, _ = tiny_checkpoints
    titles = []
    real_plot = plot_embeddings.plot_spheres
    monkeypatch.setattr(plot_embeddings, "plot_spheres", lambda r, p: titles.extend(real_plot(r, p)) or titles)
    written = plot_embeddings.main(["--checkpoints", *paths.values(), "--data-root", gray_folder,
                                    "--out", str(tmp_path), "--device", "cpu"])
    for name in ("spheres.png", "angles.png"):
        with open(tmp_path / name, "rb") as handle:
            assert handle.read(8) == PNG_MAGIC
    rows = read_rows(str(tmp_path / "angular_stats.csv"))
    assert [r["loss"] for r in rows] == ["arcface", "softmax", "triplet"]
    assert all(0 <= float(r["wrong_nearer"]) <= 1 and 0 <= float(r["intra_mean_deg"]) <= 180 for r in rows)
    assert "PCA of 5-D" in titles[1] and "PCA" not in titles[0] and "PCA" not in titles[2]
    out = capsys.readouterr().out
    assert all(f"wrote {p}" in out for p in written)


def test_confusion_and_curves_from_a_results_csv(tiny_checkpoints, tmp_path):
    _, runs_csv = tiny_checkpoints
    written = plot_embeddings.main(["--results", runs_csv, "--out", str(tmp_path)])
    assert sum(p.endswith("_confusion.png") for p in written) == 3
    assert sum(p.endswith("_curves.png") for p in written) == 1
    assert all(os.path.getsize(p) > 1000 for p in written)


def test_train_mode_trains_missing_models_once(gray_folder, tmp_path, capsys):
    args = ["--train", "--losses", "softmax", "combined", "--epochs", "1", "--data-root", gray_folder,
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"), "--device", "cpu",
            "--no-progress"]
    plot_embeddings.main(args + ["--preset", "report"])
    assert capsys.readouterr().out.count("training ") == 2
    plot_embeddings.main(args + ["--preset", "report"])  # finished checkpoints are reused, not retrained
    assert capsys.readouterr().out.count("training ") == 0
    plot_embeddings.main(args + ["--lr", "0.01"])  # other settings (the script's recipe): retrained, not reused
    assert capsys.readouterr().out.count("training ") == 2
    rows = read_rows(str(tmp_path / "out" / "trained_models.csv"))
    assert [r["widths"] for r in rows] == ["64-256-64"] * 2 + ["-".join(map(str, train_mnist.DEFAULTS.widths))] * 2


@pytest.mark.parametrize("flags,flag", [([], "nothing to do"), (["--train", "--losses", "hinge"], "--losses"),
                                        (["--train", "--latent-dim", "1"], "--latent-dim"),
                                        (["--train", "--lr", "0"], "--lr"),
                                        (["--checkpoints", "/nonexistent.pt"], "no such file")])
def test_bad_flags_exit_2_with_one_line(flags, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plot_embeddings.main(flags)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and flag in err


def test_run_labels_tell_apart_runs_of_one_loss_and_seed():
    rows = [{"loss": "arcface", "seed": "0", "m2": "0.3", "s": "30", "run_id": "a"},
            {"loss": "arcface", "seed": "0", "m2": "0.5", "s": "30", "run_id": "b"},
            {"loss": "softmax", "seed": "0", "m2": "", "s": "", "run_id": "c"},
            {"loss": "softmax", "seed": "0", "m2": "", "s": "", "run_id": "d"}]
    assert plot_embeddings.run_labels(rows) == ["arcface m2=0.3 seed 0", "arcface m2=0.5 seed 0",
                                                "softmax seed 0 (c)", "softmax seed 0 (d)"]
    triplets = [{"loss": "triplet", "seed": "0", "triplet_mining": "", "run_id": "e"},  # batch-hard rows write ""
                {"loss": "triplet", "seed": "0", "triplet_mining": "semihard", "run_id": "f"}]
    assert plot_embeddings.run_labels(triplets) == ["triplet triplet_mining=hard seed 0",
                                                    "triplet triplet_mining=semihard seed 0"]


def test_few_class_figures_fit_their_classes_and_show_whole_epochs_in_percent(tmp_path):
    from PIL import Image

    def confusion(classes: int) -> tuple[int, int]:
        names = [f"c{i}" for i in range(classes)]
        path = tmp_path / f"confusion{classes}.csv"
        write_csv(str(path), [{"true": n, **{m: int(n == m) * 3 for m in names}} for n in names])
        plot_embeddings.plot_confusion(str(path), str(tmp_path / f"c{classes}.png"), "a title")
        return Image.open(tmp_path / f"c{classes}.png").size

    small, large = confusion(3), confusion(20)
    assert small[0] < large[0] and small[1] < large[1]  # the canvas grows with the class count
    assert small[0] < 700  # three classes do not sit in a wide, mostly empty canvas
    history = [{"epoch": 1, "train_loss": 2.0, "test_acc": 0.5}]
    import matplotlib.pyplot as plt
    captured = {}
    real_close = plt.close
    plt.close = lambda fig: captured.setdefault("fig", fig)  # keep the figure to read its axes
    try:
        plot_embeddings.plot_curves([("run", history)], str(tmp_path / "curves.png"), "t")
    finally:
        plt.close = real_close
    acc_ax = captured["fig"].axes[0]
    assert acc_ax.get_ylabel() == "test accuracy (%)" and acc_ax.lines[0].get_ydata()[0] == 50.0
    plt.close = lambda fig: captured.update(fig=fig)
    try:
        plot_embeddings.plot_curves([("run", history)], str(tmp_path / "curves.png"), "t", "validation")
    finally:
        plt.close = real_close
    assert captured["fig"].axes[0].get_ylabel() == "validation accuracy (%)"
    assert [t for t in acc_ax.get_xticks() if acc_ax.get_xlim()[0] <= t <= acc_ax.get_xlim()[1]] == [1.0]


def test_sphere_figure_names_up_to_20_classes_in_a_legend_and_more_without_one(tmp_path):
    import matplotlib.pyplot as plt

    def sphere_figure(classes: int):
        g = torch.Generator().manual_seed(0)
        result = {"embeddings": torch.randn(4 * classes, 5, generator=g), "centres": torch.randn(classes, 5, generator=g),
                  "labels": torch.arange(classes).repeat(4), "classes": [f"c{i}" for i in range(classes)],
                  "model": SimpleNamespace(name="arcface"), "accuracy": 0.5,
                  "stats": {"intra_mean_deg": 30.0, "inter_min_deg": 20.0}}
        captured = {}
        real_close = plt.close
        plt.close = lambda fig: captured.setdefault("fig", fig)  # keep the figure to read its legends
        try:
            plot_embeddings.plot_spheres([result], str(tmp_path / f"s{classes}.png"))
        finally:
            plt.close = real_close
        return captured["fig"]

    named, unnamed = sphere_figure(20), sphere_figure(200)
    assert len(named.legends) == 1 and len(named.legends[0].get_texts()) == 20
    assert not unnamed.legends and "200 classes: colours repeat every 20" in unnamed._suptitle.get_text()
    assert unnamed.get_size_inches()[1] < named.get_size_inches()[1]  # no 200-name legend under the panel


def test_class_names_a_font_cannot_draw_get_their_index():
    assert plot_embeddings.class_ticks(["cat", "dog"]) == ["cat", "dog"]
    ticks = plot_embeddings.class_ticks(["cat", "\u732b"])
    assert ticks == (["cat", "\u732b"] if plot_embeddings.drawable(["\u732b"]) else ["0: cat", "1: \u732b"])


def test_ctrl_c_during_plots_is_one_line(tmp_path, capsys, monkeypatch):
    def interrupted(args, device):
        raise KeyboardInterrupt

    monkeypatch.setattr(plot_embeddings, "plot", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        plot_embeddings.main(["--train", "--out", str(tmp_path / "p"), "--checkpoint-dir", str(tmp_path / "ck")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 130 and err == "plot_embeddings.py: interrupted; rerun the same command to continue"
