"""The bench plot: per-stage median latency, baseline against pruned (NumPy and matplotlib only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

VARIANTS = ("baseline", "pruned")


def bench_figure(result: dict) -> Figure:
    """Bars of each stage's median (ms) with a whisker to p90, the pruned/baseline ratio above each stage.

    Args:
        result: a bench result (``stages``, ``ratio_of_medians``, ``runtime``, ``machine``).

    Returns:
        A plain :class:`matplotlib.figure.Figure` (no pyplot state, any backend).
    """
    import numpy as np
    from matplotlib.figure import Figure

    stages = list(result["ratio_of_medians"])
    fig = Figure(figsize=(7, 4), dpi=120)
    ax = fig.subplots()
    x = np.arange(len(stages))
    for k, (v, color) in enumerate((("baseline", "tab:gray"), ("pruned", "tab:blue"))):
        med = [result["stages"][v][s]["median"] for s in stages]
        p90 = [result["stages"][v][s]["p90"] - m for s, m in zip(stages, med)]
        ax.bar(x + (k - 0.5) * 0.38, med, 0.38, yerr=[np.zeros(len(med)), p90], capsize=3, color=color, label=v)
    for i, s in enumerate(stages):
        top = max(result["stages"][v][s]["p90"] for v in VARIANTS)
        ax.text(i, top * 1.02, f"x{result['ratio_of_medians'][s]:.2f}", ha="center", fontsize=8)
    ax.set_xticks(x, stages)
    ax.set_ylabel("median latency (ms), bar to p90")
    ax.set_title(f"{result['runtime']} ({result.get('precision', 'fp32')}) on {result['machine']['cpu'][:48]}",
                 fontsize=9)
    ax.legend()
    fig.tight_layout()
    return fig
