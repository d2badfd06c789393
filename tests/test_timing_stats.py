"""Timing you can trust (issue 27): bootstrap intervals, the stopping rule, the stability flag, the gate's decisions.

Synthetic timings only: nothing here measures the clock.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeanchor.benchmark import stats
from edgeanchor.benchmark.harness import measure_rounds, timing_lines, timing_record
from edgeanchor.regression import compare, verdict

STAGES = ["backbone", "head", "postprocess", "end_to_end"]


# ------------------------------------------------------------------------------------------ the intervals

def test_median_interval_hand_worked():
    # constant timings: every resample's median is 5, so the interval is [5, 5]
    assert stats.median_interval([5.0] * 9) == (5.0, 5.0)
    # [1, 2, 3]: a resample's median is 1 with probability 7/27 (two or three draws of 1: 3*(1/3)^2*(2/3) +
    # (1/3)^3), 3 likewise, 2 otherwise; 7/27 > 2.5 %, so the 95 % interval is [1, 3]
    assert stats.median_interval([1.0, 2.0, 3.0]) == (1.0, 3.0)


def test_bootstrap_is_seeded_and_deterministic():
    x = np.random.default_rng(1).lognormal(0, 0.3, size=(50, 3))
    a, b = stats.bootstrap_medians(x), stats.bootstrap_medians(x)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, stats.bootstrap_medians(x, seed=1))
    assert a.shape == (stats.NUM_RESAMPLES, 3)


def test_median_interval_covers_the_true_median_95_percent_of_the_time():
    """600 data sets of 41 lognormal timings (true median e^0 = 1): about 95 % of the intervals hold 1."""
    coverage = []
    for seed in range(2):  # 2 x 300 data sets; each call resamples 300 columns at once
        x = np.random.default_rng(100 + seed).lognormal(0.0, 0.4, size=(41, 300))  # (rounds, data sets)
        lo, hi = stats.percentile_interval(stats.bootstrap_medians(x, num_resamples=1000, seed=seed))
        coverage.append((lo <= 1.0) & (1.0 <= hi))
    rate = np.concatenate(coverage).mean()
    assert 0.92 <= rate <= 0.98, rate  # binomial standard error at 600 trials: 0.009


def paired_rounds(rng, n: int, k: int, ratio: float, load_sigma: float = 0.3):
    """k data sets of n rounds: a load factor common to both variants of a round, times each one's own noise.

    pruned = ratio * load * f and baseline = load * e with e, f i.i.d., so the true ratio of medians is ``ratio``.
    """
    load = rng.lognormal(0.0, load_sigma, size=(n, k))
    return load * rng.lognormal(0.0, 0.1, size=(n, k)), ratio * load * rng.lognormal(0.0, 0.1, size=(n, k))


def test_ratio_interval_covers_the_true_ratio_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    hits = []
    for _ in range(2):
        base, pruned = paired_rounds(rng, 41, 300, 0.5)
        summary = stats.summarise_rounds(base, pruned, [str(j) for j in range(300)], num_resamples=1000)
        hits += [lo <= 0.5 <= hi for _, lo, hi in (row["ratio"] for row in summary.values())]
    assert 0.92 <= np.mean(hits) <= 0.98, np.mean(hits)


def test_pairing_by_round_cancels_the_common_load():
    """The ratio is the median of the rounds' own ratios: load that slows both variants of a round drops out.
    Its interval is narrower than that of the ratio of the two medians (bootstrapped over the same paired
    rounds), which also over-covers; breaking the pairing widens it several times."""
    rng = np.random.default_rng(3)
    base, pruned = paired_rounds(rng, 41, 300, 0.5)
    names = [str(j) for j in range(300)]
    rows = stats.summarise_rounds(base, pruned, names, num_resamples=1000).values()
    width = np.median([hi - lo for _, lo, hi in (r["ratio"] for r in rows)])
    boot = stats.bootstrap_medians(np.concatenate([base, pruned], axis=1), num_resamples=1000)
    lo, hi = stats.percentile_interval(boot[:, 300:] / boot[:, :300])
    assert width < 0.7 * np.median(hi - lo) and np.mean((lo <= 0.5) & (0.5 <= hi)) > 0.96
    shuffled = stats.summarise_rounds(base, rng.permutation(pruned), names, num_resamples=1000).values()
    assert np.median([hi - lo for _, lo, hi in (r["ratio"] for r in shuffled)]) > 1.5 * width
    first = next(iter(rows))
    assert first["ratio"][0] == np.median(pruned[:, 0] / base[:, 0])
    assert first["ratio_of_medians"] == np.median(pruned[:, 0]) / np.median(base[:, 0])


# ---------------------------------------------------------------------------------- the gate's decisions

@pytest.mark.parametrize("interval,limit,expected", [
    ((0.40, 0.50), 0.55, "pass"),           # all of it within the bound
    ((0.40, 0.55), 0.55, "pass"),           # touching the bound from inside
    ((0.56, 0.70), 0.55, "fail"),           # all of it above
    ((0.50, 0.60), 0.55, "inconclusive"),   # straddles
    ((0.55, 0.60), 0.55, "inconclusive"),   # starts on the bound: not entirely outside
])
def test_decision_table(interval, limit, expected):
    assert stats.decide(interval, limit) == expected


def measured_with(intervals: dict[str, tuple[float, float]]) -> dict:
    return {"deployed_mAP": {"runtime": "onnxruntime", "precision": "fp32", "graph": "model.onnx", "mAP": 0.70},
            "latency_ratios": {s: (lo + hi) / 2 for s, (lo, hi) in intervals.items()},
            "latency_intervals": {s: list(v) for s, v in intervals.items()},
            "head_channels": [{"level": 0, "cls_channels": 12, "box_channels": 8}]}


BASELINE = {"mAP": 0.70, "deployed_mAP": {"runtime": "onnxruntime", "precision": "fp32", "mAP": 0.70},
            "latency_ratios": dict.fromkeys(STAGES, 0.5),  # bound 0.5 * 1.1 = 0.55
            "head_channels": [{"level": 0, "cls_channels": 12, "box_channels": 8}]}


@pytest.mark.parametrize("head,strict,expected", [
    ((0.45, 0.52), False, ("pass", True, 0)),
    ((0.56, 0.60), False, ("fail", False, 1)),
    ((0.50, 0.60), False, ("inconclusive", True, 3)),
    ((0.50, 0.60), True, ("inconclusive", False, 1)),
])
def test_compare_decides_latency_rows_from_the_interval(head, strict, expected):
    rows = compare(measured_with({**dict.fromkeys(STAGES, (0.45, 0.50)), "head": head}), BASELINE,
                   map_tol=0.005, latency_tol=0.10)
    by_metric = {r["metric"].split(" (")[0]: r for r in rows}
    assert by_metric["latency ratio head"]["bound"] == "<= 0.550"
    assert by_metric["latency ratio head"]["result"] == expected[0]
    assert all(r["result"] == "pass" for m, r in by_metric.items() if m != "latency ratio head")
    assert verdict(rows, strict=strict) == expected


def test_an_inconclusive_row_never_hides_a_failure():
    m = measured_with({**dict.fromkeys(STAGES, (0.45, 0.50)), "head": (0.50, 0.60)})
    m["deployed_mAP"]["mAP"] = 0.60  # accuracy stays exact: 0.60 < 0.70 - 0.005
    assert verdict(compare(m, BASELINE, map_tol=0.005, latency_tol=0.10)) == ("fail", False, 1)


# ------------------------------------------------------------------------------------ the stopping rule

def fake_run(noise: float, seed: int = 0, calls: list | None = None):
    """run(variant, i) -> ns per stage: baseline 1e6, pruned 5e5, each times a lognormal(0, noise) factor."""
    rng = np.random.default_rng(seed)

    def run(variant: str, i: int) -> dict[str, int]:
        if calls is not None:
            calls.append((i, variant))
        scale = 1e6 if variant == "baseline" else 5e5
        return {s: int(scale * rng.lognormal(0.0, noise)) for s in STAGES}
    return run


class FakeClock:
    """Seconds that advance by one per round (two runs)."""

    def __init__(self, calls: list):
        self.calls = calls

    def __call__(self) -> float:
        return len(self.calls) / 2


def test_fixed_iters_measures_exactly_n_interleaved_rounds():
    calls: list = []
    rounds = measure_rounds(fake_run(0.01, calls=calls), STAGES, warmup=2, iters=7, max_time=1.0, progress=False)
    assert rounds["count"] == 7 and rounds["samples"]["pruned"].shape == (7, 4) and not rounds["auto"]
    # baseline first on even rounds, pruned first on odd ones; warm-up rounds 0 and 1 are not kept
    assert calls[:6] == [(0, "baseline"), (0, "pruned"), (1, "pruned"), (1, "baseline"), (2, "baseline"),
                         (2, "pruned")]
    assert rounds["target_reached"] is False  # 7 < MIN_ROUNDS: no interval is trusted on so few


def test_auto_stops_when_the_target_is_reached():
    calls: list = []
    rounds = measure_rounds(fake_run(0.005, calls=calls), STAGES, warmup=0, iters="auto", max_time=1e6,
                            progress=False, clock=FakeClock(calls))
    assert rounds["count"] == stats.MIN_ROUNDS and rounds["target_reached"]
    assert stats.target_reached({s: row["ratio"] for s, row in rounds["summary"].items()})


def test_auto_stops_at_max_time_when_the_target_is_out_of_reach():
    calls: list = []
    rounds = measure_rounds(fake_run(1.0, calls=calls), STAGES, warmup=3, iters="auto", max_time=30,
                            progress=False, clock=FakeClock(calls))
    # the clock starts after the 3 warm-up rounds and advances a second per round
    assert rounds["count"] == 30 and not rounds["target_reached"]


def test_auto_measures_on_while_a_ratio_straddles_its_bound():
    calls: list = []
    seen = []

    def settled(ratios):
        seen.append(len(calls) // 2)
        return len(seen) >= 3  # the third check: after 30, 38, 48 rounds

    rounds = measure_rounds(fake_run(0.005, calls=calls), STAGES, warmup=0, iters="auto", max_time=1e6,
                            settled=settled, progress=False, clock=FakeClock(calls))
    assert seen == [30, 38, 48] and rounds["count"] == 48  # checks each time the count has grown by a quarter


# ------------------------------------------------------------------------------------- the stability flag

def quiet_summary(spread: float = 1.1, ratio=(0.5, 0.495, 0.505)) -> dict:
    return {s: {"ratio": ratio, "spread": {"baseline": spread, "pruned": 1.05}} for s in STAGES}


def test_a_quiet_measurement_is_stable():
    st = stats.stability(quiet_summary(), load={"1min": 0.5, "5min": 0.5, "15min": 0.5}, cpu_count=2,
                         threads=1, rounds=50)
    assert st == {"unstable": False, "causes": [], "fixes": [], "warning": None, "spread_limit": 1.5}


def test_each_cause_is_named_with_its_fix():
    load = {"1min": 7.3, "5min": 6.0, "15min": 5.0}
    st = stats.stability(quiet_summary(), load=load, cpu_count=2, threads=0, rounds=50)
    assert st["warning"] == "unstable timing: the load average 7.30 is above the 2 CPUs; try --threads 1 or a " \
                            "quieter machine"
    st = stats.stability(quiet_summary(spread=3.1), load=None, cpu_count=2, threads=1, rounds=50)
    assert st["causes"] == ["the baseline backbone's p90 is 3.1x its median"]
    assert st["fixes"] == ["a quieter machine"]  # already at one thread
    st = stats.stability(quiet_summary(ratio=(0.5, 0.45, 0.55)), load=None, cpu_count=2, threads=1, rounds=50)
    assert st["causes"] == ["the backbone ratio's 95 % interval is ±10.0 % (target ±3.0 %)"]
    assert st["fixes"] == ["more time (--max-time)"]
    st = stats.stability(quiet_summary(), load=None, cpu_count=2, threads=1, rounds=3)
    assert st["unstable"] and st["causes"] == ["only 3 rounds (at least 30 for an interval)"]


def test_timing_record_is_json_with_numbers_and_one_line_each():
    calls: list = []
    rounds = measure_rounds(fake_run(1.0, calls=calls), STAGES, warmup=0, iters="auto", max_time=40,
                            progress=False, clock=FakeClock(calls))
    record = timing_record(rounds, STAGES, threads=0)
    again = json.loads(json.dumps(record, allow_nan=False))  # plain JSON: no inf or nan
    load = again["stability"]["load_average"]
    assert set(load) == {"1min", "5min", "15min"} and all(isinstance(v, float) for v in load.values())
    assert again["stability"]["unstable"] and again["stability"]["threads"] == 0
    assert again["timing"]["iters"] == "auto" and again["timing"]["rounds"] == 40
    for s in STAGES:
        lo, hi = again["ratio_intervals"][s]
        assert lo <= again["ratio_of_medians"][s] <= hi
        for v in ("baseline", "pruned"):
            lo, hi = again["stages"][v][s]["median_ci"]
            assert lo <= again["stages"][v][s]["median"] <= hi
    line, warning = timing_lines(again)
    assert line.startswith("bench: target ±3 % not reached within --max-time 40 s (40 rounds in 40.0 s; ")
    assert "\n" not in line and warning.startswith("unstable timing: ") and "\n" not in warning


# ------------------------------------------------------------------------------- the runtime matrix's table

def test_matrix_table_prints_every_ratio_with_its_interval_and_the_flag():
    from edgeanchor.exporting.matrix import matrix_markdown

    cell = {"loads": True, "parity": {"passed": True},
            "latency_ms": {"pruned": 1.2345, "baseline": 2.5, "ratio": 0.4938, "pruned_ci": [1.2, 1.3],
                           "baseline_ci": [2.4, 2.6], "ratio_ci": [0.48, 0.51]},
            "stability": {"unstable": True, "causes": ["the load average 7.30 is above the 2 CPUs"],
                          "fixes": ["a quieter machine"]}}
    matrix = {"num_images": 4, "iters": 20, "threads": 1, "machine": {"logical_cores": 2},
              "runtimes": {"onnxruntime": {"installed": True, "version": "1.32.0", "graphs": {"head": cell}},
                           "openvino": {"installed": False, "why": "not installed"}},
              "stability": {"unstable": True, "unstable_cells": 1, "timed_cells": 1,
                            "causes": ["a load average above the CPU count"], "fixes": ["a quieter machine"],
                            "load_average": {"1min": 7.3, "5min": 6.01, "15min": 5.0}, "cpu_count": 2,
                            "threads": 1, "target_half_width": 0.03}}
    lines = matrix_markdown(matrix)
    assert lines[0].endswith("the median of 20 interleaved rounds with its 95 % bootstrap interval (1 thread; "
                             "2 CPUs, load average 7.30, 6.01, 5.00 (1, 5, 15 min) after the timing).")
    assert "| onnxruntime 1.32.0 | head | yes | yes | 1.23 [1.20, 1.30] | 2.50 [2.40, 2.60] | 0.49 [0.48, 0.51] | " \
           "**unstable** |" in lines
    assert "**Unstable timing** in 1 of 1 rows (a load average above the CPU count): read their latencies as " \
           "rough. For figures to trust, time the export with `edgeanchor bench`, which measures until every " \
           "interval is within ±3 %, on a quieter machine." in lines
    assert "- openvino: not installed" in lines


# ------------------------------------------------------------------------- regress's exit codes, in-process

@pytest.fixture
def gate_measuring(monkeypatch, tmp_path):
    """regress with its measurement replaced: ``set(head=(lo, hi))`` fixes what the next run measures."""
    import edgeanchor.benchmark.accuracy as accuracy
    import edgeanchor.regression as core
    from edgeanchor.exporting.folder import ExportFolder

    state = {"head": (0.45, 0.50)}

    def measure(folder, **kwargs):
        assert kwargs["limits"]["head"] == pytest.approx(0.55)  # the bound reaches the timing (auto)
        m = measured_with({**dict.fromkeys(STAGES, (0.45, 0.50)), "head": state["head"]})
        m["deployed_mAP"]["same_rule_as_pytorch"] = True
        return {**m, "identity": {}, "ann": "a.json", "absolute_ms": {"baseline": {"head": 1.0}},
                "bench_settings": {"runtime": "onnxruntime", "precision": "fp32", "threads": 1, "iters": "auto",
                                   "max_time": 60.0, "warmup": 10},
                "timing": {"iters": "auto", "rounds": 250, "seconds": 60.0, "max_time_s": 60.0,
                           "target_half_width": 0.03, "target_reached": False, "widest_half_width": 0.09},
                "stability": {"unstable": True, "warning": "unstable timing: x; try a quieter machine",
                              "load_average": {"1min": 8.0, "5min": 7.0, "15min": 6.0}, "cpu_count": 2},
                "machine": {"cpu": "test CPU", "logical_cores": 2}}

    monkeypatch.setattr(ExportFolder, "open", staticmethod(lambda path: type("Folder", (), {"report_ann": "a.json"})))
    monkeypatch.setattr(core, "check_identity", lambda *a: None)
    monkeypatch.setattr(core, "measure", measure)
    monkeypatch.setattr(accuracy, "graphs_use_reported_rule", lambda folder: True)
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"format": core.FORMAT, **BASELINE,
                                "bench_settings": {"runtime": "onnxruntime", "precision": "fp32"}}))
    return base, lambda head: state.update(head=head)


def test_regress_exit_codes_and_strict(gate_measuring, tmp_path, capsys):
    from edgeanchor.cli import main

    base, set_head = gate_measuring
    args = ["regress", "--baseline", str(base), "--export", str(tmp_path / "exp")]
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "regress: passed"

    set_head((0.50, 0.60))  # straddles the bound 0.55
    verdict_path = tmp_path / "verdict.json"
    assert main([*args, "--json-out", str(verdict_path)]) == 3
    captured = capsys.readouterr()
    last = captured.out.splitlines()[-1]
    assert last == ("regress: inconclusive: the 95 % interval of the head latency ratio straddles its bound after "
                    "250 rounds in 60 s; counted as passing (exit 3; --strict fails it); a longer --max-time or a "
                    "quieter machine decides it")
    head_row = next(line for line in captured.out.splitlines() if line.startswith("latency ratio head"))
    assert head_row.split()[4:9] == ["0.550", "[0.500,", "0.600]", "0.5", "<="]  # value [95 % CI], baseline
    assert head_row.split()[-1] == "inconclusive"
    assert "regress: target ±3 % not reached within --max-time 60 s" in captured.err
    assert "warning: unstable timing: x; try a quieter machine" in captured.err
    saved = json.loads(verdict_path.read_text())
    assert (saved["result"], saved["passed"], saved["exit_code"]) == ("inconclusive", True, 3)

    assert main([*args, "--strict"]) == 1
    assert capsys.readouterr().out.splitlines()[-1].endswith("FAILED (--strict); a longer --max-time or a quieter "
                                                             "machine decides it")
    summary = tmp_path / "summary.md"
    assert main([*args, "--strict", "--summary", str(summary)]) == 1
    assert summary.read_text().startswith("### edgeanchor regress: FAILED (inconclusive, --strict)")
    capsys.readouterr()

    set_head((0.60, 0.70))  # entirely above the bound
    assert main([*args, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert (out["result"], out["passed"], out["exit_code"]) == ("fail", False, 1)
    assert [r["result"] for r in out["rows"] if r["metric"].startswith("latency ratio head")] == ["fail"]


def test_timing_settings_are_checked_in_one_line():
    from edgeanchor.benchmark.harness import check_timing, parse_iters
    from edgeanchor.errors import EdgeAnchorError

    assert parse_iters("auto") == "auto" and parse_iters(" AUTO ") == "auto" and parse_iters("12") == 12
    check_timing("auto", 0, 1, 0.5, "cpu")
    for args, message in (((0, 10, 1), "`iters` must be >= 1 (or auto)"), (("lots", 10, 1), "`iters` must be"),
                          (("auto", 10, 1, 0), "`max_time` must be a positive number of seconds (got 0)"),
                          (("auto", 10, 1, float("inf")), "`max_time` must be a positive"),
                          (("auto", 10, 1, 60, "sundial"), "unknown `clock` 'sundial'; choose wall or cpu")):
        with pytest.raises(EdgeAnchorError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_timing(*args)


def test_bad_timing_flags_are_one_line_errors(capsys):
    from edgeanchor.cli import main

    for argv, message in ((["bench", "nowhere", "--iters", "lots"], "argument --iters: invalid"),
                          (["bench", "nowhere", "--max-time", "0"], "--max-time must be a positive number"),
                          (["regress", "--baseline", "b.json", "--clock", "sundial"], "argument --clock: invalid choice")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "Traceback" not in err, err
