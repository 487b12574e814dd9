"""model.predict on real DICOM files: RLE round trip at each DICOM's size, the error
ledger, and the Kaggle scorer on hand-made tables."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from pneumotune.cli import main
from pneumotune.data import rle
from pneumotune.data.dicom import read
from pneumotune.data.ledger import formula_risk
from pneumotune.data.resize import resize_image, resize_probabilities
from pneumotune.model.config import TrainConfig
from pneumotune.model.export import ModelDirError, export_model, load_model
from pneumotune.model.postprocess import Triplet, apply_triplet
from pneumotune.model.predict import (
    PredictInputError,
    find_dicoms,
    is_dicom_uid,
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
    assert "could not be read or are not named by a DICOM UID" in predicted.describe()


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
    # At the DICOM's own size neither mask fits: nothing left to score.
    with pytest.raises(PredictInputError, match=r"could be scored.*runs past the end of a 60x84"):
        score_submission(sub, truth, dicom_dir=dicoms)


def test_malformed_rows_are_ledger_rows_and_the_rest_is_scored(tmp_path, truth):
    sub = write(tmp_path / "s.csv", [("pos_a", "0 4 7"), ("pos_b", "0 2 2 4")])
    result = score_submission(sub, truth, shapes=dict.fromkeys(["pos_a", "pos_b"], SHAPE))
    # pos_a unreadable: 0, not the 1 an empty prediction of a negative would get
    assert result.unreadable == 1 and result.unscored == 0
    assert result.score == pytest.approx((0 + 1 + 1 + 1) / 4)  # the negatives missing: empty
    reason = "malformed RLE: odd number of RLE values (3): expected start/length pairs"
    assert result.problems == (("submission", 2, "pos_a", reason),)


def test_score_command_puts_every_hostile_cell_in_its_ledger(tmp_path, truth, capsys):
    """`pneumotune score` on hostile cells: exit 0, a ledger row each, counts reconcile."""
    truth_rows = [*TRUTH, ("t_big", " 11111111111111111111 2"), ("t_sup", " \u00b2 1")]
    truth = write(tmp_path / "truth.csv", truth_rows, header="ImageId, EncodedPixels")
    sub = write(
        tmp_path / "sub.csv",
        [
            ("pos_a", "0 4"),
            ("pos_b", "1" * 5000 + " 2"),
            ("neg_a", "\u0661\u0662 3"),
            # wraps around in int64 to a run at pixel 5, which fits the 4x4 image
            ("neg_b", f"{2**63 - 1} 1 {2**63 - 1} 1 5 1"),
            ("t_big", "-1"),
            ('=HYPERLINK("http://example.invalid")', "=1+2"),
        ],
    )
    ledger_csv = tmp_path / "ledger.csv"
    # No --dicoms: every image is decoded at 1024x1024, which these masks fit.
    assert main(["score", str(sub), str(truth), "--errors", str(ledger_csv)]) == 0
    out = capsys.readouterr().out

    rows = read_csv(ledger_csv)
    assert [(r["file"], r["line"], r["image_id"]) for r in rows] == [
        ("truth", "7", "t_big"),
        ("truth", "8", "t_sup"),
        ("submission", "3", "pos_b"),
        ("submission", "4", "neg_a"),
        ("submission", "5", "neg_b"),
        ("submission", "7", '\'=HYPERLINK("http://example.invalid")'),
    ]
    reasons = [r["reason"] for r in rows]
    assert "RLE number too large (20 digits" in reasons[0]
    assert "non-integer RLE value '\u00b2'" in reasons[1]
    assert "RLE number too large (5000 digits" in reasons[2]
    assert "non-integer RLE value '\u0661\u0662'" in reasons[3]
    assert "RLE number too large (19 digits" in reasons[4]
    assert "non-integer RLE value '=1+2'" in reasons[5]
    assert not any(formula_risk(c) for r in rows for c in r.values())
    # 6 truth images: 4 scored (pos_a 1; pos_b, neg_a, neg_b unreadable: 0) + 2 unscored.
    result = score_submission(sub, truth)
    assert (result.images, result.unscored, result.unreadable) == (4, 2, 3)
    assert result.score == pytest.approx(0.25)
    assert "6 row(s) rejected: 2 truth image(s) left unscored, 3 unreadable" in out


def test_score_writes_its_ledger_beside_the_submission_by_default(tmp_path, truth):
    sub = write(tmp_path / "my-sub.csv", [("pos_a", "0 4")])
    assert main(["score", str(sub), str(truth)]) == 0
    ledger_csv = tmp_path / "my-sub.score-errors.csv"
    assert ledger_csv.read_text().splitlines() == ["file,line,image_id,reason"]


# --------------------------------------------------------------------------- hostile names


@pytest.fixture(scope="module")
def named(tmp_path_factory) -> Path:
    """DICOMs whose file names are, or are not, DICOM UIDs (the stem is the ImageId)."""
    root = tmp_path_factory.mktemp("named")
    stems = [
        "1.2.826.0.1.20",  # a UID: predicted
        "2.25." + str(2**128 - 1),  # synth's form, 44 characters: predicted
        "=1+2",  # a formula
        "-2+3",
        "@SUM(A1)",
        "01.2.3",  # a leading zero
        "1..2",  # an empty component
        "1.2.3." + "4" * 60,  # longer than 64 characters
        "ID_0011fe81e",
    ]
    for i, stem in enumerate(stems):
        pixels = dicom_factory.smooth_image((40, 40), seed=i)
        data = dicom_factory.jpeg_baseline(pixels, SOPInstanceUID="1.2.826.0.1.9" + str(i))
        (root / f"{stem}.dcm").write_bytes(data)
    return root


def test_only_uid_file_names_become_image_ids(model_dir, named, tmp_path):
    result = predict_folder(model_dir, named, tmp_path / "submission.csv")
    rows = read_csv(result.out_csv)
    assert sorted(r["ImageId"] for r in rows) == ["1.2.826.0.1.20", "2.25." + str(2**128 - 1)]
    assert (result.files, result.predicted, len(result.errors)) == (9, 2, 7)
    errors = read_csv(result.errors_csv)
    assert {e["image_id"] for e in errors} == {
        "'=1+2",
        "'-2+3",
        "'@SUM(A1)",
        "01.2.3",
        "1..2",
        "1.2.3." + "4" * 60,
        "ID_0011fe81e",
    }
    assert all("not a DICOM UID" in e["reason"] for e in errors)
    assert not any(formula_risk(c) for e in errors for c in e.values())
    # The submission itself: no cell a spreadsheet could run, "-1" being SIIM's empty mask.
    for r in rows:
        assert not formula_risk(r["ImageId"]) and not formula_risk(r["EncodedPixels"])


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("1.2.840.10008.1.2", True),
        ("0", True),
        ("1.0.2", True),
        ("2.25." + str(2**128 - 1), True),
        ("1.2." + "3" * 60, True),  # 64 characters
        ("1.2." + "3" * 61, False),  # 65
        ("1.02", False),
        ("1.2.", False),
        (".1", False),
        ("1.\u0662", False),  # a non-ASCII digit
        ("1.2\n", False),
        ("-1", False),
        ("", False),
    ],
)
def test_is_dicom_uid(text, ok):
    assert is_dicom_uid(text) is ok


# --------------------------------------------------------------------------- hostile DICOMs

HOSTILE = {  # UID-named, so that each reaches the reader (not the name check)
    "1.2.826.0.9.1": lambda: dicom_factory.jpeg_bomb(),  # 1.2 KB, 16384x16384
    "1.2.826.0.9.2": lambda: dicom_factory.rle_bomb(),
    "1.2.826.0.9.3": lambda: dicom_factory.deflate_bomb(),  # 260 KB -> 256 MiB
    "1.2.826.0.9.4": lambda: dicom_factory.jpeg_baseline(
        dicom_factory.smooth_image((64, 64)),
        frame=dicom_factory.truncated_jpeg_frame(dicom_factory.smooth_image((64, 64))),
    ),
    "1.2.826.0.9.5": lambda: dicom_factory.png(),
    "1.2.826.0.9.6": lambda: b"",
}


@pytest.mark.slow
def test_predict_and_score_over_hostile_dicoms_exit_0_with_a_ledger_row_each(
    model_dir, dicoms, tmp_path, capsys
):
    """What a user's folder from the wild does to `predict` and `score --dicoms`: each
    bad file is a row of the ledger, the good ones are predicted. (Their memory is
    measured by bench/hostile.py, in processes of their own.)"""
    folder = tmp_path / "wild"
    for image_id, make in HOSTILE.items():
        (folder / "x").mkdir(parents=True, exist_ok=True)
        (folder / "x" / f"{image_id}.dcm").write_bytes(make())
    for good in dicoms.rglob("*.dcm"):
        (folder / good.name).write_bytes(good.read_bytes())
    sub = tmp_path / "submission.csv"
    assert main(["predict", str(model_dir), str(folder), "--out", str(sub)]) == 0
    errors = read_csv(tmp_path / "submission.errors.csv")
    reasons = {row["image_id"]: row["reason"] for row in errors}
    assert set(HOSTILE) <= set(reasons), reasons
    assert all("pixel budget" in reasons[f"1.2.826.0.9.{i}"] for i in (1, 2, 3))
    assert "truncated" in reasons["1.2.826.0.9.4"].lower()
    predicted = {row["ImageId"] for row in read_csv(sub)}
    assert predicted and not predicted & set(HOSTILE)
    truth = write(tmp_path / "truth.csv", [(i, "-1") for i in sorted(predicted | set(HOSTILE))])
    assert main(["score", str(sub), str(truth), "--dicoms", str(folder)]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
