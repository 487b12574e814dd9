"""Which Ray a command uses when no --address is given."""

from __future__ import annotations

import pytest

from pneumotune.data.ray_session import join_address


@pytest.mark.parametrize(
    ("address", "environ", "joined"),
    [
        (None, {}, None),  # a new local Ray, even if `ray start` runs on this machine
        ("", {}, None),
        (None, {"RAY_ADDRESS": "10.0.0.1:6379"}, "10.0.0.1:6379"),  # inside `ray job submit`
        ("auto", {"RAY_ADDRESS": "10.0.0.2:6379"}, "auto"),  # --address wins
        ("ray://head:10001", {}, "ray://head:10001"),
        (None, {"RAY_ADDRESS": ""}, None),
    ],
)
def test_join_address(address, environ, joined):
    assert join_address(address, environ) == joined
