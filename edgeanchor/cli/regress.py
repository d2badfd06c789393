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

Latency ratios are timed in interleaved rounds; with --iters auto (the
default) until every ratio's 95 % bootstrap interval is within ±3 % of it and
none straddles its bound, or --max-time seconds. A latency row passes when
its interval lies within the bound, fails when it lies entirely above it, and
is inconclusive when it straddles the bound. Accuracy and channel rows are
exact.

Exit codes: 0 all metrics within bounds (or --update written); 1 a regression
(mAP dropped more than --map-tol, a pruned/unpruned latency ratio's interval
lies above the baseline's ratio raised by --latency-tol, or the exported
head's channel counts changed), with a table naming each metric, its value,
its bound and the result; 3 inconclusive: nothing failed, but a latency
interval straddles its bound; it counts as passing (with --strict it fails,
exit 1); 2 a usage or input error (found before anything is measured).
Prints the verdict as JSON with --json, writes it to a file with --json-out,
and writes a Markdown summary (--summary, and $GITHUB_STEP_SUMMARY when set).
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
        from ..benchmark.stats import interval_text

        name = "fidelity mAP" if measured.get("reference") == "pseudo-labels" else "mAP"  # label-free export
        print(f"wrote baseline {args.baseline}: deployed {name} {measured['deployed_mAP']['mAP']:.4f}, latency ratios "
              "[95 % CI] " + ", ".join(f"{s} {interval_text(r, *measured['latency_intervals'][s])}"
                                       for s, r in measured["latency_ratios"].items()))
        return 0
    rows, code = result["rows"], result["exit_code"]
    if args.json:
        print_json({k: result[k] for k in ("result", "passed", "exit_code", "strict", "rows", "measured",
                                           "tolerances")})
        return code
    from ..regression import RESULT_TEXT, inconclusive_line, value_text

    table = [[r["metric"], value_text(r), r["baseline"] if not isinstance(r["baseline"], float)
              else round(r["baseline"], 4), r["bound"], RESULT_TEXT[r["result"]]] for r in rows]
    print(format_table(["metric", "value [95 % CI]", "baseline", "bound", "result"], table))
    if result["result"] == "inconclusive":
        print(inconclusive_line(rows, result["measured"], strict=args.strict))
    else:
        print("regress: passed" if result["passed"] else "regress: FAILED (a metric is outside its bound)")
    return code
