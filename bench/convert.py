"""Conversion throughput, side by side on the same synthetic SIIM tree (1024 px JPEG Baseline).

(a) the tutorial's way: pydicom.dcmread + pixel_array, a pandas filter of the label table
    per image, a per-run Python RLE decode, cv2.resize (one process);
(b) ours: `data.convert.convert` (Ray Data on every core; Ray started before timing);
(c) the decode floor: OpenCV decoding the same JPEG frames, nothing else (one process).

    python bench/convert.py [--images 1000] [--size 256] [--smoke-test]
    python bench/convert.py --images 10712     # SIIM's stage-1 training set size (~8 min)

Prints images/s for each and the ratios (targets: b >= 5x a; b within 2x of c), for (b)'s
first run on a fresh Ray and for a second run on the same Ray (b'), as on a running cluster.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import numpy as np

CACHE = Path(__file__).resolve().parent / "out"


def synth_tree(n: int, size: int, seed: int = 0) -> Path:
    from pneumotune.data.synth import SynthConfig, write_dataset

    root = CACHE / f"synth-{n}-{size}-{seed}"
    if not (root / "train-rle.csv").exists():
        shutil.rmtree(root, ignore_errors=True)
        print(f"writing {n} synthetic DICOMs at {size} px to {root} (cached for next runs)")
        write_dataset(root, SynthConfig(n_images=n, size=size, seed=seed), progress=True)
    return root


# ---------------------------------------------------------------- (a) the tutorial
def tutorial_rle2mask(rle: str, width: int, height: int) -> np.ndarray:
    """The tutorial kernel's decoder, as it was: a Python loop over runs."""
    mask = np.zeros(width * height)
    array = np.asarray([int(x) for x in rle.split()])
    starts = array[0::2]
    lengths = array[1::2]
    current_position = 0
    for index, start in enumerate(starts):
        current_position += start
        mask[current_position : current_position + lengths[index]] = 255
        current_position += lengths[index]
    return mask.reshape(width, height)


def tutorial_way(paths: list[Path], csv_path: Path, size: int) -> float:
    import pandas as pd
    import pydicom

    t0 = time.perf_counter()
    df = pd.read_csv(csv_path)
    df.columns = ["ImageId", "EncodedPixels"]
    for path in paths:
        image = pydicom.dcmread(path).pixel_array
        rows = df[df["ImageId"] == path.stem]  # O(N) per image: O(N x M) overall
        mask = np.zeros((1024, 1024))
        for text in rows["EncodedPixels"]:
            if text.strip() != "-1":
                mask += tutorial_rle2mask(text, image.shape[1], image.shape[0]).T
        cv2.resize(image, (size, size))
        (cv2.resize(mask, (size, size)) > 0).astype(np.uint8)
    return time.perf_counter() - t0


# ---------------------------------------------------------------- (c) the floor
def decode_floor(paths: list[Path]) -> float:
    import pydicom
    from pydicom.encaps import generate_frames

    frames = []
    for path in paths:  # not timed: getting the bytes out of the files
        ds = pydicom.dcmread(path)
        frames.append(
            np.frombuffer(next(generate_frames(ds.PixelData, number_of_frames=1)), np.uint8)
        )
    t0 = time.perf_counter()
    for frame in frames:
        cv2.imdecode(frame, cv2.IMREAD_UNCHANGED)
    return time.perf_counter() - t0


# ---------------------------------------------------------------- (b) ours
def ours(root: Path, size: int) -> tuple[float, dict[str, float]]:
    from pneumotune.data.convert import ConvertConfig, convert

    out = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        result = convert(ConvertConfig(src=root, out=out, sizes=(size,), overwrite=True))
        assert result.manifest["counts"]["errors"] == 0
        return result.seconds, result.timings
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256, help="stored size (default 256)")
    parser.add_argument("--smoke-test", action="store_true", help="100 images, a quick look")
    args = parser.parse_args(argv)
    n = 100 if args.smoke_test else args.images

    from pneumotune.data.convert import find_dicoms
    from pneumotune.ray_session import ensure_ray

    root = synth_tree(n, 1024)
    paths = find_dicoms(root / "dicom-images-train")
    t0 = time.perf_counter()
    ensure_ray()
    ray_start = time.perf_counter() - t0
    cv2.setNumThreads(1)  # (a) and (c) are one process, one thread: the floor per core

    print(
        f"\n{len(paths)} DICOMs at 1024 px -> {args.size} px, {os.cpu_count()} cores "
        f"(Ray start-up {ray_start:.1f} s, not counted)"
    )
    b, phases = ours(root, args.size)
    b_warm, phases_warm = ours(root, args.size)  # the same again: Ray's workers are warm
    a = tutorial_way(paths, root / "train-rle.csv", args.size)
    c = decode_floor(paths)
    rate = {k: len(paths) / v for k, v in {"a": a, "b": b, "b2": b_warm, "c": c}.items()}
    print(f"  (a) tutorial (pydicom + pandas filter + Python RLE):  {rate['a']:8.1f} images/s")
    print(
        f"  (b) pneumotune convert, first run on a fresh Ray:     {rate['b']:8.1f} images/s  "
        f"(headers {phases['headers']:.1f} s, then pixels {phases['pixels']:.1f} s)"
    )
    # The first Ray Data job in a cluster starts its stats and autoscaling actors and
    # imports its task code in every worker (~1.5 s on 2 cores); on a running cluster
    # that was done by an earlier job.
    print(
        f"  (b') the same again on that Ray (workers warm):       {rate['b2']:8.1f} images/s  "
        f"(headers {phases_warm['headers']:.1f} s, then pixels {phases_warm['pixels']:.1f} s)"
    )
    print(f"  (c) decode floor (OpenCV JPEG decode, one core):      {rate['c']:8.1f} images/s")
    for key, name in (("b", "b "), ("b2", "b'")):
        print(
            f"  {name} / a = {rate[key] / rate['a']:.1f}x (target >= 5x)   "
            f"c / {name} = {rate['c'] / rate[key]:.2f}x (target <= 2x: within 2x of the floor)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
