"""model.predict on real DICOM files: RLE round trip at each DICOM's size, the error
ledger, and the Kaggle scorer on hand-made tables."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from pneumotune.data import rle
from pneumotune.data.dicom import read
from pneumotune.data.resize import resize_image, resize_probabilities
from pneumotune.model.config import TrainConfig
from pneumotune.model.export import ModelDirError, export_model, load_model
from pneumotune.model.postprocess import Triplet, apply_triplet
from pneumotune.model.predict import (
    PredictInputError,
    find_dicoms,
    predict_folder,
    score_submission,
)
from pneumotune.model.train import build_model, compile_model
from tests.data_tests import dicom_factory

pytestmark = [
    pytest.mark.backend,
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]

SIZE = 32
# (relative folder, image id, (rows, columns)): square, non-square, and SIIM-like nesting.
GOOD = [
    ("study1/series1", "1.2.826.0.1.1", (64, 64)),
    ("study1/series2", "1.2.826.0.1.2", (60, 84)),
    ("study2/series1", "1.2.826.0.1.3", (96, 40)),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    cfg = TrainConfig(img_size=SIZE, base_filters=4, depth=2, epochs=1)
    model = compile_model(build_model(cfg), cfg, n_train=8)
    out = tmp_path_factory.mktemp("model") / "m"
    # An untrained model gives probabilities around 0.5: masks with many runs, a good RLE test.
    return export_model(
        model,
        out,
        train_config=cfg,
        triplet=Triplet(0.5, 0.0, 0.45),
        metrics={},
        data_manifest=None,
    )


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dicoms") / "dicom-images-test"
    for i, (folder, image_id, shape) in enumerate(GOOD):
        (root / folder).mkdir(parents=True, exist_ok=True)
        pixels = dicom_factory.smooth_image(shape, seed=i)
        data = dicom_factory.jpeg_baseline(pixels, SOPInstanceUID=image_id)
        (root / folder / f"{image_id}.dcm").write_bytes(data)
    (root / "bad").mkdir()
    (root / "bad" / "1.2.826.0.1.9.dcm").write_bytes(dicom_factory.text())
    # A label file next to the images must be ignored, not read as an image.
    (root / "labels.csv").write_text("ImageId,EncodedPixels\n1.2.826.0.1.1,-1\n")
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def predicted(model_dir, dicoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "submission.csv"
    return predict_folder(model_dir, dicoms, out, batch_size=2)


def test_one_row_per_readable_image_and_the_corrupt_one_in_the_ledger(predicted):
    rows = read_csv(predicted.out_csv)
    assert list(rows[0]) == ["ImageId", "EncodedPixels"]
    assert sorted(r["ImageId"] for r in rows) == sorted(i for _, i, _ in GOOD)
    assert (predicted.files, predicted.predicted) == (4, 3)
    errors = read_csv(predicted.errors_csv)
    assert predicted.errors_csv.name == "submission.errors.csv"
    assert [(e["path"], e["image_id"]) for e in errors] == [
        ("bad/1.2.826.0.1.9.dcm", "1.2.826.0.1.9")
    ]
    assert errors[0]["reason"]  # the reader's sentence
    assert "could not be read" in predicted.describe()


def test_rle_decodes_to_the_thresholded_prediction_at_the_dicom_size(predicted, model_dir, dicoms):
    rows = {r["ImageId"]: r["EncodedPixels"] for r in read_csv(predicted.out_csv)}
    loaded = load_model(model_dir)
    some_foreground = False
    for folder, image_id, shape in GOOD:
        _, image = read(dicoms / folder / f"{image_id}.dcm")
        assert image.shape == shape
        prob = loaded.predict_probs(resize_image(image, SIZE)[None])[0]
        expected = apply_triplet(resize_probabilities(prob, *shape), loaded.triplet)
        decoded = rle.decode(rows[image_id], shape, "relative")
        np.testing.assert_array_equal(decoded, expected, err_msg=image_id)
        some_foreground |= bool(expected.any())
    assert some_foreground  # the comparison was not between empty masks only
    assert predicted.positive == sum(not rle.is_empty(v) for v in rows.values())


def test_find_dicoms_is_recursive_and_ignores_other_files(dicoms):
    found = find_dicoms(dicoms)
    assert len(found) == 4 and all(p.suffix == ".dcm" for p in found)


def test_bad_inputs_raise_clear_errors(model_dir, dicoms, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PredictInputError, match=r"no \*\.dcm files"):
        predict_folder(model_dir, empty, tmp_path / "s.csv")
    with pytest.raises(ModelDirError, match="model_card"):
        predict_folder(tmp_path, dicoms, tmp_path / "s.csv")


# --------------------------------------------------------------------------- score

SHAPE = (4, 4)
# Column-major relative RLE over 4x4: "0 4" is column 0, "0 2" its top two pixels.
TRUTH = [  # stage-1 dialect: leading spaces in the header and the values
    ("pos_a", " 0 4"),
    ("pos_b", " 4 4"),
    ("pos_b", " 0 2"),  # a second region of pos_b: rows are OR-ed
    ("neg_a", " -1"),
    ("neg_b", " -1"),
]


def write(path: Path, rows: list[tuple[str, str]], header: str = "ImageId,EncodedPixels") -> Path:
    path.write_text(header + "\n" + "".join(f"{i},{r}\n" for i, r in rows))
    return path


@pytest.fixture
def truth(tmp_path) -> Path:
    return write(tmp_path / "truth.csv", TRUTH, header="ImageId, EncodedPixels")


def score(tmp_path, truth, rows):
    sub = write(tmp_path / "sub.csv", rows)
    ids = {i for i, _ in TRUTH} | {i for i, _ in rows}
    return score_submission(sub, truth, shapes=dict.fromkeys(ids, SHAPE))


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # perfect: every image scores 1
        ([("pos_a", "0 4"), ("pos_b", "0 2 2 4"), ("neg_a", "-1"), ("neg_b", "-1")], 1.0),
        # all empty: the two negatives score 1, the positives 0
        ([(i, "-1") for i in ("pos_a", "pos_b", "neg_a", "neg_b")], 0.5),
        # rows missing entirely count as predicted empty: same as all empty
        ([], 0.5),
        # pos_a half found (Dice 2*2/(4+2)), pos_b missing, one pixel on neg_a (0), neg_b ok
        ([("pos_a", "0 2"), ("neg_a", "15 1")], (2 / 3 + 0 + 0 + 1) / 4),
    ],
)
def test_score_table(tmp_path, truth, rows, expected):
    result = score(tmp_path, truth, rows)
    assert result.score == pytest.approx(expected)
    assert result.images == 4 and result.positive == 2
    assert result.empty_baseline == 0.5


def test_missing_and_extra_rows_are_counted(tmp_path, truth):
    result = score(tmp_path, truth, [("pos_a", "0 4"), ("someone_else", "-1")])
    assert (result.missing, result.extra) == (3, 1)
    assert result.positive_score == pytest.approx(0.5)  # pos_a 1, pos_b 0
    assert result.negative_score == 1.0


def test_default_size_is_1024_and_dicom_sizes_are_used_when_given(tmp_path, dicoms):
    # Runs past 60x84 fit a 1024x1024 image: decoded at the default SIIM size.
    image_id = GOOD[1][1]
    runs = f"{60 * 84 - 2} 10"
    truth = write(tmp_path / "t.csv", [(image_id, runs)])
    sub = write(tmp_path / "s.csv", [(image_id, runs)])
    assert score_submission(sub, truth).score == 1.0
    with pytest.raises(PredictInputError, match="does not fit 60x84"):
        score_submission(sub, truth, dicom_dir=dicoms)


def test_malformed_rows_are_refused(tmp_path, truth):
    sub = write(tmp_path / "s.csv", [("pos_a", "0 4 7")])
    with pytest.raises(PredictInputError, match="malformed RLE"):
        score_submission(sub, truth)
