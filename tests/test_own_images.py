"""A user's own image folder, end to end: odd image modes, layouts that are not image folders, outputs named
after the folder, resume and plots that check the data, and the flags a newcomer trips on."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import plot_embeddings
import sweep_margins
import train_cifar10
import train_mnist
from common.data import load_image_folder
from common.image_folder import CACHE_NAME, list_image_folder, to_mode
from common.results import read_rows
from common.batches import epoch_batches, steps_per_epoch
from conftest import make_image_folder
from helpers import TINY, one_line_exit_2

RGB_TINY = [*TINY, "--image-size", "16"]


def test_sixteen_bit_greyscale_is_scaled_to_eight_bits_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # a 16-bit greyscale PNG
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode in ("I;16", "I")
        pixels = np.asarray(to_mode(image, "RGB"))
    assert pixels[..., 0].min() == 0 and pixels[..., 0].max() == 255
    assert (pixels == 255).mean() < 0.05  # a clip would make almost every pixel 255
    assert np.allclose(pixels[..., 0], np.round(ramp / 257), atol=1)
    with pytest.raises(ValueError, match="floating-point"):
        to_mode(Image.fromarray(np.zeros((4, 4), np.float32), "F"), "RGB")


def test_cmyk_palette_with_transparency_and_grey_alpha_become_sane_rgb():
    cmyk = to_mode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "RGB")  # no black, full magenta and yellow: red
    assert np.asarray(cmyk)[0, 0].tolist() == [255, 0, 0]
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.info["transparency"] = 1  # colour 1 (green) is transparent: it must not show
    assert np.asarray(to_mode(palette, "RGB")).max() == 0
    grey_alpha = Image.fromarray(np.stack([np.full((4, 4), 200, np.uint8), np.full((4, 4), 128, np.uint8)], -1), "LA")
    assert abs(int(np.asarray(to_mode(grey_alpha, "L"))[0, 0]) - 100) <= 1  # 200 at half opacity over black


def test_a_parent_folder_is_refused_in_one_line_and_nothing_is_downloaded(rgb_folder, tmp_path, capsys, monkeypatch):
    parent = tmp_path / "parent"
    shutil.copytree(rgb_folder, parent / "my_images")
    from torchvision import datasets
    monkeypatch.setattr(datasets.CIFAR10, "download", lambda self: pytest.fail("tried to download"))
    err = one_line_exit_2(train_cifar10.main, [*RGB_TINY, "--data-root", str(parent), "--out", str(tmp_path / "r.csv")],
                          capsys)
    assert "neither an image folder" in err and "my_images" in err and "nothing is downloaded" in err
    assert sorted(os.listdir(parent)) == ["my_images"]


def test_images_in_subfolders_of_a_class_are_counted_in_one_line(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "nested", 16, "RGB", classes=2, train_per_class=4, test_per_class=2)
    os.makedirs(os.path.join(folder, "train", "class0", "more"))
    for i in range(3):
        Image.new("RGB", (16, 16)).save(os.path.join(folder, "train", "class0", "more", f"{i}.png"))
    classes, splits = list_image_folder(folder)
    assert len(splits["train"][0]) == 8  # the nested images are not read ...
    assert "note: 3 images in subfolders of" in capsys.readouterr().err  # ... and said so
    list_image_folder(folder)
    assert "note" not in capsys.readouterr().err  # once, however often the folder is listed


def test_a_last_batch_of_one_image_is_dropped(tmp_path):
    assert steps_per_epoch(62, 61) == 1 and steps_per_epoch(62, 31) == 2 and steps_per_epoch(1, 4) == 1
    generator = torch.Generator().manual_seed(0)
    assert [len(b) for b in epoch_batches(torch.zeros(62, dtype=torch.long), 61, 0, generator)] == [61]
    assert [len(b) for b in epoch_batches(torch.zeros(63, dtype=torch.long), 61, 0, generator)] == [61, 2]
    folder = make_image_folder(tmp_path / "odd", 16, "RGB", classes=2, train_per_class=31, test_per_class=2)
    row = train_cifar10.main([*RGB_TINY, "--batch-size", "61", "--embedding-bn", "--data-root", folder,
                              "--out", str(tmp_path / "r.csv")])  # 62 images: a batch of 61, then one left over
    assert row["test_acc"] >= 0


def test_few_classes_record_no_top5_and_recall_names_its_classes(rgb_folder, tmp_path, capsys):
    row = train_cifar10.main([*RGB_TINY, "--data-root", rgb_folder, "--out", str(tmp_path / "r.csv")])
    saved = read_rows(str(tmp_path / "r.csv"))[0]
    assert row["test_top5"] == "" and saved["test_top5"] == ""  # 3 classes: every image is in its top 5
    assert "top-5" not in capsys.readouterr().out
    assert saved["class_names"] == "class0;class1;class2"
    assert len(saved["per_class_recall"].split(";")) == 3


def test_a_list_flag_given_twice_is_refused(capsys):
    err = one_line_exit_2(sweep_margins.main, ["--losses", "softmax", "arcface", "--losses", "cosface", "--dry-run"],
                          capsys)
    assert "--losses is given 2 times" in err


def test_widths_take_dashes_or_commas_as_one_argument(tmp_path):
    from common.cli import parse_config
    config = parse_config(["--widths", "8,16,8"], train_cifar10.DEFAULTS, "t", "")
    assert config.widths == (8, 16, 8) == parse_config(["--widths", "8-16-8"], train_cifar10.DEFAULTS, "t", "").widths


def test_a_folder_sweep_is_named_after_the_folder(rgb_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep_margins.main(["--dataset", "folder", "--data-root", rgb_folder, "--losses", "softmax", "--dry-run"])
    name = os.path.basename(os.path.normpath(rgb_folder))
    assert f"already in {os.path.join('runs', 'sweep', name + '.csv')}" in capsys.readouterr().out
    err = one_line_exit_2(sweep_margins.main, ["--dataset", "folder", "--data-root", str(tmp_path), "--dry-run"], capsys)
    assert "--dataset folder needs --data-root to be an image folder" in err


def test_summarize_without_out_writes_beside_its_input_named_after_it(tmp_path):
    path = tmp_path / "cifar_rows.csv"
    base = {"dataset": "cifar10-jpg", "imbalance": 1.0, "holdout_classes": 0, "corruptions": False, "loss": "softmax",
            "s": "", "m1": "", "m2": "", "m3": "", "epochs": 1}
    from common.results import write_csv
    write_csv(str(path), [{**base, "seed": s, "test_acc": 0.5} for s in (0, 1)])
    before = path.read_bytes()
    sweep_margins.main(["--summarize", str(path)])
    assert path.read_bytes() == before and (tmp_path / "cifar_rows_summary.md").exists()
    assert not (tmp_path / "mnist_summary.md").exists()


@pytest.fixture
def trained(tmp_path):
    """A tiny model of a 3-class folder with its checkpoint."""
    folder = make_image_folder(tmp_path / "a" / "images", 16, "RGB", classes=3, train_per_class=8, test_per_class=2)
    checkpoint = str(tmp_path / "model.pt")
    row = train_cifar10.main([*RGB_TINY, "--epochs", "1", "--data-root", folder, "--checkpoint", checkpoint,
                              "--out", str(tmp_path / "r.csv")])
    return folder, checkpoint, row


def test_resume_on_other_data_is_refused_naming_both(trained, tmp_path, capsys):
    folder, checkpoint, _ = trained
    more = str(tmp_path / "b" / "images")  # a folder of the same name with 2 images more
    shutil.copytree(folder, more)
    for i in range(2):
        Image.new("RGB", (16, 16)).save(os.path.join(more, "train", "class0", f"new{i}.png"))
    flags = [*RGB_TINY, "--epochs", "1", "--resume", checkpoint, "--out", str(tmp_path / "r.csv")]
    err = one_line_exit_2(train_cifar10.main, [*flags, "--data-root", more], capsys)
    assert checkpoint in err and more in err and "other files" in err
    fewer = make_image_folder(tmp_path / "c" / "images", 16, "RGB", classes=2, train_per_class=8, test_per_class=2)
    err = one_line_exit_2(train_cifar10.main, [*flags, "--data-root", fewer], capsys)
    assert "other classes" in err and "missing here: class2" in err


def test_plots_use_the_checkpoints_own_data_and_refuse_other_classes(trained, tmp_path, capsys):
    folder, checkpoint, row = trained
    out = str(tmp_path / "plots")
    plot_embeddings.main(["--checkpoints", checkpoint, "--out", out, "--device", "cpu"])  # no --data-root: its own
    (stats,) = read_rows(os.path.join(out, "angular_stats.csv"))
    assert float(stats["test_acc"]) == pytest.approx(row["test_acc"], abs=1e-9)  # one evaluation path
    assert stats["precision"] == "float32" and stats["dataset"] == "images"
    other = make_image_folder(tmp_path / "other", 16, "RGB", classes=2, train_per_class=8, test_per_class=2)
    err = one_line_exit_2(plot_embeddings.main, ["--checkpoints", checkpoint, "--data-root", other, "--out", out,
                                                 "--device", "cpu"], capsys)
    assert "other classes" in err and checkpoint in err


def test_plot_train_names_checkpoints_per_folder_and_reuses_them(tmp_path, capsys):
    first = make_image_folder(tmp_path / "x" / "imgs", 16, "RGB", classes=2, train_per_class=6, test_per_class=2)
    second = make_image_folder(tmp_path / "y" / "imgs", 16, "RGB", classes=2, train_per_class=6, test_per_class=2)
    assert plot_embeddings.data_tag(first, "cifar10") != plot_embeddings.data_tag(second, "cifar10")
    assert plot_embeddings.data_tag(first, "cifar10").startswith("imgs-")
    flags = ["--train", "--dataset", "cifar10", "--data-root", first, "--losses", "softmax", "--epochs", "1",
             "--checkpoint-dir", str(tmp_path / "ck"), "--out", str(tmp_path / "p"), "--device", "cpu", "--no-progress"]
    plot_embeddings.main(flags)
    assert "training softmax" in capsys.readouterr().out
    plot_embeddings.main(flags)
    assert "training softmax" not in capsys.readouterr().out  # the finished checkpoint is reused
    assert len(read_rows(str(tmp_path / "p" / "trained_models.csv"))) == 1


def test_results_that_are_not_a_training_csv_are_one_line(trained, tmp_path, capsys):
    _, _, _ = trained
    stats = tmp_path / "stats.csv"
    stats.write_text("checkpoint,loss\nm.pt,softmax\n")
    err = one_line_exit_2(plot_embeddings.main, ["--results", str(stats), "--out", str(tmp_path / "p")], capsys)
    assert "no run_id column" in err
    moved = tmp_path / "moved.csv"
    shutil.copy(tmp_path / "r.csv", moved)  # without its runs' folders
    err = one_line_exit_2(plot_embeddings.main, ["--results", str(moved), "--out", str(tmp_path / "p")], capsys)
    assert "none of its 1 runs has its folder" in err


def test_temp_files_of_a_killed_cache_writer_are_removed(tmp_path):
    folder = make_image_folder(tmp_path / "cache", 16, "RGB", classes=2, train_per_class=3, test_per_class=1)
    stale = os.path.join(folder, CACHE_NAME.format(mode="RGB", size=16) + ".tmp-999999999")
    open(stale, "wb").write(b"\0" * 10)  # a writer with this process id no longer runs
    load_image_folder(folder, 3, 16)
    assert not os.path.exists(stale) and os.path.exists(os.path.join(folder, CACHE_NAME.format(mode="RGB", size=16)))
    open(stale, "wb").write(b"\0" * 10)
    load_image_folder(folder, 3, 16)  # the cache is fresh: nothing is written, the stale temp still goes
    assert not os.path.exists(stale)


def test_an_image_folder_with_one_class_is_refused(tmp_path, capsys):
    from conftest import make_image_folder
    folder = make_image_folder(tmp_path / "one", 28, "L", classes=1)
    err = one_line_exit_2(train_mnist.main, [*TINY, "--data-root", folder, "--out", str(tmp_path / "r.csv")], capsys)
    assert "at least 2 class folders" in err


def test_a_data_root_that_is_a_file_says_so(tmp_path, capsys):
    (tmp_path / "data.zip").write_bytes(b"PK")
    err = one_line_exit_2(train_mnist.main, [*TINY, "--data-root", str(tmp_path / "data.zip"),
                                             "--out", str(tmp_path / "r.csv")], capsys)
    assert "is a file, not a folder" in err


def test_an_image_folders_rows_and_final_line_carry_its_own_name(rgb_folder, tmp_path, capsys):
    import train_cifar10
    row = train_cifar10.main([*TINY, "--data-root", rgb_folder, "--out", str(tmp_path / "r.csv")])
    name = os.path.basename(rgb_folder)
    assert row["dataset"] == name and f"{name} arcface:" in capsys.readouterr().out and "cifar10" not in name
