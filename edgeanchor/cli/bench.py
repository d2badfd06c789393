"""Time backbone, head, postprocess (decode + NMS) and end to end, baseline against pruned.

  edgeanchor bench exports/demo                       (onnxruntime on this CPU)
  edgeanchor bench exports/demo --runtime torch --threads 2 --iters 200 --json-out bench.json
  edgeanchor bench exports/demo --runtime openvino --precision bf16    (pip install "edgeanchor[openvino]")
  edgeanchor bench exports/demo --runtime onnxruntime --precision int8 (an export made with --int8)

Both variants of a prune-and-export folder are timed in the same run,
interleaved, on real images (by default the export's report split), so the
NMS sees the candidates the model really produces. Reports median, p90, p99,
min and n per stage, the pruned/baseline ratio of medians, the boxes entering
NMS per image, and the runtime and machine settings; writes a JSON file and a
PNG plot of the per-stage medians (--json prints the result JSON on stdout
instead of the table).
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    from ..runtimes import PRECISIONS, canonical_precision

    parser.add_argument("export_dir", nargs="?", default=None, help="a prune-and-export folder (default: exports/demo)")
    parser.add_argument("--runtime", choices=["onnxruntime", "openvino", "opencv", "torch", "tensorrt"],
                        default="onnxruntime",
                        help="openvino and opencv need the extras edgeanchor[openvino] / edgeanchor[opencv]; "
                        "opencv times backbone, head and model_nonms.onnx + cv2.dnn.NMSBoxesBatched")
    parser.add_argument("--precision", type=canonical_precision, choices=PRECISIONS, default="fp32",
                        help="what the runtime computes in (default fp32, also on CPUs where OpenVINO would pick "
                        "bf16; f32 and f16 are read as fp32 and fp16); int8 runs the int8 graphs of an export "
                        "made with --int8")
    parser.add_argument("--end-to-end", default=None, choices=["model", "model_nonms", "model_trt"],
                        help="the graph the end_to_end stage runs (default: model; opencv: model_nonms + "
                        "cv2.dnn.NMSBoxesBatched; model_trt is for TensorRT only)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: the runtime's default)")
    parser.add_argument("--opt-level", choices=["disable", "basic", "extended", "all"], default="all",
                        help="onnxruntime graph optimisation level")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--images", default=None, help="image folder (default: the export's report split)")
    parser.add_argument("--json", action="store_true", help="print the result JSON on stdout instead of the table")
    parser.add_argument("--json-out", default=None, help="write the result JSON here "
                        "(default: EXPORT_DIR/bench_<runtime>.json, bench_<runtime>_<precision>.json when not fp32)")
    parser.add_argument("--plot", default=None, help="PNG plot path (default: beside the JSON)")


def run(args) -> int:
    from .. import api
    from ..io import log
    from .common import print_json

    result = api.bench(args.export_dir, runtime=args.runtime, threads=args.threads, iters=args.iters,
                       warmup=args.warmup, precision=args.precision, images=args.images, end_to_end=args.end_to_end,
                       opt_level=args.opt_level, write=True, json_path=args.json_out, plot_path=args.plot)
    wrote = f"wrote {result.json_path}" + (f" and {result.plot_path}" if result.plot_path else "")
    if args.json:
        print_json(result.to_json())
        log(wrote)
        return 0
    print(result.table())
    print(wrote)
    return 0
