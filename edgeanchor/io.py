"""Files and folders written safely, the cache root, the one logger, plain tables.

Nothing here knows about models: these are the low-level helpers every layer
may use (the CLI included), so no module has to reach up into ``cli/``.
"""

from __future__ import annotations

import errno
import hashlib
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
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError, DiskFull)):  # RuntimeError: torch.save's, the OSError its context
            raise_if_disk_full(exc, path, tmp_path)  # DiskFull: of a file written into this temporary one
        raise


class DiskFull(EdgeAnchorError):
    """The disk filled while an output was written (its half-written file or folder is removed)."""

    def __init__(self, cause: OSError, path: Path, message: str):
        super().__init__(message)
        self.cause = cause
        self.path = path


# ENOSPC: the disk is full; EDQUOT: the user's quota; EFBIG: a file-size limit (ulimit -f)
_DISK_FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
              errno.EFBIG: "the file is larger than the file-size limit allows"}


def disk_full_error(exc: BaseException) -> OSError | None:
    """The disk-full OSError in ``exc`` or its chain (libraries such as torch.save wrap it), else None."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _DISK_FULL:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def raise_if_disk_full(exc: BaseException, path: str | os.PathLike, tmp: Path) -> None:
    """Turn a full disk while writing ``path`` (through the temporary ``tmp``) into one line naming the path
    and the fix.

    The caller has removed what it half wrote. Other errors are left to the caller.

    Raises:
        EdgeAnchorError: ``exc`` (or its cause) is ENOSPC, EDQUOT or EFBIG.
    """
    if isinstance(exc, DiskFull):
        if not exc.path.is_relative_to(tmp):  # another output's: its own line stands
            return
        exc = exc.cause  # a file written inside this temporary one or folder: name the output instead
    full = disk_full_error(exc)
    if full is not None:
        raise DiskFull(full, Path(path), (
            f"cannot write {path}: {_DISK_FULL[full.errno or errno.ENOSPC]} (nothing was left half-written); "
            "free some space or choose an output on another disk, then run again"
        )) from None


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
def atomic_dir(path: str | os.PathLike, *, replace: bool = False, manifest: bool = False) -> Iterator[Path]:
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
        manifest: when the block succeeds, record every file and folder of the build in its manifest
            (:func:`write_manifest`), so that a later ``overwrite`` replaces only what edgeanchor wrote.

    Raises:
        EdgeAnchorError: the parent folder cannot be written, or the disk is full (the build is removed).
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
        try:
            yield tmp
            if manifest:
                write_manifest(tmp)
        except (OSError, RuntimeError, DiskFull) as exc:  # RuntimeError: torch.save's, the OSError its context
            raise_if_disk_full(exc, path, tmp)
            raise
        if not path.exists():
            _swap_step("build-into-place")
            os.replace(tmp, path)
            return
        if not replace:
            raise FileExistsError(f"{path} appeared while it was being built")
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-{os.getpid()}-", dir=parent))
        _swap_step("old-aside")
        os.replace(path, old / "previous")
        _swap_step("build-into-place")
        os.replace(tmp, path)
        _swap_step("remove-old")
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# A test hook: the swap step at which this process SIGKILLs itself (tests/test_trust_writers.py drives a
# real kill -9 through every step of the swap; unset in normal use).
KILL_AT_ENV = "EDGEANCHOR_TEST_KILL_AT_SWAP_STEP"


def _swap_step(name: str) -> None:
    if os.environ.get(KILL_AT_ENV) == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


MANIFEST = ".edgeanchor-manifest.json"  # in a folder edgeanchor built: every file and folder it wrote there
MANIFEST_FORMAT = "edgeanchor.manifest/1"


def write_manifest(folder: str | os.PathLike) -> None:
    """Record every file and folder now under ``folder`` (relative POSIX paths) in its manifest.

    Called on a build folder when it is complete, so the manifest names exactly what edgeanchor wrote.
    """
    folder = Path(folder)
    entries = sorted(rel for rel, _ in _walk(folder))
    write_json(folder / MANIFEST, {"format": MANIFEST_FORMAT, "entries": entries})


def read_manifest(folder: str | os.PathLike) -> set[str] | None:
    """The entries of ``folder``'s manifest; None without one, an empty set if it is not a manifest of ours.

    The entries are only ever compared with the paths found under the folder, never opened or deleted,
    so a crafted manifest cannot make edgeanchor touch anything outside it.
    """
    path = Path(folder) / MANIFEST
    if not path.exists() and not path.is_symlink():
        return None
    doc = peek_json(path) if path.is_file() and not path.is_symlink() else None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or not isinstance(doc.get("entries"), list):
        return set()
    return {e for e in doc["entries"] if isinstance(e, str)}


def _walk(folder: Path, prefix: str | None = None) -> Iterator[tuple[str, os.DirEntry]]:
    """(relative POSIX path, entry) of everything under ``folder``, sorted per folder; links are not followed."""
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        rel = entry.name if prefix is None else prefix + entry.name
        yield rel, entry
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), rel + "/")


def first_foreign(folder: str | os.PathLike, is_known: Callable[[str], bool]) -> str | None:
    """The first file or folder under ``folder`` that edgeanchor did not write, or None if all are ours.

    Ours: named in the folder's manifest (:func:`write_manifest`), or accepted by ``is_known`` (a relative
    POSIX path; a folder's path ends with ``/``), which the folder's owner gives for files its readers add
    later (bench results, engines) and, for a folder from before manifests, for every file of its layout.
    A symbolic link or anything other than a file or folder is never ours (edgeanchor writes none).

    Raises:
        EdgeAnchorError: a folder inside cannot be listed.
    """
    folder = Path(folder)
    manifest = read_manifest(folder) or set()
    try:
        for rel, entry in _walk(folder):
            if rel == MANIFEST:
                continue
            if entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
                return rel
            if rel in manifest or is_known(rel + "/" if entry.is_dir() else rel):
                continue
            return rel
    except OSError as exc:  # a sub-folder that cannot be listed: what it holds is unknown, so it is not ours
        raise EdgeAnchorError(f"cannot read {exc.filename or folder}: {exc.strerror}; refusing to replace {folder}"
                              ) from None
    return None


@contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of the output ``path`` for the block: a lock file ``.NAME.lock`` beside it.

    A second run writing the same output stops at once with one line, before any work, rather than
    waiting for an export that may take an hour. The lock is an ``fcntl.flock``, which the system
    releases when the process ends, however it ends; the lock file is removed on release (POSIX only:
    where fcntl is missing the block runs unlocked).

    Raises:
        EdgeAnchorError: another process holds the lock, or the lock file cannot be written.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    lock_path = parent / f".{path.name}.lock"
    while True:
        try:
            parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise EdgeAnchorError(f"cannot write to {parent}: {exc.strerror}; choose a writable output folder") \
                from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise EdgeAnchorError(
                f"another edgeanchor run is writing {path} now; wait for it to finish or choose another output"
            ) from None
        # The holder before us unlinks the file as it releases; a lock on that unlinked file guards
        # nothing, so take the lock again on the file now at the path.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        os.unlink(lock_path)  # while still held: a process that opened it retries on the new file
        os.close(fd)


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Check, before the long work, that the output ``path`` (file or folder, may not exist yet) can be written.

    The nearest existing folder at or above ``path`` must allow creating files: a probe file is
    created there and removed.

    Raises:
        EdgeAnchorError: naming the path, the reason and what to do.
    """
    path = Path(path)
    probe_dir = path if path.is_dir() else path.parent
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if probe_dir.exists() and not probe_dir.is_dir():
        raise EdgeAnchorError(f"cannot write the {what} {path}: {probe_dir} is a file; choose another path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".edgeanchor-probe-", dir=probe_dir)
    except OSError as exc:
        raise EdgeAnchorError(f"cannot write the {what} {path}: {exc.strerror} ({probe_dir}); choose a writable "
                              "path") from None
    os.close(fd)
    os.unlink(tmp)


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
    an input of the run, or is a folder, is always refused, and so is one whose
    folder cannot be written (found now, not after the work).

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
        check_writable(path, what)
        return
    if not is_ours(path):
        raise EdgeAnchorError(
            f"{path} exists and is not a {what} written by edgeanchor; refusing to replace it: "
            "choose another output path or remove the file yourself"
        )
    if not overwrite:
        raise EdgeAnchorError(f"the output {what} {path} exists; pass {flag} to replace it, or choose another path")
    check_writable(path, what)


def cache_root() -> Path:
    """Where caches live: ``$EDGEANCHOR_CACHE``, default ``~/.cache/edgeanchor``."""
    return Path(os.environ.get("EDGEANCHOR_CACHE", Path.home() / ".cache" / "edgeanchor"))


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
