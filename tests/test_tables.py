"""Tables written from the CSVs (common/tables.py): the committed Markdown agrees with its rows, and a doctored
copy is caught."""
import os
import re

import pytest

from common import comparisons, tables
from common.results import REPO_ROOT, write_csv

DOCS = [os.path.join(REPO_ROOT, "README.md"), os.path.join(REPO_ROOT, "results", "README.md")]


def test_every_committed_table_is_what_its_csvs_give():
    assert tables.main(["--check", *DOCS]) == 0


def test_a_doctored_number_is_caught_and_rewriting_restores_it(tmp_path, capsys):
    rows = [{"dataset": "d", "loss": loss, "s": "", "m1": "", "m2": "", "m3": "", "seed": seed, "imbalance": 1.0,
             "holdout_classes": 0, "corruptions": False, "test_acc": acc, "train_tflop": 2.0}
            for loss, accs in (("softmax", (0.90, 0.92)), ("arcface", (0.91, 0.93))) for seed, acc in enumerate(accs)]
    write_csv(str(tmp_path / "r.csv"), rows)
    block = "<!-- table csv=r.csv rows=dataset also=train_tflop columns=loss value=test_acc -->\n"
    page = tmp_path / "page.md"
    page.write_text("# results\n" + block + "<!-- /table -->\ntext after\n")
    assert tables.update(str(page), check=False, root=str(tmp_path))  # filled in
    good = page.read_text()
    assert "| dataset | train_tflop | softmax | arcface |" in good and "| d | 2 | 91.00 ± 1.41 (2) | 92.00 ± 1.41 (2) |" in good
    assert tables.update(str(page), check=True, root=str(tmp_path)) == []
    page.write_text(good.replace("91.00 ± 1.41", "91.50 ± 1.41"))  # typed over by hand
    assert tables.update(str(page), check=True, root=str(tmp_path)) and "91.50" in page.read_text()  # --check: unchanged
    tables.update(str(page), check=False, root=str(tmp_path))
    assert page.read_text() == good


def test_rows_by_file_one_column_per_field_and_datasets_in_listed_order(tmp_path):
    base = {"loss": "softmax", "s": "", "m1": "", "m2": "", "m3": "", "imbalance": 1.0, "holdout_classes": 0,
            "corruptions": False}
    write_csv(str(tmp_path / "zeta.csv"), [dict(base, dataset="mnist", seed=0, test_acc=0.5, angle=40.0)])
    write_csv(str(tmp_path / "alpha.csv"), [dict(base, dataset="cifar", seed=0, test_acc=0.25, angle=80.0),
                                            dict(base, dataset="cifar", seed=1, test_acc=0.75, angle=90.0)])
    by_file = tables.render("csv=zeta.csv;alpha.csv rows=csv columns=fields value=test_acc,angle percent=test_acc",
                            root=str(tmp_path)).splitlines()
    assert by_file[0] == "| csv | test_acc | angle |"
    assert by_file[2:] == ["| zeta | 50.00 (1) | 40.00 (1) |", "| alpha | 50.00 ± 35.36 (2) | 85.00 ± 7.07 (2) |"]
    by_dataset = tables.render("csv=zeta.csv;alpha.csv rows=loss columns=dataset value=test_acc", root=str(tmp_path))
    assert by_dataset.splitlines()[0] == "| loss | mnist | cifar |"  # as listed, not alphabetical


def test_gains_table_one_line_per_data_size_and_only_the_fields_asked_for(tmp_path):
    def row(loss, per_class, seed, acc):
        margins = {"s": 30, "m1": 1, "m2": 0.5, "m3": 0} if loss == "arcface" else {"s": "", "m1": "", "m2": "", "m3": ""}
        return {"dataset": "t", "imbalance": 1.0, "holdout_classes": 0, "corruptions": False, "loss": loss, **margins,
                "seed": seed, "max_train_samples": "" if per_class == 50 else 4 * per_class, "test_acc": acc,
                "test_top5": acc, "map_at_r": acc / 2, "train_class_counts": ";".join([str(per_class)] * 4)}

    rows = [row("softmax", n, s, 0.30 + 0.01 * s) for n in (10, 50) for s in range(3)]
    rows += [row("arcface", n, s, 0.30 + gain + 0.01 * s) for n, gain in ((10, 0.05), (50, 0.0)) for s in range(3)]
    write_csv(str(tmp_path / "g.csv"), rows)
    lines = tables.render("csv=g.csv kind=gains value=acc,map_at_r", root=str(tmp_path)).splitlines()
    assert lines[0] == "| classes | images per class | loss | runs (softmax) | top-1 gain, points | MAP@R gain, points |"
    assert lines[2].startswith("| 4 | 10 | arcface m2 = 0.5 | 3 (3) | +5.00 [") and "| +2.50 [" in lines[2]
    assert lines[3].startswith("| 4 | 50 | arcface m2 = 0.5 | 3 (3) | +0.00 [") and "(p = 1.000, Holm 1.000)" in lines[3]
    by_loss = tables.render("csv=g.csv kind=gains columns=loss value=acc", root=str(tmp_path)).splitlines()
    assert by_loss[:2] == ["| classes | images per class | arcface m2 = 0.5 |", "|---|---|---|"]
    assert by_loss[2] == "| 4 | 10 | +5.00 [+1.5, +8.5] (3, 3) |"  # +-t(2) sqrt(1/3 + 1/3) = 4.303 * 0.816 points
    assert by_loss[3] == "| 4 | 50 | +0.00 [-3.5, +3.5] (3, 3) |"
    assert tables.render("csv=g.csv kind=gains columns=loss value=acc where=loss:softmax|arcface",
                         root=str(tmp_path)).splitlines()[2:4] == by_loss[2:4]  # either loss kept
    assert "| arcface" not in tables.render("csv=g.csv kind=gains where=loss:softmax", root=str(tmp_path))


def heading_anchors(path: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces as hyphens."""
    with open(path) as handle:
        titles = [line.lstrip("#").strip() for line in handle if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-") for title in titles}


def test_every_relative_link_in_the_documents_resolves():
    pages = [*DOCS, os.path.join(REPO_ROOT, "results", "HISTORY.md"), os.path.join(REPO_ROOT, "docs", "guide.md")]
    broken = []
    for page in pages:
        with open(page) as handle:
            links = re.findall(r"\]\(([^)\s]+)\)", handle.read())
        for link in (k for k in links if not k.startswith(("http://", "https://"))):
            path, _, anchor = link.partition("#")
            target = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(target) or (anchor and target.endswith(".md")
                                               and anchor not in heading_anchors(target)):
                broken.append(f"{os.path.relpath(page, REPO_ROOT)}: {link}")
    assert broken == []


def page_with(tmp_path, spec: str) -> str:
    """A Markdown page holding one filled table block of this spec over rows of two seeds of one setting."""
    base = {"dataset": "d", "loss": "softmax", "s": "", "m1": "", "m2": "", "m3": "", "imbalance": 1.0,
            "holdout_classes": 0, "corruptions": False, "epochs": 10}
    write_csv(str(tmp_path / "r.csv"), [dict(base, seed=0, test_acc=0.9), dict(base, seed=1, test_acc=0.92)])
    page = tmp_path / "page.md"
    spec = spec.replace("csv=", f"csv={tmp_path}/")  # absolute: main() reads paths from the repository root
    page.write_text(f"# results\n\n<!-- table {spec} -->\n| old | table |\n<!-- /table -->\n")
    return str(page)


def refused(tmp_path, capsys, spec: str) -> str:
    """Run `python -m common.tables` on a page with this spec: it must exit 2 with one line and leave the page."""
    path = page_with(tmp_path, spec)
    before = open(path).read()
    capsys.readouterr()
    assert tables.main([path]) == 2 and tables.main(["--check", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0] == err[1], err
    assert open(path).read() == before  # never rewritten from nothing
    return err[0]


def test_a_cell_that_would_pool_two_settings_is_refused_naming_them(tmp_path, capsys):
    path = page_with(tmp_path, "csv=r.csv rows=dataset value=test_acc")
    other = {"dataset": "d", "loss": "softmax", "s": "", "m1": "", "m2": "", "m3": "", "imbalance": 1.0,
             "holdout_classes": 0, "corruptions": False, "epochs": 1, "seed": 0, "test_acc": 0.3}
    from common.results import append_row
    append_row(str(tmp_path / "r.csv"), other)  # a 1-epoch run appended to the 10-epoch rows
    assert tables.main([path]) == 2
    err = capsys.readouterr().err.strip()
    assert "line 3" in err and "cell (dataset=d)" in err and "2 settings" in err and "epochs: 1, 10" in err


def test_a_cut_last_line_is_named_not_read_as_a_number(tmp_path, capsys):
    path = page_with(tmp_path, "csv=r.csv rows=dataset value=test_acc")
    text = (tmp_path / "r.csv").read_text()
    (tmp_path / "r.csv").write_text(text.rstrip("\n")[:-1])  # the last line ends inside test_acc
    assert tables.main([path]) == 2
    err = capsys.readouterr().err.strip()
    assert "r.csv line 3: the last line is cut" in err


def test_typos_in_a_spec_are_refused_in_one_line_naming_the_line_and_the_name(tmp_path, capsys):
    assert "/missing.csv: no such file" in refused(tmp_path, capsys, "csv=missing.csv rows=dataset value=test_acc")
    assert "value=test_ac: no column 'test_ac'" in refused(tmp_path, capsys, "csv=r.csv rows=dataset value=test_ac")
    assert "where=epoch:10: no column 'epoch'" in refused(tmp_path, capsys,
                                                          "csv=r.csv rows=dataset value=test_acc where=epoch:10")
    assert "no row matches where=epochs:20" in refused(tmp_path, capsys,
                                                       "csv=r.csv rows=dataset value=test_acc where=epochs:20")
    assert "line 3: 'rows' is not key=value" in refused(tmp_path, capsys, "csv=r.csv rows value=test_acc")
    assert "no rows= in the spec" in refused(tmp_path, capsys, "csv=r.csv value=test_acc")
    assert "unknown key 'valu'" in refused(tmp_path, capsys, "csv=r.csv rows=dataset valu=test_acc")


def test_arms_of_a_tuned_trial_are_each_set_against_the_softmax_arm(tmp_path):
    def run(loss, seed, acc, **settings):
        margin = lambda v: "" if loss == "softmax" else v  # noqa: E731 - softmax has no margins
        margins = {"s": margin(settings.get("s")), "m1": margin(1), "m2": margin(settings.get("m2")), "m3": margin(0.0)}
        return {"dataset": "d", "loss": loss, **margins, "seed": seed, "imbalance": 1.0, "holdout_classes": 0,
                "corruptions": False, "lr": settings.get("lr", 0.1), "label_smoothing": settings.get("ls", 0.0),
                "test_acc": acc, "map_at_r": acc / 2}
    rows = [run("softmax", s, 0.40 + 0.001 * s, lr=0.07, ls=0.1) for s in range(5)]
    rows += [run("arcface", s, 0.42 + 0.001 * s, s=20, m2=0.3, lr=0.2) for s in range(5)]
    rows += [run("arcface", s, 0.40 + 0.001 * s, s=16, m2=0.0, lr=0.07) for s in range(5)]
    write_csv(str(tmp_path / "trial.csv"), rows)
    lines = tables.render("csv=trial.csv kind=arms", root=str(tmp_path)).splitlines()
    assert lines[0].startswith("| arm | runs (softmax) | top-1 gain, points |")
    assert lines[2].startswith("| arcface: arcface s = 20, m2 = 0.3, lr 0.2, label_smoothing 0.0 | 5 (5) | +2.00 [")
    assert "(p = 0.008, Holm 0.016)" in lines[2]  # 5 runs apart from 5: the exact floor 2/252, doubled over 2 arms
    assert "| normsoftmax: arcface s = 16, m2 = 0, label_smoothing 0.0 | 5 (5) | +0.00 [" in lines[3]  # same lr: unnamed
    assert "exact (252 labellings)" in lines[-1] and "the 2 arms" in lines[-1]
    line = comparisons.arms_against_softmax(rows)[0]  # the figure's softmax dots: its runs about their mean, points
    assert [float(v) for v in line["softmax_run_gains_test_acc"].split(";")] == pytest.approx([-0.2, -0.1, 0, 0.1, 0.2])
    write_csv(str(tmp_path / "one.csv"), rows[:10])  # one arm: its family is named in the singular
    assert "the 1 arm of each field" in tables.render("csv=one.csv kind=arms", root=str(tmp_path)).splitlines()[-1]
    write_csv(str(tmp_path / "two.csv"), rows + [run("softmax", 0, 0.3, lr=0.2)])
    with pytest.raises(tables.TableError, match="2 softmax arms"):
        tables.render("csv=two.csv kind=arms", root=str(tmp_path))
    write_csv(str(tmp_path / "alone.csv"), rows[:5])
    with pytest.raises(tables.TableError, match="only the softmax arm"):
        tables.render("csv=alone.csv kind=arms", root=str(tmp_path))
