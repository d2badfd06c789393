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
    from ..runtimes import PRECISIONS, canonical_precision

    parser.add_argument("--baseline", required=True, help="baseline JSON (written by --update)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--export", default=None, help="a prune-and-export folder (default: exports/demo)")
    src.add_argument("--model", default=None, help="a pruned checkpoint; exported with --reference first")
    parser.add_argument("--reference", default=None,
                        help="with --model: the unpruned reference model (default: the checkpoint's source)")
    parser.add_argument("--data", default=None, help="image folder (default: the export's report data)")
    parser.add_argument("--ann", default=None, help="COCO annotations (default: the export's report split)")
    parser.add_argument("--runtime", choices=["onnxruntime", "openvino", "tensorrt"], default="onnxruntime",
                        help="where the deployed graph is evaluated and timed (default onnxruntime)")
    parser.add_argument("--precision", type=canonical_precision, choices=PRECISIONS, default="fp32",
                        help="what the runtime computes in (default fp32; f32 and f16 are read as fp32 and fp16; "
                        "int8: the int8 graphs)")
    parser.add_argument("--map-tol", type=float, default=0.005, help="allowed mAP drop (default 0.005)")
    parser.add_argument("--latency-tol", type=float, default=0.10,
                        help="allowed relative rise of a latency ratio (default 0.10)")
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--update", action="store_true", help="rewrite the baseline from this measurement")
    parser.add_argument("--json", action="store_true", help="print the measurement and verdict as JSON")
    parser.add_argument("--json-out", default=None, help="also write the measurement and verdict to this file")
    parser.add_argument("--summary", default=None, help="write the Markdown summary here")


def run(args) -> int:
    from .. import api
    from ..io import format_table
    from .common import print_json

    result = api.regress(args.export, baseline=args.baseline, model=args.model, reference=args.reference,
                         data=args.data, ann=args.ann, runtime=args.runtime, precision=args.precision,
                         map_tol=args.map_tol, latency_tol=args.latency_tol, iters=args.iters, warmup=args.warmup,
                         threads=args.threads, update=args.update, json_path=args.json_out,
                         summary_path=args.summary)
    if args.update:
        measured = result["measured"]
        print(f"wrote baseline {args.baseline}: deployed mAP {measured['deployed_mAP']['mAP']:.4f}, latency ratios "
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
