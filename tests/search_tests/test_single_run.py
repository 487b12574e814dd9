"""`pneumotune train` -> `predict` -> `score` end to end on a converted synthetic dataset."""

from __future__ import annotations

import csv
import json

import pytest

from pneumotune.cli import main as cli
from pneumotune.data.convert import find_dicoms
from pneumotune.data.dataset import read_meta
from pneumotune.model.export import CARD_FILE, load_model

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

TINY = ["--set", "img_size=32", "--set", "base_filters=4", "--set", "depth=2"]


def train_args(data, out, *more: str) -> list[str]:
    return ["train", "--config", "demo", "--data", str(data), "--out", str(out), *more]


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "model"
    code = cli(train_args(tiny_dataset, out, "--epochs", "2", *TINY))
    assert code == 0
    return out


@pytest.mark.slow
def test_train_exports_a_loadable_model_with_its_card(trained, tiny_dataset):
    loaded = load_model(trained)
    assert loaded.img_size == 32
    card = loaded.card
    assert card["train_config"]["epochs"] == 2 and card["train_config"]["base_filters"] == 4
    assert card["extra"]["experiment"] == "demo"
    assert card["metrics"]["epoch"] == 2
    assert 0.0 <= card["metrics"]["val_kaggle_dice_triplet"] <= 1.0
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    assert card["data"]["counts"] == manifest["counts"]
    # No image id (nor the pseudonymous patient ids) of the dataset leaks into the card.
    text = (trained / CARD_FILE).read_text()
    meta = read_meta(tiny_dataset)
    leaks = [i for i in [*meta["image_id"], *meta["patient_id"].dropna()] if i in text]
    assert not leaks


@pytest.mark.slow
def test_train_output_lines(tiny_dataset, tmp_path, capsys):
    code = cli(
        train_args(
            tiny_dataset, tmp_path / "m", "--epochs", "1", *TINY, "--set", "augment.flip_p=0"
        )
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "epoch   1/1  loss" in out and "val_kaggle_dice" in out and "val_positive_iou" in out
    assert "an all-empty prediction scores" in out
    assert (
        json.loads((tmp_path / "m" / CARD_FILE).read_text())["train_config"]["augment.flip_p"] == 0
    )


@pytest.mark.slow
def test_predict_then_score_the_training_dicoms(trained, synth_raw, tmp_path, capsys):
    sub = tmp_path / "submission.csv"
    dicom_dir = synth_raw / "dicom-images-train"
    assert cli(["predict", str(trained), str(dicom_dir), "--out", str(sub)]) == 0
    with sub.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(find_dicoms(dicom_dir))
    assert {r["ImageId"] for r in rows} == {p.stem for p in find_dicoms(dicom_dir)}
    capsys.readouterr()
    truth = synth_raw / "train-rle.csv"
    assert cli(["score", str(sub), str(truth), "--dicoms", str(dicom_dir)]) == 0
    out = capsys.readouterr().out
    assert "Kaggle score" in out and "all-empty baseline" in out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "--config", "demo", "--data", "{tmp}/nowhere"], "not a pneumotune dataset"),
        (["train", "--config", "no-such-experiment", "--data", "{tmp}"], "not found"),
        (["predict", "{tmp}", "{tmp}", "--out", "{tmp}/s.csv"], "no model_card.json"),
        (["score", "{tmp}/s.csv", "{tmp}/t.csv"], "does not exist"),
    ],
)
def test_bad_inputs_exit_2_with_a_message(tmp_path, capsys, argv, fragment):
    code = cli([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.slow
def test_predict_without_dicoms_exits_2(trained, tmp_path, capsys):
    assert cli(["predict", str(trained), str(tmp_path), "--out", str(tmp_path / "s.csv")]) == 2
    assert "no *.dcm files" in capsys.readouterr().err


def test_train_help_teaches(capsys):
    with pytest.raises(SystemExit):
        cli(["train", "--help"])
    out = capsys.readouterr().out
    assert "--set KEY=VALUE" in out and "all-empty" in out and "pneumotune predict" in out


@pytest.mark.slow
def test_unknown_override_is_a_usage_error(tiny_dataset, tmp_path, capsys):
    code = cli(train_args(tiny_dataset, tmp_path / "m", "--set", "colour=3"))
    assert code == 2
    assert "unknown training parameter" in capsys.readouterr().err
