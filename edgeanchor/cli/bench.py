"""Time backbone, head, postprocess (decode + NMS) and end to end, baseline against pruned.

  edgeanchor bench exports/demo                       (onnxruntime on this CPU)
  edgeanchor bench exports/demo --runtime torch --threads 2 --iters 200 --json-out bench.json
  edgeanchor bench exports/demo --runtime openvino --precision bf16    (pip install "edgeanchor[openvino]")
  edgeanchor bench exports/demo --runtime onnxruntime --precision int8 (an export made with --int8)

Both variants of a prune-and-export folder are timed in the same run, in
interleaved rounds, on real images (by default the export's report split), so
the NMS sees the candidates the model really produces. With --iters auto (the
default) it times until every pruned/baseline ratio's 95 % interval is within
±3 % of it, or --max-time seconds (default 60), and says on stderr whether
that target was reached. Reports per stage the median with its 95 % bootstrap
interval, p90, p99, min and n, the pruned/baseline ratio (the median of the
rounds' own ratios) with its interval, the boxes entering NMS per image, the
runtime and machine settings and the load average; warns in one line, naming
the cause and the fix, when the timing is unstable (a wide interval, a load
above the CPU count, a p90 far above the median). Writes a JSON file and a
PNG plot of the per-stage medians (--json prints the result JSON on stdout
instead of the table).
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    from ..api.settings import BenchSettings
    from ..settings import add_arguments as settings_flags

    settings_flags(parser, BenchSettings)  # one flag per setting, defined there
    parser.add_argument("--json", action="store_true", help="print the result JSON on stdout instead of the table")


def run(args) -> int:
    from .. import api
    from ..api.settings import BenchSettings
    from ..io import log
    from ..settings import from_args
    from .common import print_json

    result = api.bench(**from_args(BenchSettings, args, write=True))  # the command always writes its files
    wrote = f"wrote {result.json_path}" + (f" and {result.plot_path}" if result.plot_path else "")
    if args.json:
        print_json(result.to_json())
        log(wrote)
        return 0
    print(result.table())
    print(wrote)
    return 0
