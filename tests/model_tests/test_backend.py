"""Choosing the backend and the GPU dtype policy: pure rules, no device needed."""

from __future__ import annotations

import keras
import pytest

from pneumotune.errors import UsageError
from pneumotune.model.backend import select_backend
from pneumotune.model.devices import Gpu, _capability, mixed_policy


def test_the_running_backend_is_kept_and_another_is_refused(monkeypatch):
    running = keras.backend.backend()  # Keras is imported in this process
    monkeypatch.setenv("KERAS_BACKEND", running)
    assert select_backend(None) == running
    assert select_backend(running) == running
    other = "jax" if running != "jax" else "tensorflow"
    with pytest.raises(UsageError, match="already running"):
        select_backend(other)
    with pytest.raises(UsageError, match="must be one of"):
        select_backend("theano")


@pytest.mark.parametrize(
    ("capabilities", "policy"),
    [
        ([(9, 0)], "mixed_bfloat16"),  # H100 / H200
        ([(8, 0), (8, 6)], "mixed_bfloat16"),  # A100, A10G
        ([(7, 5)], "mixed_float16"),  # T4
        ([(8, 9), (7, 0)], "mixed_float16"),  # mixed cards: the one every GPU has
        ([None], "mixed_float16"),  # the backend does not say
    ],
)
def test_mixed_policy(capabilities, policy):
    assert mixed_policy([Gpu("gpu", c) for c in capabilities]) == policy


@pytest.mark.parametrize(("text", "parsed"), [("9.0", (9, 0)), ("8.6", (8, 6)), ("8", (8, 0)),
                                              ("", None), (None, None), ("sm", None)])  # fmt: skip
def test_capability_text(text, parsed):
    assert _capability(text) == parsed
