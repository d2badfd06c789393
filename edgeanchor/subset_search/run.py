"""Run a whole search: cache, cost model, strategy, outputs.

Outputs in the search folder:
- ``search.json``: settings, baseline, every evaluated node and the front;
- ``pareto.png``: mAP against head MACs, front highlighted, baseline marked;
- ``front/point_NN.anchors.json``: the kept anchor set of each front point,
  ready for ``edgeanchor prune --anchors``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..datasets.coco import CocoDetection
from ..errors import EdgeAnchorError
from ..evaluation.cache import cache_key, load_or_build_cache
from ..evaluation.subset import SubsetScorer
from ..evaluation.voc_map import METRICS
from ..io import cache_root, check_writable, log, plural, read_json, write_json
from .costs import build_cost_model
from .evaluator import Evaluator, Node
from .plot import plot_pareto
from .tree import anchor_moves, layerwise_search, search_front, shared_moves, tree_search

if TYPE_CHECKING:
    from ..models.base import Detector

METHODS = ("greedy", "layerwise", "shared")
COSTS = ("head_macs", "boxes", "latency")
EXECUTORS = ("processes", "ray")


@dataclass(frozen=True)
class SearchOptions:
    """Search settings (plain values; the CLI fills them from flags).

    Attributes:
        method: greedy | layerwise | shared, or None for the head's default (see :func:`resolve_method`).
        cost: head_macs | boxes | latency (needs ``latency_model``).
        min_map: absolute accuracy floor, or None.
        max_drop: floor relative to the unpruned mAP (mAP units, 0.005 = 0.5 points), or None.
        tol: two mAPs within tol are equal.
        max_per_level: layerwise target.
        max_evals: evaluation budget.
        workers: scoring processes (executor "processes"), or Ray actors, one image shard each (executor "ray").
        backend: COCO evaluation backend.
        executor: "processes" (this machine's worker processes) or "ray" (actors sharding the images, on a
            local Ray or the cluster at ``ray_address``); both give the same results.
        ray_address: the Ray cluster (``host:port``, ``ray://host:port`` or ``auto``) for executor "ray";
            None starts a local Ray.
        metric: what nodes are ranked by (and ``min_map`` / ``max_drop`` are in): "coco" (mAP@[.5:.95]),
            "voc07" or "voc" (Pascal VOC mAP@0.5, 11-point or all-point); part of the resume key.
    """

    method: str | None = None
    cost: str = "head_macs"
    min_map: float | None = None
    max_drop: float | None = 0.005
    tol: float = 1e-4
    max_per_level: int = 1
    max_evals: int = 3000
    workers: int = 2
    backend: str = "faster"
    executor: str = "processes"
    ray_address: str | None = None
    metric: str = "coco"

    def settings_key(self) -> dict:
        """The settings that must match for a stored search to be resumed."""
        d = asdict(self)
        d.pop("workers")
        d.pop("max_evals")
        d.pop("executor")  # where the nodes are scored does not change their scores
        d.pop("ray_address")
        if d["metric"] == "coco":  # searches stored before there was a choice resume as they were
            d.pop("metric")
        return d


def check_search_options(search: SearchOptions) -> None:
    """Settings that are wrong whatever the data, checked before any work.

    For executor "ray" this also imports Ray and, given a ``ray_address``, checks that the cluster
    answers (:func:`~edgeanchor.subset_search.ray_executor.check_ray_address`), so neither fails after the
    candidate cache is built.

    Raises:
        EdgeAnchorError: naming the parameter and the accepted values.
    """
    import math

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if search.method is not None and search.method not in METHODS:
        raise EdgeAnchorError(f"unknown search method {search.method!r}; choose one of {', '.join(METHODS)}")
    if search.metric not in METRICS:
        raise EdgeAnchorError(f"unknown metric {search.metric!r}; choose one of {', '.join(METRICS)}")
    if search.cost not in COSTS:
        raise EdgeAnchorError(f"unknown cost {search.cost!r}; choose one of {', '.join(COSTS)}")
    check_floor(max_drop=search.max_drop, min_map=search.min_map, metric=search.metric)
    if not (number(search.tol) and search.tol >= 0):
        raise EdgeAnchorError(f"`tol` must be a number >= 0 (got {search.tol!r})")
    for name in ("max_per_level", "max_evals", "workers"):
        value = getattr(search, name)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise EdgeAnchorError(f"`{name}` must be an integer >= 1 (got {value!r})")
    if search.executor not in EXECUTORS:
        raise EdgeAnchorError(f"unknown executor {search.executor!r}; choose one of {', '.join(EXECUTORS)}")
    if search.ray_address is not None and search.executor != "ray":
        raise EdgeAnchorError(f"`ray_address` {search.ray_address!r} needs `executor` ray; pass `executor` ray, "
                              "or leave `ray_address` unset")
    if search.executor == "ray":
        from .ray_executor import check_ray_address, parse_ray_address, require_ray

        if search.ray_address not in (None, "auto"):
            parse_ray_address(search.ray_address)  # its form and port, whether Ray is installed or not
        require_ray()
        if search.ray_address is not None:
            check_ray_address(search.ray_address)


def check_floor(*, max_drop: float | None = None, min_map: float | None = None, metric: str = "coco") -> None:
    """An accuracy floor's settings, in mAP units: ``max_drop`` and ``min_map`` between 0 and 1.

    Raises:
        EdgeAnchorError: a value that is not a number, or outside 0..1 (a negative drop would ask for a
            point above the unpruned model).
    """
    import math

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if min_map is not None and not (number(min_map) and 0 <= min_map <= 1):
        kind = "COCO" if metric == "coco" else "VOC"
        raise EdgeAnchorError(f"`min_map` must be a {kind} mAP between 0 and 1 (got {min_map!r})")
    if max_drop is not None and not (number(max_drop) and 0 <= max_drop <= 1):
        raise EdgeAnchorError(f"`max_drop` must be between 0 and 1 in mAP units, 0.005 = half a point "
                              f"(got {max_drop!r})")


def check_target_head_macs(det, target_head_macs: float | None) -> None:
    """Refuse a head-MAC target no keep set can meet, before the search runs.

    The cheapest keep set keeps one anchor. Every method can reach it (a shared head: remove the
    other positions on every level, then the other levels), and head MACs per anchor are the same
    within a level, so the cheapest single anchor bounds every search.

    Raises:
        EdgeAnchorError: the target is below the cheapest reachable head.
    """
    if target_head_macs is None:
        return
    model = build_cost_model(det)
    ids = det.anchor_set.ids
    cheapest = min(model.head_macs(tuple(sorted(set(ids) - {a}))) for a in ids)
    if target_head_macs < cheapest:
        raise EdgeAnchorError(
            f"`target_head_macs` {target_head_macs:,.0f} is below the cheapest head this search can reach "
            f"({cheapest:,.0f} MACs with one anchor kept); raise `target_head_macs`"
        )


def resolve_method(method: str | None, det) -> str:
    """The search method for ``det``: the one asked for, checked, or the default for its head.

    The one place this rule lives (``search`` and ``prune-and-export`` both use it).
    Default: ``shared`` for a head shared across levels (RetinaNet), else ``greedy``.

    Raises:
        EdgeAnchorError: an unknown method, or a per-anchor method on a shared head.
    """
    if method is None:
        return "shared" if det.shared_head else "greedy"
    if method not in METHODS:
        raise EdgeAnchorError(f"unknown search method {method!r}; choose one of {', '.join(METHODS)}")
    if det.shared_head and method != "shared":
        raise EdgeAnchorError(
            f"{det.arch} shares its head across levels, so only '`method` shared' can prune it "
            "(the same anchors removed on every level, or whole levels); leave `method` unset or pass `method` shared"
        )
    return method


def resolve_latency_model(cost: str, latency_model, det, data_dir, ann, out_dir, *, log=log):
    """The latency model a search needs: None unless ``cost == "latency"``.

    The policy: a :class:`~edgeanchor.benchmark.latency_model.LatencyModel` or a
    path to one is used as given; otherwise one is calibrated now with
    onnxruntime on the first images of the search split, on this machine, and
    saved as ``out_dir/latency_model.json`` for the next run.
    """
    if cost != "latency":
        return None
    from ..benchmark.latency_model import LatencyModel, calibrate_on_data

    if isinstance(latency_model, LatencyModel):
        return latency_model
    if latency_model:
        return LatencyModel.load(latency_model)
    path = Path(out_dir) / "latency_model.json"
    if path.is_file():
        log(f"reusing the latency model calibrated earlier: {path}")
        return LatencyModel.load(path)
    return calibrate_on_data(det, data_dir, ann, path, log=log)


def default_cache_path(key: str) -> Path:
    return cache_root() / "candidates" / f"{key[:20]}.npz"


def floor_of(search: SearchOptions, baseline_map: float) -> float:
    """The accuracy floor; an error if it is above the baseline."""
    if search.min_map is not None:
        floor = search.min_map
        what = f"`min_map` {search.min_map}"
    else:
        floor = baseline_map - (search.max_drop or 0.0)
        what = f"`max_drop` {search.max_drop}"
    if floor > baseline_map + 1e-12:
        raise EdgeAnchorError(
            f"the accuracy floor {floor:.4f} ({what}) is above the unpruned model's mAP {baseline_map:.4f}; "
            "lower it, or use `max_drop`"
        )
    return floor


@dataclass
class _SearchRun:
    """What one search run passes from step to step (model, data, output folder, settings)."""

    det: Detector
    data_dir: str
    out_dir: Path
    search: SearchOptions
    report_ann: str | None
    batch_size: int
    device: str
    progress: bool
    log: Callable[[str], None]


def run_search(det, data_dir, ann, out_dir, search: SearchOptions, *, report_ann=None, cache_path=None, cache=None,
               latency_model=None, batch_size: int = 16, device: str = "cpu", progress: bool = True,
               log=log, dataset: CocoDetection | None = None, checked: bool = False,
               split_name: str | None = None) -> dict:
    """Search anchor subsets of ``det`` on (data_dir, ann); write outputs to ``out_dir``.

    Args:
        det: the unpruned detector.
        data_dir, ann: the split searched on (COCO format).
        out_dir: the search folder (resumed if it holds a search with the same settings and data).
        search: the search settings; ``search.method`` is checked with :func:`resolve_method`.
        report_ann: also score the front on this split.
        cache_path: candidate cache file (default: a keyed file under the cache root).
        cache: the candidate cache of (data_dir, ann) at ``cache_path``, if the caller has already loaded it.
        latency_model: for ``cost == "latency"``: a LatencyModel, a path, or None (calibrate one).
        batch_size, device: of the one inference pass.
        progress: show progress bars and messages.
        log: where progress messages go.
        dataset: (data_dir, ann) already read for ``det``, if the caller has it.
        checked: ``search`` was checked and its method resolved by the caller (not done again).
        split_name: what to call the searched split (val, test), recorded as ``split`` and on the plot.

    Returns:
        The search result (also written to ``out_dir/search.json``).
    """
    if not checked:
        check_search_options(search)
        search = replace(search, method=resolve_method(search.method, det))
    run = _SearchRun(det, data_dir, Path(out_dir), search, report_ann, batch_size, device, progress, log)
    check_search_folder(run.out_dir)
    if dataset is None:
        dataset = CocoDetection.for_detector(det, data_dir, ann)
        dataset.require_objects("search on")
    cache_path = Path(cache_path) if cache_path else default_cache_path(cache_key(det, dataset))
    if cache is None:
        cache = load_or_build_cache(det, dataset, cache_path, batch_size=batch_size, device=device,
                                    progress=progress, log=log)
    scorer = SubsetScorer(cache, dataset.coco_json, backend=search.backend, metric=search.metric)
    cost_model = build_cost_model(det)
    latency = resolve_latency_model(search.cost, latency_model, det, data_dir, ann, run.out_dir, log=log)
    cost_fn = _cost_fn(search.cost, latency)
    known, state_path, finished = _resume(run.out_dir, search, cache.content_key, log)
    state: dict = {}
    evaluator = Evaluator(scorer, cost_model, cost_fn, workers=search.workers, cache_path=cache_path, ann=ann,
                          max_evals=search.max_evals, known=known, executor=search.executor,
                          ray_address=search.ray_address, on_batch=lambda: _save_state(state_path, state, evaluator))
    try:
        root = evaluator.evaluate([()])[0]
        floor = floor_of(search, root.map)
        state.update(settings=search.settings_key(), metric=search.metric, cache_key=cache.content_key,
                     model=det.arch, ann=str(ann), split=split_name,
                     baseline=root.to_json(), floor=floor, cost_model=cost_model.to_json())
        all_ids = frozenset(det.anchor_set.ids)
        if search.method == "layerwise":
            layerwise_search(evaluator, root, det.anchor_set, floor=floor, max_per_level=search.max_per_level,
                             log=log if progress else None)
        else:
            moves = anchor_moves(det.anchor_set) if search.method == "greedy" else shared_moves(det.anchor_set)
            required = tuple(frozenset(a.id for a in det.anchor_set.levels[i].anchors) for i in det.required_levels())
            tree_search(evaluator, root, moves, all_ids, floor=floor, tol=search.tol, log=log if progress else None,
                        required=required)
    finally:
        evaluator.close()
    front_nodes = search_front(evaluator, floor)
    if finished and evaluator.children_scored == 0:
        log(f"reused the finished search in {run.out_dir}: {evaluator.num_evals} evaluations from an earlier run "
            "with the same settings and data, none scored now (remove the folder, or give another `out`, to search "
            "anew)")
    else:
        read = evaluator.num_evals - evaluator.children_scored
        log(f"evaluated {evaluator.num_evals} subsets (max_evals {search.max_evals}): {evaluator.children_scored} "
            f"scored in this run" + (f", {read} read from the stored search" if read else "")
            + f"; front of {plural(len(front_nodes), 'point')}")
    return _write_outputs(run, state, evaluator, front_nodes, floor)


def _cost_fn(cost: str, latency_model):
    if cost == "head_macs":
        return lambda removed, macs, boxes: float(macs)
    if cost == "boxes":
        return lambda removed, macs, boxes: float(boxes)
    if latency_model is None:
        raise EdgeAnchorError("cost latency needs a calibrated latency model (give `latency_model`)")
    return lambda removed, macs, boxes: float(latency_model.predict(removed))


def check_search_folder(out_dir: Path) -> None:
    """A search folder is new, empty, or holds a search of ours (which is then resumed).

    Raises:
        EdgeAnchorError: a file, a non-empty folder without our search.json, or a folder that cannot be written.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgeAnchorError(f"the search folder {out_dir} is a file; give a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not search_outputs(out_dir)["result"].is_file():
        raise EdgeAnchorError(
            f"the search folder {out_dir} is not empty and holds no search of ours (no search.json); "
            "choose another `out` folder"
        )
    check_writable(out_dir, "search folder")  # now, not after the pass over the data


def _stored_nodes(stored, path: Path) -> list[Node]:
    """The nodes of a stored search, or a one-line error if the file is not a search of ours."""
    bad = EdgeAnchorError(f"{path} is not a search written by edgeanchor; choose another `out` folder")
    if not isinstance(stored, dict) or not isinstance(stored.get("nodes", []), list):
        raise bad
    try:
        return [Node.from_json(n) for n in stored.get("nodes", [])]
    except (KeyError, TypeError, AttributeError):
        raise bad from None


def _resume(out_dir: Path, search: SearchOptions, key: str, log) -> tuple[list[Node], Path, bool]:
    """The stored nodes, the search file, and whether the stored search had finished (said after the run)."""
    path = search_outputs(out_dir)["result"]
    if not path.is_file():
        return [], path, False
    stored = read_json(path, "search file")
    nodes = _stored_nodes(stored, path)
    if stored.get("settings") != search.settings_key() or stored.get("cache_key") != key:
        raise EdgeAnchorError(
            f"{path} holds a search with other settings, weights, annotations or images; choose another search "
            "folder to start anew"
        )
    finished = bool(stored.get("complete")) and bool(nodes)
    if not finished:
        log(f"resuming the search in {out_dir}: {len(nodes)} subsets scored before; max_evals {search.max_evals} "
            "is the whole search's budget, these included, so the same budget gives the same search")
    return nodes, path, finished


def _save_state(path: Path, state: dict, evaluator: Evaluator) -> None:
    """The search so far, with every node scored (those of a stored search this one has not reached yet
    included), so an interrupted search loses nothing."""
    if not state:
        return
    write_json(path, {**state, "complete": False, "nodes": [n.to_json() for n in evaluator.memo.values()]})


def _write_outputs(run: _SearchRun, state: dict, evaluator: Evaluator, front_nodes, floor: float) -> dict:
    det, out_dir = run.det, run.out_dir
    front_json = []
    (out_dir / "front").mkdir(parents=True, exist_ok=True)
    all_ids = set(det.anchor_set.ids)
    report_scorer = _report_scorer(run) if run.report_ann else None
    for i, node in enumerate(sorted(front_nodes, key=lambda n: n.cost)):
        kept = det.anchor_set.subset(all_ids - set(node.removed))
        anchors_path = out_dir / "front" / f"point_{i:02d}.anchors.json"
        write_json(anchors_path, kept.to_json())
        entry = {**node.to_json(), "num_anchors": kept.num_anchors, "anchors_file": str(anchors_path),
                 "anchors_per_level": kept.anchors_per_level()}
        if report_scorer is not None:
            entry["report"] = {k: round(v, 6) for k, v in report_scorer.score(node.removed).items()}
        front_json.append(entry)
    nodes = [n.to_json() for n in evaluator.nodes.values()]  # this search's: at most max_evals
    result = {**state, "complete": not evaluator.exhausted, "num_evals": len(nodes), "front": front_json,
              "nodes": nodes, "report_ann": str(run.report_ann) if run.report_ann else None,
              "scoring": evaluator.scoring_stats()}
    write_json(search_outputs(out_dir)["result"], result)
    plot_pareto(nodes, front_json, state["baseline"], search_outputs(out_dir)["plot"], floor=floor,
                split=state.get("split"), metric=run.search.metric,
                title=f"{det.arch}: {run.search.method} search, cost {run.search.cost}"
                + (f", metric {run.search.metric}" if run.search.metric != "coco" else ""))
    return result


def _report_scorer(run: _SearchRun) -> SubsetScorer:
    det = run.det
    dataset = CocoDetection.for_detector(det, run.data_dir, run.report_ann)
    cache = load_or_build_cache(det, dataset, default_cache_path(cache_key(det, dataset)), batch_size=run.batch_size,
                                device=run.device, progress=run.progress, log=run.log)
    return SubsetScorer(cache, dataset.coco_json, backend=run.search.backend, metric=run.search.metric)


def choose_point(result: dict, *, target_head_macs: float | None = None) -> dict:
    """The front point to deploy: cheapest above the floor, or cheapest meeting a MAC target.

    Raises:
        EdgeAnchorError: if no front point meets ``target_head_macs``.
    """
    front = sorted(result["front"], key=lambda n: (n["cost"], -n["mAP"]))
    if target_head_macs is None:
        return front[0]
    meeting = [n for n in front if n["head_macs"] <= target_head_macs]
    if not meeting:
        best = min(n["head_macs"] for n in front)
        raise EdgeAnchorError(
            f"no front point has head MACs <= {target_head_macs:,.0f} (the cheapest above the floor has "
            f"{best:,.0f}); raise `target_head_macs` or lower the accuracy floor"
        )
    return max(meeting, key=lambda n: (n["mAP"], -n["head_macs"]))


def search_outputs(out_dir) -> dict[str, Path]:
    """The files a search writes in its folder: ``result`` (search.json) and ``plot`` (pareto.png)."""
    from ..exporting.folder import ExportFolder

    folder = ExportFolder(out_dir)  # the search's files are named as in an export folder, which may hold them
    return {"result": folder.search_json_path, "plot": folder.pareto_path}


def load_search(out_dir) -> dict:
    return read_json(search_outputs(out_dir)["result"], "search file")

