"""synth -> convert on a real local Ray: counts, orientation, split, ledger, privacy."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pneumotune.cli import main as cli
from pneumotune.data import dataset, rle
from pneumotune.data.convert import ConvertConfig, ConvertInputError, convert, find_dicoms
from pneumotune.data.dicom import read_image
from pneumotune.data.resize import resize_image, resize_mask
from tests.data_tests import dicom_factory

SIZES = (32, 64)


def _ledger(out: Path) -> list[dict[str, str]]:
    with (out / "errors.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def planted(synth_raw, tmp_path_factory):
    """The synthetic tree with bad files and bad label rows added."""
    src = tmp_path_factory.mktemp("planted") / "raw"
    shutil.copytree(synth_raw, src)
    train = src / "dicom-images-train"
    good = find_dicoms(train)
    bad = train / "bad"
    bad.mkdir()
    (bad / "renamed-png.dcm").write_bytes(dicom_factory.png())
    (bad / "truncated.dcm").write_bytes(good[0].read_bytes()[:2000])
    (bad / "multiframe.dcm").write_bytes(dicom_factory.multi_frame())
    (bad / "palette.dcm").write_bytes(dicom_factory.palette_color())
    (bad / "mpeg2.dcm").write_bytes(dicom_factory.encapsulated_without_decoder())
    (bad / "empty.dcm").write_bytes(b"")
    dup = train / "copy"
    dup.mkdir()
    shutil.copy(good[1], dup / good[1].name)  # the same image id twice
    # Bad label rows: appended to the stage-1 CSV, in its dialect (leading spaces).
    csv_path = src / "train-rle.csv"
    labels = csv_path.read_text().splitlines()
    ids = [p.stem for p in good]
    labelled_ids = [line.split(",")[0] for line in labels[1:]]
    victim_odd, victim_past = labelled_ids[2], labelled_ids[3]
    labels += [
        f"{victim_odd}, 5 3 9",  # odd token count
        f"{victim_past}, {128 * 128 - 2} 10",  # runs past the end of a 128x128 image
        "1.2.3.4.5.6.7.8.9, 10 10",  # no DICOM with this id
        ", -1",  # no image id at all
    ]
    csv_path.write_text("\n".join(labels) + "\n")
    return {
        "src": src,
        "good": good,
        "ids": ids,
        "victims": {victim_odd, victim_past},
        "duplicate": good[1].stem,
    }


@pytest.fixture(scope="module")
def converted(planted, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "ds"
    result = convert(ConvertConfig(src=planted["src"], out=out, sizes=SIZES), progress=False)
    return out, result


def test_counts_reconcile(planted, converted):
    out, result = converted
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts == result.manifest["counts"]
    assert counts["files_seen"] == len(planted["good"]) + 7  # six bad files + one duplicate
    assert counts["files_seen"] == counts["converted"] + counts["errors"]
    assert counts["converted"] == len(planted["good"])
    assert counts["errors"] == 7
    assert counts["labelled"] + counts["unlabelled"] == counts["converted"]
    # synth wrote 2 unlabelled images; the two victims of bad label rows join them.
    assert counts["unlabelled"] == 2 + 2
    assert counts["label_errors"] == 4
    meta = dataset.read_meta(out)
    assert len(meta) == counts["converted"]
    assert int(meta.has_pneumothorax.sum()) == counts["positive"]
    assert int(meta.n_regions.sum()) == counts["regions"]


def test_error_ledger_names_every_bad_file_and_row(planted, converted):
    out, _ = converted
    rows = _ledger(out)
    by_path = {r["path"]: r for r in rows if r["path"]}
    reasons = {Path(p).name: r["reason"] for p, r in by_path.items()}
    assert "not a DICOM file" in reasons["renamed-png.dcm"]
    assert "truncated" in reasons["truncated.dcm"]
    assert "multi-frame" in reasons["multiframe.dcm"]
    assert "PALETTE COLOR" in reasons["palette.dcm"]
    assert "no decoder" in reasons["mpeg2.dcm"]
    assert "empty" in reasons["empty.dcm"] or "not a DICOM" in reasons["empty.dcm"]
    dup = [r for r in rows if r["image_id"] == planted["duplicate"] and r["stage"] == "read"]
    assert len(dup) == 1 and "duplicate image id" in dup[0]["reason"]
    labels = [r for r in rows if r["stage"] == "label"]
    text = " | ".join(r["reason"] for r in labels)
    assert "odd number of RLE values" in text
    assert "runs past the end of a 128x128 image" in text
    assert "label for an image id with no DICOM" in text
    assert "without an ImageId" in text
    assert all(r["reason"].startswith("line ") for r in labels)


def test_bad_label_rows_leave_images_unlabelled_not_negative(planted, converted):
    out, _ = converted
    meta = dataset.read_meta(out).set_index("image_id")
    for victim in planted["victims"]:
        assert not meta.loc[victim, "labelled"]
        assert meta.loc[victim, "has_pneumothorax"] is None or np.isnan(
            meta.loc[victim, "has_pneumothorax"]
        )
    table = dataset.read_table(out, ["image_id", "labelled", f"mask_{SIZES[0]}"]).to_pandas()
    unlabelled = table[~table.labelled]
    assert unlabelled[f"mask_{SIZES[0]}"].isna().all()  # unknown masks are null, never empty


def test_masks_land_where_the_csv_says_and_images_are_not_transposed(planted, converted):
    out, _ = converted
    arrays = {s: dataset.load_arrays(out, s) for s in SIZES}
    positives = np.flatnonzero(arrays[64].meta.has_pneumothorax.to_numpy(dtype=bool))
    assert len(positives) >= 5
    rows: dict[str, list[str]] = {}
    for line in (planted["src"] / "train-rle.csv").read_text().splitlines()[1:]:
        image_id, text = line.split(",", 1)
        rows.setdefault(image_id, []).append(text)
    paths = {p.stem: p for p in planted["good"]}
    for i in positives[:8]:
        image_id = arrays[64].meta.image_id[i]
        image = read_image(paths[image_id])
        truth = rle.merge(rows[image_id], image.shape)
        for s in SIZES:
            a = arrays[s]
            j = int(np.flatnonzero(a.meta.image_id == image_id)[0])
            np.testing.assert_array_equal(a.masks[j], resize_mask(truth, s))
            np.testing.assert_array_equal(a.images[j], resize_image(image, s))


def _rim_contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean intensity inside the mask minus that of a 2-pixel rim around it."""
    import cv2

    rim = (cv2.dilate(mask, np.ones((5, 5), np.uint8)) > 0) & (mask == 0)
    return float(image[mask > 0].mean() - image[rim].mean())


def test_stored_masks_lie_on_the_drawn_regions(converted):
    # A synthetic pneumothorax is air without lung markings: darker than its rim. A mask
    # read in the wrong pixel order (the column-major trap) lands elsewhere.
    out, _ = converted
    a = dataset.load_arrays(out, 64)
    positives = np.flatnonzero(a.meta.has_pneumothorax.to_numpy(dtype=bool))
    true = [_rim_contrast(a.images[i].astype(float), a.masks[i]) for i in positives]
    transposed = [_rim_contrast(a.images[i].astype(float), a.masks[i].T.copy()) for i in positives]
    assert np.median(true) < -8, true
    assert np.median(true) < np.median(transposed) - 8, (true, transposed)


def test_split_groups_patients_and_balances_classes(converted):
    out, _ = converted
    meta = dataset.read_meta(out)
    folds_per_patient = meta.dropna(subset=["patient_id"]).groupby("patient_id").fold.nunique()
    assert (folds_per_patient == 1).all()
    assert meta.patient_id.nunique() < len(meta)  # synth gives patients several images
    labelled = meta[meta.labelled]
    per_fold = labelled.groupby("fold").has_pneumothorax.sum()
    assert per_fold.min() >= 1 and per_fold.max() - per_fold.min() <= 3


def test_no_direct_identifiers_in_the_dataset(planted, converted):
    out, _ = converted
    identifiers = set()
    for p in planted["good"][:20]:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        identifiers |= {str(ds.PatientID), str(ds.PatientName)}
    blob = b"".join(f.read_bytes() for f in out.iterdir() if f.is_file())
    for ident in identifiers:
        assert ident.encode() not in blob, "a raw patient identifier reached the dataset"
    columns = dataset.read_table(out).column_names
    assert not any("name" in c.lower() for c in columns)


def test_no_label_file_means_every_image_unlabelled(synth_raw, ray_local, tmp_path):
    src = tmp_path / "raw"
    shutil.copytree(synth_raw / "dicom-images-train", src)
    result = convert(ConvertConfig(src=src, out=tmp_path / "ds", sizes=(32,)), progress=False)
    counts = result.manifest["counts"]
    assert counts["unlabelled"] == counts["converted"] == counts["files_seen"]
    assert counts["labelled"] == counts["positive"] == 0
    assert dataset.load_arrays(tmp_path / "ds", 32).images.shape[0] == 0  # labelled only


def test_convert_leaves_the_users_ray_data_context_as_it_was(synth_raw, ray_local, tmp_path):
    # The pixel pass turns Ray Data's per-operator reservation off for its own Dataset
    # only (data.convert._without_op_reservation); the caller's pipelines keep theirs.
    import ray

    ctx = ray.data.DataContext.get_current()
    assert ctx.op_resource_reservation_enabled
    result = convert(ConvertConfig(src=synth_raw, out=tmp_path / "ds", sizes=(32,)), progress=False)
    assert result.manifest["counts"]["converted"] == result.manifest["counts"]["files_seen"]
    assert ray.data.DataContext.get_current().op_resource_reservation_enabled


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        ("no_dicoms", "no *.dcm files found"),
        ("bad_columns", "expected ['ImageId', 'EncodedPixels']"),
        ("missing_labels", "does not exist"),
        ("not_empty", "is not empty"),
    ],
)
def test_runs_that_cannot_start_exit_2_with_a_message(tmp_path, capsys, setup, fragment):
    src = tmp_path / "src"
    src.mkdir()
    out = tmp_path / "out"
    args = ["convert", str(src), str(out)]
    if setup != "no_dicoms":
        (src / "a.dcm").write_bytes(dicom_factory.png())
    if setup == "bad_columns":
        (src / "train-rle.csv").write_text("ImageId,Pixels\na,-1\n")
    if setup == "missing_labels":
        args += ["--labels", str(tmp_path / "nope.csv")]
    if setup == "not_empty":
        out.mkdir()
        (out / "precious.txt").write_text("keep me")
    assert cli(args) == 2
    assert fragment in capsys.readouterr().err
    if setup == "not_empty":
        assert (out / "precious.txt").read_text() == "keep me"


def test_config_validation():
    with pytest.raises(ValueError, match="sizes must be"):
        ConvertConfig(src=Path("."), out=Path("o"), sizes=(8,))
    with pytest.raises(ValueError, match="rle_dialect"):
        ConvertConfig(src=Path("."), out=Path("o"), rle_dialect="absolute")  # type: ignore[arg-type]
    assert issubclass(ConvertInputError, Exception)


@pytest.mark.parametrize(
    ("sizes", "part_rows", "group_rows"),
    [
        ((64, 128), 2048, 128),  # small sizes: as before
        ((256,), 2048, 128),
        ((512, 1024), 204, 12),  # SIIM's sizes: ~512 MiB parts, ~32 MiB row groups
        ((8192,), 4, 1),  # never less than a row
    ],
)
def test_parts_and_row_groups_stay_a_sensible_size_at_any_stored_size(sizes, part_rows, group_rows):
    from pneumotune.data.convert import (
        PART_BYTES,
        PART_ROWS,
        ROW_GROUP_BYTES,
        ROW_GROUP_ROWS,
        rows_within,
    )

    assert rows_within(sizes, PART_BYTES, PART_ROWS) == part_rows
    assert rows_within(sizes, ROW_GROUP_BYTES, ROW_GROUP_ROWS) == group_rows


def test_a_fold_loads_alone_and_an_empty_one_says_so(tiny_dataset):
    everything = dataset.load_arrays(tiny_dataset, 32)
    fold = dataset.load_fold(tiny_dataset, 32, 1)
    rows = (everything.meta["fold"] == 1).to_numpy()
    np.testing.assert_array_equal(fold.images, everything.images[rows])
    np.testing.assert_array_equal(fold.masks, everything.masks[rows])
    assert set(fold.meta["fold"]) == {1}
    with pytest.raises(dataset.DatasetError, match=r"fold 9 .* holds no labelled image"):
        dataset.load_fold(tiny_dataset, 32, 9)
