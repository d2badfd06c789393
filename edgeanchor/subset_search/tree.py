"""Search strategies over anchor subsets.

- ``greedy``: the paper's Pareto tree search. Expanding a node makes one child
  per move (a move removes one more anchor). A child scoring better than its
  parent is taken alone; else a child scoring equal (within ``tol``) is taken
  alone; else the children above the accuracy floor form a local Pareto set,
  and each is offered to the global front; the ones it accepts are expanded.
  This is the rule of the paper's reference code, and it decides only which
  nodes are expanded. The front the search reports (:func:`search_front`) is
  the Pareto front of every subset it evaluated above the floor: a sibling of
  a better child is not offered to the tree's front, but when nothing
  evaluated dominates it (cheaper, and accurate enough), it is a front point.
- ``shared``: the same tree search, but a move removes one anchor position on
  every level, or a whole level: the only keep sets a head shared across
  levels (RetinaNet) can realise.
- ``layerwise``: level by level, remove the anchor whose removal costs least
  accuracy until the level has at most ``max_per_level`` anchors.

Ties are broken by cost, then by the removed ids, so the same inputs give the
same front.
"""

from __future__ import annotations

from collections import deque

from ..anchors import AnchorSet
from .evaluator import Evaluator, Node


def pareto_front(nodes) -> list[Node]:
    """Non-dominated nodes: no other node has mAP >= and cost <= with one strict."""
    ordered = sorted(nodes, key=lambda n: (n.cost, -n.map, n.removed))
    front, best = [], float("-inf")
    for n in ordered:
        if n.map > best:
            front.append(n)
            best = n.map
    return front


def search_front(evaluator: Evaluator, floor: float) -> list[Node]:
    """The front a search reports: the Pareto front of every node it evaluated at or above ``floor``.

    A function of the nodes alone, so a resumed search, which evaluates the same nodes, reports the same
    front as an uninterrupted one.
    """
    return pareto_front([n for n in evaluator.nodes.values() if n.map >= floor])


class Front:
    """The global Pareto front of (mAP up, cost down) that decides which nodes the tree search expands."""

    def __init__(self):
        self.nodes: dict[tuple, Node] = {}

    def offer(self, node: Node) -> bool:
        """Add ``node`` unless dominated; drops nodes it dominates. True if added."""
        if any(o.map >= node.map and o.cost <= node.cost for o in self.nodes.values()):
            return False
        self.nodes = {k: o for k, o in self.nodes.items()
                      if not (node.map >= o.map and node.cost <= o.cost)}
        self.nodes[node.removed] = node
        return True


def anchor_moves(anchor_set: AnchorSet) -> list[frozenset]:
    """One move per anchor."""
    return [frozenset([i]) for i in anchor_set.ids]


def shared_moves(anchor_set: AnchorSet) -> list[frozenset]:
    """Remove anchor position p on every level, or a whole level."""
    positions: dict[int, set] = {}
    for level in anchor_set.levels:
        for p, a in enumerate(level.anchors):
            positions.setdefault(p, set()).add(a.id)
    moves = [frozenset(ids) for _, ids in sorted(positions.items())]
    moves += [frozenset(a.id for a in level.anchors) for level in anchor_set.levels if level.anchors]
    return moves


def _children(node: Node, moves, all_ids: frozenset, required: tuple[frozenset, ...] = ()) -> list[tuple]:
    removed = frozenset(node.removed)
    out = []
    for move in moves:
        if move <= removed:
            continue
        child = removed | move
        if child >= all_ids:
            continue  # would remove every anchor
        if any(child >= level for level in required):
            continue  # would empty a level the model cannot lose (Detector.required_levels)
        out.append(tuple(sorted(child)))
    return list(dict.fromkeys(out))


class EvalRate:
    """Nodes scored per second since the search started, and the time left to ``max_evals`` at that rate.

    The rate counts the nodes this run scored (``children_scored``), not those it read from a resumed search.
    The ETA is an upper bound: a search stops earlier when no node is left to expand.
    """

    def __init__(self, evaluator: Evaluator, clock=None):
        import time

        self.clock = clock or time.perf_counter
        self.evaluator = evaluator
        self.start, self.start_scored = self.clock(), evaluator.children_scored

    def per_second(self) -> float:
        elapsed = self.clock() - self.start
        done = self.evaluator.children_scored - self.start_scored
        return done / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self) -> float | None:
        rate = self.per_second()
        left = max(0, self.evaluator.max_evals - self.evaluator.num_evals)
        return left / rate if rate > 0 else None

    def text(self) -> str:
        eta = self.eta_seconds()
        when = "unknown" if eta is None else f"{int(eta // 60)}:{int(eta % 60):02d}"
        return f"{self.per_second():.1f} evals/s, at most {when} left (max_evals {self.evaluator.max_evals})"


def tree_search(evaluator: Evaluator, root: Node, moves, all_ids, *, floor: float, tol: float, log=None,
                required: tuple[frozenset, ...] = ()) -> Front:
    """The Pareto tree search from ``root`` (see the module docstring); the nodes it evaluates are in
    ``evaluator.nodes``, and :func:`search_front` is the front to report."""
    front = Front()
    front.offer(root)
    queue = deque([root])
    expanded = set()
    rate = EvalRate(evaluator)
    while queue and not evaluator.exhausted:
        parent = queue.popleft()
        if parent.removed in expanded:
            continue
        expanded.add(parent.removed)
        children = evaluator.evaluate(_children(parent, moves, all_ids, required), parent.removed)
        valid = [c for c in children if c.map >= floor]
        better = [c for c in valid if c.map > parent.map + tol]
        equal = [c for c in valid if abs(c.map - parent.map) <= tol]
        if better:
            chosen = [min(better, key=lambda c: (-c.map, c.cost, c.removed))]
        elif equal:
            chosen = [min(equal, key=lambda c: (c.cost, -c.map, c.removed))]
        else:
            chosen = pareto_front(valid)
        for child in chosen:
            accepted = front.offer(child)
            if accepted or better or equal:
                queue.append(child)
        if log:
            log(f"expanded {len(parent.removed)} removed (mAP {parent.map:.4f}): {len(children)} children, "
                f"{len(valid)} above floor, front {len(front.nodes)}, evals {evaluator.num_evals}, {rate.text()}")
    return front


def layerwise_search(evaluator: Evaluator, root: Node, anchor_set: AnchorSet, *, floor: float,
                     max_per_level: int, log=None) -> Front:
    """Level by level, drop the least useful anchor until ``max_per_level`` remain."""
    front = Front()
    front.offer(root)
    node = root
    all_ids = frozenset(anchor_set.ids)
    rate = EvalRate(evaluator)
    for i, level in enumerate(anchor_set.levels):
        while not evaluator.exhausted:
            remaining = [a.id for a in level.anchors if a.id not in node.removed]
            if len(remaining) <= max_per_level:
                break
            options = [tuple(sorted(set(node.removed) | {a})) for a in remaining]
            options = [o for o in options if frozenset(o) != all_ids]
            children = [c for c in evaluator.evaluate(options, node.removed) if c.map >= floor]
            for c in children:
                front.offer(c)
            if not children:
                break
            node = min(children, key=lambda c: (-c.map, c.cost, c.removed))
        if log:
            log(f"level {i}: {len([a for a in level.anchors if a.id not in node.removed])} anchors left, "
                f"mAP {node.map:.4f}, evals {evaluator.num_evals}, {rate.text()}")
    return front
