"""pneumotune.text.short: the one formatter of a config value in a line or a table cell."""

from __future__ import annotations

import pytest

from pneumotune.text import short


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.00123456, "0.00123"),
        (64, "64"),
        ("cosine", "cosine"),
        (True, "True"),
        ("\x1b[2Jgone", "\\x1b[2Jgone"),  # a terminal escape from a results folder
        ("x" * 50, "x" * 39 + "…"),
    ],
)
def test_short(value, shown):
    assert short(value) == shown
