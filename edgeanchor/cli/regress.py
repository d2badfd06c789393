"""Check accuracy and latency of an export against a stored baseline (for CI).

  edgeanchor regress --baseline benchmarks/regress/baseline.json --export exports/demo
  edgeanchor regress --baseline base.json --model pruned.pt --reference demo --data DIR --ann val.json
  edgeanchor regress --baseline base.json --export exports/demo --update      (rewrite the baseline)

  edgeanchor regress --baseline base-ov.json --export exports/demo --runtime openvino   (on the device)

The deployed mAP is model.onnx's (model_int8.onnx at --precision int8) in
--runtime on the export's report split, held to the baseline's deployed mAP
for that runtime and precision (or to its PyTorch mAP); where torch is
installed the pruned checkpoint's PyTorch mAP is checked too. With an export
folder (format 2) regress needs no torch: numpy, pillow, onnx, the runtime
and a COCO evaluator are enough.

Exit codes: 0 all metrics within bounds (or --update written); 1 a regression
(mAP dropped more than --map-tol, a pruned/unpruned latency ratio rose more
than --latency-tol relative, or the exported head's channel counts changed),
with a table naming each metric, its value, its bound and the result;
2 a usage or input error (found before anything is measured). Prints the
verdict as JSON with --json, writes it to a file with --json-out, and writes
a Markdown summary (--summary, and $GITHUB_STEP_SUMMARY when set).
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    from ..api.settings import RegressSettings
    from ..settings import add_arguments as settings_flags

    settings_flags(parser, RegressSettings)  # one flag per setting, defined there
    parser.add_argument("--json", action="store_true", help="print the measurement and verdict as JSON")


def run(args) -> int:
    from .. import api
    from ..api.settings import RegressSettings
    from ..io import format_table
    from ..settings import from_args
    from .common import print_json

    result = api.regress(**from_args(RegressSettings, args))
    if args.update:
        measured = result["measured"]
        name = "fidelity mAP" if measured.get("reference") == "pseudo-labels" else "mAP"  # label-free export
        print(f"wrote baseline {args.baseline}: deployed {name} {measured['deployed_mAP']['mAP']:.4f}, latency ratios "
              + ", ".join(f"{s} {r:.3f}" for s, r in measured["latency_ratios"].items()))
        return 0
    rows, passed = result["rows"], result["passed"]
    if args.json:
        print_json({k: result[k] for k in ("passed", "rows", "measured", "tolerances")})
        return 0 if passed else 1
    table = [[r["metric"], r["value"] if not isinstance(r["value"], float) else round(r["value"], 4),
              r["baseline"] if not isinstance(r["baseline"], float) else round(r["baseline"], 4), r["bound"],
              "pass" if r["passed"] else "FAIL"] for r in rows]
    print(format_table(["metric", "value", "baseline", "bound", "result"], table))
    print("regress: passed" if passed else "regress: FAILED (a metric is outside its bound)")
    return 0 if passed else 1
