"""A bounded load generator: CPU-bound processes that each stop after a fixed time (issue 27).

    with bounded_load(processes=6, seconds=20):
        ...  # timed work on a busy machine

Each process spins for ``seconds`` and then exits by itself, so the load ends even if the caller dies;
on leaving the block every process still running is killed and reaped, whatever happened inside. Six on a
2-core machine give a load average of about 8, as when the latency gate failed on noise.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

# a pure-Python spin: one core each, no allocation, ends at its deadline
_SPIN = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def bounded_load(processes: int = 6, seconds: float = 20.0) -> Iterator[list[subprocess.Popen]]:
    """``processes`` CPU-bound processes, each for at most ``seconds``; all killed when the block ends."""
    if processes < 0 or not seconds > 0:
        raise ValueError(f"processes must be >= 0 and seconds > 0 (got {processes}, {seconds})")
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(processes):
            procs.append(subprocess.Popen([sys.executable, "-c", _SPIN, str(seconds)], stdin=subprocess.DEVNULL))
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
