"""ResUNet contracts on tiny inputs: shapes, names, size, range, save/load, config, errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pneumotune.model.losses import make_loss
from pneumotune.model.metrics import IoU, KaggleDice
from pneumotune.model.resunet import build_resunet
from pneumotune.model.schedules import make_schedule

# Keras 3.15 converts TF variables with np.array(x, copy=False) (saving, set_weights),
# which numpy 2 reports; not ours to fix.
pytestmark = [
    pytest.mark.backend,
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Raw 0..255 float32 pixels, the model's input contract."""
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def small_model() -> keras.Model:
    return build_resunet(32, base_filters=4, depth=2, dropout=0.1, name="tiny")


@pytest.mark.parametrize(
    ("img_size", "base_filters", "depth", "name"),
    [(32, 4, 2, "resunet"), (64, 8, 3, "resunet"), (64, 4, 4, "resunet"), (16, 2, 1, "my_net")],
)
def test_output_shape_and_range(img_size, base_filters, depth, name):
    model = build_resunet(img_size, base_filters=base_filters, depth=depth, name=name)
    assert model.name == name
    assert model.input_shape == (None, img_size, img_size, 1)
    assert model.output_shape == (None, img_size, img_size, 1)
    out = np.asarray(model(_images(2, img_size), training=False))
    assert out.shape == (2, img_size, img_size, 1)
    assert out.dtype == np.float32
    assert np.all((out >= 0) & (out <= 1))


def test_layer_names_unique_and_prefixed(small_model):
    names = [layer.name for layer in small_model.layers]
    assert len(names) == len(set(names))
    assert all(n.startswith("tiny_") for n in names), [
        n for n in names if not n.startswith("tiny_")
    ]
    # The structure the names promise: stem, 2 encoders, bridge, 2 decoders, head.
    for expected in [
        "tiny_input",
        "tiny_rescale",
        "tiny_stem_add",
        "tiny_enc1_conv1",
        "tiny_enc2_shortcut_conv",
        "tiny_bridge_conv2",
        "tiny_bridge_dropout",
        "tiny_dec1_up",
        "tiny_dec0_concat",
        "tiny_dec0_dropout",
        "tiny_head_conv",
        "tiny_head_sigmoid",
    ]:
        assert expected in names, expected
    assert not any(n.startswith("tiny_enc3") or n.startswith("tiny_dec2") for n in names)


def test_no_dropout_layers_without_dropout():
    names = [layer.name for layer in build_resunet(16, 2, 1).layers]
    assert not any("dropout" in n for n in names)


def test_filters_double_per_level_and_shortcuts():
    model = build_resunet(32, base_filters=3, depth=2)
    get = model.get_layer
    assert get("resunet_stem_conv1").filters == 3
    assert get("resunet_enc1_conv1").filters == 6
    assert get("resunet_enc2_conv1").filters == 12
    assert get("resunet_bridge_conv1").filters == 12
    assert get("resunet_dec1_conv1").filters == 6
    assert get("resunet_dec0_conv1").filters == 3
    # Strided shortcuts see every pixel (3x3); stride-1 shortcuts only project (1x1).
    assert get("resunet_enc1_shortcut_conv").kernel_size == (3, 3)
    assert get("resunet_enc1_shortcut_conv").strides == (2, 2)
    assert get("resunet_dec0_shortcut_conv").kernel_size == (1, 1)
    assert get("resunet_stem_shortcut_conv").kernel_size == (1, 1)


def test_parameter_count_grows_with_width_and_depth():
    params = {
        (f, d): build_resunet(32, base_filters=f, depth=d).count_params()
        for f, d in [(2, 2), (4, 2), (8, 2), (4, 1), (4, 3)]
    }
    assert params[(2, 2)] < params[(4, 2)] < params[(8, 2)]
    assert params[(4, 1)] < params[(4, 2)] < params[(4, 3)]
    # Convolutions dominate: doubling the width roughly quadruples the weights.
    assert 3.5 < params[(8, 2)] / params[(4, 2)] < 4.1


def test_input_is_rescaled_inside_the_model(small_model):
    rescale = small_model.get_layer("tiny_rescale")
    assert rescale.scale == pytest.approx(1 / 255)
    assert small_model.layers[1] is rescale  # right after the input
    x = _images(1, 32)
    np.testing.assert_allclose(np.asarray(rescale(x)), x / 255, rtol=1e-6)


def test_save_load_gives_identical_outputs(small_model, tmp_path):
    x = _images(2, 32, seed=1)
    path = tmp_path / "tiny.keras"
    small_model.save(path)
    loaded = keras.models.load_model(path)  # no custom objects
    np.testing.assert_array_equal(
        np.asarray(loaded(x, training=False)), np.asarray(small_model(x, training=False))
    )


def test_get_config_round_trip(small_model):
    clone = keras.Model.from_config(small_model.get_config())
    assert [layer.name for layer in clone.layers] == [layer.name for layer in small_model.layers]
    assert clone.count_params() == small_model.count_params()
    clone.set_weights(small_model.get_weights())
    x = _images(2, 32, seed=2)
    np.testing.assert_allclose(
        np.asarray(clone(x, training=False)), np.asarray(small_model(x, training=False)), atol=1e-6
    )


def test_output_is_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_resunet(16, base_filters=2, depth=1)
        assert model.get_layer("resunet_enc1_conv1").compute_dtype == "bfloat16"
        out = model(_images(1, 16), training=False)
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
    finally:
        keras.config.set_dtype_policy(previous)


def test_numpy_integer_arguments_are_accepted():
    model = build_resunet(np.int64(16), base_filters=np.int32(2), depth=np.int64(1))
    assert model.output_shape == (None, 16, 16, 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"img_size": 100, "depth": 4}, r"multiple of 2\*\*depth = 16 \(depth=4\); got 100"),
        ({"img_size": 48, "depth": 5}, r"multiple of 2\*\*depth = 32.*got 48"),
        ({"img_size": 0, "depth": 1}, "img_size"),
        ({"img_size": 32.0, "depth": 1}, "img_size"),
        ({"img_size": 32, "depth": 0}, "depth must be an integer >= 1; got 0"),
        ({"img_size": 32, "base_filters": 0}, "base_filters must be an integer >= 1; got 0"),
        ({"img_size": 32, "depth": 2, "dropout": 1.0}, r"dropout must be in \[0, 1\); got 1.0"),
        ({"img_size": 32, "depth": 2, "name": ""}, "name"),
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_resunet(**kwargs)


def test_fits_and_reloads_with_the_pneumotune_loss_metrics_and_schedule(tmp_path):
    # The pieces train.py combines: one epoch on 4 tiny images, then save -> load with
    # the registered loss, metrics and schedule restored without custom_objects.

    x = _images(4, 16, seed=3)
    y = (x > 200).astype(np.float32)
    model = build_resunet(16, base_filters=2, depth=1)
    model.compile(
        optimizer=keras.optimizers.Adam(
            make_schedule("cosine", 1e-3, total_steps=4, warmup_steps=1)
        ),
        loss=make_loss(bce=1, dice=1, focal=1),
        metrics=[IoU(), KaggleDice()],
    )
    history = model.fit(x, y, batch_size=2, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    assert set(history) >= {"loss", "iou", "kaggle_dice"}
    path = tmp_path / "trained.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(
        np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False))
    )
    assert int(loaded.optimizer.iterations) == 4
    got = loaded.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
    want = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
    assert got == pytest.approx(want)
