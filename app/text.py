"""Text from files we did not write, made safe to print, plot or store.

Control and format characters in a DICOM tag, a file name or a results folder (ESC of a
terminal escape sequence, NUL, CR/LF, BEL, bidirectional overrides, the lone surrogates
Python makes of file-name bytes that are not UTF-8) can redraw a terminal, split a CSV
row or reorder what a reader sees. Two policies: :func:`escaped` keeps the text
recognisable (a file name in a ledger, an error in `status`; :func:`short` for a value in
a table cell); :func:`stripped` keeps the value clean (a header value stored in a dataset
and drawn in a report).
"""

from __future__ import annotations


def escaped(text: object, limit: int | None = None) -> str:
    """``text`` with each non-printable character as a Python escape (``\\t``, ``\\x1b``,
    ``\\u202e``, ``\\udcff``): one line, ASCII escapes, nothing a terminal acts on. Cut to
    ``limit`` characters (ending with "…") when given."""
    text = str(text) if limit is None else str(text)[: limit + 1]
    if not text.isprintable():  # the common case is printable, checked at C speed
        text = "".join(c if c.isprintable() else _escape(c) for c in text)
    if limit is not None and len(text) > limit:
        return text[: limit - 1] + "…"
    return text


def short(value: object, limit: int = 40) -> str:
    """A value for a line or a table cell: a float to 3 significant digits, anything else
    :func:`escaped` and cut to ``limit`` characters (a trial's config value, read from a
    results folder, may be any text of any length)."""
    return f"{value:.3g}" if isinstance(value, float) else escaped(value, limit)


def stripped(text: str) -> str:
    """``text`` as one line of printable characters: control and format characters
    dropped, line breaks and tabs turned into spaces."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else " " if c.isspace() else "" for c in text)


def _escape(char: str) -> str:
    # unicode_escape gives \t, \n, \x00, \u202e; a lone surrogate it cannot encode.
    code = ord(char)
    if char in "\t\n\r":
        return char.encode("unicode_escape").decode()
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
