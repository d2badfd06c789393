"""Results of the Python API's search and bench: plain values over the JSON the commands write."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EdgeAnchorError
from ..settings import typechecked

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class FrontPoint:
    """One point of a search's Pareto front.

    Attributes:
        keep: global ids of the anchors kept (see :func:`edgeanchor.inspect`).
        removed: global ids of the anchors removed.
        map: COCO mAP@[.5:.95] on the searched split (exact, from the candidate cache).
        head_macs: head multiply-accumulates at batch 1 with these anchors.
        boxes: boxes (anchors x grid cells, all levels) entering post-processing per image.
        num_anchors: anchors kept.
        anchors_file: the kept anchor set as JSON (w, h in input pixels; ratio h/w).
        report_map: mAP on the report split, when the search was given one.
        cost: the point's cost in the search's own cost (head MACs, boxes or predicted latency).
    """

    keep: frozenset[int]
    removed: tuple[int, ...]
    map: float
    head_macs: int
    boxes: int
    num_anchors: int
    anchors_file: str
    report_map: float | None = None
    cost: float | None = None


class SearchResult:
    """The outcome of :func:`edgeanchor.search`: the front, the baseline, the floor, and the search folder."""

    def __init__(self, result: dict, anchor_ids: list[int], out: str | Path):
        self._result = result
        self._ids = frozenset(anchor_ids)
        self.out = Path(out)

    @property
    def front(self) -> list[FrontPoint]:
        """Front points, cheapest first (every one at or above the search's floor)."""
        points = []
        for n in self._result["front"]:
            removed = tuple(sorted(n["removed"]))
            points.append(FrontPoint(keep=self._ids - set(removed), removed=removed, map=n["mAP"],
                                     head_macs=int(n["head_macs"]), boxes=int(n["boxes"]),
                                     num_anchors=int(n["num_anchors"]), anchors_file=n["anchors_file"],
                                     report_map=n.get("report", {}).get("mAP"), cost=n.get("cost")))
        return points

    @property
    def baseline(self) -> dict:
        """The unpruned model's ``mAP``, ``head_macs`` and ``boxes``."""
        return dict(self._result["baseline"])

    @property
    def floor(self) -> float:
        """The accuracy floor the search kept to (mAP)."""
        return float(self._result["floor"])

    @property
    def num_evals(self) -> int:
        """Anchor subsets this search evaluated, at most its ``max_evals`` (scored in this run, or read back from
        the stored search it resumed)."""
        return int(self._result["num_evals"])

    @property
    def num_scored(self) -> int:
        """Anchor subsets scored by the run that returned this result (the rest came from the stored search)."""
        return int((self._result.get("scoring") or {}).get("nodes_scored") or 0)

    @property
    def reused(self) -> bool:
        """True when the result is a finished search found in the search folder, with nothing scored now."""
        return self.num_scored == 0

    @typechecked
    def choose(self, *, max_drop: float | None = None, min_map: float | None = None,
               target_head_macs: float | None = None) -> FrontPoint:
        """The front point to deploy.

        With ``max_drop`` (mAP units, 0.005 = half a point below the baseline) or ``min_map`` (absolute):
        the cheapest point at or above that floor. With ``target_head_macs``: the most accurate point with
        at most that many head MACs. With none: the cheapest point above the search's own floor.

        Raises:
            EdgeAnchorError: more than one criterion, one out of range (``max_drop`` and ``min_map`` are
                between 0 and 1, ``target_head_macs`` above 0), or no front point meets it.
        """
        given = [k for k, v in (("max_drop", max_drop), ("min_map", min_map),
                                ("target_head_macs", target_head_macs)) if v is not None]
        if len(given) > 1:
            named = ", ".join(f"`{k}`" for k in given)
            raise EdgeAnchorError(f"choose with one of `max_drop`, `min_map` or `target_head_macs` (got {named})")
        from ..settings import positive
        from ..subset_search.run import check_floor, choose_point

        check_floor(max_drop=max_drop, min_map=min_map, metric=self._result.get("metric", "coco"))
        message = positive("target_head_macs", optional=True)(target_head_macs)
        if message:
            raise EdgeAnchorError(message)

        if target_head_macs is not None or (max_drop is None and min_map is None):
            chosen = choose_point(self._result, target_head_macs=target_head_macs)
            return next(p for p in self.front if p.removed == tuple(sorted(chosen["removed"])))
        floor = self.baseline["mAP"] - max_drop if max_drop is not None else float(min_map or 0.0)
        # the cheapest in the search's own cost (head MACs, boxes or latency), as choose_point ranks them
        front = sorted(self.front, key=lambda p: (p.cost if p.cost is not None else p.head_macs, -p.map))
        meeting = [p for p in front if p.map >= floor - 1e-12]
        if not meeting:
            best = max(p.map for p in front)
            raise EdgeAnchorError(f"no front point reaches mAP {floor:.4f} (the best has {best:.4f}); lower the floor")
        return meeting[0]

    @typechecked
    def plot(self, path: str | Path | None = None, *, chosen: FrontPoint | None = None) -> Figure:
        """mAP against head MACs: every scored subset, the front, the baseline and the floor; the y axis names
        the searched split.

        Args:
            path: also write the figure here as PNG.
            chosen: a front point to mark (e.g. :meth:`choose`'s).

        Returns:
            The matplotlib figure (not closed; the caller owns it).
        """
        from ..subset_search.plot import pareto_figure

        r = self._result
        settings = r.get("settings", {})
        metric = r.get("metric", "coco")
        title = f"{r.get('model', '')}: {settings.get('method')} search, cost {settings.get('cost')}" + (
            f", metric {metric}" if metric != "coco" else "")
        mark = None if chosen is None else {"head_macs": chosen.head_macs, "mAP": chosen.map,
                                            "num_anchors": chosen.num_anchors}
        fig = pareto_figure(r["nodes"], r["front"], r["baseline"], floor=r["floor"], title=title, chosen=mark,
                            split=r.get("split"), metric=metric)
        if path is not None:
            _save_png(fig, path)
        return fig

    def to_json(self) -> dict:
        """The search result as written to ``search.json`` (settings, baseline, floor, front, every node)."""
        return copy.deepcopy(self._result)

    def __repr__(self) -> str:
        reused = " (reused: none scored by this run)" if self.reused else ""
        return (f"SearchResult({len(self._result['front'])} front points, {self.num_evals} evaluations{reused}, "
                f"baseline mAP {self.baseline['mAP']:.4f}, floor {self.floor:.4f}, out={str(self.out)!r})")


class BenchResult:
    """Per-stage latency of an export's baseline and pruned variants (:func:`edgeanchor.bench`)."""

    def __init__(self, result: dict):
        self._result = result
        self.json_path: Path | None = None  # the files bench wrote, if asked to
        self.plot_path: Path | None = None

    @property
    def ratios(self) -> dict[str, float]:
        """Pruned / baseline latency ratio per stage (backbone, head, postprocess, end_to_end): the median of
        the interleaved rounds' own ratios (``to_json()["ratio_of_medians"]`` has the ratio of the medians)."""
        return dict(self._result["ratios"])

    @property
    def intervals(self) -> dict[str, tuple[float, float]]:
        """Each ratio's 95 % bootstrap interval (paired rounds resampled), per stage."""
        return {s: (lo, hi) for s, (lo, hi) in self._result["ratio_intervals"].items()}

    @property
    def unstable(self) -> bool:
        """True if the timing was flagged unstable (the causes are in ``to_json()["stability"]``)."""
        return bool(self._result["stability"]["unstable"])

    @property
    def stages(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per variant and stage: ``median``, ``median_ci``, ``p90``, ``p99``, ``min``, ``mean`` (ms) and ``n``."""
        return copy.deepcopy(self._result["stages"])

    def table(self) -> str:
        """The readable table ``edgeanchor bench`` prints."""
        from ..benchmark.harness import format_result

        return format_result(self._result)

    @typechecked
    def plot(self, path: str | Path | None = None) -> Figure:
        """Per-stage median latency (bars to p90), baseline against pruned; also written to ``path`` as PNG."""
        from ..benchmark.plot import bench_figure

        fig = bench_figure(self._result)
        if path is not None:
            _save_png(fig, path)
        return fig

    def to_json(self) -> dict[str, Any]:
        """The result as ``edgeanchor bench`` writes it."""
        return copy.deepcopy(self._result)

    def __repr__(self) -> str:
        ratios = ", ".join(f"{s} x{r:.2f} [{lo:.2f}, {hi:.2f}]" for (s, r), (lo, hi)
                           in zip(self.ratios.items(), self.intervals.values()))
        return f"BenchResult({self._result['runtime']}: {ratios})"


def _save_png(fig: Figure, path: str | Path) -> None:
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
