"""The bench plot: per-stage median latency, baseline against pruned (NumPy and matplotlib only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

VARIANTS = ("baseline", "pruned")


def bench_figure(result: dict) -> Figure:
    """Bars of each stage's median (ms) with its 95 % interval as a whisker, the ratio and its interval above.

    Args:
        result: a bench result (``stages``, ``ratios``, ``ratio_intervals``, ``runtime``, ``machine``).

    Returns:
        A plain :class:`matplotlib.figure.Figure` (no pyplot state, any backend).
    """
    import numpy as np
    from matplotlib.figure import Figure

    stages = list(result["ratios"])
    fig = Figure(figsize=(7, 4), dpi=120)
    ax = fig.subplots()
    x = np.arange(len(stages))
    for k, (v, color) in enumerate((("baseline", "tab:gray"), ("pruned", "tab:blue"))):
        med = np.array([result["stages"][v][s]["median"] for s in stages])
        ci = np.array([result["stages"][v][s]["median_ci"] for s in stages])  # (S, 2)
        ax.bar(x + (k - 0.5) * 0.38, med, 0.38, yerr=[med - ci[:, 0], ci[:, 1] - med], capsize=3, color=color,
               label=v)
    for i, s in enumerate(stages):
        top = max(result["stages"][v][s]["median_ci"][1] for v in VARIANTS)
        lo, hi = result["ratio_intervals"][s]
        ax.text(i, top * 1.02, f"x{result['ratios'][s]:.2f}\n[{lo:.2f}, {hi:.2f}]", ha="center",
                fontsize=7)
    ax.set_xticks(x, stages)
    ax.set_ylabel("median latency (ms), 95 % interval")
    flag = " - UNSTABLE" if result["stability"]["unstable"] else ""
    ax.set_title(f"{result['runtime']} ({result.get('precision', 'fp32')}) on {result['machine']['cpu'][:48]}{flag}",
                 fontsize=9)
    ax.legend()
    fig.tight_layout()
    return fig
