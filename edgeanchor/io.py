"""Atomic file writes: never leave a half-written output behind."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import EdgeAnchorError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise EdgeAnchorError(f"cannot write {path}: {exc.strerror}; choose a writable output path") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def log(message: str) -> None:
    """Progress messages go to stderr, so stdout stays clean for --json output."""
    print(message, file=sys.stderr, flush=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temp_dir(beside: Path) -> Path:
    """A new folder beside ``beside`` with the usual permissions (for build-then-rename outputs)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{beside.name}.", dir=beside.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read a JSON file, turning a missing or malformed file into a user error."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise EdgeAnchorError(f"{what} {path} does not exist; check the path") from None
    except OSError as exc:
        raise EdgeAnchorError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EdgeAnchorError(
            f"{what} {path} is not valid JSON (line {exc.lineno}: {exc.msg}); fix or regenerate it"
        ) from None
