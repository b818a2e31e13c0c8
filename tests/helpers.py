"""Helpers shared by several test files (imported as `helpers`: pytest puts tests/ on the path)."""
import pytest

from common.data import Dataset

TINY = ["--widths", "8-16-8", "--latent-dim", "8", "--epochs", "1", "--batch-size", "12", "--device", "cpu", "--no-amp",
        "--no-progress", "--no-download"]


def no_data_reads(monkeypatch):
    monkeypatch.setattr(Dataset, "load", lambda self, config: pytest.fail("data was read before validation"))


def one_line_exit_2(main, argv, capsys) -> str:
    """Run main(argv); assert it exits with 2 and one line on stderr; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


def train_tiny(folder, out, *extra):
    """A tiny train_mnist.py run (TINY) on `folder`, its row appended to `out`."""
    import train_mnist

    return train_mnist.main([*TINY, "--data-root", folder, "--out", str(out), *extra])
