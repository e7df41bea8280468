"""Inbox file names as the bytes they are: stored losslessly, shown safely.

Any byte string but "/" and NUL is a legal Linux name. Python hands undecodable bytes over as lone
surrogates (`os.fsdecode`), which SQLite, UTF-8 files and terminals refuse. Names are kept as that
`str` for file-system calls (it round-trips to the exact bytes), stored as UTF-8 text when they are
valid UTF-8 and as a BLOB of the raw bytes when not, and shown with every byte that is not
printable, plain text escaped.
"""

from __future__ import annotations

import os
import unicodedata

# Bidirectional controls reorder what a terminal shows ("Trojan Source"): always escaped.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def to_db(name: str) -> str | bytes:
    """What the catalog stores for `name`: the text itself, or its raw bytes when not valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name)
    return name


def from_db(value: str | bytes) -> str:
    """The file-system name back from what `to_db` stored."""
    return os.fsdecode(value)


def is_text(name: str) -> bool:
    return not isinstance(to_db(name), bytes)


def display(name: str | bytes) -> str:
    """`name` fit for a terminal, a log line or a JSON document: valid UTF-8, one line, no control
    or bidi characters; undecodable bytes as \\xNN, controls as \\xNN or \\uNNNN, a backslash doubled."""
    raw = os.fsencode(name) if isinstance(name, str) else name
    text = raw.decode("utf-8", "surrogateescape")
    out: list[str] = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char == "\\":
            out.append("\\\\")
        elif char in _BIDI or unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


def clipped(text: str | bytes, width: int) -> str:
    """`display(text)` cut to `width` characters, the last one an ellipsis when cut (a table's cell)."""
    shown = display(text)
    return shown if len(shown) <= width else shown[: width - 1] + "…"
