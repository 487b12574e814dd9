"""Learning-rate schedules: values at known steps, shapes, errors, and a saved optimizer."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from pneumotune.compat.keras_internals import optimizer_learning_rate
from pneumotune.model import schedules
from pneumotune.model.schedules import SCHEDULES, LinearWarmup, OneCycle, make_schedule

# Keras 3.15 converts TF variables with np.array(x, copy=False) (saving, set_weights),
# which numpy 2 reports; not ours to fix.
pytestmark = [
    pytest.mark.backend,
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]

BASE = 0.01
TOTAL = 100


def _values(schedule, steps) -> np.ndarray:
    if isinstance(schedule, float):
        return np.full(len(steps), schedule)
    return np.array([float(schedule(s)) for s in steps])


def _lr(schedule, step: int) -> float:
    return float(_values(schedule, [step])[0])


def _cos(frac: float) -> float:
    """Half-cosine from 1 (frac 0) to 0 (frac 1)."""
    return 0.5 * (1 + math.cos(math.pi * frac))


# (name, warmup_steps, params, {step: expected lr}) with BASE = 0.01 and TOTAL = 100.
VALUES = [
    ("constant", 0, {}, {0: BASE, 50: BASE, 99: BASE, 150: BASE}),
    ("constant", 10, {}, {0: 0.0, 5: BASE / 2, 10: BASE, 99: BASE}),
    ("cosine", 0, {}, {0: BASE, 25: BASE * _cos(0.25), 50: BASE / 2, 100: 0.0, 200: 0.0}),
    ("cosine", 0, {"alpha": 0.1}, {0: BASE, 50: BASE * 0.55, 100: BASE * 0.1}),
    ("cosine", 20, {}, {0: 0.0, 10: BASE / 2, 20: BASE, 60: BASE / 2, 100: 0.0}),
    # 3 cycles of ceil(100 / 3) = 34 steps
    ("cosine_restarts", 0, {}, {0: BASE, 17: BASE / 2, 34: BASE, 51: BASE / 2, 68: BASE}),
    ("cosine_restarts", 10, {"cycles": 3}, {0: 0.0, 10: BASE, 25: BASE / 2, 40: BASE}),
    # cycles of 10, 20, 40 steps (ceil(70 / 7)) + 30 warm-up; m_mul halves each restart
    (
        "cosine_restarts",
        30,
        {"t_mul": 2.0, "m_mul": 0.5},
        {30: BASE, 35: BASE / 2, 40: BASE / 2, 50: BASE / 4, 60: BASE / 4, 80: BASE / 8},
    ),
    ("cosine_restarts", 0, {"cycles": 2, "alpha": 0.2}, {0: BASE, 25: BASE * 0.6, 50: BASE}),
    ("step", 0, {}, {0: BASE, 24: BASE, 25: BASE / 2, 50: BASE / 4, 75: BASE / 8, 99: BASE / 8}),
    (
        "step",
        0,
        {"gamma": 0.1, "step_every": 0.5},
        {0: BASE, 49: BASE, 50: BASE / 10, 99: BASE / 10},
    ),
    # 80 steps after a 20-step warm-up: drops at 20 + 40 = 60
    ("step", 20, {"step_every": 0.5}, {10: BASE / 2, 20: BASE, 59: BASE, 60: BASE / 2}),
    ("step", 0, {"step_every": 1.0}, {0: BASE, 99: BASE}),
    (
        "one_cycle",
        0,
        {},
        {0: BASE / 25, 15: (BASE / 25 + BASE) / 2, 30: BASE, 65: (BASE + BASE / 1e4) / 2},
    ),
    ("one_cycle", 0, {"div_final": 100}, {30: BASE, 100: BASE / 100, 200: BASE / 100}),
    ("one_cycle", 10, {"div_initial": 10}, {0: BASE / 10, 10: BASE, 55: (BASE + BASE / 1e4) / 2}),
]


@pytest.mark.parametrize(("name", "warmup", "params", "expected"), VALUES)
def test_values_at_known_steps(name, warmup, params, expected):
    schedule = make_schedule(name, BASE, TOTAL, warmup, **params)
    for step, want in expected.items():
        assert _lr(schedule, step) == pytest.approx(want, rel=1e-4, abs=1e-9), f"step {step}"


def test_constant_without_warmup_is_a_float():
    assert make_schedule("constant", 3e-4, 10) == 3e-4


STEPS = np.arange(0, TOTAL)


@pytest.mark.parametrize("name", ["cosine", "step", "one_cycle"])
@pytest.mark.parametrize("warmup", [0, 10])
def test_monotonic_shapes(name, warmup):
    values = _values(make_schedule(name, BASE, TOTAL, warmup), STEPS)
    peak = int(np.argmax(values))
    assert peak == (warmup or (30 if name == "one_cycle" else 0))
    # Non-decreasing up to the peak, non-increasing after it (float32 tolerance).
    assert np.all(np.diff(values[: peak + 1]) >= -1e-9)
    assert np.all(np.diff(values[peak:]) <= 1e-9)
    assert values[-1] < values[peak] / 5


@pytest.mark.parametrize("warmup", [0, 10])
@pytest.mark.parametrize(("cycles", "t_mul"), [(3, 1.0), (4, 1.0), (3, 2.0)])
def test_restarts_jump_back_up_at_cycle_boundaries(warmup, cycles, t_mul):
    values = _values(
        make_schedule("cosine_restarts", BASE, TOTAL, warmup, cycles=cycles, t_mul=t_mul), STEPS
    )
    after = values[warmup:]
    rises = np.nonzero(np.diff(after) > 1e-9)[0] + 1
    # Exactly cycles - 1 restarts inside the run, each back to base_lr.
    assert len(rises) == cycles - 1
    np.testing.assert_allclose(after[rises], BASE, rtol=1e-5)
    # Between restarts the learning rate only decays, and the run ends low.
    for lo, hi in zip([0, *rises], [*rises, len(after)], strict=True):
        assert np.all(np.diff(after[lo:hi]) <= 1e-9)
    assert after[-1] < BASE / 10


def test_warmup_is_a_linear_ramp_from_zero():
    for name in SCHEDULES:
        if name == "one_cycle":  # starts at base_lr / div_initial by design
            continue
        values = _values(make_schedule(name, BASE, TOTAL, 20), np.arange(21))
        np.testing.assert_allclose(values, BASE * np.arange(21) / 20, rtol=1e-5, atol=1e-12)


def test_registry_is_a_plain_dict_of_builders():
    assert isinstance(SCHEDULES, dict)
    assert set(SCHEDULES) == {"constant", "cosine", "cosine_restarts", "step", "one_cycle"}
    assert schedules.schedule_params("cosine") == {"alpha": 0.0}
    assert schedules.schedule_params("constant") == {}


@pytest.mark.parametrize(
    ("args", "params", "match"),
    [
        (("linear", BASE, TOTAL), {}, r"unknown schedule 'linear'.*'constant'.*'one_cycle'"),
        (("cosine", BASE, TOTAL), {"gamma": 0.5}, r"unknown parameter.*\['gamma'\].*\['alpha'\]"),
        (("constant", BASE, TOTAL), {"alpha": 0.1}, "accepts none"),
        (("cosine", 0.0, TOTAL), {}, "base_lr"),
        (("cosine", -1e-3, TOTAL), {}, "base_lr"),
        (("cosine", float("nan"), TOTAL), {}, "base_lr"),
        (("cosine", BASE, 0), {}, "total_steps"),
        (("cosine", BASE, TOTAL, TOTAL), {}, "warmup_steps"),
        (("cosine", BASE, TOTAL, -1), {}, "warmup_steps"),
        (("cosine", BASE, TOTAL), {"alpha": 1.5}, "alpha"),
        (("cosine_restarts", BASE, TOTAL), {"cycles": 0}, "cycles"),
        (("cosine_restarts", BASE, TOTAL), {"cycles": 2.5}, "cycles"),
        (("cosine_restarts", BASE, TOTAL), {"t_mul": 0.0}, "t_mul"),
        (("step", BASE, TOTAL), {"gamma": 0.0}, "gamma"),
        (("step", BASE, TOTAL), {"step_every": 1.5}, "step_every"),
        (("one_cycle", BASE, TOTAL), {"pct_start": 1.0}, "pct_start"),
        (("one_cycle", BASE, TOTAL, 10), {"pct_start": 0.3}, "not both"),
        (("one_cycle", BASE, TOTAL), {"div_final": 0.5}, "div_final"),
    ],
)
def test_invalid_arguments_raise(args, params, match):
    with pytest.raises(ValueError, match=match):
        make_schedule(*args, **params)


ALL = [
    ("constant", 10, {}),
    ("cosine", 0, {"alpha": 0.05}),
    ("cosine", 10, {}),
    ("cosine_restarts", 0, {"cycles": 4, "m_mul": 0.8}),
    ("cosine_restarts", 10, {"t_mul": 2.0}),
    ("step", 0, {"gamma": 0.3}),
    ("step", 10, {}),
    ("one_cycle", 0, {}),
]


@pytest.mark.parametrize(("name", "warmup", "params"), ALL)
def test_schedule_serialization_round_trip(name, warmup, params):
    schedule = make_schedule(name, BASE, TOTAL, warmup, **params)
    clone = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert type(clone) is type(schedule)
    np.testing.assert_allclose(_values(clone, STEPS), _values(schedule, STEPS), rtol=1e-6)


def test_custom_schedules_are_registered():
    assert keras.saving.get_registered_name(LinearWarmup) == "pneumotune>LinearWarmup"
    assert keras.saving.get_registered_name(OneCycle) == "pneumotune>OneCycle"


def test_every_schedule_survives_a_saved_optimizer(tmp_path):
    # One model saved with each schedule in its Adam, loaded back: same learning rate
    # at the restored iteration and after.
    for i, (name, warmup, params) in enumerate(ALL):
        schedule = make_schedule(name, BASE, TOTAL, warmup, **params)
        inputs = keras.Input((3,))
        model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule), loss="mse")
        # As if 12 steps had been trained (past the warm-ups), without tracing a fit.
        model.optimizer.build(model.trainable_variables)
        model.optimizer.iterations.assign(12)
        path = tmp_path / f"m{i}.keras"
        model.save(path)
        loaded = keras.models.load_model(path)
        opt, opt2 = model.optimizer, loaded.optimizer
        assert int(opt2.iterations) == int(opt.iterations) == 12
        assert type(optimizer_learning_rate(opt2)) is type(optimizer_learning_rate(opt)), name
        assert float(opt2.learning_rate) == pytest.approx(float(opt.learning_rate), rel=1e-6)
        np.testing.assert_allclose(
            _values(optimizer_learning_rate(opt2), STEPS), _values(schedule, STEPS), rtol=1e-6
        )


tf_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="StepTable computes its rates with TensorFlow"
)


@tf_only
@pytest.mark.parametrize(("name", "warmup", "params"), ALL)
def test_step_table_holds_the_schedule_step_by_step(name, warmup, params):
    schedule = make_schedule(name, BASE, TOTAL, warmup, **params)
    table = schedules.StepTable(schedule, TOTAL)
    steps = list(range(TOTAL + 1))
    # The table holds the rates as a graph computes them (as the train step did), which
    # can differ from an eager call in the last bit (cosine_restarts' log and pow).
    np.testing.assert_allclose(_values(table, steps), _values(schedule, steps), rtol=2e-5)
    # After the run: the rate at the last step (every schedule but restarts holds it).
    assert float(table(TOTAL + 50)) == float(table(TOTAL))


@tf_only
def test_step_table_loads_another_schedule_into_the_same_variable():
    table = schedules.StepTable(make_schedule("cosine", BASE, TOTAL), TOTAL)
    variable = table.table
    other = make_schedule("step", 3 * BASE, TOTAL, 10, gamma=0.5)
    table.load(other)
    assert table.table is variable
    np.testing.assert_allclose(_values(table, STEPS), _values(other, STEPS), rtol=1e-6)
    assert table.schedule is other


@tf_only
def test_step_table_survives_a_saved_optimizer(tmp_path):
    schedule = make_schedule("one_cycle", BASE, TOTAL)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    table = schedules.StepTable(schedule, TOTAL)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=table), loss="mse")
    model.optimizer.build(model.trainable_variables)
    model.optimizer.iterations.assign(40)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras").optimizer
    assert isinstance(optimizer_learning_rate(loaded), schedules.StepTable)
    assert float(loaded.learning_rate) == float(model.optimizer.learning_rate)
    np.testing.assert_allclose(
        _values(optimizer_learning_rate(loaded), STEPS), _values(schedule, STEPS), rtol=2e-5
    )


def _saved_table(path, total_steps) -> None:
    """A saved model whose optimizer's StepTable states ``total_steps`` in its config.json:
    the count that sizes the table when the model is loaded."""
    import json
    import zipfile

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    table = schedules.StepTable(make_schedule("cosine", BASE, TOTAL), TOTAL)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=table), loss="mse")
    model.save(path)
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    config = json.loads(files["config.json"])
    rate = config["compile_config"]["optimizer"]["config"]["learning_rate"]
    assert rate["class_name"] == "StepTable"
    rate["config"]["total_steps"] = total_steps
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)


@tf_only
def test_a_saved_table_is_sized_only_after_its_count_is_checked(tmp_path):
    import time

    path = tmp_path / "m.keras"
    # 4e9 steps: 16 GB of table and hours of filling, were it allocated. Refused at once.
    _saved_table(path, 4_000_000_000)
    t0 = time.perf_counter()
    with pytest.raises(schedules.ScheduleError, match="claims 4000000000 steps; its run has at"):
        keras.models.load_model(path)
    assert time.perf_counter() - t0 < 10
    for bad in ("many", 1.5, True, None, 0, -3):
        _saved_table(path, bad)
        with pytest.raises(schedules.ScheduleError):
            keras.models.load_model(path)
    # A loader that knows the run bounds it by the run: epochs x steps per epoch.
    _saved_table(path, TOTAL)
    with (
        schedules.steps_at_most(TOTAL - 1, "9 epochs x 11 steps"),
        pytest.raises(
            schedules.ScheduleError,
            match=rf"claims {TOTAL} steps; its run has at most {TOTAL - 1} \(9 epochs x 11 steps\)",
        ),
    ):
        keras.models.load_model(path)
    with schedules.steps_at_most(TOTAL, "10 epochs x 10 steps"):
        loaded = optimizer_learning_rate(keras.models.load_model(path).optimizer)
    assert loaded.total_steps == TOTAL
    # The bound was the loader's only: a later load is back to the global one.
    _saved_table(path, schedules.MAX_TABLE_STEPS + 1)
    with pytest.raises(schedules.ScheduleError, match=f"at most {schedules.MAX_TABLE_STEPS} "):
        keras.models.load_model(path)
