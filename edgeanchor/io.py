"""Files and folders written safely, the cache root, the one logger, plain tables.

Nothing here knows about models: these are the low-level helpers every layer
may use (the CLI included), so no module has to reach up into ``cli/``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeGuard

from .errors import EdgeAnchorError

LOGGER = logging.getLogger("edgeanchor")


# ---------------------------------------------------------------------------------------------- logging


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest and notebooks swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: int = logging.INFO) -> None:
    """Send edgeanchor's progress and notices to stderr (idempotent).

    The CLI and the benchmark scripts call this; a library user who does not
    gets Python's default (warnings only), or configures ``logging`` as usual.
    """
    if not any(isinstance(h, _StderrHandler) for h in LOGGER.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOGGER.addHandler(handler)
    LOGGER.setLevel(level)
    LOGGER.propagate = False


def log(message: str) -> None:
    """A progress message or notice. It goes to stderr, so stdout carries only results."""
    LOGGER.info(message)


def warn(message: str) -> None:
    """A notice the user should see even when progress messages are off."""
    LOGGER.warning(message)


# ---------------------------------------------------------------------------------------------- files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise EdgeAnchorError(f"cannot write the file {path}: it is a folder; give a file path")
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _owner_pid(name: str, prefix: str) -> int | None:
    """The pid in ``.NAME.build-PID-xxxx`` / ``.NAME.old-PID-xxxx``, or None if the name is not ours."""
    rest = name[len(prefix):]
    pid = rest.split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def clean_stale_builds(path: str | os.PathLike) -> list[Path]:
    """Remove build folders beside ``path`` left by killed runs (their process is gone).

    A run killed between moving the old folder aside and moving the new one in
    leaves only ``.NAME.old-PID-*/previous``: that folder is moved back, not deleted.
    Returns the removed or restored folders.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return []
    touched = []
    for kind in ("build", "old"):
        prefix = f".{path.name}.{kind}-"
        for entry in sorted(parent.iterdir()):
            if not entry.name.startswith(prefix) or not entry.is_dir():
                continue
            pid = _owner_pid(entry.name, prefix)
            if pid is None or _pid_alive(pid):
                continue
            if kind == "old" and not path.exists() and (entry / "previous").is_dir():
                os.replace(entry / "previous", path)  # the swap was interrupted: put the previous output back
            shutil.rmtree(entry, ignore_errors=True)
            touched.append(entry)
    return touched


@contextmanager
def atomic_dir(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Build a folder beside ``path`` and move it into place when the block succeeds.

    The build folder is ``.NAME.build-PID-xxxx`` in the same parent (so the
    final move is a rename). An existing ``path`` is kept until the new
    folder is complete: it is moved aside, the new one moved in, then the old
    one deleted. On an exception the build folder is removed and ``path`` is
    untouched. Build folders of killed runs are cleaned first.

    Whether an existing ``path`` may be replaced (is it ours? did the user ask?)
    is the caller's decision, made before the long work starts; this only
    does the moves.

    Args:
        path: the final folder.
        replace: replace an existing ``path``; if False and ``path`` exists when
            the block ends, the new build is discarded and ``FileExistsError``
            raised (e.g. another process built the same cache folder first).

    Raises:
        EdgeAnchorError: the parent folder cannot be written.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.exists() and not path.is_dir():
        raise EdgeAnchorError(f"{path} is a file, not a folder; choose a folder path")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        clean_stale_builds(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.build-{os.getpid()}-", dir=parent))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as exc:
        raise EdgeAnchorError(f"cannot write to {parent}: {exc.strerror}; choose a writable output folder") from None
    try:
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
            return
        if not replace:
            raise FileExistsError(f"{path} appeared while it was being built")
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-{os.getpid()}-", dir=parent))
        os.replace(path, old / "previous")
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True if two paths name the same file or folder (after resolving links and '..')."""
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def check_output_file(path: str | os.PathLike, *, overwrite: bool, is_ours: Callable[[Path], bool], what: str,
                      inputs: Iterable = (), flag: str = "`overwrite`") -> None:
    """Refuse an output file that would lose something of the user's; call before the long work.

    An existing file is replaced only if ``is_ours(path)`` recognises it as
    something edgeanchor wrote **and** ``overwrite`` is set. A path that is also
    an input of the run, or is a folder, is always refused.

    Args:
        path: the output file.
        overwrite: the user asked to replace an existing output.
        is_ours: recognises a file edgeanchor wrote (a checkpoint, a detections file, ...).
        what: what the output is, for messages ("checkpoint").
        inputs: paths this run reads.
        flag: the parameter that allows replacing (named in the message).

    Raises:
        EdgeAnchorError: naming the path and what to do.
    """
    path = Path(path)
    for item in inputs:
        if item is not None and same_path(item, path):
            raise EdgeAnchorError(f"the output {what} {path} is also an input of this run; choose another output path")
    if path.is_dir():
        raise EdgeAnchorError(f"the output {what} {path} is a folder; give a file path")
    if not path.exists():
        return
    if not is_ours(path):
        raise EdgeAnchorError(
            f"{path} exists and is not a {what} written by edgeanchor; refusing to replace it: "
            "choose another output path or remove the file yourself"
        )
    if not overwrite:
        raise EdgeAnchorError(f"the output {what} {path} exists; pass {flag} to replace it, or choose another path")


def cache_root() -> Path:
    """Where caches live: ``$EDGEANCHOR_CACHE``, default ``~/.cache/edgeanchor``."""
    return Path(os.environ.get("EDGEANCHOR_CACHE", Path.home() / ".cache" / "edgeanchor"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read a JSON file, turning a missing, unreadable or malformed file into a user error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgeAnchorError(f"{what} {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise EdgeAnchorError(f"{what} {path} is a folder; give the path of the file") from None
    except UnicodeDecodeError:
        raise EdgeAnchorError(f"{what} {path} is not a text file (not UTF-8 JSON); check the path") from None
    except OSError as exc:
        raise EdgeAnchorError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EdgeAnchorError(
            f"{what} {path} is not valid JSON (line {exc.lineno}: {exc.msg}); fix or regenerate it"
        ) from None


def peek_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``, or None if it cannot be read or parsed (for recognising files; never raises)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- tables


def is_number(value: object) -> TypeGuard[int | float]:
    """True for a JSON number read back as int or float (not a bool, not NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``count`` and the noun in agreement: "1 thread", "2 threads", "2 worker processes" (``nouns`` for
    plurals that are not noun + "s")."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def format_table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table with right-aligned numbers."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(v.rjust(w) if n and _is_num(v) else v.ljust(w) for v, w in zip(row, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v:,}"
    return str(v)


def _is_num(s: str) -> bool:
    try:
        float(s.replace(",", ""))
        return True
    except ValueError:
        return False
