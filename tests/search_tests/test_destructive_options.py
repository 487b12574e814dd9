"""Options that delete or name folders: `demo --fresh` and an experiment's name."""

from __future__ import annotations

from pneumotune import cli
from pneumotune.demo import DEMO_ENTRIES, clear_demo_folder


def test_fresh_refuses_a_folder_holding_what_a_demo_does_not_write(tmp_path, capsys):
    out = tmp_path / "home"
    (out / "raw").mkdir(parents=True)
    (out / "thesis.tex").write_text("two years of work")
    assert cli.main(["demo", "--out", str(out), "--fresh"]) == 2
    err = capsys.readouterr().err
    assert "pneumotune demo: error: --fresh would delete" in err and "thesis.tex" in err
    assert (out / "thesis.tex").read_text() == "two years of work"
    assert (out / "raw").is_dir()


def test_fresh_refuses_a_link_among_the_demo_folders(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("x")
    out = tmp_path / "demo"
    out.mkdir()
    (out / "dataset").symlink_to(elsewhere)
    assert cli.main(["demo", "--out", str(out), "--fresh"]) == 2
    assert "(dataset)" in capsys.readouterr().err
    assert (elsewhere / "keep.txt").exists()


def test_fresh_deletes_a_folder_a_demo_wrote(tmp_path):
    out = tmp_path / "demo"
    for name in DEMO_ENTRIES:
        if name.endswith(".csv"):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text("ImageId,EncodedPixels\n")
        else:
            (out / name / "inner").mkdir(parents=True)
    clear_demo_folder(out)
    assert not out.exists()
    clear_demo_folder(out)  # nothing there: nothing to do


def test_a_name_that_leaves_the_storage_folder_is_refused_before_anything_is_written(
    tmp_path, capsys
):
    storage = tmp_path / "results"
    argv = ["search", "--config", "demo", "--data", str(tmp_path / "ds"), "--storage",
            str(storage), "--name", "../../escaped"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--name: experiment name '../../escaped' is not allowed" in err
    assert not storage.exists() and not (tmp_path / "escaped").exists()
