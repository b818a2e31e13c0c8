"""The scripts' command line (common/cli.py): --preset and --amp auto."""
import pytest

import train_cifar10
import train_mnist
from common.cli import parse_config
from common.config import TrainConfig


@pytest.mark.parametrize("script", [train_mnist, train_cifar10])
def test_preset_report_is_the_report_setting_and_flags_override_it(script):
    prog, doc = "x.py", ""
    report = parse_config(["--preset", "report"], script.DEFAULTS, prog, doc, {"report": script.REPORT})
    assert (report.preset, report.widths, report.convs_per_stage, report.batch_size) == ("report", (64, 256, 64), 1, 100)
    assert report.as_row()["preset"] == "report"
    changed = parse_config(["--preset", "report", "--widths", "8-16"], script.DEFAULTS, prog, doc, {"report": script.REPORT})
    assert changed.widths == (8, 16) and changed.batch_size == 100
    assert parse_config([], script.DEFAULTS, prog, doc, {"report": script.REPORT}).resolved() == script.DEFAULTS.resolved()
    # the report preset trains as the defaults did before the recipe: exact margin gradient, no warm-up, float32
    assert (report.margin_grad, report.margin_warmup, report.amp) == ("exact", 0.0, False)
    assert (script.DEFAULTS.margin_grad, script.DEFAULTS.amp) == ("unit", None)
    # the report's augmentation: none on MNIST; crop 4 and flip on CIFAR-10
    assert (report.crop_padding, report.flip) == ((0, False) if script is train_mnist else (4, True))


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_is_on_exactly_where_bfloat16_is_native(monkeypatch, native):
    import common.config
    monkeypatch.setattr(common.config, "has_native_bf16", lambda device: native)
    auto = TrainConfig(amp=None, device="cpu")
    assert auto.resolved().amp is native
    assert TrainConfig(amp=True).resolved().amp is True and TrainConfig(amp=False).resolved().amp is False
    defaults = TrainConfig(amp=None, out="x.csv")
    assert parse_config(["--device", "cpu"], defaults, "x.py", "").resolved().amp is native  # the run resolves it
    assert parse_config(["--device", "cpu", "--no-amp"], defaults, "x.py", "").resolved().amp is False
    assert parse_config(["--device", "cpu", "--amp"], defaults, "x.py", "").resolved().amp is True


def test_a_cpu_row_names_its_hardware_bfloat16(tmp_path, monkeypatch):
    import torch
    from common import device as device_module
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 avx512_bf16 amx_tile\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx2\n")
    assert device_module.cpu_bf16_flags(str(cpuinfo)) == ["avx512_bf16", "amx_bf16"]  # the first CPU's, in order
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f\n")
    assert device_module.cpu_bf16_flags(str(cpuinfo)) == []
    assert device_module.cpu_bf16_flags(str(tmp_path / "missing")) == []  # not Linux: nothing claimed
    monkeypatch.setattr(device_module, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    name = device_module.device_name(torch.device("cpu"))
    assert name.startswith("cpu (") and " avx512_bf16, " in name and name.endswith(f"{torch.get_num_threads()} threads)")
