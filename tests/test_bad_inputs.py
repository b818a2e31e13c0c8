"""Every bad input is one line on stderr and exit code 2, before any data is read where a flag is at
fault; failures leave nothing behind; and the small things a user trips over (file modes, lock files,
--help, abbreviations, --device cuda:N)."""
import os
import re
import shutil
import stat
from urllib.error import URLError

import pytest
import torch

import throughput
import plot_embeddings
import sweep_margins
import train_cifar10
import train_mnist
from common.results import append_row, read_rows
from helpers import TINY, no_data_reads, one_line_exit_2



SCRIPTS = {"mnist": (train_mnist, "gray_folder"), "cifar10": (train_cifar10, "rgb_folder")}


def copy_folder(folder, tmp_path):
    target = tmp_path / "data"
    shutil.copytree(folder, target)
    return target


@pytest.mark.parametrize("name", SCRIPTS)
def test_unwritable_out_or_checkpoint_is_refused_before_training(name, tmp_path, capsys, monkeypatch):
    script = SCRIPTS[name][0]
    no_data_reads(monkeypatch)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [(["--out", str(a_file / "r.csv")], "--out"), (["--out", str(tmp_path)], "--out"),
             (["--checkpoint", str(a_file / "deeper" / "c.pt")], "--checkpoint")]
    if os.path.isdir("/proc/self"):  # Linux: a folder where no file can be created, even by root
        cases.append((["--out", "/proc/x.csv"], "--out"))
    for flags, flag in cases:
        err = one_line_exit_2(script.main, [*TINY, "--data-root", str(tmp_path), *flags], capsys)
        assert flag in err and "cannot be written" in err or "is a folder" in err, err
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]  # the probe left nothing


def test_other_scripts_check_their_output_paths_up_front(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    err = one_line_exit_2(sweep_margins.main, ["--out", str(a_file / "s.csv"), "--data-root", str(tmp_path), *TINY[:-2]],
                          capsys)
    assert "--out" in err and "is a file" in err
    err = one_line_exit_2(plot_embeddings.main, ["--results", str(a_file), "--out", str(a_file / "plots")], capsys)
    assert "--out" in err
    err = one_line_exit_2(throughput.main, ["--out", str(a_file / "b.json"), "--device", "cpu"], capsys)
    assert "--out" in err


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_truncated_image_is_named(name, tmp_path, capsys, request):
    script, fixture = SCRIPTS[name]
    data = copy_folder(request.getfixturevalue(fixture), tmp_path)
    broken = data / "train" / "class1" / "005.png"
    broken.write_bytes(broken.read_bytes()[:60])  # header only: decoding fails
    err = one_line_exit_2(script.main, [*TINY, "--data-root", str(data), "--out", str(tmp_path / "r.csv")], capsys)
    assert str(broken) in err and "cannot read image" in err


def test_an_empty_class_folder_and_a_class_without_test_images_are_named(gray_folder, tmp_path, capsys):
    data = copy_folder(gray_folder, tmp_path)
    (data / "train" / "class9").mkdir()
    flags = [*TINY, "--data-root", str(data), "--out", str(tmp_path / "r.csv")]
    err = one_line_exit_2(train_mnist.main, flags, capsys)
    assert "class 'class9'" in err and "has no images" in err and str(data / "train" / "class9") in err
    (data / "train" / "class9").rmdir()
    shutil.rmtree(data / "test" / "class2")
    err = one_line_exit_2(train_mnist.main, flags, capsys)
    assert "class 'class2'" in err and "is missing" in err and str(data / "test" / "class2") in err


@pytest.fixture
def failing_download(monkeypatch):
    """The MNIST download as it fails offline: torchvision makes MNIST/raw, then every mirror fails."""
    import torchvision.datasets.mnist as mnist

    def offline(url, download_root, **kwargs):
        os.makedirs(download_root, exist_ok=True)
        with open(os.path.join(download_root, kwargs.get("filename") or "partial"), "wb") as handle:
            handle.write(b"\x1f\x8b")  # the start of a download cut short
        raise URLError("no network")

    monkeypatch.setattr(mnist, "download_and_extract_archive", offline)


def test_a_failed_download_leaves_nothing_behind(tmp_path, capsys, failing_download):
    root = tmp_path / "new" / "data"
    err = one_line_exit_2(train_mnist.main, [*TINY[:-1], "--data-root", str(root), "--out", str(tmp_path / "r.csv")],
                          capsys)
    assert "download failed" in err and os.listdir(tmp_path) == []
    existing = tmp_path / "kept"
    (existing / "other").mkdir(parents=True)
    one_line_exit_2(train_mnist.main, [*TINY[:-1], "--data-root", str(existing), "--out", str(tmp_path / "r.csv")], capsys)
    assert os.listdir(existing) == ["other"]  # what was there stays, what the download made goes


def test_sweep_with_a_missing_dataset_is_one_line(tmp_path, capsys, failing_download):
    err = one_line_exit_2(sweep_margins.main, ["--m2", "0.5", "--data-root", str(tmp_path / "nonexistent"),
                                               "--out", str(tmp_path / "s.csv"), *TINY[:-2]], capsys)
    assert "MNIST not found" in err and not (tmp_path / "nonexistent").exists() and not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("main, argv", [
    (train_mnist.main, ["--epoch", "1"]), (train_cifar10.main, ["--lat", "8"]),
    (sweep_margins.main, ["--seed", "3", "--dry-run"]), (plot_embeddings.main, ["--result", "x.csv"]),
    (throughput.main, ["--step", "1"]),
])
def test_abbreviated_flags_are_refused(main, argv, capsys, monkeypatch):
    no_data_reads(monkeypatch)
    err = one_line_exit_2(main, argv, capsys)
    # the sweep hands unknown flags to the training script: --seed is refused there as one the sweep sets itself
    assert ("unrecognized arguments" in err or "use --seeds" in err) and argv[0] in err


@pytest.mark.parametrize("parser", [
    lambda: train_mnist_parser(), lambda: sweep_margins.build_parser(), lambda: plot_embeddings.build_parser(),
    lambda: throughput.build_parser(),
])
def test_help_shows_defaults_as_a_user_types_them(parser):
    text = " ".join(parser().format_help().split())  # unwrap argparse's line breaks
    assert "(default: True)" not in text and "(default: False)" not in text and "(default: None)" not in text
    assert "(default: (" not in text and "(default: [" not in text and "(default: )" not in text
    assert not re.search(r"\(default:[^)]*\) \(default:", text), text  # never two defaults in a row


def train_mnist_parser():
    from common.cli import build_parser

    return build_parser("train_mnist.py", train_mnist.DEFAULTS, "")


def test_help_of_the_scripts_names_typed_values():
    from common.cli import build_parser

    text = " ".join(train_mnist_parser().format_help().split())
    assert "e.g. 64-256-64 (default: 32-64-128)" in text and "fail if the data is missing (default: off)" in text
    assert "no tqdm progress bars (default: off)" in text
    cifar = " ".join(build_parser("train_cifar10.py", train_cifar10.DEFAULTS, "").format_help().split())
    assert "random horizontal flips in training (default: on)" in cifar  # a switch whose default is on
    report = " ".join(build_parser("train_cifar10.py", train_cifar10.REPORT, "").format_help().split())
    whiten = "whiten the training images' patches (and their negatives), then --activation, before the first stage, as "
    assert whiten + "airbench's (default: on)" in cifar and whiten + "airbench's (default: off)" in report
    sweep = " ".join(sweep_margins.build_parser().format_help().split())
    assert "(a job-array index) (default: 0/1)" in sweep and "each setting runs once per seed (default: 0)" in sweep


def test_device_accepts_cuda_with_an_index(capsys, monkeypatch):
    no_data_reads(monkeypatch)
    if not torch.cuda.is_available():
        err = one_line_exit_2(train_mnist.main, ["--device", "cuda:1"], capsys)
        assert "--device cuda:1: CUDA is not available" in err
    err = one_line_exit_2(train_mnist.main, ["--device", "cuda:one"], capsys)
    assert "expected auto, cpu, cuda, cuda:N or mps" in err


def test_result_csvs_get_the_usual_mode_and_leave_no_lock_file(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "r.csv"
        append_row(str(path), {"a": 1})
        append_row(str(path), {"a": 2, "b": 3})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(tmp_path) == ["r.csv"] and [r["a"] for r in read_rows(str(path))] == ["1", "2"]
    os.chmod(path, 0o664)
    append_row(str(path), {"a": 4})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o664  # an existing file keeps its mode


def test_parallel_appends_keep_every_row(tmp_path):
    """Processes appending to one CSV while the lock file comes and goes: no row is lost."""
    import multiprocessing

    path = str(tmp_path / "r.csv")
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        pool.starmap(append_row, [(path, {"i": i}) for i in range(40)])
    assert sorted(int(r["i"]) for r in read_rows(path)) == list(range(40)) and os.listdir(tmp_path) == ["r.csv"]


def test_plot_and_benchmark_with_a_missing_dataset_are_one_line(tmp_path, capsys, failing_download):
    missing = str(tmp_path / "nowhere")
    err = one_line_exit_2(plot_embeddings.main, ["--train", "--losses", "softmax", "--data-root", missing, "--device", "cpu",
                                                 "--checkpoint-dir", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"),
                                                 "--no-progress"], capsys)
    assert "MNIST not found" in err and not os.path.exists(missing)
    err = one_line_exit_2(throughput.main, ["--datasets", "mnist", "--mnist-root", missing, "--device", "cpu",
                                            "--out", str(tmp_path / "b.json")], capsys)
    assert "MNIST not found" in err


def test_git_commit_is_dirty_only_when_code_changed(tmp_path, monkeypatch):
    import subprocess

    import common.results as results

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "docs").mkdir()
    for name, text in (("code.py", "x = 1\n"), ("README.md", "# r\n"), ("docs/notes.md", "n\n"),
                       ("results/r.csv", "a\n1\n")):
        (tmp_path / name).write_text(text)
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "first")
    monkeypatch.setattr(results, "REPO_ROOT", str(tmp_path))
    clean = results.git_commit()
    assert len(clean) == 12 and not clean.endswith("-dirty")
    (tmp_path / "README.md").write_text("# edited\n")
    (tmp_path / "docs" / "notes.md").write_text("edited\n")
    (tmp_path / "results" / "r.csv").write_text("a\n1\n2\n")
    assert results.git_commit() == clean  # rows and prose written meanwhile: the code is the commit's
    (tmp_path / "code.py").write_text("x = 2\n")
    assert results.git_commit() == clean + "-dirty"
    monkeypatch.setattr(results, "REPO_ROOT", str(tmp_path / "results"))  # any folder of the checkout
    assert results.git_commit() == clean + "-dirty"
    (tmp_path / "code.py").write_text("x = 1\n")
    assert results.git_commit() == clean
    outside = tmp_path.parent / "not-a-repo"
    outside.mkdir(exist_ok=True)
    monkeypatch.setattr(results, "REPO_ROOT", str(outside))
    assert results.git_commit() == "unknown" or not results.git_commit().endswith("-dirty")


@pytest.mark.parametrize("flags, message", [
    (["--imbalance", "0.5"], "--imbalance must be >= 1"),
    (["--holdout-classes", "1"], "--holdout-classes must be 0 (off) or >= 2"),
    (["--corruption-samples", "0"], "--corruption-samples must be >= 1"),
    (["--holdout-classes", "3"], "--holdout-classes 3 leaves 1 of 4 classes"),
])
def test_bad_claim_flags_exit_2_with_one_line(flags, message, four_class_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_mnist.main([*TINY, "--data-root", four_class_folder, "--out", str(tmp_path / "r.csv"), *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags,message", [
    (["--max-train-samples", "2"], "fewer than the 3 classes"),
    (["--seed", "-1"], "--seed must be in [0, 4294967296), got -1"),
])
def test_inputs_a_run_cannot_honour_are_refused_naming_the_flag(flags, message, gray_folder, tmp_path, capsys):
    err = one_line_exit_2(train_mnist.main, [*TINY, "--data-root", gray_folder, "--out", str(tmp_path / "r.csv"),
                                             *flags], capsys)
    assert message in err
