"""The exported model directory: write it once, load it anywhere, predict the same.

A model directory holds::

    model.keras        the Keras model (architecture, weights, optimizer state)
    saved_model/       a TF SavedModel for serving without pneumotune or Keras
                       (written on the TensorFlow backend only; the card says why not):
                         serve        float32 (B, S, S, 1) raw pixels 0..255 -> probabilities
                         serve_uint8  uint8   (B, S, S, 1) pixels            -> probabilities
                       (``serve`` is also ``serving_default``); outputs float32 (B, S, S, 1)
    model_card.json    what the model is and how it was made (see :func:`export_model`)

Both formats hold the same weights and the same graph, including the in-model 0..255
rescaling, so they give the same probabilities for the same batch. Images are the
square ``img_size`` inputs the model was trained on; the caller resizes DICOMs exactly
as training did (:mod:`model.predict` does).

Privacy: the card holds no patient identifier and no image id. The dataset manifest
has none; only its hash, counts, sizes and split settings are copied, and keys that
name identifiers are refused in ``metrics`` and ``extra``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import platform
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pneumotune.errors import PneumotuneError

# losses / schedules: imported for their registered classes, which model.keras names.
from pneumotune.model import losses as _losses  # noqa: F401
from pneumotune.model import schedules as _schedules  # noqa: F401
from pneumotune.model.config import TrainConfig
from pneumotune.model.postprocess import Triplet

__all__ = [
    "CARD_FILE",
    "KERAS_FILE",
    "SAVED_MODEL_DIR",
    "ExportedModel",
    "ModelDirError",
    "export_model",
    "load_model",
]

KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
CARD_FILE = "model_card.json"
CARD_FORMAT = "pneumotune-model-card"
CARD_VERSION = 1
# The largest img_size a card may claim: far above any chest X-ray's (SIIM's are 1024 px);
# a larger claim is not a card pneumotune wrote, and a caller sizes images by it.
MAX_IMG_SIZE = 8192
MAX_CARD_BYTES = 16 << 20  # a card is a few KB; read no more than this of one
# Keys that would carry a person's or an image's identity; refused anywhere in the card.
FORBIDDEN_KEYS = frozenset(
    {"image_id", "image_ids", "imageid", "patient_id", "patient_ids", "patient_name", "sop_uid"}
)


class ModelDirError(PneumotuneError, ValueError):
    """A folder that is not a usable exported model (the message says what is missing)."""


# --------------------------------------------------------------------------- writing


def export_model(
    model: keras.Model,
    out_dir: Path,
    *,
    train_config: TrainConfig,
    triplet: Triplet,
    metrics: dict[str, Any],
    data_manifest: dict[str, Any] | Path | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.keras``, ``saved_model/`` and ``model_card.json`` into ``out_dir``.

    ``saved_model/`` needs TensorFlow: on the JAX or PyTorch backend it is left out and
    the card's ``files.saved_model`` is ``null`` with ``files.saved_model_note`` saying
    why (``model.keras`` loads on every backend).

    Args:
        model: the trained model, input ``(None, S, S, 1)`` float32 0..255.
        out_dir: created if absent; files of an earlier export there are replaced.
        train_config: the config it was trained with (copied flat into the card).
        triplet: the post-processing triplet tuned on validation.
        metrics: validation metrics (non-finite values are written as ``null``).
        data_manifest: the dataset it was trained on: its folder or ``manifest.json``
            path (the card's ``manifest_sha256`` is then the file's, so
            ``sha256sum manifest.json`` verifies it), or the parsed manifest (then the
            hash is of its canonical JSON), or ``None``.
        extra: anything else worth keeping (e.g. a search's trial id and sampled
            config); JSON-serialisable.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: the model's input is not ``img_size`` square, or ``metrics`` /
            ``extra`` hold a key naming an identifier (``image_id``, ``patient_id``...).
    """
    out_dir = Path(out_dir)
    size = train_config.img_size
    if tuple(model.input_shape[1:]) != (size, size, 1):
        raise ValueError(
            f"the model takes {model.input_shape[1:]} inputs, the train config says "
            f"({size}, {size}, 1)"
        )
    _refuse_identifiers(metrics, "metrics")
    _refuse_identifiers(extra or {}, "extra")
    out_dir.mkdir(parents=True, exist_ok=True)

    model.save(out_dir / KERAS_FILE, overwrite=True)
    saved = out_dir / SAVED_MODEL_DIR
    if saved.exists():
        shutil.rmtree(saved)
    backend = keras.backend.backend()
    files: dict[str, Any] = {"keras": KERAS_FILE}
    if backend == "tensorflow":
        _write_saved_model(model, size, saved)
        files["saved_model"] = SAVED_MODEL_DIR
        files["saved_model_endpoints"] = {"serve": "float32", "serve_uint8": "uint8"}
    else:
        files["saved_model"] = None
        files["saved_model_note"] = saved_model_note(backend)

    card = {
        "format": CARD_FORMAT,
        "format_version": CARD_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "img_size": size,
        "input": {
            "shape": [None, size, size, 1],
            "values": "raw pixel values 0..255 (the model rescales inside)",
            "preprocessing": "data.dicom.read, then data.resize.resize_image to img_size",
        },
        "output": "float32 (B, S, S, 1) pneumothorax probabilities",
        "files": files,
        "backend": backend,
        "triplet": {
            "threshold": triplet.threshold,
            "min_area": triplet.min_area,
            "lower": triplet.lower,
        },
        "train_config": train_config.to_flat(),
        "metrics": _finite(metrics),
        "data": _data_section(data_manifest),
        "versions": _versions(),
        "extra": _finite(extra or {}),
    }
    (out_dir / CARD_FILE).write_text(json.dumps(card, indent=2, allow_nan=False) + "\n")
    return out_dir


def files_line(model_dir: Path) -> str:
    """One line for a command's summary: what an exported directory holds, and why it has
    no SavedModel when it was exported on another backend than TensorFlow."""
    files = read_card(model_dir).get("files", {})
    if files.get("saved_model"):
        return f"  files: {KERAS_FILE}, {SAVED_MODEL_DIR}/, {CARD_FILE}"
    return f"  files: {KERAS_FILE}, {CARD_FILE}; {SAVED_MODEL_DIR}/ {files.get('saved_model_note')}"


def saved_model_note(backend: str) -> str:
    return (
        f"not written: exported on the {backend} backend, and a SavedModel needs "
        "TensorFlow (export again with --backend tensorflow for TF-Serving)"
    )


def _write_saved_model(model: keras.Model, size: int, path: Path) -> None:
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    # The first endpoint is also exported as "serving_default" (what TF-Serving calls).
    archive.add_endpoint(
        name="serve",
        fn=lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, size, size, 1), tf.float32, name="images")],
    )
    archive.add_endpoint(
        name="serve_uint8",
        fn=lambda x: model(tf.cast(x, tf.float32), training=False),
        input_signature=[tf.TensorSpec((None, size, size, 1), tf.uint8, name="images")],
    )
    archive.write_out(str(path), verbose=False)


def _data_section(manifest: dict[str, Any] | Path | None) -> dict[str, Any] | None:
    if manifest is None:
        return None
    if isinstance(manifest, (str, Path)):
        path = Path(manifest)
        if path.is_dir():
            path = path / "manifest.json"
        raw = path.read_bytes()
        parsed = json.loads(raw)
        digest, hashed = hashlib.sha256(raw).hexdigest(), "manifest.json file bytes"
    else:
        parsed = manifest
        canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        digest, hashed = hashlib.sha256(canonical).hexdigest(), "canonical JSON of the manifest"
    source = parsed.get("source") or {}
    # Paths (dicom_root) are machine-specific and may name people's folders: not copied.
    return {
        "manifest_sha256": digest,
        "manifest_sha256_of": hashed,
        "schema_version": parsed.get("schema_version"),
        "sizes": parsed.get("sizes"),
        "counts": parsed.get("counts"),
        "split": parsed.get("split"),
        "labels_sha256": source.get("labels_sha256"),
        "rle_dialect": source.get("rle_dialect"),
    }


def _versions() -> dict[str, str]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"  # running from a source tree without `pip install -e`

    return {
        "pneumotune": version("pneumotune"),
        "tensorflow": version("tensorflow"),
        "jax": version("jax"),
        "torch": version("torch"),
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _finite(value: Any) -> Any:
    """JSON-safe copy: NaN / inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _refuse_identifiers(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if str(k).lower() in FORBIDDEN_KEYS:
                raise ValueError(
                    f"{where} holds the key {k!r}: a model card never carries image or "
                    "patient identifiers"
                )
            _refuse_identifiers(v, where)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _refuse_identifiers(v, where)


# --------------------------------------------------------------------------- loading


@dataclass
class ExportedModel:
    """A loaded model directory.

    ``model`` is the Keras model (``use="keras"``) or the SavedModel object
    (``use="saved_model"``); :meth:`predict_probs` works the same with either.
    """

    model: Any
    card: dict[str, Any]
    triplet: Triplet
    img_size: int
    use: str = "keras"

    def predict_probs(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """``uint8 (N, S, S)`` images -> ``float32 (N, S, S)`` probabilities, S = img_size."""
        images = np.asarray(images)
        s = self.img_size
        if images.ndim != 3 or images.shape[1:] != (s, s) or images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 (N, {s}, {s}) for this model; "
                f"got {images.dtype} {images.shape}"
            )
        if len(images) == 0:
            return np.zeros((0, s, s), np.float32)
        if self.use == "keras":
            x = images.astype(np.float32)[..., None]
            return self.model.predict(x, batch_size=batch_size, verbose=0)[..., 0]
        import tensorflow as tf

        out = [
            self.model.serve_uint8(tf.constant(images[i : i + batch_size, ..., None])).numpy()
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out)[..., 0]


def read_card(model_dir: Path) -> dict[str, Any]:
    """The model card of ``model_dir``; :class:`ModelDirError` when it is not a model dir."""
    path = ModelDirError.require_file(
        model_dir,
        CARD_FILE,
        "an exported pneumotune model",
        "train one with `pneumotune train --config demo --data DATASET --out MODEL_DIR`",
    )
    if path.stat().st_size > MAX_CARD_BYTES:
        raise ModelDirError(f"{path} is larger than a model card ({MAX_CARD_BYTES} bytes at most)")
    try:
        card = json.loads(path.read_text(errors="replace"))
    except json.JSONDecodeError as exc:
        raise ModelDirError(f"{path} is not valid JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:  # digits past Python's limit, deep nesting
        raise ModelDirError(f"{path} is not a model card: {str(exc)[:200]}") from None
    if not isinstance(card, dict):
        raise ModelDirError(f"{path} is not a model card: a JSON object was expected")
    if card.get("format") != CARD_FORMAT or card.get("format_version") != CARD_VERSION:
        raise ModelDirError(
            f"{path} is not a version-{CARD_VERSION} pneumotune model card "
            f"(format {str(card.get('format'))[:60]!r}, version "
            f"{str(card.get('format_version'))[:20]!r})"
        )
    # Checked here, before anything is sized by it: load_model compares it with the model.
    size = card.get("img_size")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= MAX_IMG_SIZE:
        raise ModelDirError(
            f"{path}: img_size must be the model's input side in 16..{MAX_IMG_SIZE} px, got "
            f"{str(size)[:40]}"
        )
    if not isinstance(card.get("files", {}), dict):
        raise ModelDirError(f"{path}: files must be an object")
    return card


def load_model(model_dir: Path, *, use: str = "keras") -> ExportedModel:
    """Load an exported model directory.

    ``use="keras"`` loads ``model.keras`` (needs pneumotune's registered classes: this
    module imports them); ``use="saved_model"`` loads ``saved_model/`` with
    ``tf.saved_model.load`` only.
    """
    if use not in ("keras", "saved_model"):
        raise ValueError(f"use must be 'keras' or 'saved_model', got {use!r}")
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    triplet = _card_triplet(card, model_dir / CARD_FILE)
    size = card["img_size"]
    if use == "keras":
        path = model_dir / KERAS_FILE
        if not path.is_file():
            raise ModelDirError(f"{model_dir} has a model card but no {KERAS_FILE}")
        # compile=False: predicting needs no optimizer or loss. safe_mode (Keras' default,
        # kept explicit): a model directory may come from anyone, and a Lambda layer's
        # code is the one part of a .keras file that runs; it is refused.
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
        side = tuple(model.input_shape[1:])
    else:
        path = model_dir / SAVED_MODEL_DIR
        if not path.is_dir():
            note = card.get("files", {}).get("saved_model_note")
            why = f": {note}" if note else ""
            raise ModelDirError(f"{model_dir} has a model card but no {SAVED_MODEL_DIR}/{why}")
        import tensorflow as tf

        model = tf.saved_model.load(str(path))
        side = _saved_model_side(model)
    # The card sizes every image a caller makes for this model: a card that is not this
    # model's would have it resize to any size (a 4096 px card: GiBs), then fail in Keras.
    if side != (size, size, 1):
        raise ModelDirError(
            f"{model_dir}: the card says img_size {size}, but the model takes "
            f"{_side_text(side)} inputs: the card is not this model's (export it again)"
        )
    return ExportedModel(model, card, triplet, size, use)


def _card_triplet(card: dict[str, Any], path: Path) -> Triplet:
    t = card.get("triplet")
    try:
        if not isinstance(t, dict):
            raise TypeError("not an object")
        lower = t.get("lower")
        return Triplet(
            _card_number(t.get("threshold")),
            _card_number(t.get("min_area")),
            None if lower is None else _card_number(lower),
        )
    except (TypeError, ValueError) as exc:
        raise ModelDirError(f"{path}: triplet is not a post-processing triplet ({exc})") from None


def _card_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{str(value)[:40]!r} is not a number")
    return float(value)  # Triplet refuses what is out of range (and inf, NaN)


def _saved_model_side(model: Any) -> tuple[Any, ...] | None:
    """The (S, S, 1) input a SavedModel's ``serve`` endpoint takes, or None if it has none."""
    try:
        spec = model.serve.concrete_functions[0].structured_input_signature[0][0]
        return tuple(spec.shape[1:])
    except (AttributeError, IndexError, TypeError):
        return None


def _side_text(side: tuple[Any, ...] | None) -> str:
    return "no image" if not side else "x".join(str(d) for d in side)
