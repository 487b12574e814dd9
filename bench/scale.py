"""A SIIM-sized search on this machine: the memory of every process it starts, and what
that means for the shipped cluster nodes.

    python bench/scale.py                      # 3,000 and 12,089 rows at 512 and 1024 px
    python bench/scale.py --rows 12089 --sizes 1024 --seconds 120
    python bench/scale.py --smoke-test         # ~1 minute: 300 and 600 rows at 64 px
    python bench/scale.py --read-rates --rows 12089 --sizes 512   # the data path candidates
    python bench/scale.py --convert 12089      # convert's memory on a SIIM-sized DICOM tree

1. **A SIIM-sized dataset, cheaply**: ``pneumotune synth`` + ``convert`` of a few dozen
   1024-px DICOMs at every size asked, then their rows replicated under new image and
   patient ids into a dataset of ``--rows`` rows. No 12,000 DICOMs to render: the
   pixels repeat, the bytes per row are SIIM's. The validation fold (0) holds
   :data:`VAL_ROWS` rows, every other row trains: a CPU validates a few hundred 1024-px
   images in the time, not 2,400, and validation reads a chunk at a time whatever the
   fold's size (``model.inference.validation_metrics``), so its memory does not depend on it.
2. **A short search per (rows, size)**: ``pneumotune search`` (the product's command, in
   its own process: the driver), two concurrent one-CPU trials of a small ResUNet (4
   filters, depth 2, batch 4, 32 images per epoch, 2 epochs), stopped after
   ``--seconds``. The node's copy of the size is written by the driver first (its
   progress bar) and deleted after the run, so each run pays it.
3. **Memory, sampled every second** from ``/proc``: each process' private memory
   (``Private_Dirty`` in ``smaps_rollup``: RSS also counts the pages of the memory-mapped
   copy and of the object store, which are shared), classified as the driver, trial
   processes, and Ray's own; the object store's use is the growth of ``Shmem`` in
   ``/proc/meminfo``.
4. **Printed**: per run each peak, the dataset's bytes, the driver's peak over the size's
   bytes (target <= 1.2), a trial's growth from the smallest to the largest rows over the
   growth of the dataset's bytes (target <= 0.10); then the projection onto the shipped
   node types (bench/scale_nodes in :data:`NODES`) with siim.yaml's two trials per GPU.

``--read-rates`` measures instead how fast training batches (random rows, batch 8) come
from each candidate for data larger than memory, on one ``--rows`` dataset at the first
``--sizes``: the node's memory-mapped copy with its pages resident (the fast path),
the same copy with its pages dropped from the page cache before every batch (every row
read from disk: what a dataset far beyond memory costs), numpy arrays in the heap
(what the object store's zero-copy arrays give, when they fit), and decoding the
Parquet row groups that hold the rows (Ray Data-style streaming from the dataset).

``--convert N`` renders N synthetic 1024-px DICOMs (``pneumotune synth``: SIIM's layout
and sizes) and converts them at ``--sizes`` with ``pneumotune convert`` under the same
sampler: the peak private memory of its driver and of each Ray worker, the object store's
peak, and the sizes of the Parquet parts it wrote.

Numbers only: nothing is asserted. ``--json FILE`` keeps them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pneumotune.data.node_cache import size_bytes
from pneumotune.memory import private_dirty_mb
from pneumotune.search.preflight import GPU_HOST

GIB = 2**30
SIIM_ROWS = 12_089  # stage 2 training DICOMs
BASE_IMAGES = 40  # DICOMs rendered, then replicated
VAL_ROWS = 48
PART_ROWS, ROW_GROUP_ROWS = 128, 16

# The shipped GPU worker nodes: (name, memory GiB, GPUs) as the YAMLs and manifests set
# them. siim.yaml asks for gpu 0.5 and cpu 4 per trial: two trials per 8-vCPU, 1-GPU node.
NODES: tuple[tuple[str, float, int], ...] = (
    ("AWS g5.2xlarge (aws-gpu.yaml)", 32.0, 1),
    ("GCP g2-standard-8 (gcp-gpu.yaml)", 32.0 * 1e9 / GIB, 1),
    ("KubeRay GPU pod (kuberay-rayjob.yaml limit)", 30.0, 1),
)
TRIALS_PER_GPU = 2
# What a GPU trial holds on the host beyond what a CPU trial here holds: the CUDA
# context, cuDNN/cuBLAS workspaces and XLA/TF GPU allocator bookkeeping: the memory
# check's assumption (no GPU here), not a measurement.
GPU_HOST_EXTRA_GIB = GPU_HOST / GIB


def replicate(src: Path, out: Path, rows: int, val_rows: int = VAL_ROWS) -> dict:
    """``src``'s rows repeated until ``rows``, under new image and patient ids; fold 0
    (validation) holds the first ``val_rows`` rows."""
    from pneumotune.data.dataset import MANIFEST, read_manifest, read_table

    manifest = read_manifest(src)
    table = read_table(src)
    n_folds = manifest["split"]["n_folds"]
    out.mkdir(parents=True)
    files = []
    for start in range(0, rows, PART_ROWS):
        n = min(PART_ROWS, rows - start)
        take = np.arange(start, start + n) % len(table)
        copy = (start + np.arange(n)) // len(table)
        part = table.take(pa.array(take))
        ids = [f"{i}.r{c}" for i, c in zip(part.column("image_id").to_pylist(), copy, strict=True)]
        patients = [
            f"{p}.r{c}" for p, c in zip(part.column("patient_id").to_pylist(), copy, strict=True)
        ]
        index = start + np.arange(n)
        folds = np.where(index < val_rows, 0, 1 + index % (n_folds - 1))
        part = part.set_column(part.schema.get_field_index("image_id"), "image_id", pa.array(ids))
        part = part.set_column(
            part.schema.get_field_index("patient_id"), "patient_id", pa.array(patients)
        )
        part = part.set_column(
            part.schema.get_field_index("fold"), "fold", pa.array(folds.astype(np.int16))
        )
        name = f"part-{len(files):05d}.parquet"
        pq.write_table(
            part, out / name, row_group_size=ROW_GROUP_ROWS, compression="zstd", compression_level=1
        )
        files.append(name)
    labelled = int(np.count_nonzero(table.column("labelled").to_numpy(zero_copy_only=False)))
    counts = dict(manifest["counts"], converted=rows, labelled=rows * labelled // len(table))
    new = dict(manifest, files=files, counts=counts, replicated_from=str(src))
    (out / MANIFEST).write_text(json.dumps(new, indent=2) + "\n")
    return new


def base_dataset(work: Path, sizes: tuple[int, ...], smoke: bool) -> Path:
    """A few synthetic DICOMs converted at ``sizes`` (the rows to replicate)."""
    raw, ds = work / "raw", work / "base"
    if not (ds / "manifest.json").is_file():
        n, px = (BASE_IMAGES, 256) if smoke else (BASE_IMAGES, 1024)
        run(["pneumotune", "synth", str(raw), "--images", str(n), "--size", str(px)])
        run(["pneumotune", "convert", str(raw), str(ds), "--sizes", ",".join(map(str, sizes))])
    return ds


def run(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)


EXPERIMENT = """name: scale
metric: val_iou
epochs: 2
num_samples: 2
max_concurrent: 2
seed: 0
val_fold: 0
warm_trials: true
resources: {{cpu: 1, gpu: 0}}
asha: {{grace_period: 2, reduction_factor: 2}}
fixed: {{img_size: {size}, base_filters: 4, depth: 2, batch_size: 4, epoch_images: 32,
        augment.flip_p: 0.5}}
space:
  lr: {{low: 1.0e-4, high: 1.0e-3, log: true, default: 5.0e-4}}
"""


# ------------------------------------------------------------------ sampling


def private_mb(pid: int) -> float | None:
    try:
        return private_dirty_mb(Path(f"/proc/{pid}/smaps_rollup").read_text())
    except OSError:
        return None


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def shmem_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Shmem:"):
            return int(line.split()[1]) / 1024
    return 0.0


def role(pid: int, driver: int) -> str:
    if pid == driver:
        return "driver"
    cmd = cmdline(pid)
    # Trial processes: Tune's function trainable actor (the runner of warm trials).
    if "ImplicitFunc" in cmd or "trial runner" in cmd or "train_trial" in cmd:
        return "trial"
    if cmd.startswith("ray::"):
        return "ray worker"
    return "ray system"


@dataclass
class Sampler:
    driver: int
    interval: float = 1.0  # reading smaps_rollup walks a process' pages: ~80 ms each
    peaks: dict[int, float] = field(default_factory=dict)
    roles: dict[int, str] = field(default_factory=dict)
    shmem_peak: float = 0.0

    def __post_init__(self) -> None:
        self.shmem_base = shmem_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid in descendants(self.driver):
                mb = private_mb(pid)
                if mb is None:
                    continue
                # A Ray worker becomes a trial's process when the trial starts in it.
                r = role(pid, self.driver)
                if self.roles.get(pid) != "trial":
                    self.roles[pid] = r
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), mb)
            self.shmem_peak = max(self.shmem_peak, shmem_mb() - self.shmem_base)
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, what: str) -> float:
        return max((v for p, v in self.peaks.items() if self.roles.get(p) == what), default=0.0)

    def trials(self) -> list[float]:
        return sorted(v for p, v in self.peaks.items() if self.roles.get(p) == "trial")


# ------------------------------------------------------------------ one run


def one_search(dataset: Path, size: int, work: Path, seconds: float, cache: Path) -> dict:
    exp = work / f"scale-{size}.yaml"
    exp.write_text(EXPERIMENT.format(size=size))
    storage = work / "results"
    env = dict(os.environ, PNEUMOTUNE_CACHE=str(cache), RAY_DEDUP_LOGS="0")
    cmd = [
        "pneumotune", "search", "--config", str(exp), "--data", str(dataset),
        "--storage", str(storage), "--name", f"scale-{size}-{time.time_ns()}",
    ]  # fmt: skip
    t0 = time.perf_counter()
    log = open(work / f"search-{size}.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    with Sampler(proc.pid) as sampler:
        try:
            rc = proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            rc = None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)  # Tune saves its state and stops
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    log.close()
    epochs = 0
    for result in storage.glob("scale-*/trial_*/result.json"):
        epochs += len([line for line in result.read_text().splitlines() if line.strip()])
    shutil.rmtree(storage, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    return {
        "size": size,
        "seconds": round(time.perf_counter() - t0, 1),
        "finished": rc == 0,
        "trial_epochs": epochs,
        "driver_mb": round(sampler.peak("driver"), 1),
        "trial_mb": [round(v, 1) for v in sampler.trials()],
        "ray_system_mb": round(
            sum(v for p, v in sampler.peaks.items() if sampler.roles[p] == "ray system"), 1
        ),
        "object_store_mb": round(sampler.shmem_peak, 1),
    }


# ------------------------------------------------------------------ report


def dataset_gib(rows: int, size: int, labelled_share: float) -> float:
    return size_bytes(round(rows * labelled_share), size) / GIB


def project(runs: list[dict], sizes: tuple[int, ...]) -> list[str]:
    """siim.yaml's plan on each shipped node: two trials per GPU at the largest size."""
    size = max(sizes)
    largest = [r for r in runs if r["size"] == size]
    biggest = max(largest, key=lambda r: r["rows"])
    trial = max(biggest["trial_mb"] or [0.0]) / 1024 + GPU_HOST_EXTRA_GIB
    system = biggest["ray_system_mb"] / 1024
    copies = sum(dataset_gib(SIIM_ROWS, s, biggest["labelled_share"]) for s in sizes)
    lines = [
        f"Projection: siim.yaml, {TRIALS_PER_GPU} trials per GPU at {size} px, SIIM's "
        f"{SIIM_ROWS} rows; a trial's host memory = its peak here "
        f"({max(biggest['trial_mb'] or [0]) / 1024:.2f} GiB) + {GPU_HOST_EXTRA_GIB} GiB for "
        f"CUDA (assumed); Ray's processes {system:.2f} GiB (measured, head).",
        f"  The node's copies of sizes {list(sizes)} ({copies:.1f} GiB) are page cache on "
        "local disk: they need disk, and RAM only for speed (whatever does not fit is read "
        "from disk).",
        f"{'node':<46}{'GiB':>6}{'needs':>8}{'spare':>8}  fits (>= 25% spare)   copies in cache",
    ]
    for name, gib, gpus in NODES:
        need = TRIALS_PER_GPU * gpus * trial + system
        spare = 1 - need / gib
        cache = gib - need
        cached = "all" if cache >= copies else f"{max(cache, 0) / copies:.0%}"
        lines.append(
            f"{name:<46}{gib:>6.1f}{need:>8.1f}{spare:>8.0%}  "
            f"{'yes' if spare >= 0.25 else 'NO':<22}{cached}"
        )
    return lines


def read_rates(dataset: Path, size: int, cache: Path, batches: int = 40, batch: int = 8) -> dict:
    """Images/s of random training batches from each data-path candidate (docstring)."""
    from pneumotune.data.dataset import load_arrays, read_manifest
    from pneumotune.data.node_cache import SharedDataset, ensure_copy, open_copy

    folder = ensure_copy(SharedDataset.of(dataset, cache), size, progress=True)
    mapped = open_copy(folder)
    n = len(mapped)
    rng = np.random.default_rng(0)
    picks = [np.sort(rng.choice(n, batch, replace=False)) for _ in range(batches)]

    def rate(read) -> float:
        t0 = time.perf_counter()
        for rows in picks:
            read(rows)
        return batches * batch / (time.perf_counter() - t0)

    def gather(arrays, rows):
        return arrays.images[rows], arrays.masks[rows]

    out = {}
    for rows in picks:  # the pages of these rows resident
        gather(mapped, rows)
    out["memory-mapped copy, resident"] = rate(lambda rows: gather(mapped, rows))

    def cold(rows):
        for name in ("images.npy", "masks.npy"):
            fd = os.open(folder / name, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        return gather(mapped, rows)

    out["memory-mapped copy, from disk"] = rate(cold)
    manifest = read_manifest(dataset)
    files = [pq.ParquetFile(dataset / f) for f in manifest["files"]]
    starts = np.cumsum([0] + [f.metadata.num_rows for f in files])
    columns = [f"image_{size}", f"mask_{size}"]

    def parquet(rows):
        for row in rows:  # labelled rows only in the copy; close enough for a rate
            k = int(np.searchsorted(starts, row, side="right") - 1)
            meta = files[k].metadata
            local, group = int(row - starts[k]), 0
            while local >= meta.row_group(group).num_rows:
                local -= meta.row_group(group).num_rows
                group += 1
            files[k].read_row_group(group, columns=columns).slice(local, 1)

    out["Parquet row groups (streaming)"] = rate(parquet)
    heap = load_arrays(dataset, size)
    out["numpy in the heap (object store zero-copy)"] = rate(lambda rows: gather(heap, rows))
    shutil.rmtree(cache, ignore_errors=True)
    return out


def convert_memory(work: Path, images: int, sizes: tuple[int, ...]) -> dict:
    """``pneumotune convert`` of ``images`` synthetic 1024-px DICOMs, its memory sampled."""
    raw, out = work / f"dicoms-{images}", work / f"converted-{images}"
    if not (raw / "stage_2_train.csv").is_file() and not (raw / "train-rle.csv").is_file():
        shutil.rmtree(raw, ignore_errors=True)
        run(["pneumotune", "synth", str(raw), "--images", str(images), "--size", "1024"])
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["pneumotune", "convert", str(raw), str(out), "--sizes", ",".join(map(str, sizes))]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with Sampler(proc.pid) as sampler:
        proc.wait()
    parts = sorted(p.stat().st_size for p in out.glob("part-*.parquet"))
    workers = [v for p, v in sampler.peaks.items() if sampler.roles.get(p) == "ray worker"]
    result = {
        "images": images,
        "sizes": list(sizes),
        "seconds": round(time.perf_counter() - t0, 1),
        "exit_code": proc.returncode,
        "driver_mb": round(sampler.peak("driver"), 1),
        "worker_mb_max": round(max(workers, default=0.0), 1),
        "workers_mb_sum": round(sum(workers), 1),
        "ray_system_mb": round(
            sum(v for p, v in sampler.peaks.items() if sampler.roles[p] == "ray system"), 1
        ),
        "object_store_mb": round(sampler.shmem_peak, 1),
        "parts": len(parts),
        "part_mb_min_median_max": [
            round(x / 2**20) for x in (parts[0], parts[len(parts) // 2], parts[-1])
        ]
        if parts
        else [],
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=f"3000,{SIIM_ROWS}", help="dataset rows to compare")
    parser.add_argument("--sizes", default="512,1024", help="stored sizes, one search each")
    parser.add_argument("--seconds", type=float, default=150, help="per search (default 150)")
    parser.add_argument("--work", type=Path, default=None, help="folder (default: a temp one)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    parser.add_argument("--smoke-test", action="store_true", help="~1-2 minutes at 64 px")
    parser.add_argument("--read-rates", action="store_true", help="the data path candidates")
    parser.add_argument("--convert", type=int, default=0, metavar="N", help="convert N DICOMs")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.rows, args.sizes, args.seconds = "300,600", "64", 45
    rows_list = [int(r) for r in args.rows.split(",")]
    sizes = tuple(int(s) for s in args.sizes.split(","))
    work = args.work or Path(tempfile.mkdtemp(prefix="pneumotune-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"pneumotune scale benchmark in {work}: rows {rows_list}, sizes {list(sizes)}, "
        f"{args.seconds:.0f} s per search, {os.cpu_count()} CPUs",
        flush=True,
    )
    if args.convert:
        result = convert_memory(work, args.convert, sizes)
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps({"convert": result}, indent=2) + "\n")
        return 0
    base = base_dataset(work, sizes, args.smoke_test)
    if args.read_rates:
        ds = work / f"rows-{rows_list[-1]}"
        shutil.rmtree(ds, ignore_errors=True)
        replicate(base, ds, rows_list[-1])
        rates = read_rates(ds, sizes[0], work / "cache")
        print(f"Training batches (8 random rows) at {sizes[0]} px from {rows_list[-1]} rows:")
        fast = rates["memory-mapped copy, resident"]
        for what, value in rates.items():
            print(f"  {what:<46}{value:>10.0f} images/s {value / fast:>8.3f}x")
        shutil.rmtree(ds, ignore_errors=True)
        if args.json:
            args.json.write_text(json.dumps({"read_rates": rates, "size": sizes[0]}, indent=2))
        return 0
    runs = []
    for rows in rows_list:
        ds = work / f"rows-{rows}"
        shutil.rmtree(ds, ignore_errors=True)
        t0 = time.perf_counter()
        manifest = replicate(base, ds, rows)
        share = manifest["counts"]["labelled"] / rows
        print(f"replicated to {rows} rows in {time.perf_counter() - t0:.0f} s", flush=True)
        for size in sizes:
            out = one_search(ds, size, work, args.seconds, work / "cache")
            out.update(rows=rows, labelled_share=share, dataset_gib=dataset_gib(rows, size, share))
            runs.append(out)
            print(
                f"  {rows:>6} rows {size:>5} px: data {out['dataset_gib']:.2f} GiB, driver "
                f"{out['driver_mb']:.0f} MB, trials {out['trial_mb']} MB, Ray's processes "
                f"{out['ray_system_mb']:.0f} MB, object store {out['object_store_mb']:.0f} MB, "
                f"{out['trial_epochs']} trial-epochs in {out['seconds']:.0f} s"
                + ("" if out["finished"] else " (stopped at the time limit)"),
                flush=True,
            )
        shutil.rmtree(ds, ignore_errors=True)
    print()
    for size in sizes:
        at = sorted((r for r in runs if r["size"] == size), key=lambda r: r["rows"])
        for r in at:
            ratio = r["driver_mb"] / 1024 / r["dataset_gib"]
            print(
                f"{size:>5} px {r['rows']:>6} rows: driver peak / the size's bytes = "
                f"{ratio:.2f} (target <= 1.2)"
            )
        if len(at) > 1 and at[0]["trial_mb"] and at[-1]["trial_mb"]:
            grew = max(at[-1]["trial_mb"]) - max(at[0]["trial_mb"])
            added = (at[-1]["dataset_gib"] - at[0]["dataset_gib"]) * 1024
            print(
                f"{size:>5} px: a trial's peak grew {grew:+.0f} MB for {added:+.0f} MB more data "
                f"= {grew / added:+.3f} of it (target <= 0.10)"
            )
    print()
    for line in project(runs, sizes):
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "sizes": list(sizes)}, indent=2) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
