"""The Pareto plot: mAP against head MACs, front highlighted, baseline and chosen point marked."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..io import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pareto_figure(nodes: list[dict], front: list[dict], baseline: dict, *, floor: float | None = None,
                  title: str = "", chosen: dict | None = None, split: str | None = None,
                  metric: str = "coco") -> Figure:
    """Every evaluated node, the front as a step line, the baseline as a star, the floor as a dashed line,
    and the chosen point (``head_macs``, ``mAP``, ``num_anchors``) ringed.

    The y axis names the metric and the split the mAPs were measured on (``split``: the searched split).
    A plain :class:`matplotlib.figure.Figure` (no pyplot state, any backend), for a notebook or a file.
    """
    from matplotlib.figure import Figure

    from ..evaluation.voc_map import METRIC_TITLES

    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.subplots()
    ax.scatter([n["head_macs"] / 1e6 for n in nodes], [n["mAP"] for n in nodes], s=8, c="0.7",
               label=f"evaluated ({len(nodes)})")
    pts = sorted(front, key=lambda n: n["head_macs"])
    ax.step([n["head_macs"] / 1e6 for n in pts], [n["mAP"] for n in pts], where="post", c="tab:blue", lw=1.2)
    ax.scatter([n["head_macs"] / 1e6 for n in pts], [n["mAP"] for n in pts], s=22, c="tab:blue",
               label=f"Pareto front ({len(pts)})", zorder=3)
    ax.scatter([baseline["head_macs"] / 1e6], [baseline["mAP"]], marker="*", s=160, c="tab:red",
               label="baseline (all anchors)", zorder=4)
    if floor is not None:
        ax.axhline(floor, ls="--", c="tab:orange", lw=1, label=f"accuracy floor {floor:.4f}")
    if chosen is not None:
        ax.scatter([chosen["head_macs"] / 1e6], [chosen["mAP"]], s=150, facecolors="none", edgecolors="black",
                   linewidths=1.6, zorder=5, label=f"chosen: {chosen['num_anchors']} anchors, mAP {chosen['mAP']:.4f}")
    ax.set_xlabel("head MACs (M)")
    ax.set_ylabel(METRIC_TITLES.get(metric, "mAP") + (f" on the {split} split" if split else ""))
    ax.set_title(title or "anchor pruning: accuracy against head cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_pareto(nodes: list[dict], front: list[dict], baseline: dict, path, *, floor: float | None = None,
                title: str = "", split: str | None = None, metric: str = "coco") -> None:
    """Write :func:`pareto_figure` to ``path`` (PNG), atomically."""
    fig = pareto_figure(nodes, front, baseline, floor=floor, title=title, split=split, metric=metric)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
