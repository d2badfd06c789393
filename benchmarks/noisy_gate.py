"""The latency gate under a bounded load (issue 27): does regress stay quiet on noise and still catch a regression?

  python benchmarks/noisy_gate.py [EXPORT=exports/demo] [--tries 10] [--processes 6] [--ann-images 50]
                                  [--max-time 60] [--out benchmarks/results/noisy_gate.json]

Writes a fresh regress baseline of EXPORT on the machine as it is, and a copy demanding a head latency
ratio of 0.2 (the demo's is about 0.5). Then, ``--tries`` times each, runs ``edgeanchor regress`` with its
default settings (``--iters auto``, ``--max-time 60``, ``--latency-tol 0.10``, ``--clock cpu``, one
thread) against each baseline while ``--processes`` CPU-bound processes load the machine
(benchmarks/loadgen.py: each runs for a fixed time and is killed when the regress call ends, whatever
happens). Records per run the result (pass, fail, inconclusive), the exit code, every latency row's
ratio, interval, relative half-width and result, the rounds and seconds timed, whether the ±3 % target
was reached, the instability causes and the load average; and the counts. Expected: the own baseline
never fails (pass or inconclusive), the demanding one always fails.

To keep a run short, the mAP rows are evaluated on the first ``--ann-images`` images of the export's
report split (the same subset for the baseline and every check); the timing uses the export's images as
bench does. The mAP rows are exact and not what this measures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgeanchor as ea  # noqa: E402
from edgeanchor.benchmark.machine import machine_info  # noqa: E402
from edgeanchor.benchmark.stats import load_average, relative_half_width  # noqa: E402
from edgeanchor.exporting.folder import ExportFolder  # noqa: E402
from edgeanchor.io import write_json  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import bounded_load  # noqa: E402

DEMANDED_HEAD_RATIO = 0.2


def subset_ann(folder: ExportFolder, num_images: int, out: Path) -> Path:
    """The first ``num_images`` images of the export's report split (with their annotations) as a COCO file."""
    ann = json.loads(Path(folder.report_ann).read_text())
    images = ann["images"][:num_images]
    ids = {im["id"] for im in images}
    ann = {**ann, "images": images, "annotations": [a for a in ann["annotations"] if a["image_id"] in ids]}
    out.write_text(json.dumps(ann))
    return out


def one_run(folder: ExportFolder, baseline: Path, ann: Path, processes: int, max_time: float) -> dict:
    """One regress call with default settings under the bounded load; what it decided and how it measured."""
    start = time.perf_counter()
    # the load lasts for the timing plus the mAP evaluation, and is killed when the call ends
    with bounded_load(processes=processes, seconds=max_time + 120):
        verdict = ea.regress(folder, baseline=baseline, ann=ann, max_time=max_time)
    measured = verdict["measured"]
    rows = {}
    for r in verdict["rows"]:
        if "interval" in r:
            lo, hi = r["interval"]
            rows[r["metric"].split()[2]] = {"ratio": r["value"], "interval": [lo, hi], "bound": r["bound"],
                                            "relative_half_width": relative_half_width(r["value"], lo, hi),
                                            "result": r["result"]}
    t, st = measured["timing"], measured["stability"]
    return {"result": verdict["result"], "exit_code": verdict["exit_code"], "latency": rows,
            "failed_rows": [r["metric"] for r in verdict["rows"] if r["result"] == "fail"],
            "rounds": t["rounds"], "timed_seconds": t["seconds"], "target_reached": t["target_reached"],
            "unstable": st["unstable"], "causes": st["causes"], "load_average_at_end": load_average(),
            "call_seconds": round(time.perf_counter() - start, 1)}


def summarise(runs: list[dict]) -> dict:
    counts = {k: sum(r["result"] == k for r in runs) for k in ("pass", "inconclusive", "fail")}
    widths = {s: [r["latency"][s]["relative_half_width"] for r in runs] for s in runs[0]["latency"]}
    return {**counts, "target_reached": sum(r["target_reached"] for r in runs),
            "relative_half_width": {s: {"median": float(np.median(w)), "max": float(np.max(w))}
                                    for s, w in widths.items()},
            "rounds_median": float(np.median([r["rounds"] for r in runs]))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export", nargs="?", default="exports/demo")
    parser.add_argument("--tries", type=int, default=10)
    parser.add_argument("--processes", type=int, default=6, help="CPU-bound load processes (default 6)")
    parser.add_argument("--ann-images", type=int, default=50, help="report-split images the mAP rows use")
    parser.add_argument("--max-time", type=float, default=60.0, help="regress's --max-time (its default, 60; "
                        "lower only for a smoke run)")
    parser.add_argument("--out", default="benchmarks/results/noisy_gate.json")
    args = parser.parse_args()
    if args.tries < 1 or args.processes < 0 or args.ann_images < 1:
        parser.error("--tries and --ann-images must be >= 1, --processes >= 0")
    folder = ExportFolder.open(args.export)
    result: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "export": str(folder.root), "machine": machine_info(), "cpu_count": os.cpu_count(),
                    "load_processes": args.processes, "tries": args.tries, "ann_images": args.ann_images,
                    "regress_settings": f"defaults: --iters auto --max-time {args.max_time:g} --latency-tol 0.10 "
                                        "--clock cpu --threads 1",
                    "load_average_at_start": load_average()}
    with tempfile.TemporaryDirectory() as tmp:
        ann = subset_ann(folder, args.ann_images, Path(tmp) / "ann.json")
        own = Path(tmp) / "baseline.json"
        written = ea.regress(folder, baseline=own, ann=ann, update=True, max_time=args.max_time)["measured"]
        result["baseline"] = {"latency_ratios": written["latency_ratios"],
                              "latency_intervals": written["latency_intervals"],
                              "load_average": written["stability"]["load_average"]}
        stored = json.loads(own.read_text())
        demanding = Path(tmp) / "demanding.json"
        demanding.write_text(json.dumps({**stored, "latency_ratios": {**stored["latency_ratios"],
                                                                      "head": DEMANDED_HEAD_RATIO}}))
        runs: dict[str, list[dict]] = {"own_baseline": [], "head_ratio_0.2": []}
        for i in range(args.tries):
            for name, path in (("own_baseline", own), ("head_ratio_0.2", demanding)):
                run = one_run(folder, path, ann, args.processes, args.max_time)
                runs[name].append(run)
                print(f"try {i + 1}/{args.tries} {name}: {run['result']} (exit {run['exit_code']}), "
                      f"{run['rounds']} rounds, load {run['load_average_at_end']}", flush=True)
    result["runs"] = runs
    result["summary"] = {name: summarise(r) for name, r in runs.items()}
    result["load_average_at_end"] = load_average()
    write_json(args.out, result)
    s = result["summary"]
    print(f"own baseline: {s['own_baseline']['fail']} failures in {args.tries}; head ratio 0.2: "
          f"{s['head_ratio_0.2']['fail']} failures in {args.tries}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
