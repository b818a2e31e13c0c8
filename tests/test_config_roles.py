"""Every list of run settings derives from the role each TrainConfig field is tagged with where it is defined:
a new tagged field is picked up by --resume, the sweep's skip list and the summary's grouping with no edit."""
from dataclasses import dataclass, fields

import pytest
import torch

import common.config
from common.config import RUN, TRAINING, EVALUATION, TrainConfig, identity_keys, resume_keys, training
from common.checkpoints import check_resume
from common.rows import run_key
from common.summary import summarize


def test_every_field_has_exactly_one_known_role():
    assert {f.metadata["role"] for f in fields(TrainConfig)} == {TRAINING, EVALUATION, RUN}
    assert "threads" not in identity_keys() and "out" not in identity_keys() and "eval_every" not in identity_keys()
    assert "flip_tta" in identity_keys() and "flip_tta" not in resume_keys()  # scores only: a resume may change it
    assert {"seed", "lr", "amp", "device", "num_classes"} <= set(resume_keys())


@dataclass(frozen=True)
class WithThrowaway(TrainConfig):
    throwaway: int = training(0, "a setting added for this test only", low=0)


def test_a_new_field_gets_its_flag_help_and_bound_from_where_it_is_defined(capsys):
    from common.cli import build_parser, parse_config

    text = " ".join(build_parser("t", WithThrowaway(), "").format_help().split())
    assert "--throwaway THROWAWAY a setting added for this test only (default: 0)" in text
    config = parse_config(["--throwaway", "-3"], WithThrowaway(), "t", "")
    assert config.throwaway == -3
    with pytest.raises(ValueError) as error:
        config.validate()
    assert str(error.value) == "--throwaway must be >= 0, got -3"  # one line, naming the flag


def test_every_field_has_its_flag_and_help():
    from common.cli import build_parser

    parser = build_parser("t", TrainConfig(), "")
    flags = {option for action in parser._actions for option in action.option_strings}
    by_hand = {"dataset", "preset", "download", "progress"}  # named by the folder, --preset, --no-download, --no-progress
    for f in fields(TrainConfig):
        if f.name not in by_hand:
            assert "--" + f.name.replace("_", "-") in flags, f.name
    assert all(action.help for action in parser._actions)


def test_a_new_tagged_field_reaches_resume_the_sweep_and_the_summary(monkeypatch, gray_folder, tmp_path):
    import train_mnist
    from helpers import TINY

    path = tmp_path / "run.pt"
    train_mnist.main([*TINY, "--data-root", gray_folder, "--out", str(tmp_path / "r.csv"), "--checkpoint", str(path)])
    monkeypatch.setattr(common.config, "TrainConfig", WithThrowaway)
    assert "throwaway" in resume_keys() and "throwaway" in identity_keys()

    saved = torch.load(path, weights_only=True)["config"]
    with pytest.raises(ValueError, match="throwaway"):  # --resume: the checkpoint's run had no such setting
        check_resume(str(path), {**saved, "throwaway": 1}, torch.device("cpu"))

    row = {**saved, "test_acc": 0.9, "throwaway": 0}
    assert run_key(row) != run_key({**row, "throwaway": 1})  # the sweep would run the other value again
    lines = summarize([row, {**row, "throwaway": 1, "test_acc": 0.5}])
    assert sorted(line["settings"] for line in lines) == ["throwaway 0", "throwaway 1"]  # never averaged together
