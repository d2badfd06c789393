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
    parser.add_argument("export_dir", nargs="?", default=None, help="a prune-and-export folder (default: exports/demo)")
    parser.add_argument("--runtime", choices=["onnxruntime", "openvino", "opencv", "torch", "tensorrt"],
                        default="onnxruntime",
                        help="openvino and opencv need the extras edgeanchor[openvino] / edgeanchor[opencv]; "
                        "opencv times backbone, head and model_nonms.onnx + cv2.dnn.NMSBoxesBatched")
    parser.add_argument("--precision", choices=["f32", "bf16", "f16", "int8"], default="f32",
                        help="what the runtime computes in (default f32, also on CPUs where OpenVINO would pick "
                        "bf16); int8 runs the int8 graphs of an export made with --int8")
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
                        "(default: EXPORT_DIR/bench_<runtime>.json, bench_<runtime>_<precision>.json when not f32)")
    parser.add_argument("--plot", default=None, help="PNG plot path (default: beside the JSON)")


def run(args) -> int:
    from pathlib import Path

    from ..bench.harness import (can_plot, check_timing, format_result, is_bench_result, is_png, plot_result,
                                 run_bench)
    from ..export.folder import ExportFolder, default_export_dir
    from ..io import check_output_file, log, write_json
    from .common import print_json

    from ..export.runtimes import check_precision, require

    check_timing(args.iters, args.warmup, args.threads)  # before the export is opened
    if args.runtime != "torch":
        require(args.runtime)  # one line naming the extra to install
    check_precision(args.runtime, args.precision)
    folder = ExportFolder.open(args.export_dir or default_export_dir())
    json_path = Path(args.json_out) if args.json_out else folder.bench_path(args.runtime, args.precision)
    plot_path = Path(args.plot or json_path.with_suffix(".png"))
    # Results of ours are rewritten on every run; anything else is refused, before the timing.
    check_output_file(json_path, overwrite=True, is_ours=is_bench_result, what="bench result",
                      inputs=[folder.report_path, args.images])
    check_output_file(plot_path, overwrite=True, is_ours=is_png, what="bench plot", inputs=[args.images])
    result = run_bench(folder, runtime=args.runtime, threads=args.threads, warmup=args.warmup,
                       iters=args.iters, image_dir=args.images, opt_level=args.opt_level, precision=args.precision,
                       end_to_end=args.end_to_end)
    write_json(json_path, result)
    wrote = f"wrote {json_path}"
    if can_plot():
        plot_result(result, plot_path)
        wrote += f" and {plot_path}"
    else:
        log("matplotlib is not installed: no plot (the JSON has every figure)")
    if args.json:
        print_json(result)
        log(wrote)
        return 0
    print(format_result(result))
    print(wrote)
    return 0
