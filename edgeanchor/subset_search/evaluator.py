"""Evaluating search nodes: memoised, parallel over worker processes, persisted.

A node is a set of removed anchor ids. Its accuracy comes from the candidate
cache (no forward pass) and its cost from the cost model. Nodes are ranked by
mAP alone, so they are scored with ``full=False`` (mAP only, exactly the full
evaluation's mAP, faster); their ``metrics`` hold just "mAP". Every evaluated
node is kept in memory and written to ``search.json`` after each batch, so an
interrupted search resumes from the nodes already evaluated.

``max_evals`` is the search's whole budget, not this run's: a node read from the
stored search counts as the evaluation it was. A resumed search therefore
replays the uninterrupted one step for step (same nodes, same budget cut, same
front), and rerunning a finished search with the same budget scores nothing.

A batch holds the children of one parent. Whoever scores them (this process,
or each worker for its contiguous share) pins the parent's per-image results
once, so every child only recomputes the images it can change.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .costs import CostModel
from .worker_start import init_worker

if TYPE_CHECKING:
    from ..evaluation.subset import SubsetScorer

_WORKER: dict[str, SubsetScorer] = {}


@dataclass(frozen=True)
class Node:
    """One evaluated keep set."""

    removed: tuple[int, ...]
    metrics: dict
    head_macs: int
    boxes: int
    cost: float

    @property
    def map(self) -> float:
        return self.metrics["mAP"]

    def to_json(self) -> dict:
        return {"removed": list(self.removed), "num_removed": len(self.removed), "mAP": self.map,
                "metrics": self.metrics, "head_macs": self.head_macs, "boxes": self.boxes, "cost": self.cost}

    @classmethod
    def from_json(cls, obj: dict) -> Node:
        """Parse :meth:`to_json` output; KeyError/TypeError on a malformed object."""
        if not isinstance(obj["metrics"], dict) or "mAP" not in obj["metrics"]:
            raise KeyError("metrics")
        return cls(tuple(int(r) for r in obj["removed"]), obj["metrics"], int(obj["head_macs"]), int(obj["boxes"]),
                   float(obj["cost"]))


def load_worker_scorer(cache_path: str, ann: str, backend: str, metric: str = "coco") -> None:
    """Load this worker process's scorer (called by :func:`.worker_start.init_worker`, after the worker
    is tied to the search's life)."""
    import torch

    from ..evaluation.cache import CandidateCache
    from ..evaluation.subset import SubsetScorer

    torch.set_num_threads(1)
    _WORKER["scorer"] = SubsetScorer(CandidateCache.load(cache_path), ann, backend=backend, metric=metric)


def _score_task(task) -> tuple[list[dict], int]:
    children, parent = task
    return _score_children(_WORKER["scorer"], children, parent)


def _score_children(scorer, children: list, parent: tuple) -> tuple[list[dict], int]:
    """(mAP of each child, (image, class) pairs re-matched): the parent's state is computed (or reused)
    once for all of them, and each child redoes only what its removed anchors can change."""
    before = scorer.pairs_recomputed
    if len(children) > 1:
        scorer.pin(parent)
    return [scorer.score(k, parent, full=False) for k in children], scorer.pairs_recomputed - before


class Evaluator:
    """Scores nodes, with a memo, optional worker processes, and a save hook.

    Args:
        scorer: a :class:`edgeanchor.evaluation.subset.SubsetScorer` (used in-process; workers and actors
            score its ``metric``).
        cost_model: head MACs and boxes of keep sets.
        cost_fn: node cost for the front, from (removed, head_macs, boxes).
        workers: processes for parallel scoring (<= 1: in-process).
        cache_path, ann: what worker processes (or Ray actors) load.
        on_batch: called after each batch that scored something (e.g. to persist).
        max_evals: the search's evaluations, a stored search's included (asking again for a node of this
            search is free).
        known: nodes of a stored search: each counts as an evaluation when this search reaches it, and is
            not scored again.
        executor: "processes" (this machine's worker processes) or "ray" (``max(workers, 1)`` Ray actors,
            one image shard each, for every batch: :class:`~edgeanchor.subset_search.ray_executor.RayShardExecutor`).
        ray_address: the Ray cluster for executor "ray" (None: a local Ray).
    """

    def __init__(self, scorer, cost_model: CostModel, cost_fn: Callable, *, workers: int = 1,
                 cache_path: str | None = None, ann: str | None = None, on_batch: Callable | None = None,
                 max_evals: int = 5000, known: Iterable[Node] = (), executor: str = "processes",
                 ray_address: str | None = None):
        self.scorer = scorer
        self.cost_model = cost_model
        self.cost_fn = cost_fn
        self.memo: dict[tuple[int, ...], Node] = {n.removed: n for n in known}  # scored, here or before
        self.nodes: dict[tuple[int, ...], Node] = {}  # this search's nodes, in the order it evaluated them
        self.max_evals = max_evals
        self.num_evals = 0  # len(self.nodes): what max_evals counts
        self.on_batch = on_batch
        self._pool = None
        self.executor, self.workers = executor, workers
        self.pairs_recomputed = 0  # (image, class) pairs re-matched by this run's scoring, all workers
        self.children_scored = 0  # nodes scored by this run (memo hits and resumed nodes excluded)
        self.scoring_s = 0.0  # wall time spent scoring batches
        self.shard_executor = None
        if executor == "ray":
            from .ray_executor import RayShardExecutor

            self.shard_executor = RayShardExecutor(cache_path, ann, max(workers, 1), ray_address,
                                                   metric=getattr(scorer, "metric", "coco"))
        elif workers > 1 and cache_path:
            ctx = multiprocessing.get_context("spawn")  # torch in the parent makes fork unsafe
            self._pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker,
                                             initargs=(str(cache_path), str(ann), scorer.backend, os.getpid(),
                                                       getattr(scorer, "metric", "coco")))
            self._workers = workers

    @property
    def exhausted(self) -> bool:
        return self.num_evals >= self.max_evals

    def evaluate(self, removed_sets: list, parent=()) -> list[Node]:
        """Nodes for the given removed sets, in the same order; those past the budget are left out."""
        keys = [tuple(sorted(int(r) for r in s)) for s in removed_sets]
        new = [k for k in dict.fromkeys(keys) if k not in self.nodes]
        new = new[: max(0, self.max_evals - self.num_evals)]
        todo = [k for k in new if k not in self.memo]  # the others were scored by the search resumed
        if todo:
            parent = tuple(sorted(parent))
            started = time.perf_counter()
            if self.shard_executor is not None:
                before = self.shard_executor.pairs_recomputed
                results = self.shard_executor.score(todo, parent)
                self.pairs_recomputed += self.shard_executor.pairs_recomputed - before
            elif self._pool is not None and len(todo) > 1:
                size = -(-len(todo) // self._workers)  # one contiguous share per worker, one pin each
                shares = [(todo[i:i + size], parent) for i in range(0, len(todo), size)]
                parts = list(self._pool.map(_score_task, shares))
                results = [m for part, _ in parts for m in part]
                self.pairs_recomputed += sum(pairs for _, pairs in parts)
            else:
                results, pairs = _score_children(self.scorer, todo, parent)
                self.pairs_recomputed += pairs
            self.scoring_s += time.perf_counter() - started
            self.children_scored += len(todo)
            for k, metrics in zip(todo, results):
                macs, boxes = self.cost_model.head_macs(k), self.cost_model.boxes(k)
                self.memo[k] = Node(k, {m: round(v, 6) for m, v in metrics.items()}, macs, boxes,
                                    float(self.cost_fn(k, macs, boxes)))
        for k in new:
            self.nodes[k] = self.memo[k]
        self.num_evals = len(self.nodes)
        if todo and self.on_batch:
            self.on_batch()
        return [self.nodes[k] for k in keys if k in self.nodes]

    def scoring_stats(self) -> dict:
        """How this run scored its nodes: executor, workers, nodes, evaluations per second, and the mean
        (image, class) pairs re-matched per node (a node scored from scratch re-matches all of its pairs)."""
        n = self.children_scored
        return {"executor": self.executor, "workers": self.workers, "nodes_scored": n,
                "evals_per_s": round(n / self.scoring_s, 3) if self.scoring_s > 0 else None,
                "pairs_recomputed": self.pairs_recomputed,
                "pairs_recomputed_per_node": round(self.pairs_recomputed / n, 1) if n else None}

    def close(self) -> None:
        if self.shard_executor is not None:
            self.shard_executor.close()
            self.shard_executor = None
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
