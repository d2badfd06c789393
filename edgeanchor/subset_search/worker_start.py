"""The first code a search's scoring worker runs: die with the search, even while still starting.

A spawned worker imports torch and the scorer (seconds, more on a busy machine) before it can score.
If the search is killed in that time, a worker that had not yet asked the kernel to end it with its
parent would live on, holding the cache. So the worker's initializer lives here, in a module that
imports nothing heavy (only the standard library; ``edgeanchor`` and ``edgeanchor.subset_search``
import no torch), and ties the worker's life to the search's before any heavy import.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def exit_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` dies, even by SIGKILL (no orphans holding the cache).

    Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG). Then, everywhere:
    if the parent is already gone (it died before the hook was set; this process was re-parented),
    exit at once; and a daemon thread polls the parent pid once a second, as a backstop.

    Args:
        parent_pid: the pid of the search process that started this worker.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the hook was set
        os._exit(1)

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, name="edgeanchor-parent-watch", daemon=True).start()


def init_worker(cache_path: str, ann: str, backend: str, parent_pid: int, metric: str = "coco") -> None:
    """A scoring worker's initializer: tie its life to the search's first, then load torch and the scorer.

    Args:
        cache_path: the candidate cache (``.npz``) the worker scores from.
        ann: the COCO annotation file of the searched split.
        backend: the scorer's matching backend.
        parent_pid: the search process's pid.
        metric: the scorer's metric.
    """
    exit_with_parent(parent_pid)
    from .evaluator import load_worker_scorer  # torch: only after the worker is tied to the search

    load_worker_scorer(cache_path, ann, backend, metric)
