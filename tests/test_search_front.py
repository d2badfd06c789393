"""The search's front and budget on a constructed scoring problem (no model): every evaluated subset is
considered for the front, ``max_evals`` is the whole search's budget, and a resumed search is the
uninterrupted one."""

from __future__ import annotations

import pytest

from edgeanchor.subset_search.evaluator import Evaluator
from edgeanchor.subset_search.tree import search_front, tree_search

# Five anchors; a kept anchor costs its MACs below, so the unpruned head costs 75.
MACS = {0: 5, 1: 10, 2: 10, 3: 10, 4: 40}
# mAP of each subset (by removed ids); any other subset scores 0.30, below every floor used here.
MAPS = {(): 0.50,
        (0,): 0.52,  # better than the root: the greedy rule takes it alone
        (4,): 0.48,  # the sibling: cheaper (35) than (0,) (70), above the floor 0.45, dominated by nothing
        (0, 1): 0.49}  # the only grandchild above the floor: cost 60, between (4,) and (0,) on both axes
FLOOR, TOL = 0.45, 1e-4


class TableScorer:
    """Scores a removed set from MAPS (the interface the Evaluator calls), counting what it scored."""

    def __init__(self):
        self.pairs_recomputed = 0
        self.scored: list[tuple[int, ...]] = []

    def pin(self, parent) -> None:
        pass

    def score(self, removed, parent=(), full=True) -> dict:
        self.scored.append(tuple(removed))
        return {"mAP": MAPS.get(tuple(removed), 0.30)}


class TableCost:
    def head_macs(self, removed) -> int:
        return sum(m for a, m in MACS.items() if a not in removed)

    def boxes(self, removed) -> int:
        return len(MACS) - len(removed)


def run(max_evals: int, known=(), on_batch=None, made=None):
    """(front as (removed, cost) pairs, the evaluator, the scorer) of a greedy search; ``made`` gets the
    evaluator before the search starts."""
    scorer = TableScorer()
    evaluator = Evaluator(scorer, TableCost(), lambda removed, macs, boxes: float(macs), max_evals=max_evals,
                          known=known, on_batch=on_batch)
    if made is not None:
        made.append(evaluator)
    root = evaluator.evaluate([()])[0]
    moves = [frozenset([a]) for a in MACS]
    evaluator.tree_front = tree_search(evaluator, root, moves, frozenset(MACS), floor=FLOOR, tol=TOL)
    front = [(n.removed, n.cost) for n in search_front(evaluator, FLOOR)]
    return front, evaluator, scorer


def test_a_sibling_of_the_better_child_is_on_the_front():
    """Root (75, 0.50) -> children: (0,) 0.52 is better, so only it is expanded; its children are all scored,
    (0, 1) is the only one above the floor. Evaluated: root, 5 children, 4 grandchildren, then (0, 1)'s 3
    children = 13. The tree's own rule never offers (4,) (35 MACs, 0.48), but nothing evaluated is both
    cheaper and at least as accurate, so the reported front is (4,) 35, (0, 1) 60, (0,) 70."""
    front, evaluator, _ = run(max_evals=100)
    assert evaluator.num_evals == 13
    assert sorted(evaluator.tree_front.nodes) == [(0,), (0, 1)]  # the paper's rule alone loses (4,)
    assert front == [((4,), 35.0), ((0, 1), 60.0), ((0,), 70.0)]


def test_rerun_with_the_same_budget_scores_nothing_and_gives_the_same_front():
    first, done, _ = run(max_evals=8)
    assert done.num_evals == 8 and done.exhausted
    again, evaluator, scorer = run(max_evals=8, known=done.nodes.values())
    assert scorer.scored == []  # the budget is the search's, not the run's: nothing new
    assert (again, list(evaluator.nodes)) == (first, list(done.nodes))
    more, bigger, scorer = run(max_evals=13, known=done.nodes.values())
    assert len(scorer.scored) == 5 and bigger.num_evals == 13  # a bigger budget extends to it, and no further
    assert more == run(max_evals=13)[0]
    fewer, smaller, scorer = run(max_evals=4, known=bigger.nodes.values())
    assert scorer.scored == [] and (fewer, list(smaller.nodes)) == (run(max_evals=4)[0], list(run(4)[1].nodes))


@pytest.mark.parametrize("stop_after", [1, 2, 3])
def test_an_interrupted_search_resumes_to_the_uninterrupted_front(stop_after):
    """Interrupted after some batches (as by Ctrl-C; the search saves its scored nodes after each batch, so
    kill -9 leaves the same), then resumed with the same budget: the same nodes in the same order, the same
    front, and only the rest scored."""
    whole, uninterrupted, scorer = run(max_evals=11)
    saved: dict = {}
    made: list[Evaluator] = []

    def save_then_stop() -> None:
        saved.update(made[0].memo)  # what search.json holds after this batch
        if len(saved) >= stop_after + 1:  # the root's batch saves nothing; each expansion is a batch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(max_evals=11, on_batch=save_then_stop, made=made)
    resumed, evaluator, rescorer = run(max_evals=11, known=saved.values())
    assert resumed == whole
    assert list(evaluator.nodes) == list(uninterrupted.nodes)
    assert len(rescorer.scored) == len(scorer.scored) - len(saved) > 0


def test_a_rerun_with_the_same_max_evals_is_the_same_search(tmp_path_factory, tmp_path, capsys, monkeypatch):
    """The CI case: `search --max-evals 10` run twice into the same folder. The second run scores nothing and
    gives the same nodes, front and chosen point; every log line's count is search.json's. The command checks
    its search settings once per run."""
    import json
    import re

    import edgeanchor.subset_search.run as run_module
    from edgeanchor.cli import main
    from edgeanchor.subset_search.run import choose_point
    from tests.helpers import shared_synth_split

    checks = []
    check = run_module.check_search_options
    monkeypatch.setattr(run_module, "check_search_options", lambda spec: (checks.append(spec), check(spec))[1])

    images, anns = shared_synth_split(tmp_path_factory, "budget", num_images=12, seed=3, splits=(0.5, 0.5, 0.0))
    argv = ["search", "--model", "demo", "--data", images, "--ann", anns["val"], "--max-evals", "10",
            "--workers", "1", "--max-drop", "0.05", "--out", str(tmp_path / "s")]
    runs = []
    for _ in range(2):
        assert main(argv) == 0
        out, err = capsys.readouterr()
        stored = json.loads((tmp_path / "s" / "search.json").read_text())
        evaluated = re.search(r"evaluated (\d+) subsets \(max_evals 10\): (\d+) scored in this run", err)
        assert evaluated, err[-800:]
        assert int(evaluated.group(1)) == stored["num_evals"] == len(stored["nodes"]) == 10
        assert f"searched {stored['num_evals']} subsets" in out
        runs.append((stored, int(evaluated.group(2)), err))
    assert len(checks) == 2  # once per run
    (first, scored_first, _), (second, scored_again, err) = runs
    assert (scored_first, scored_again) == (10, 0)
    assert "10 read from the stored search" in err and "resuming the search" in err
    assert second["nodes"] == first["nodes"] and second["front"] == first["front"]
    assert choose_point(second)["removed"] == choose_point(first)["removed"]


def test_children_never_empty_a_required_level():
    """A level the model cannot lose (an ONNX graph's own per-level output) keeps at least one anchor."""
    from edgeanchor.subset_search.evaluator import Node
    from edgeanchor.subset_search.tree import _children

    moves = [frozenset([i]) for i in range(6)]
    level0, level1 = frozenset({0, 1, 2}), frozenset({3, 4, 5})
    parent = Node(removed=(0, 1), metrics={"mAP": 1.0}, head_macs=1, boxes=1, cost=1.0)
    free = _children(parent, moves, frozenset(range(6)))
    assert (0, 1, 2) in free  # without the rule, level 0 can be emptied
    kept = _children(parent, moves, frozenset(range(6)), required=(level0, level1))
    assert kept == [(0, 1, 3), (0, 1, 4), (0, 1, 5)]
    last = Node(removed=(0, 1, 3, 4), metrics={"mAP": 1.0}, head_macs=1, boxes=1, cost=1.0)
    assert _children(last, moves, frozenset(range(6)), required=(level0, level1)) == []
