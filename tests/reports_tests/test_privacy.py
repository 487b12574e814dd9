"""The identifier guard both reports run before writing a page (pneumotune.reports.privacy)."""

from __future__ import annotations

import math

import pytest

from pneumotune.reports import privacy

PSEUDONYM = "0123456789abcdef"  # data.dicom.pseudonymise: 16 hex characters
IMAGE_ID = "1.2.276.0.7230010.3.1.4.8323329.4000.1517875165.878100"


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ([[PSEUDONYM, None], [IMAGE_ID, "x"]], {PSEUDONYM, IMAGE_ID}),
        ([[PSEUDONYM, math.nan], ()], {PSEUDONYM}),  # a missing pseudonym (pandas NaN)
        ([["12345", "123456"]], {"123456"}),  # shorter than 6: would match ordinary text
        ([[4000123456789]], {"4000123456789"}),  # values are compared as text
        ([], set()),
    ],
)
def test_identifiers(groups, expected):
    assert privacy.identifiers(*groups) == expected


@pytest.mark.parametrize(
    ("texts", "leaks"),
    [
        (["3 patients", "image 1 of the sample"], False),
        ([], False),
        ([f"patient {PSEUDONYM}"], True),
        (["caption", f"see {IMAGE_ID}."], True),
        ([f"key={PSEUDONYM}_x"], True),  # a substring, not a whole word
        ([PSEUDONYM[:8], PSEUDONYM[8:]], False),  # split over two texts: never joined
        (["abcde and more"], False),  # "abcde" is too short to be guarded
    ],
)
def test_check_no_identifiers(texts, leaks):
    forbidden = {PSEUDONYM, IMAGE_ID, "abcde"}
    if not leaks:
        privacy.check_no_identifiers(texts, forbidden, "a report")
        return
    with pytest.raises(RuntimeError, match=r"pseudonym.*bug in a report") as raised:
        privacy.check_no_identifiers(texts, forbidden, "a report")
    assert PSEUDONYM not in str(raised.value) and IMAGE_ID not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "min_chars", "hidden"),
    [
        (f"FileNotFoundError: /data/{IMAGE_ID}.dcm", 6, "FileNotFoundError: /data/….dcm"),
        (f"{PSEUDONYM} and {PSEUDONYM}", 6, "… and …"),
        ("case abcde failed", 6, "case abcde failed"),
        ("case abcde failed", 4, "case … failed"),
        ("nothing to hide", 6, "nothing to hide"),
    ],
)
def test_hide(text, min_chars, hidden):
    forbidden = {PSEUDONYM, IMAGE_ID, "abcde"}
    assert privacy.hide(text, forbidden, min_chars=min_chars) == hidden
