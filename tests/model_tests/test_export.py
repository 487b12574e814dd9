"""model.export: the model directory round trip (both formats) and the model card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from pneumotune.model.config import TrainConfig
from pneumotune.model.export import (
    CARD_FILE,
    KERAS_FILE,
    SAVED_MODEL_DIR,
    ModelDirError,
    export_model,
    load_model,
    read_card,
)
from pneumotune.model.postprocess import Triplet
from pneumotune.model.train import build_model, compile_model

pytestmark = [
    pytest.mark.backend,
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]

SIZE = 32
MANIFEST = {
    "schema_version": 1,
    "sizes": [32, 64],
    "files": ["part-00000.parquet"],
    "source": {"dicom_root": "/home/someone/siim", "labels_sha256": "ab" * 32},
    "split": {"n_folds": 5, "seed": 0},
    "counts": {"converted": 10, "positive": 3, "negative": 7},
}


@pytest.fixture(scope="module")
def cfg() -> TrainConfig:
    return TrainConfig(img_size=SIZE, base_filters=4, depth=2, epochs=1, lr=1e-3)


@pytest.fixture(scope="module")
def exported(cfg, tmp_path_factory):
    model = compile_model(build_model(cfg), cfg, n_train=8)
    # Move BatchNorm's moving statistics off their initial values, so that a format that
    # dropped them (or ran BN in training mode) would predict differently.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.1, np.float32))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 2.0, np.float32))
    data = tmp_path_factory.mktemp("data")
    (data / "manifest.json").write_text(json.dumps(MANIFEST))
    out = tmp_path_factory.mktemp("export") / "model"
    triplet = Triplet(0.6, 0.001, 0.3)
    metrics = {"val_iou": 0.5, "val_positive_iou": float("nan"), "epoch": 1}
    extra = {"trial_id": "abc123", "config": {"lr": 1e-3}}
    path = export_model(
        model,
        out,
        train_config=cfg,
        triplet=triplet,
        metrics=metrics,
        data_manifest=data,
        extra=extra,
    )
    return {"model": model, "dir": path, "data": data, "triplet": triplet}


def images(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8)


def _export_again(
    exported, tmp_path, train_config, metrics=None, data_manifest=None, extra=None
) -> Path:
    """The fixture's model exported once more, to ``tmp_path / "m"`` with the default
    triplet: the tests of what export_model checks or records vary only the rest."""
    return export_model(
        exported["model"],
        tmp_path / "m",
        train_config=train_config,
        triplet=Triplet(),
        metrics={} if metrics is None else metrics,
        data_manifest=data_manifest,
        extra=extra,
    )


ON_TF = keras.backend.backend() == "tensorflow"
tf_only = pytest.mark.skipif(not ON_TF, reason="a SavedModel needs TensorFlow")


def test_directory_layout(exported):
    d = exported["dir"]
    assert (d / KERAS_FILE).is_file()
    assert (d / CARD_FILE).is_file()
    card = read_card(d)
    assert card["backend"] == keras.backend.backend()
    if ON_TF:
        assert (d / SAVED_MODEL_DIR / "saved_model.pb").is_file()
    else:  # said in the card, and by load_model(use="saved_model")
        assert not (d / SAVED_MODEL_DIR).exists()
        assert "needs TensorFlow" in card["files"]["saved_model_note"]
        with pytest.raises(ModelDirError, match="needs TensorFlow"):
            load_model(d, use="saved_model")


def test_keras_and_saved_model_predict_exactly_what_the_trained_model_did(exported):
    x = images()
    reference = exported["model"].predict(x.astype(np.float32)[..., None], verbose=0)[..., 0]
    for use in ("keras", "saved_model") if ON_TF else ("keras",):
        loaded = load_model(exported["dir"], use=use)
        probs = loaded.predict_probs(x, batch_size=5)
        assert probs.dtype == np.float32 and probs.shape == (5, SIZE, SIZE)
        np.testing.assert_array_equal(probs, reference, err_msg=use)


@tf_only
def test_uint8_and_float_endpoints_agree_and_float_is_the_default(exported):
    import tensorflow as tf

    served = tf.saved_model.load(str(exported["dir"] / SAVED_MODEL_DIR))
    x = images(3, seed=1)[..., None]
    from_uint8 = served.serve_uint8(tf.constant(x)).numpy()
    from_float = served.serve(tf.constant(x.astype(np.float32))).numpy()
    assert from_uint8.shape == (3, SIZE, SIZE, 1)
    np.testing.assert_array_equal(from_uint8, from_float)
    default = served.signatures["serving_default"]
    assert default.structured_input_signature[1]["images"].dtype == tf.float32
    assert np.all((from_float >= 0) & (from_float <= 1))


def test_card_holds_what_the_model_is_and_how_it_was_made(exported, cfg):
    card = json.loads((exported["dir"] / CARD_FILE).read_text())
    assert card["img_size"] == SIZE
    assert card["triplet"] == {"threshold": 0.6, "min_area": 0.001, "lower": 0.3}
    assert card["train_config"] == cfg.to_flat()
    assert card["metrics"] == {"val_iou": 0.5, "val_positive_iou": None, "epoch": 1}
    manifest_bytes = (exported["data"] / "manifest.json").read_bytes()
    assert card["data"]["manifest_sha256"] == hashlib.sha256(manifest_bytes).hexdigest()
    assert card["data"]["counts"] == MANIFEST["counts"]
    assert set(card["versions"]) >= {"tensorflow", "keras", "numpy", "pneumotune"}
    assert card["versions"]["keras"] == keras.__version__
    assert card["extra"] == {"trial_id": "abc123", "config": {"lr": 1e-3}}
    assert card["created"]
    # Machine paths from the manifest are not copied (they can name people's folders).
    assert "/home/someone" not in json.dumps(card)


def test_loaded_model_carries_card_triplet_and_size(exported):
    loaded = load_model(exported["dir"])
    assert loaded.triplet == exported["triplet"]
    assert loaded.img_size == SIZE
    assert loaded.card["format_version"] == 1


@pytest.mark.parametrize(
    ("metrics", "extra"),
    [
        ({"val_iou": 0.1}, {"image_ids": ["1.2.3"]}),
        ({"per_image": [{"image_id": "1.2.3", "dice": 1.0}]}, None),
        ({"val_iou": 0.1}, {"trial": {"Patient_ID": "x"}}),
    ],
)
def test_identifier_keys_are_refused(exported, cfg, tmp_path, metrics, extra):
    with pytest.raises(ValueError, match="identifiers"):
        _export_again(exported, tmp_path, cfg, metrics=metrics, extra=extra)


def test_manifest_as_a_dict_is_hashed_canonically(exported, cfg, tmp_path):
    out = _export_again(exported, tmp_path, cfg, data_manifest=MANIFEST)
    card = json.loads((out / CARD_FILE).read_text())
    canonical = json.dumps(MANIFEST, sort_keys=True, separators=(",", ":")).encode()
    assert card["data"]["manifest_sha256"] == hashlib.sha256(canonical).hexdigest()
    assert card["data"]["manifest_sha256_of"] == "canonical JSON of the manifest"


def test_wrong_input_size_is_refused(exported, tmp_path):
    other = TrainConfig(img_size=64, base_filters=4, depth=2)
    with pytest.raises(ValueError, match="the train config says"):
        _export_again(exported, tmp_path, other)


def test_not_a_model_dir_says_what_is_missing(tmp_path, exported):
    with pytest.raises(ModelDirError, match=r"no model_card\.json"):
        load_model(tmp_path)
    (tmp_path / CARD_FILE).write_text("{not json")
    with pytest.raises(ModelDirError, match="not valid JSON"):
        load_model(tmp_path)
    (tmp_path / CARD_FILE).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ModelDirError, match="not a version-1"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="uint8"):
        load_model(exported["dir"]).predict_probs(images().astype(np.float32))


@pytest.mark.parametrize(
    ("change", "said"),
    [
        # A card from another model: every image would be made at 4096 px (GiBs), then
        # Keras would fail on them.
        ({"img_size": 4096}, "the card says img_size 4096, but the model takes 32x32x1 inputs"),
        ({"img_size": 10**6}, "img_size must be the model's input side in 16..8192 px"),
        ({"img_size": "32"}, "img_size must be the model's input side"),
        ({"img_size": True}, "img_size must be the model's input side"),
        ({"triplet": {"threshold": "high", "min_area": 0}}, "triplet is not a post-processing"),
        ({"triplet": {"threshold": 2.0, "min_area": 0}}, "threshold must be in [0, 1)"),
        ({"triplet": None}, "triplet is not a post-processing triplet (not an object)"),
        ({"files": []}, "files must be an object"),
    ],
)
@pytest.mark.parametrize("use", ["keras", pytest.param("saved_model", marks=tf_only)])
def test_a_card_that_is_not_its_models_is_refused(exported, tmp_path, change, said, use):
    import shutil

    copy = shutil.copytree(exported["dir"], tmp_path / "model")
    card = json.loads((copy / CARD_FILE).read_text())
    (copy / CARD_FILE).write_text(json.dumps({**card, **change}))
    with pytest.raises(ModelDirError) as refused:
        load_model(copy, use=use)
    assert said in str(refused.value)


def test_a_hostile_card_file_is_refused_in_one_line(exported, tmp_path):
    import shutil

    copy = shutil.copytree(exported["dir"], tmp_path / "model")
    for text, said in [
        ("[" * 100_000 + "]" * 100_000, "is not a model card"),
        ('{"img_size": ' + "9" * 5000 + "}", "is not a model card"),
        (json.dumps(["a list"]), "a JSON object was expected"),
        (" " * (17 << 20), "larger than a model card"),
    ]:
        (copy / CARD_FILE).write_text(text)
        with pytest.raises(ModelDirError) as refused:
            load_model(copy)
        assert said in str(refused.value)
