"""Candidate cache exactness, cost model, and the search, on the demo model and a small split."""

import json

import numpy as np
import pytest
import torch

from edgeanchor.cli import main
from edgeanchor.cost import measure_cost
from edgeanchor.datasets.coco import CocoDetection
from edgeanchor.evaluation.cache import CandidateCache, build_cache, load_or_build_cache
from edgeanchor.evaluation.coco_map import coco_map
from edgeanchor.evaluation.predict import predict
from edgeanchor.evaluation.subset import SubsetScorer
from edgeanchor.models import build_detector
from edgeanchor.models.registry import ARCHS, wrap
from edgeanchor.postprocess import Candidates, PostprocessRule, topk_indices
from edgeanchor.pruning import prune
from edgeanchor.subset_search.costs import build_cost_model
from edgeanchor.subset_search.run import SearchOptions, run_search
from edgeanchor.subset_search.tree import pareto_front
from tests.helpers import shared_synth_split


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return shared_synth_split(tmp_path_factory, "split", num_images=48, seed=11, splits=(0.34, 0.33, 0.33))


@pytest.fixture(scope="module")
def demo():
    return build_detector("demo")


@pytest.fixture(scope="module")
def scorer(demo, split):
    images, anns = split
    data = CocoDetection(images, anns["val"], num_classes=demo.num_classes, image_size=demo.image_size)
    return SubsetScorer(build_cache(demo, data, progress=False), anns["val"]), data


def subsets(det):
    levels = det.anchor_set.levels
    return [
        (),
        (0,),
        tuple(a.id for a in levels[4].anchors),  # the whole coarsest level
        tuple(a.id for a in levels[0].anchors[2:]) + tuple(a.id for a in levels[2].anchors[::2]),
        tuple(a.id for lv in levels[1:] for a in lv.anchors[1:]),
    ]


def test_cache_keeps_only_candidates_above_threshold(demo, scorer):
    sc, data = scorer
    cache = sc.cache
    assert cache.num_images == len(data)
    assert (cache.scores > demo.postprocess_spec.score_thresh).all()
    assert cache.num_candidates < 0.05 * cache.num_images * demo.anchor_set.num_boxes * (demo.num_classes - 1)
    # every candidate's anchor id is the anchor of its box
    assert np.array_equal(cache.anchor_id, demo.box_anchor_ids().numpy()[cache.box_index])


def test_cached_score_equals_sliced_model(demo, scorer, split):
    sc, data = scorer
    _, anns = split
    seen = set()
    for removed in subsets(demo):
        pruned = prune(demo, set(demo.anchor_set.ids) - set(removed))
        real_dets = predict(pruned, data, progress=False)
        real = coco_map(anns["val"], real_dets)
        cached = sc.score(removed)
        assert cached == real, removed
        assert real["mAP"] > 0.1
        rows = sc.detections(removed)
        assert len(rows) == len(real_dets)
        seen.add(round(real["mAP"], 6))
    assert len(seen) >= 3  # the subsets really differ


def test_incremental_scoring_equals_from_scratch(demo, scorer):
    sc, _ = scorer
    fresh = SubsetScorer(sc.cache, sc.gt.dataset)
    parent = (0, 1, 2)
    sc.score(parent)
    before = sc.images_recomputed
    child = sc.score(parent + (7,), parent=parent)
    assert sc.images_recomputed - before < sc.cache.num_images  # only affected images recomputed
    assert child == fresh.score(parent + (7,))


def test_map_only_scoring_equals_full_map(demo, scorer):
    sc, _ = scorer
    other = SubsetScorer(sc.cache, sc.gt.dataset, backend="pycocotools")
    for removed in subsets(demo):
        full = sc.score(removed)
        assert sc.score(removed, full=False) == {"mAP": full["mAP"]}  # exactly, not approximately
        assert other.score(removed, full=False) == {"mAP": other.score(removed)["mAP"]}
    assert coco_map(sc.gt, [], full=False) == {"mAP": 0.0}


def test_parent_stays_pinned_for_many_children(demo, scorer):
    sc, _ = scorer
    fresh = SubsetScorer(sc.cache, sc.gt.dataset, memo_size=0)
    pinned = SubsetScorer(sc.cache, sc.gt.dataset, memo_size=1)
    parent = (0, 1)
    pinned.pin(parent)
    for a in range(2, 9):  # more children than the memo holds
        before = pinned.images_recomputed
        child = pinned.score(parent + (a,), parent=parent, full=False)
        assert pinned.images_recomputed - before < sc.cache.num_images, a
        assert child == fresh.score(parent + (a,), full=False)
        assert np.array_equal(pinned.detections(parent + (a,)), fresh.detections(parent + (a,)))


def _topk_loop(cands, spec, level_starts):
    """The per-group loop torchvision runs (and topk_indices replaced): topk per class or level."""
    if spec.topk_scope == "class":
        groups = cands.labels
    else:
        groups = torch.bucketize(cands.box_index, level_starts[1:], right=True)
    kept = []
    for g in torch.unique(groups).tolist():
        idx = torch.nonzero(groups == g).flatten()
        kept.append(idx[cands.scores[idx].topk(min(spec.topk_candidates, idx.numel())).indices])
    return torch.cat(kept) if kept else torch.zeros(0, dtype=torch.int64)


@pytest.mark.parametrize("scope", ["class", "level"])
def test_topk_indices_equals_per_group_topk_with_ties(scope):
    gen = torch.Generator().manual_seed(0)
    level_starts = torch.tensor([0, 50, 120, 300])
    for trial in range(200):
        m, k = int(torch.randint(0, 400, (1,), generator=gen)), int(torch.randint(1, 60, (1,), generator=gen))
        levels = int(torch.randint(1, 8, (1,), generator=gen))
        # few distinct scores, so most groups have exact ties inside and across their top k
        scores = torch.randint(0, int(torch.randint(2, 50, (1,), generator=gen)), (m,), generator=gen).float() / 50
        if trial % 3 == 0:
            scores = torch.rand(m, generator=gen)  # no ties: the vectorised path alone
        if trial % 17 == 0 and m:
            scores[0] = float("nan")
        cands = Candidates(torch.randint(0, 300, (m,), generator=gen), torch.randint(0, levels, (m,), generator=gen),
                           scores, torch.zeros(m, 4))
        spec = PostprocessRule("softmax", scope, 0.0, k, 0.5, 100, (1.0, 1.0, 1.0, 1.0))
        assert torch.equal(topk_indices(cands, spec, level_starts), _topk_loop(cands, spec, level_starts)), trial
    # torch.topk does not order ties stably (here [1, 3, 4, 0, 2]); topk_indices follows it
    tied = Candidates(torch.arange(5), torch.zeros(5, dtype=torch.int64), torch.tensor([0.5, 0.9, 0.5, 0.9, 0.5]),
                      torch.zeros(5, 4))
    spec = PostprocessRule("softmax", "class", 0.0, 5, 0.5, 100, (1.0, 1.0, 1.0, 1.0))
    assert torch.equal(topk_indices(tied, spec, level_starts), tied.scores.topk(5).indices)


def test_pycocotools_backend_agrees(demo, scorer):
    sc, _ = scorer
    other = SubsetScorer(sc.cache, sc.gt.dataset, backend="pycocotools")
    for removed in subsets(demo)[:3]:
        assert other.score(removed)["mAP"] == pytest.approx(sc.score(removed)["mAP"], abs=1e-9)


@pytest.mark.parametrize("name, size", [("edgeanchor:demo_ssd", (320, 320)),  # the torchvision models: slow
                                        pytest.param("torchvision:ssdlite320_mobilenet_v3_large", (320, 320),
                                                     marks=pytest.mark.slow),
                                        pytest.param("torchvision:retinanet_resnet50_fpn", (128, 128),
                                                     marks=pytest.mark.slow)])
def test_cost_model_equals_measured_cost(name, size):
    det = build_detector(name, num_classes=4, image_size=size)
    model = build_cost_model(det)
    levels = det.anchor_set.levels
    if det.shared_head:
        removed_sets = [{lv.anchors[p].id for lv in levels for p in (1, 4)},
                        {a.id for a in levels[0].anchors} | {lv.anchors[2].id for lv in levels}]
    else:
        removed_sets = [{0}, {a.id for a in levels[-1].anchors} | {1, 2}]
    assert model.head_macs() == measure_cost(det).head_macs
    for removed in removed_sets:
        cost = measure_cost(prune(det, set(det.anchor_set.ids) - removed))
        assert model.head_macs(removed) == cost.head_macs
        assert model.boxes(removed) == cost.num_boxes


def test_cache_key_detects_other_weights(demo, split, tmp_path):
    images, anns = split
    data = CocoDetection(images, anns["val"], num_classes=demo.num_classes, image_size=demo.image_size)
    path = tmp_path / "c.npz"
    messages = []
    first = load_or_build_cache(demo, data, path, progress=False, log=messages.append)
    load_or_build_cache(demo, data, path, progress=False, log=messages.append)
    assert "reusing" in messages[-1]
    other = build_detector("demo")
    with torch.no_grad():
        other.cls_heads[0].bias.add_(0.5)
    rebuilt = load_or_build_cache(other, data, path, progress=False, log=messages.append)
    assert "rebuilding" in messages[-1]
    assert rebuilt.key != first.key and CandidateCache.load(path).key == rebuilt.key


def _spec(**kw):
    return SearchOptions(**{"workers": 1, "max_evals": 120, "max_drop": 0.01, **kw})


def test_greedy_search_is_deterministic_resumable_and_writes_outputs(demo, split, tmp_path, capsys):
    images, anns = split
    a = run_search(demo, images, anns["val"], tmp_path / "a", _spec(), report_ann=anns["test"], progress=False,
                   log=lambda m: None)
    b = run_search(demo, images, anns["val"], tmp_path / "b", _spec(workers=2), progress=False, log=lambda m: None)
    assert [n["removed"] for n in a["front"]] == [n["removed"] for n in b["front"]]
    assert all("report" in n for n in a["front"])
    for r, workers in ((a, 1), (b, 2)):  # this run's scoring: every node, re-matching fewer pairs than from scratch
        sc = r["scoring"]
        assert (sc["executor"], sc["workers"], sc["nodes_scored"]) == ("processes", workers, r["num_evals"])
        assert sc["evals_per_s"] > 0
    root_pairs = SubsetScorer(build_cache(demo, CocoDetection(images, anns["val"], num_classes=demo.num_classes,
                                                              image_size=demo.image_size), progress=False),
                              anns["val"]).shard.num_pairs(())
    assert 0 < a["scoring"]["pairs_recomputed_per_node"] < root_pairs
    front = a["front"]
    assert all(n["mAP"] >= a["floor"] for n in front)
    # no front point is dominated by any evaluated node
    for n in front:
        assert not any(m["mAP"] > n["mAP"] and m["cost"] <= n["cost"] and m["mAP"] >= a["floor"] for m in a["nodes"])
    assert (tmp_path / "a" / "pareto.png").stat().st_size > 10_000
    # the front's anchor files prune the model
    keep_file = front[0]["anchors_file"]
    assert main(["prune", "--model", "demo", "--anchors", keep_file, "--out", str(tmp_path / "p.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_anchors"][1] == front[0]["num_anchors"]
    # resume: a bigger budget continues from the stored nodes
    more = run_search(demo, images, anns["val"], tmp_path / "a", _spec(max_evals=200), progress=False,
                      log=lambda m: None)
    assert more["num_evals"] > a["num_evals"]
    assert {tuple(n["removed"]) for n in a["nodes"]} <= {tuple(n["removed"]) for n in more["nodes"]}


def test_layerwise_and_shared_modes(demo, split, tmp_path):
    images, anns = split
    lw = run_search(demo, images, anns["val"], tmp_path / "lw", _spec(method="layerwise", max_per_level=3),
                    progress=False, log=lambda m: None)
    assert lw["front"]
    sh = run_search(demo, images, anns["val"], tmp_path / "sh", _spec(method="shared"), progress=False,
                    log=lambda m: None)
    for n in sh["nodes"]:
        removed = set(n["removed"])
        per_level = [[p for p, a in enumerate(lv.anchors) if a.id not in removed] for lv in demo.anchor_set.levels]
        kept = {tuple(p) for p in per_level if p}
        assert len(kept) == 1  # the same positions on every kept level


def test_pareto_front_helper():
    from edgeanchor.subset_search.evaluator import Node

    nodes = [Node((i,), {"mAP": m}, c, 0, c) for i, (m, c) in enumerate([(0.5, 10), (0.6, 20), (0.55, 25), (0.4, 5)])]
    assert [n.removed for n in pareto_front(nodes)] == [(3,), (0,), (1,)]


def test_search_bad_input(demo, split, tmp_path, capsys):
    images, anns = split
    base = ["search", "--model", "demo", "--data", images, "--ann", anns["val"], "--workers", "1"]
    assert main(base + ["--min-map", "0.99", "--out", str(tmp_path / "s")]) == 2
    assert "above the unpruned model's mAP" in capsys.readouterr().err
    bad = tmp_path / "cats.json"
    data = json.loads(open(anns["val"]).read())
    data["categories"] = data["categories"] + [{"id": 9, "name": "x"}, {"id": 10, "name": "y"}]
    bad.write_text(json.dumps(data))
    assert main(["search", "--model", "demo", "--data", images, "--ann", str(bad), "--out", str(tmp_path / "t")]) == 2
    assert "do not fit a model with 6 classes" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**data, "images": [], "annotations": []}))
    assert main(["search", "--model", "demo", "--data", images, "--ann", str(empty), "--out", str(tmp_path / "u")]) == 2
    assert "lists no images" in capsys.readouterr().err


def test_greedy_on_shared_head_is_refused(split, tmp_path):
    from edgeanchor.errors import EdgeAnchorError

    images, anns = split
    det = wrap("torchvision:retinanet_resnet50_fpn", ARCHS["torchvision:retinanet_resnet50_fpn"].builder(6, (128, 128)),
               image_size=(128, 128))
    with pytest.raises(EdgeAnchorError, match="only '`method` shared'"):
        run_search(det, images, anns["val"], tmp_path / "r", _spec(method="greedy"), progress=False)


def test_eval_rate_and_eta_are_hand_worked():
    """20 nodes scored in 4 s: 5 evals/s; 75 left of max_evals 100 at that rate: 15 s. Nodes read back from a
    resumed search count against max_evals but not in the rate."""
    from types import SimpleNamespace

    from edgeanchor.subset_search.tree import EvalRate

    now = [10.0]
    ev = SimpleNamespace(num_evals=5, children_scored=0, max_evals=100)  # 5 read back from a stored search
    rate = EvalRate(ev, clock=lambda: now[0])
    assert rate.per_second() == 0.0 and rate.eta_seconds() is None and "unknown" in rate.text()
    now[0], ev.num_evals, ev.children_scored = 14.0, 25, 20
    assert rate.per_second() == 5.0
    assert rate.eta_seconds() == 15.0  # 75 left / 5 per second
    assert rate.text() == "5.0 evals/s, at most 0:15 left (max_evals 100)"
    ev.num_evals = 100
    assert rate.eta_seconds() == 0.0


def test_report_says_how_the_search_scored():
    from edgeanchor.exporting.report_md import search_lines

    chosen = {"source": "search", "method": "greedy", "cost": "head_macs", "num_evals": 120, "search_dir": "S",
              "num_front_points": 7, "scoring": {"executor": "ray", "workers": 2, "nodes_scored": 80,
                                                 "evals_per_s": 3.5, "pairs_recomputed_per_node": 41.2}}
    text = " ".join(search_lines(chosen))
    assert "120 subsets in `S`, 7 on the front" in text
    assert "scored 80 of them on 2 Ray actors at 3.5 evaluations/s, re-matching 41.2 (image, class)" in text
    one = " ".join(search_lines({**chosen, "scoring": {**chosen["scoring"], "executor": "processes", "workers": 1}}))
    assert "scored 80 of them on 1 worker process at" in one
    resumed = " ".join(search_lines({**chosen, "scoring": {"nodes_scored": 0}}))
    assert "nothing scored this run" in resumed
    assert search_lines({"source": "anchors"}) == []


def test_a_finished_search_run_again_is_reused_and_says_so(demo, split, tmp_path):

    from edgeanchor.api.results import SearchResult

    images, anns = split
    out = tmp_path / "s"
    spec = _spec(method="shared", max_drop=0.0, max_evals=3000)  # a short search that finishes
    first = run_search(demo, images, anns["val"], out, spec, progress=False, log=lambda m: None)
    assert first["complete"] and first["scoring"]["nodes_scored"] == first["num_evals"]
    messages: list[str] = []
    again = run_search(demo, images, anns["val"], out, spec, progress=False, log=messages.append)
    assert again["scoring"]["nodes_scored"] == 0 and again["front"] == first["front"]
    assert [m for m in messages if "search" in m] == [f"reused the finished search in {out}: {first['num_evals']} evaluations from an earlier run "
                        "with the same settings and data, none scored now (remove the folder, or give another "
                        "`out`, to search anew)"]
    reused, fresh = SearchResult(again, demo.anchor_set.ids, out), SearchResult(first, demo.anchor_set.ids, out)
    assert (reused.reused, reused.num_scored, reused.num_evals) == (True, 0, first["num_evals"])
    assert (fresh.reused, fresh.num_scored) == (False, first["num_evals"])
    assert "reused" in repr(reused) and "reused" not in repr(fresh)
