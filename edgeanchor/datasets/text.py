"""The text of a data set's files (class lists, split files, label files, image lists) and the numbers in them.

Each reader here refuses in one line, naming the file: a folder where a file
belongs, bytes that are not UTF-8 (with the line and byte offset of the first
bad byte), and numbers that only Python would accept (``1_0``, ``inf``,
``nan``, ``1e309``, non-ASCII digits). No torch, no numpy.
"""

from __future__ import annotations

import codecs
import math
import re
from pathlib import Path

from ..errors import EdgeAnchorError

# A plain decimal as labelling tools write it: 48, -3, 0.25, .5, 1e-3. ASCII digits only ([0-9], not \d, which
# also matches other scripts' digits), no underscores (float("1_0") is 10), no inf or nan.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_decimal(text: str) -> float:
    """The value of a plain, finite decimal number.

    Raises:
        ValueError: ``text`` is not such a number (``inf``, ``nan``, ``1_0``, ``0x10``, ``1e309`` and
            surrounding spaces are refused).
    """
    if not _DECIMAL.fullmatch(text):
        raise ValueError("not a plain decimal number")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("too large: it overflows to infinity")
    return value


def decode_utf8(raw: bytes, path) -> str:
    """``raw`` decoded as UTF-8 (a leading byte-order mark dropped, as Windows editors write one).

    Raises:
        EdgeAnchorError: not UTF-8, naming ``path``, the line and the byte offset of the first bad byte.
    """
    start = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        line = raw.count(b"\n", 0, offset) + 1
        raise EdgeAnchorError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[offset]:02x} at byte offset {offset}); "
                              "save the file as UTF-8") from None


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``, the data set's ``what`` (e.g. "class list").

    Raises:
        EdgeAnchorError: missing, a folder, unreadable, or not UTF-8 (naming the byte offset).
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise EdgeAnchorError(f"the {what} {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise EdgeAnchorError(f"the {what} {path} is a folder; it must be a text file") from None
    except OSError as exc:
        raise EdgeAnchorError(f"cannot read the {what} {path} ({exc.strerror}); check the file") from None
    return decode_utf8(raw, path)
