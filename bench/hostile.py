"""A folder of hostile and broken files through convert, report, predict and score, side by
side with the same folder clean: exit codes, tracebacks, ledger rows, seconds, peak memory.

    python bench/hostile.py [--images 40] [--out bench/out/hostile]

The clean folder is `pneumotune synth` (256 px); the hostile one is a copy with, added:
decompression bombs (JPEG, RLE, deflate), a JPEG frame larger than its header, a truncated
JPEG scan, files that are no DICOM (PNG, text, empty), unsupported ones (multi-frame, no
pixels, 0x0, palette colour, MPEG-2), a valid deflated file over 64 KiB, header text with
terminal escapes and matplotlib mathtext, an age of 97, file names with control characters
and bytes that are not UTF-8, a FIFO, a link to /dev/zero, a broken link, a link loop, a
sparse 1 GiB file; and label rows with 20- and 5,000-digit numbers, non-ASCII digits, a
start near 2^63, formula cells, a NUL, a line that is not UTF-8 and a 20 MiB line.

Each command runs in a process of its own, in a cgroup v1 memory group of its own when one
can be made (root, /sys/fs/cgroup/memory): peak memory is then the group's
``max_usage_in_bytes``, every process the command starts included (Ray's workers, page
cache too); otherwise the command's own ``ru_maxrss``. Results: bench/hostile-results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.data_tests.dicom_factory writes the hostile DICOMs

CGROUP = Path("/sys/fs/cgroup/memory")
RESULTS = ROOT / "bench" / "hostile-results.json"
GROUP_NAME = "pneumotune-bench-hostile"


def hostile_dicoms() -> dict[str, bytes]:
    """``{file name: content}`` of the hostile DICOMs, named as UIDs so that `predict`
    reads each one (a name that is no UID is refused before it is read)."""
    from tests.data_tests import dicom_factory as f

    pixels = f.smooth_image((256, 256), seed=3)
    makers: list[Callable[[], bytes]] = [
        f.jpeg_bomb,
        f.rle_bomb,
        f.deflate_bomb,
        lambda: f.jpeg_bomb(header=(64, 64)),  # a frame larger than its header
        lambda: f.jpeg_baseline(pixels, frame=f.truncated_jpeg_frame(pixels)),
        f.png,
        f.text,
        lambda: b"",
        f.multi_frame,
        f.no_pixel_data,
        f.zero_sized,
        f.palette_color,
        f.encapsulated_without_decoder,
        lambda: f.deflated(f.smooth_image((512, 512), seed=4)),  # valid, > 64 KiB
        lambda: f.jpeg_baseline(
            pixels,
            ViewPosition="$\\undefinedcmd$",
            BodyPartExamined="CHEST\x1b[2J\x07",
            PatientAge="097Y",
        ),
    ]
    return {f"1.2.826.0.1.3680043.99.{i}.dcm": make() for i, make in enumerate(makers, 1)}


def add_hostile_files(folder: Path) -> int:
    """Write the hostile entries into ``folder``; returns how many *.dcm entries it added."""
    target = folder / "wild"
    target.mkdir(parents=True)
    for name, content in hostile_dicoms().items():
        (target / name).write_bytes(content)
    good = next(folder.rglob("*.dcm")).read_bytes()
    (target / "esc\x1b[2Jname\nline.dcm").write_bytes(good)
    (target / os.fsdecode(b"\xff\xfe-latin1.dcm")).write_bytes(good)
    os.mkfifo(target / "1.2.826.0.1.3680043.99.90.dcm")
    (target / "1.2.826.0.1.3680043.99.91.dcm").symlink_to("/dev/zero")
    (target / "1.2.826.0.1.3680043.99.92.dcm").symlink_to(target / "nowhere")
    (target / "loop").symlink_to(folder)  # a link loop: never followed
    with open(target / "1.2.826.0.1.3680043.99.93.dcm", "wb") as fh:
        fh.truncate(1 << 30)  # sparse: 1 GiB of zeros, no disk
    return len(hostile_dicoms()) + 6


def add_hostile_labels(label_file: Path) -> int:
    """Append hostile rows to a stage-2 label CSV; returns how many rows it added."""
    ids = [p.stem for p in sorted(label_file.parent.rglob("*.dcm"))[:4]]
    rows = [
        f"{ids[0]},{'9' * 20} 4".encode(),
        f"{ids[1]},{'7' * 5000} 1".encode(),
        f"{ids[2]},1\u00b2 3".encode(),  # a superscript digit
        f"{ids[3]},{2**63 - 2} 5".encode(),  # wraps around in int64
        b'=HYPERLINK("http://x"),-1',
        b"+cmd|' /C calc'!A0,-1",
        b"1.2.3.4\x00,-1",
        b"1.2.3.5,\xff\xfe 1 2",
        b"1.2.3.6," + b"1 2 " * (5 << 20),  # a 20 MiB line
    ]
    with open(label_file, "ab") as fh:
        for row in rows:
            fh.write(row + b"\n")
    return len(rows)


@contextlib.contextmanager
def memory_group(name: str) -> Iterator[Path | None]:
    """A fresh cgroup v1 memory group (removed after), or None where none can be made."""
    group = CGROUP / GROUP_NAME / name
    try:
        group.mkdir(parents=True, exist_ok=True)
    except OSError:
        yield None
        return
    try:
        yield group
    finally:
        with contextlib.suppress(OSError):
            group.rmdir()


def run(argv: list[str], name: str) -> dict[str, object]:
    """``pneumotune ARGV`` in a process of its own; exit code, seconds, peak MiB."""
    with memory_group(name) as group:
        started = time.perf_counter()
        # The child joins the group before it execs: everything it starts is counted.
        pre = (lambda: (group / "cgroup.procs").write_text(str(os.getpid()))) if group else None
        proc = subprocess.Popen(
            [sys.executable, "-m", "pneumotune.cli", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=pre,
        )  # fmt: skip
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        if group is not None:
            peak = int((group / "memory.max_usage_in_bytes").read_text()) / 2**20
            measured = "cgroup max_usage_in_bytes"
        else:
            peak, measured = usage.ru_maxrss / 1024, "ru_maxrss"
    return {
        "command": argv[0],
        "exit": os.waitstatus_to_exitcode(status),
        "seconds": round(seconds, 1),
        "peak_mib": round(peak),
        "measured": measured,
        "traceback": "Traceback" in output,
        "tail": output.strip().splitlines()[-3:],
    }


def ledger_rows(path: Path | None) -> int:
    if path is None or not path.is_file():
        return 0
    with path.open(newline="", encoding="utf-8") as fh:
        return sum(1 for _ in csv.DictReader(fh))


def pipeline(raw: Path, out: Path, model: Path | None, kind: str) -> list[dict[str, object]]:
    """convert, report, (train once, on the clean data), predict, score; each measured."""
    ds, sub = out / f"{kind}-ds", out / f"{kind}-submission.csv"
    dicoms = raw / "dicom-images-train"
    steps: list[tuple[list[str], Path | None]] = [
        (["convert", str(raw), str(ds), "--sizes", "64", "--overwrite"], ds / "errors.csv"),
        (["report", str(ds), "--out", str(out / f"{kind}-report")], None),
    ]
    results = []
    for argv, ledger in steps:
        results.append({**run(argv, f"{kind}-{argv[0]}"), "ledger_rows": ledger_rows(ledger)})
    if model is None:  # one model for both folders, trained on the clean one
        model = out / "model"
        argv = ["train", "--config", "demo", "--data", str(ds), "--epochs", "1", "--out",
                str(model)]  # fmt: skip
        results.append({**run(argv, f"{kind}-train"), "ledger_rows": 0})
    for argv, ledger in (
        (["predict", str(model), str(dicoms), "--out", str(sub)],
         sub.with_name(f"{sub.stem}.errors.csv")),
        (["score", str(sub), str(raw / "stage_2_train.csv"), "--dicoms", str(dicoms)],
         sub.with_name(f"{sub.stem}.score-errors.csv")),
    ):  # fmt: skip
        results.append({**run(argv, f"{kind}-{argv[0]}"), "ledger_rows": ledger_rows(ledger)})
    for row in results:
        row["folder"] = kind
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40, help="clean synthetic DICOMs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "hostile")
    args = parser.parse_args()
    out: Path = args.out.absolute()
    shutil.rmtree(out, ignore_errors=True)
    clean, hostile = out / "clean-raw", out / "hostile-raw"
    subprocess.run(
        [sys.executable, "-m", "pneumotune.cli", "synth", str(clean), "--images",
         str(args.images), "--size", "256", "--dialect", "stage2"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    shutil.copytree(clean, hostile)
    files = add_hostile_files(hostile / "dicom-images-train")
    labels = add_hostile_labels(hostile / "stage_2_train.csv")
    print(f"hostile folder: {args.images} clean DICOMs + {files} hostile entries, "
          f"{labels} hostile label rows", flush=True)  # fmt: skip
    rows = pipeline(clean, out, None, "clean")
    rows += pipeline(hostile, out, out / "model", "hostile")
    print(f"\n{'command':<9} {'folder':<8} {'exit':>4} {'tb':>3} {'ledger':>6} {'s':>6} "
          f"{'peak MiB':>8}")  # fmt: skip
    for r in rows:
        tb = "yes" if r["traceback"] else "no"
        print(f"{r['command']:<9} {r['folder']:<8} {r['exit']:>4} {tb:>3} "
              f"{r['ledger_rows']:>6} {r['seconds']:>6} {r['peak_mib']:>8}")  # fmt: skip
    by = {(r["folder"], r["command"]): r for r in rows}
    print("\npeak memory, hostile / clean:")
    for command in ("convert", "report", "predict", "score"):
        c, h = by[("clean", command)], by[("hostile", command)]
        print(f"  {command:<8} {h['peak_mib']} / {c['peak_mib']} MiB = "
              f"{h['peak_mib'] / max(c['peak_mib'], 1):.2f}x")  # fmt: skip
    RESULTS.write_text(
        json.dumps({"images": args.images, "hostile_entries": files,
                    "hostile_label_rows": labels, "runs": rows}, indent=1) + "\n"
    )  # fmt: skip
    print(f"\n{RESULTS}")
    failed = [r for r in rows if r["exit"] != 0 or r["traceback"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
