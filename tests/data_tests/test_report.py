"""The EDA report on a small real dataset: factory DICOMs -> `pneumotune convert` (real Ray)
-> report.

The dataset has positives (one and two regions), negatives, one unlabelled image, an
invalid and a missing age, an age over 89, a missing sex, patients with two images, two
files that are not readable (a text file, a DICOM whose JPEG frame is garbage) and one
malformed label row, so that every section has something to draw and the error ledger
has every stage. And hostile input: header text that matplotlib would read as mathtext
or a terminal as escape sequences, decompression bombs, a truncated JPEG frame, and a
valid deflated file over 64 KiB; every bad file is one ledger row, never a traceback.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pneumotune import cli
from pneumotune.data import convert as convert_module
from pneumotune.data import dataset, eda_plots, report, rle
from pneumotune.data.convert import ConvertConfig, convert
from pneumotune.errors import ConfigError
from pneumotune.reports import figures
from pneumotune.reports.page import Section, write_report
from tests.data_tests import dicom_factory as fac

N_IMAGES = 14
SIDE = 128
MATHTEXT_VIEW = "$\\undefinedcmd$"  # matplotlib's mathtext parser fails on it
ESCAPE_VIEW = "P\x1b[2JA"  # ESC [2J clears a terminal
DEFLATED_UID = "1.2.276.0.7230010.3.1.4.8323329.4200.1517875165.878200"
# (file name, what its errors.csv reason says), all refused under --pixel-budget-mb 32
HOSTILE = {
    "jpeg-bomb.dcm": "image over the pixel budget (16384x16384x1 x 1 bytes = 256 MiB > 32 MiB",
    "rle-bomb.dcm": "image over the pixel budget (16384x16384x1 x 1 bytes",
    "deflate-bomb.dcm": "image over the pixel budget (16384x16384x1 x 1 bytes",
    "deflate-bomb-small-header.dcm": "deflated data set larger than its image",
    "jpeg-lying.dcm": "JPEG frame size differs from the header (16384x16384 vs 60x84)",
    "truncated.dcm": "the JPEG data is truncated or corrupt (Corrupt JPEG data: premature end",
    "escape.dcm": "unsupported photometric interpretation MONO[31MCHROME3",
}


def _uid(i: int) -> str:
    return f"1.2.276.0.7230010.3.1.4.8323329.{4000 + i}.1517875165.{878100 + i}"


def _patient_id(i: int) -> str:
    # Two images per patient: folds must group them, the report must count, not list, them.
    return f"5b6e1c0a-7f3d-4c2e-9a41-2d8f0b7e{i // 2:04d}"


def _patient_name(i: int) -> str:
    return f"Doe^Jane{i // 2:03d}"


def _mask(i: int) -> list[np.ndarray]:
    """The label regions of image ``i`` (empty list: negative)."""
    if i % 3:
        return []
    first = np.zeros((SIDE, SIDE), np.uint8)
    cv2.ellipse(first, (25 + 3 * i, 35), (10, 22), 0, 0, 360, 1, -1)
    if i % 2:
        return [first]
    second = np.zeros((SIDE, SIDE), np.uint8)
    cv2.rectangle(second, (88, 20), (105, 70 + i), 1, -1)
    return [first, second]


def _write_source(src: Path) -> None:
    train = src / "dicom-images-train"
    rows = ["ImageId, EncodedPixels"]  # stage 1: a leading space in the header and values
    for i in range(N_IMAGES):
        tags = {
            "PatientID": _patient_id(i),
            "PatientName": _patient_name(i),
            "PatientSex": None if i == 5 else "MF"[i % 2],
            "PatientAge": {4: "150", 7: None, 10: "097Y"}.get(i, str(20 + 4 * i)),
            "ViewPosition": {2: MATHTEXT_VIEW, 6: ESCAPE_VIEW}.get(i, "AP" if i % 4 == 0 else "PA"),
            "SOPInstanceUID": _uid(i),
        }
        folder = train / f"1.2.3.{i}" / f"1.2.3.{i}.1"
        folder.mkdir(parents=True)
        image = fac.smooth_image((SIDE, SIDE), seed=i)
        (folder / f"{_uid(i)}.dcm").write_bytes(fac.jpeg_baseline(image, **tags))
        if i == N_IMAGES - 1:
            continue  # no CSV row: unlabelled, not negative
        regions = _mask(i)
        rows += [f"{_uid(i)}, {rle.encode(m)}" for m in regions] or [f"{_uid(i)}, -1"]
    rows.append(f"{_uid(99)}, 1 2 3")  # malformed (odd count), for an id without a DICOM
    bad = train / "bad"
    bad.mkdir()
    (bad / "notes.dcm").write_bytes(b"this is a text file, not a DICOM\n" * 8)
    garbage_frame = fac.jpeg_baseline(
        fac.smooth_image((SIDE, SIDE)),
        frame=b"\xff\xd8\xff\xe0" + bytes(40),
        PatientID=_patient_id(90),
        PatientName=_patient_name(90),
        SOPInstanceUID=_uid(90),
    )
    (bad / f"{_uid(90)}.dcm").write_bytes(garbage_frame)
    _write_hostile(train / "hostile")
    # A valid deflated file well over the 64 KiB header prefix: converted, labelled negative.
    noise = np.random.default_rng(0).integers(0, 256, (2 * SIDE, 4 * SIDE), dtype=np.uint8)
    deflated = fac.deflated(noise, PatientID=_patient_id(0), SOPInstanceUID=DEFLATED_UID)
    assert len(deflated) > 2 * 64 * 1024
    (train / f"{DEFLATED_UID}.dcm").write_bytes(deflated)
    rows.append(f"{DEFLATED_UID}, -1")
    (src / "train-rle.csv").write_text("\n".join(rows) + "\n")


def _write_hostile(folder: Path) -> None:
    folder.mkdir()
    small = fac.smooth_image((60, 84))
    files = {
        "jpeg-bomb.dcm": fac.jpeg_bomb(),
        "rle-bomb.dcm": fac.rle_bomb(),
        "deflate-bomb.dcm": fac.deflate_bomb(),
        "deflate-bomb-small-header.dcm": fac.deflate_bomb(2**28, shape=(60, 84)),
        "jpeg-lying.dcm": fac.jpeg_bomb(header=(60, 84)),
        "truncated.dcm": fac.jpeg_baseline(small, frame=fac.truncated_jpeg_frame(small)),
        "escape.dcm": fac.native(small, photometric="MONO\x1b[31mCHROME3\x07"),
    }
    assert set(files) == set(HOSTILE)
    for name, data in files.items():
        (folder / name).write_bytes(data)


@pytest.fixture(scope="module")
def conversion(ray_local, tmp_path_factory) -> tuple[Path, str]:
    """The dataset written by `pneumotune convert`, and what the command printed."""
    root = tmp_path_factory.mktemp("report")
    _write_source(root / "src")
    args = ["convert", str(root / "src"), str(root / "ds"), "--sizes", "64"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main([*args, "--pixel-budget-mb", "32"]) == 0
    return root / "ds", printed.getvalue()


@pytest.fixture(scope="module")
def converted(conversion) -> Path:
    return conversion[0]


@pytest.fixture(scope="module")
def built(converted) -> report.ReportResult:
    return report.report_dataset(converted, seed=0, samples=6)


@pytest.fixture(scope="module")
def page(built) -> str:
    return built.html.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def inputs(converted):
    """What the figure builders draw from, read the way report_dataset reads it."""
    manifest = dataset.read_manifest(converted)
    meta = dataset.read_meta(converted)
    meta["label_state"] = eda_plots.label_states(meta)
    pixels = report.scan_pixels(converted, manifest["files"], 64, meta, set(range(len(meta))))
    errors = report.read_errors(converted / dataset.ERRORS)
    return manifest, meta, pixels, errors


def _section_html(page: str, key: str) -> str:
    match = re.search(rf'<section id="{key}".*?</section>', page, re.S)
    assert match, f"section {key} missing"
    return match.group(0)


# --------------------------------------------------------------------------- the page
EXPECTED_SECTIONS = (
    "overview",
    "samples",
    "positives",
    "class_balance",
    "regions",
    "age",
    "sex",
    "view_position",
    "mask_area",
    "heatmap",
    "quality",
    "errors",
    "folds",
)
TEXT_ONLY = {"overview", "quality"}


def test_every_section_is_on_the_page(built, page):
    assert built.sections == EXPECTED_SECTIONS
    for key in EXPECTED_SECTIONS:
        _section_html(page, key)
        assert f'href="#{key}"' in page  # in the table of contents
    assert built.html == built.html.parent / "report.html"
    assert built.html.parent == built.html.parent.parent / "report"  # default: DATASET/report


def test_every_figure_is_a_file_with_data_and_is_embedded(built, page):
    assert set(built.figures) == set(EXPECTED_SECTIONS) - TEXT_ONLY
    assert set(built.pngs) == set(built.figures.values())
    for key, path in built.figures.items():
        data = path.read_bytes()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert image is not None and image.shape[0] > 200 and image.shape[1] > 400, key
        assert image.std() > 10, f"{key}.png looks blank"
        assert base64.b64encode(data).decode() in _section_html(page, key)


def test_page_opens_offline(page):
    # Nothing to fetch: no script, no stylesheet link, images only as data: URIs.
    assert "<script" not in page
    assert "<link" not in page
    assert re.findall(r'src="([^"]*)"', page) and all(
        src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page)
    )
    assert "http://" not in page and "https://" not in page


def test_no_patient_or_image_identifier_anywhere(page, inputs):
    _, meta, _, _ = inputs
    for i in [*range(N_IMAGES), 90]:
        assert _patient_id(i) not in page
        assert _patient_name(i) not in page
        assert _uid(i) not in page
    pseudonyms = set(meta["patient_id"].dropna())
    assert len(pseudonyms) == N_IMAGES // 2
    assert not [p for p in pseudonyms if p in page]
    assert "notes.dcm" not in page  # no file names or paths from errors.csv either
    assert "dicom-images-train" not in page


def test_counts_and_data_quality_are_reported(page):
    overview = _section_html(page, "overview")
    files = N_IMAGES + 2 + len(HOSTILE) + 1  # + text, garbage frame, hostile, deflated
    assert re.search(rf"files_seen</td><td class=\"num\">{files}<", overview)
    assert re.search(rf"converted</td><td class=\"num\">{N_IMAGES + 1}<", overview)
    quality = _section_html(page, "quality")
    assert re.search(r"unlabelled images</td><td class=\"num\">1<", quality)
    assert re.search(r"age invalid[^<]*</td><td class=\"num\">1<", quality)
    assert re.search(r"age missing</td><td class=\"num\">1<", quality)
    folds = _section_html(page, "folds")
    assert folds.count("<tr>") == 1 + 5  # header + one row per fold


def test_errors_section_lists_each_reason_by_stage(page):
    errors = _section_html(page, "errors")
    assert "not a DICOM file" in errors  # the text file, at the read stage
    assert (
        "cannot decode JPEG Baseline pixel data" in errors
    )  # the garbage frame, at the decode stage
    assert "malformed RLE" in errors  # the bad label row
    for stage in ("read", "decode", "label"):
        assert f"<td>{stage}</td>" in errors


# --------------------------------------------------------------------------- figure builders
def test_every_figure_builder_draws_data(inputs):
    _, meta, pixels, errors = inputs
    positives = list(np.flatnonzero(meta["label_state"] == figures.PNEUMOTHORAX))
    built = {
        "samples": eda_plots.fig_samples(pixels, meta, list(range(len(meta)))),
        "positives": eda_plots.fig_positive_examples(pixels, meta, positives),
        "class_balance": eda_plots.fig_class_balance(meta),
        "regions": eda_plots.fig_regions_per_image(meta),
        "age": eda_plots.fig_age(meta),
        "sex": eda_plots.fig_sex(meta),
        "view_position": eda_plots.fig_view_position(meta),
        "mask_area": eda_plots.fig_mask_area(meta),
        "heatmap": eda_plots.fig_heatmap(pixels),
        "errors": eda_plots.fig_errors(errors),
        "folds": eda_plots.fig_folds(meta),
    }
    for key, fig in built.items():
        assert fig is not None, key
        assert fig.axes, key
        assert figures.empty_axes(fig) == [], f"{key} has an empty axis"
    # The positive panels: a region box per connected component on each overlay.
    overlay_axes = built["positives"].axes[0::3]
    assert all(ax.patches for ax in overlay_axes)
    assert len(overlay_axes) == len(positives) == 5


def test_pixel_summary_matches_the_arrays(inputs, converted):
    _, meta, pixels, _ = inputs
    arrays = dataset.load_arrays(converted, 64, labelled_only=False)
    positive = (meta["label_state"] == figures.PNEUMOTHORAX).to_numpy()
    np.testing.assert_allclose(pixels.mask_sum, arrays.masks[positive].sum(axis=0))
    np.testing.assert_allclose(pixels.image_sum, arrays.images.sum(axis=0, dtype=np.float64))
    assert pixels.n_positive == positive.sum() == 5
    for row, image in pixels.images.items():
        np.testing.assert_array_equal(image, arrays.images[row])
    assert set(pixels.masks) == set(np.flatnonzero(meta["labelled"].to_numpy()))


def test_sections_without_data_say_so_in_text(inputs):
    manifest, meta, pixels, _ = inputs
    negatives = meta[meta["label_state"] != figures.PNEUMOTHORAX].reset_index(drop=True)
    no_positive = eda_plots.Pixels(64, {}, {}, np.zeros((64, 64)), 0, pixels.image_sum, 14)
    no_errors = pd.DataFrame(columns=["path", "image_id", "stage", "reason", "short"])
    sections = report.build_sections(manifest, negatives, no_errors, no_positive, [], [])
    by_key = {s.key: s for s in sections}
    for key in ("samples", "positives", "regions", "mask_area", "heatmap", "errors"):
        assert by_key[key].png is None, key
        assert by_key[key].paragraphs, f"{key} should explain why it has no figure"
    assert "No conversion errors" in by_key["errors"].paragraphs[0]
    assert "samples=0" in by_key["samples"].paragraphs[0]
    assert by_key["class_balance"].png is not None  # negatives and unlabelled still drawn

    empty = meta.iloc[:0]
    nothing = report.build_sections(manifest, empty, None, no_positive, [], [])
    assert all(s.png is None for s in nothing)
    assert all(s.paragraphs or s.tables for s in nothing)


# --------------------------------------------------------------------------- pure helpers
@pytest.mark.parametrize(
    ("reason", "short"),
    [
        ("not a DICOM file (no DICM preamble and no valid DICOM header)", "not a DICOM file"),
        (
            "line 12: malformed RLE: odd count (3): expected pairs",
            "malformed RLE: odd count: expected pairs",
        ),
        ("line 3: runs past the end; line 4: runs past the end", "runs past the end"),
        (
            "duplicate image id: already read from a/b/1.2.3.dcm",
            "duplicate image id: already read from …",
        ),
        ("label for image 1.2.3.4.5 with no DICOM", "label for image … with no DICOM"),
        # Nested parentheses go as a whole; a slash that is not a path stays.
        ("cannot decode X (Process 1) data (err: Decode(): bad)", "cannot decode X data"),
        ("odd count: expected start/length pairs", "odd count: expected start/length pairs"),
        ("unreadable DICOM (ValueError: cut off (", "unreadable DICOM"),
        ("", "(no reason given)"),
    ],
)
def test_short_reason(reason, short):
    assert report.short_reason(reason, hide={"1.2.3.4.5"}) == short


def test_identifier_guard_refuses_a_leaking_page():
    meta = pd.DataFrame({"patient_id": ["0123456789abcdef", None], "image_id": ["1.2.3.4.5", "x"]})
    report.check_no_identifiers(["3 patients", "image 1 of the sample"], meta, None)
    with pytest.raises(RuntimeError, match="pseudonym"):
        report.check_no_identifiers(["patient 0123456789abcdef"], meta, None)
    with pytest.raises(RuntimeError):
        report.check_no_identifiers(["see 1.2.3.4.5."], meta, None)
    with pytest.raises(RuntimeError):
        report.check_no_identifiers(["key=0123456789abcdef_x"], meta, None)


def test_pixel_size_prefers_the_largest_up_to_256():
    assert report.pixel_size([128, 256, 512]) == 256
    assert report.pixel_size([64]) == 64
    assert report.pixel_size([512, 1024]) == 512


def test_write_report_removes_stale_figures(tmp_path):
    png = figures.png_bytes(figures.new_figure(2, 2))
    write_report(tmp_path, "t", [], [Section("a", "A", png=png)])
    assert (tmp_path / "a.png").is_file()
    written = write_report(tmp_path, "t", ["intro <b>"], [Section("a", "A")])
    assert not (tmp_path / "a.png").exists() and written.figures == {}
    assert "intro &lt;b&gt;" in written.html.read_text()  # text is escaped


# --------------------------------------------------------------------------- CLI
def test_cli_report(converted, tmp_path, capsys):
    out = tmp_path / "eda"
    assert cli.main(["report", str(converted), "--out", str(out), "--samples", "2"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str(out / "report.html")
    assert (out / "samples.png").is_file()


def test_cli_report_on_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a pneumotune dataset" in err and "manifest.json" in err
    assert "pneumotune convert" in err


# --------------------------------------------------------------------------- hostile input
def _ledger(converted: Path) -> list[dict[str, str]]:
    with (converted / dataset.ERRORS).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_every_hostile_file_is_one_ledger_row(converted):
    rows = _ledger(converted)
    by_file = {Path(r["path"]).name: r for r in rows}
    for name, reason in HOSTILE.items():
        assert sum(Path(r["path"]).name == name for r in rows) == 1, name
        assert reason in by_file[name]["reason"], (name, by_file[name]["reason"])
    # Over the budget by the header alone: refused by the header pass, never loaded by
    # the pixel pass; the others are refused by the decoder, before it allocates.
    for name in ("jpeg-bomb.dcm", "rle-bomb.dcm", "deflate-bomb.dcm"):
        assert by_file[name]["stage"] == "read"
    for name in ("deflate-bomb-small-header.dcm", "jpeg-lying.dcm", "truncated.dcm"):
        assert by_file[name]["stage"] == "decode"
    assert f"{DEFLATED_UID}.dcm" not in by_file  # the valid deflated file over 64 KiB
    for row in rows:
        assert all(value.isprintable() for value in row.values()), row


def test_convert_summary_holds_no_control_characters(conversion):
    _, printed = conversion
    assert "Converted 15 of 24 DICOM files" in printed
    assert "image over the pixel budget" in printed  # among the top reasons
    assert all(line.isprintable() for line in printed.splitlines()), printed


def test_header_text_is_plotted_as_text(inputs):
    _, meta, pixels, _ = inputs
    assert MATHTEXT_VIEW in set(meta["view_position"])
    assert "P[2JA" in set(meta["view_position"])  # the escape character is gone
    fig = eda_plots.fig_view_position(meta)
    labels = {t.get_text() for t in fig.axes[0].get_xticklabels()}
    assert eda_plots.plain(MATHTEXT_VIEW) in labels
    assert figures.png_bytes(fig)  # mathtext would fail here, when drawn
    row = int(np.flatnonzero(meta["view_position"] == MATHTEXT_VIEW)[0])
    assert figures.png_bytes(eda_plots.fig_samples(pixels, meta, [row]))
    errors = pd.DataFrame(
        {"stage": ["decode"], "short": ["bad tag $\\undefinedcmd$ (x)"], "reason": [""]}
    )
    assert figures.png_bytes(eda_plots.fig_errors(errors))


def test_plain_escapes_mathtext_and_drops_control_characters():
    assert eda_plots.plain("$\\alpha$") == "\\$\\alpha\\$"
    assert eda_plots.plain("P\x1b[2JA\x07") == "P[2JA"
    assert eda_plots.plain("PA") == "PA"


def test_ages_over_89_are_one_group(inputs, page):
    _, meta, _, _ = inputs
    assert meta["age"].max() == 90  # "097Y", stored as 90: "90 or over"
    row = meta.loc[meta["age"] == 90].iloc[0]
    assert eda_plots.age_text(row) == "90+ y"
    fig = eda_plots.fig_age(meta)
    assert "90+" in {t.get_text() for t in fig.axes[0].get_xticklabels()}
    assert "Ages of 90 and over are one group (90+)" in _section_html(page, "age")
    old = meta.assign(age=meta["age"].where(meta["age"] != 90, 97))  # an older dataset
    assert "90+" in {t.get_text() for t in eda_plots.fig_age(old).axes[0].get_xticklabels()}


def test_a_short_pseudonym_key_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.dcm").write_bytes(fac.jpeg_baseline(fac.smooth_image((60, 84))))
    monkeypatch.setenv("PNEUMOTUNE_PSEUDONYM_KEY", "hunter2")
    assert cli.main(["convert", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "PNEUMOTUNE_PSEUDONYM_KEY is 7 bytes long, fewer than 16" in err
    assert "token_hex" in err  # how to make a good one
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError):
        convert(ConvertConfig(src, tmp_path / "out2"))
    monkeypatch.setenv("PNEUMOTUNE_PSEUDONYM_KEY", "0123456789abcdef")  # 16 bytes: taken
    assert convert_module._pseudonym_key() == b"0123456789abcdef"
