"""Timing statistics: bootstrap intervals, the stopping rule, the stability check and the gate's decision.

NumPy only (bench and regress run on a device without torch or scipy). Timings come in *rounds*: in one
round both variants run every stage on the same image, so the rounds are the unit that is resampled. A
stage's median gets a 95 % percentile-bootstrap interval, and so does the pruned/baseline ratio: the median
of the rounds' own ratios, from the same resampled rounds (paired: a round's baseline and pruned times stay
together, so a burst of load that slowed both cancels in the ratio). The resampling is seeded: the same
timings give the same intervals.

Choices (see docs/architecture.md, "Timing you can trust"):

- ``TARGET_HALF_WIDTH`` = 0.03: ``--iters auto`` measures until every ratio's interval is within ±3 % of
  its ratio. regress's default latency tolerance is 10 %: a ratio whose true value equals the baseline's then
  has an interval ending at most 3 % above it, and the baseline's own ratio (measured the same way) may be
  3 % low, so the interval still ends inside the bound with ~4 points to spare. Narrower targets cost time
  quadratically (the width shrinks as 1/sqrt(rounds)) for no change in the gate's decisions.
- ``SPREAD_LIMIT`` = 1.5: a stage whose p90 is more than 1.5 times its median was disturbed in more than one
  round in ten by something else on the machine (cf. pyperf, which warns when the maximum exceeds the mean
  by 50 %); on a quiet machine a CPU stage's p90 is within about 20 % of its median.
- The load average above the CPU count means runnable processes were waiting for a CPU.
"""

from __future__ import annotations

import os

import numpy as np

CONFIDENCE = 0.95
NUM_RESAMPLES = 2000
SEED = 0  # fixed: the same timings always give the same intervals
TARGET_HALF_WIDTH = 0.03  # relative half-width of every ratio's interval that --iters auto aims at
SPREAD_LIMIT = 1.5  # p90 / median above this: unstable
# --iters auto never decides on fewer rounds: the interval's coverage is checked (tests/test_timing_stats.py)
# at 41 rounds, and a percentile bootstrap of a median on 10 rounds covers well under 95 %; a demo round
# takes milliseconds, so 30 costs nothing
MIN_ROUNDS = 30
_CHUNK = 4_000_000  # elements of the resampled array held at once (32 MB of float64)


def bootstrap_medians(rounds: np.ndarray, *, num_resamples: int = NUM_RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Medians of the columns of ``rounds`` over bootstrap resamples of its rows.

    Every resample draws rows with replacement and uses the same rows for every column, so columns measured
    in the same round (two variants, several stages) stay paired.

    Args:
        rounds: (n, k) float array, one row per round, one column per quantity.
        num_resamples: B, the number of resamples.
        seed: the generator's seed.

    Returns:
        (B, k) float64 array: each resample's column medians.
    """
    a = np.asarray(rounds, dtype=np.float64)
    n, k = a.shape
    rng = np.random.default_rng(seed)
    out = np.empty((num_resamples, k))
    step = max(1, _CHUNK // max(1, n * k))
    for start in range(0, num_resamples, step):
        b = min(step, num_resamples - start)
        idx = rng.integers(0, n, size=(b, n))  # (b, n) row indices
        out[start:start + b] = np.median(a[idx], axis=1)  # (b, n, k) -> (b, k)
    return out


def percentile_interval(resampled: np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray:
    """(2, k) lower and upper bounds: the central ``confidence`` of each column of ``resampled`` (B, k)."""
    tail = (1 - confidence) / 2
    return np.quantile(resampled, [tail, 1 - tail], axis=0)


def median_interval(samples, **kwargs) -> tuple[float, float]:
    """The 95 % bootstrap interval of the median of one series of timings."""
    lo, hi = percentile_interval(bootstrap_medians(np.asarray(samples, dtype=np.float64)[:, None], **kwargs))[:, 0]
    return float(lo), float(hi)


def summarise_rounds(baseline: np.ndarray, pruned: np.ndarray, stages: list[str], **boot) -> dict:
    """Per stage: both medians and the pruned/baseline ratio, each with its bootstrap interval over rounds.

    The ratio is the median over rounds of each round's pruned/baseline ratio: the two runs of a round share
    the machine's load at that moment, so their ratio cancels it. (Bootstrapping the ratio of the two
    medians instead, with the same paired resampling, gives intervals about twice as wide under a load
    common to both variants, and 98-99 % coverage where 95 % is asked: tests/test_timing_stats.py.) Where
    the variants' times differ by a scale factor, both estimate that factor.

    Args:
        baseline, pruned: (n, S) timings of the same n rounds, one column per stage (any unit, > 0).
        stages: the S stage names.
        boot: :func:`bootstrap_medians`' ``num_resamples`` and ``seed``.

    Returns:
        ``{stage: {"baseline": (median, lo, hi), "pruned": (...), "ratio": (...), "ratio_of_medians": r,
        "spread": {variant: p90/median}}}`` in the input unit.
    """
    b, p = np.asarray(baseline, dtype=np.float64), np.asarray(pruned, dtype=np.float64)
    num_stages = b.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_round = p / b  # (n, S)
    cols = np.concatenate([b, p, per_round], axis=1)  # (n, 3S): one resample of rounds serves all three
    ivals = percentile_interval(bootstrap_medians(cols, **boot))  # (2, 3S)
    med = np.median(cols, axis=0)
    out = {}
    for j, stage in enumerate(stages):
        trio = [(float(med[c]), float(ivals[0, c]), float(ivals[1, c])) for c in (j, num_stages + j,
                                                                                  2 * num_stages + j)]
        out[stage] = {"baseline": trio[0], "pruned": trio[1], "ratio": trio[2],
                      "ratio_of_medians": trio[1][0] / trio[0][0] if trio[0][0] else float("nan"),
                      "spread": {"baseline": _spread(b[:, j]), "pruned": _spread(p[:, j])}}
    return out


def _spread(x: np.ndarray) -> float:
    med = float(np.median(x))
    return float(np.percentile(x, 90)) / med if med > 0 else float("nan")


def relative_half_width(estimate: float, lo: float, hi: float) -> float:
    """Half the interval's width relative to its estimate (inf where the estimate is not positive)."""
    return (hi - lo) / 2 / estimate if estimate > 0 else float("inf")


def target_reached(ratios: dict[str, tuple[float, float, float]], target: float = TARGET_HALF_WIDTH) -> bool:
    """True if every (ratio, lo, hi)'s interval is within ``target`` of its ratio."""
    return all(relative_half_width(*r) <= target for r in ratios.values())


def decide(interval: tuple[float, float], limit: float) -> str:
    """The gate's verdict on a measured interval against an upper bound.

    ``"pass"`` when the whole interval is at or below ``limit``, ``"fail"`` when all of it is above,
    ``"inconclusive"`` when it straddles the bound.
    """
    lo, hi = interval
    if hi <= limit:
        return "pass"
    if lo > limit:
        return "fail"
    return "inconclusive"


def load_average() -> dict[str, float] | None:
    """The 1, 5 and 15 minute load averages, rounded to 0.01 (None where the platform has none)."""
    try:
        one, five, fifteen = os.getloadavg()
    except (OSError, AttributeError):  # pragma: no cover - not on every platform
        return None
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def load_text(load: dict[str, float] | None) -> str:
    """``load average 5.52, 6.10, 7.03 (1, 5, 15 min)``, or that it is unknown."""
    if not load:
        return "load average unknown"
    return f"load average {load['1min']:.2f}, {load['5min']:.2f}, {load['15min']:.2f} (1, 5, 15 min)"


def stability(summary: dict, *, load: dict[str, float] | None, cpu_count: int | None, threads: int,
              rounds: int, target: float = TARGET_HALF_WIDTH) -> dict:
    """Whether a measurement is trustworthy, why not, and what to do about it.

    Unstable when a ratio's interval is still wider than ``target`` (or rests on fewer than ``MIN_ROUNDS``
    rounds), when the 1-minute load average is above the CPU count, or when a stage's p90 exceeds
    ``SPREAD_LIMIT`` times its median.

    Args:
        summary: :func:`summarise_rounds`' result.
        load: :func:`load_average`'s result.
        cpu_count: logical CPUs.
        threads: the runtime's intra-op threads (0: its default, usually every core).
        rounds: how many rounds the summary rests on.

    Returns:
        ``unstable``, ``causes`` (short phrases), ``fixes`` and ``warning`` (one line, or None).
    """
    causes, fixes = [], []
    if rounds < MIN_ROUNDS:
        causes.append(f"only {rounds} round{'s' if rounds != 1 else ''} (at least {MIN_ROUNDS} for an interval)")
        fixes.append("more rounds (--iters auto)")
    elif not target_reached({s: row["ratio"] for s, row in summary.items()}, target):
        stage, row = max(summary.items(), key=lambda kv: relative_half_width(*kv[1]["ratio"]))
        r, lo, hi = row["ratio"]
        causes.append(f"the {stage} ratio's 95 % interval is ±{_pct(relative_half_width(r, lo, hi))} "
                      f"(target ±{_pct(target)})")
        fixes.append("more time (--max-time)")
    busy = load is not None and cpu_count is not None and load["1min"] > cpu_count
    if busy:
        assert load is not None  # for mypy: busy implies it
        causes.append(f"the load average {load['1min']:.2f} is above the {cpu_count} CPUs")
        fixes.append("a quieter machine")
    worst = max(((s, v, x) for s, row in summary.items() for v, x in row["spread"].items() if np.isfinite(x)),
                key=lambda t: t[2], default=None)
    if worst is not None and worst[2] > SPREAD_LIMIT:
        causes.append(f"the {worst[1]} {worst[0]}'s p90 is {worst[2]:.1f}x its median")
        if not busy:
            fixes.append("a quieter machine")
    if causes and threads != 1:
        fixes.insert(0, "--threads 1")
    fixes = list(dict.fromkeys(fixes))
    warning = None
    if causes:
        warning = f"unstable timing: {'; '.join(causes)}; try {_or(fixes)}"
    return {"unstable": bool(causes), "causes": causes, "fixes": fixes, "warning": warning,
            "spread_limit": SPREAD_LIMIT}


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %" if np.isfinite(x) else "unbounded"


def _or(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def interval_text(estimate: float, lo: float, hi: float, digits: int = 3) -> str:
    """``0.512 [0.498, 0.527]``: an estimate with its 95 % interval."""
    return f"{estimate:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
