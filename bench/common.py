"""What the benchmarks share: the cached synthetic dataset.

Imported by the bench scripts as ``common`` (a script's own folder is on its path).
"""

from __future__ import annotations

from pathlib import Path

CACHE = Path(__file__).resolve().parent / "out"


def dataset(images: int, seed: int = 1, sizes: tuple[int, ...] = (64, 128)) -> Path:
    """``images`` synthetic 256-px DICOMs converted at ``sizes`` (64 and 128 px), made once
    and cached (the same DICOMs for every ``sizes``)."""
    from pneumotune.data.convert import ConvertConfig, convert
    from pneumotune.data.synth import SynthConfig, write_dataset

    raw, ds = CACHE / f"search-raw-{images}-{seed}", CACHE / f"search-ds-{images}-{seed}"
    if sizes != (64, 128):
        ds = ds.with_name(ds.name + "-" + "-".join(map(str, sizes)))
    if not (ds / "manifest.json").exists():
        if not raw.is_dir():
            write_dataset(raw, SynthConfig(n_images=images, size=256, seed=seed), progress=True)
        convert(ConvertConfig(src=raw, out=ds, sizes=sizes, overwrite=True), progress=True)
    return ds


def steps_seconds(result: dict) -> float:
    """Seconds an epoch's result spent in training steps proper: ``train_seconds`` less the
    first step of a trial process (``first_step_seconds``: where the train step is traced
    and compiled; 0.0 in later epochs)."""
    return float(result.get("train_seconds", 0.0)) - float(result.get("first_step_seconds", 0.0))


def all_trials_training_share(trials: list) -> float | None:
    """Training steps' seconds over all trials' seconds (Tune's ``time_total_s``, from each
    trial's start: imports, model build, tracing, validation, checkpoints), every trial
    counted, the short ones ASHA stopped included: what a search's CPUs did."""
    train = total = 0.0
    for t in trials:
        if t.history:
            total += float(t.history[-1].get("time_total_s", 0.0))
            train += sum(steps_seconds(r) for r in t.history)
    return train / total if total else None
