"""The identifier guard: no patient pseudonym or image id on any report page.

Converted datasets hold no patient name (``data.dicom`` keeps a pseudonym of the
PatientID and drops PatientName and the other identifying tags), but they do hold a
pseudonym per patient and an id per image (the SOP instance UID). A report shows counts,
non-identifying tags and pictures; each report collects the strings its page must not
show (:func:`identifiers`), replaces them where it quotes free text such as an error
message (:func:`hide`), and checks the finished page text (:func:`check_no_identifiers`)
before it writes anything.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable

MIN_ID_CHARS = 6  # shorter ids ("x", "12") would match ordinary words and counts
HIDDEN = "…"  # what stands where an identifier was


def identifiers(*groups: Iterable[object]) -> set[str]:
    """The values of ``groups`` (e.g. a pseudonym column and an image-id column) as text.

    Missing values (``None``, NaN) and strings shorter than :data:`MIN_ID_CHARS` are left
    out: they identify no one and would match ordinary words and numbers.
    """
    found = set()
    for group in groups:
        for value in group:
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            text = str(value)
            if len(text) >= MIN_ID_CHARS:
                found.add(text)
    return found


def hide(text: str, forbidden: Iterable[str], min_chars: int = MIN_ID_CHARS) -> str:
    """``text`` with every string of ``forbidden`` that has at least ``min_chars``
    characters replaced by :data:`HIDDEN`."""
    for value in forbidden:
        if len(value) >= min_chars:
            text = text.replace(value, HIDDEN)
    return text


def check_no_identifiers(texts: Iterable[str], forbidden: Collection[str], source: str) -> None:
    """Raise ``RuntimeError`` if a string of ``forbidden`` (of at least
    :data:`MIN_ID_CHARS` characters) appears in ``texts``.

    A bug guard: a report is built from counts and tags, so a hit means a section leaks
    a per-patient or per-image string and the page must not be written; ``source`` names
    the report module for the message, which never quotes the string it found. Plain
    substring search: the page text is small (figures are not searched).
    """
    joined = "\n".join(texts)
    found = [f for f in forbidden if len(f) >= MIN_ID_CHARS and f in joined]
    if found:
        raise RuntimeError(
            f"the report text would show {len(found)} patient pseudonym(s) or image id(s); "
            f"this is a bug in {source}"
        )
