"""Time baseline against pruned, stage by stage, interleaved, on real images.

For every measured iteration both variants run all four stages on the same
real image, in alternating order (baseline first on even iterations, pruned
first on odd ones), so drift of the machine hits both alike. The stages are
fed the outputs of the previous stage, so the NMS workload is the one the
model really produces; the number of candidate boxes entering NMS is counted
per image from ``model.onnx`` itself (:mod:`.nms_count`). Nothing here imports
torch: bench runs on a device with only a runtime installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import EdgeAnchorError
from ..exporting.folder import ExportFolder
from ..io import format_table
from ..runtimes import STAGES, canonical_precision, make_runner
from .machine import machine_info

VARIANTS = ("baseline", "pruned")


def stats_ms(samples_ns: list[int]) -> dict:
    """Median, p90, p99, min, mean (milliseconds) and the sample count."""
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
            "min": float(a.min()), "mean": float(a.mean()), "n": int(a.size)}


def parse_iters(text: str) -> int | str:
    """``--iters``: ``auto`` or a whole number of rounds."""
    return "auto" if text.strip().lower() == "auto" else int(text)


def check_timing(iters: int | str, warmup: int, threads: int, max_time: float = 60.0, clock: str = "wall") -> None:
    """Timing settings, checked before anything is opened or measured.

    Raises:
        EdgeAnchorError: iters neither "auto" nor >= 1, warmup < 0, threads < 0, max_time not positive, or
            an unknown clock.
    """
    if isinstance(iters, str) and iters != "auto":
        raise EdgeAnchorError(f"`iters` must be an int or 'auto' (got {iters!r}, a str)")
    bad_iters = iters != "auto" and (isinstance(iters, bool) or not isinstance(iters, int) or iters < 1)
    if bad_iters or warmup < 0 or threads < 0:
        raise EdgeAnchorError(
            f"`iters` must be >= 1 (or auto), `warmup` >= 0 and `threads` >= 0 (got {iters}, {warmup}, {threads})"
        )
    if clock not in ("wall", "cpu"):
        raise EdgeAnchorError(f"unknown `clock` {clock!r}; choose wall or cpu")
    if isinstance(max_time, bool) or not isinstance(max_time, (int, float)) or not 0 < max_time < float("inf"):
        raise EdgeAnchorError(f"`max_time` must be a positive number of seconds (got {max_time})")


def open_export(export) -> ExportFolder:
    """An :class:`ExportFolder`, from itself or a path."""
    return export if isinstance(export, ExportFolder) else ExportFolder.open(export)


def load_images(folder: ExportFolder, image_dir=None, limit: int = 64) -> tuple[list[np.ndarray], str]:
    """Real images resized to the model input: from ``image_dir``, else the export's report split."""
    from ..datasets.imaging import load_image_array
    from ..io import read_json

    h, w = folder.image_size
    if image_dir:
        files = sorted(p for p in Path(image_dir).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not files:
            raise EdgeAnchorError(f"no .jpg or .png images under {image_dir}; give a folder of images")
        source = str(image_dir)
    else:
        from ..datasets.coco_schema import check_coco

        source, data = folder.annotations_file("images"), folder.images_dir("images")
        ann = check_coco(read_json(source, "report annotations of the export"), source)
        if not ann["images"]:
            raise EdgeAnchorError(f"{source} lists no images; give a folder of images to time on")
        files = [folder.image_file(data, im["file_name"], source) for im in ann["images"][:limit]]
        missing = next((f for f in files[:limit] if not f.is_file()), None)
        if missing is not None:  # a split too large to bundle, its recorded folder not on this machine
            raise EdgeAnchorError(f"image {missing} of the export's report split is not here; pass `images`, a "
                                  "folder of images to time on")
    # as the model sees images (YOLO: letterboxed)
    images = [load_image_array(f, (h, w), folder.resize)[0][None] for f in files[:limit]]  # (1, 3, H, W) float32
    return images, source


def count_nms_inputs(folder: ExportFolder, variant: str, images: list[np.ndarray], runtime: str) -> dict:
    """Boxes entering NMS (after threshold and top-k) per image, from the variant's model.onnx.

    Counted in ``runtime`` when it is ONNX Runtime or OpenVINO, else in whichever of them is installed.

    Returns:
        ``per_image``, ``median``, ``mean`` and ``counted_with``; or only a ``note`` when neither is installed.
    """
    from .nms_count import NmsCounter, counting_runtime

    counter_runtime = counting_runtime(runtime)
    if counter_runtime is None:
        return {"note": "not counted: needs onnxruntime or openvino to run model.onnx with its NMS input exposed"}
    counter = NmsCounter(folder.graph_path(variant, "model"), counter_runtime)
    counts = [counter.count(image) for image in images]
    return {"per_image": counts, "median": float(np.median(counts)), "mean": float(np.mean(counts)),
            "counted_with": counter_runtime}


def run_bench(export, *, runtime: str = "onnxruntime", threads: int = 0, warmup: int = 10, iters: int | str = "auto",
              max_time: float = 60.0, image_dir=None, opt_level: str = "all", progress: bool = True,
              precision: str = "fp32", end_to_end: str | None = None, settled=None, clock: str = "wall") -> dict:
    """Time both variants of an export folder (an :class:`ExportFolder` or its path); returns the JSON-ready result.

    ``precision`` (fp32, bf16, fp16 or int8; also f32, f16) is what the runtime runs the graphs at; int8 runs the
    export's int8 graphs. It is recorded in the result, with the runtime's settings. ``end_to_end`` names
    the graph of the end-to-end stage (default: model.onnx; OpenCV: model_nonms.onnx + NMSBoxesBatched).
    ``iters`` is a number of rounds, or ``"auto"``: measure until every ratio's 95 % interval is within
    :data:`~.stats.TARGET_HALF_WIDTH` of it (and ``settled``, a function of the ratios ``{stage: (ratio, lo,
    hi)}``, agrees) or ``max_time`` seconds have passed (:func:`measure_rounds`). ``clock`` is what a timing
    counts: ``wall`` time (latency), or ``cpu``, the process's CPU time, which leaves out waiting for a CPU
    on a busy machine (with one thread on a CPU it is the latency a quiet machine gives); TensorRT times the
    GPU either way.
    """
    from ..runtimes import check_graph_for_runtime, check_precision
    from ..runtimes.base import CLOCKS

    precision = canonical_precision(precision)
    check_timing(iters, warmup, threads, max_time, clock)
    check_precision(runtime, precision)
    if end_to_end:
        check_graph_for_runtime(end_to_end, runtime)
    folder = open_export(export)
    images, source = load_images(folder, image_dir)
    runners = {v: make_runner(runtime, folder, v, threads=threads, opt_level=opt_level, precision=precision,
                              end_to_end=end_to_end) for v in VARIANTS}
    for runner in runners.values():
        runner.clock = CLOCKS[clock]
    stages = [s for s in STAGES if s in getattr(runners["pruned"], "stages", STAGES)]
    rounds = measure_rounds(lambda v, i: runners[v].run_all(images[i % len(images)]), stages, warmup=warmup,
                            iters=iters, max_time=max_time, settled=settled, progress=progress,
                            desc=f"bench {runtime}")
    settings = runners["pruned"].settings
    result = {"export_dir": str(folder.root), "runtime": runtime, "precision": precision, "settings": settings,
              "machine": machine_info(), "warmup": warmup, "iters": rounds["count"], "images": source,
              "num_images": len(images), **timing_record(rounds, stages, threads=threads)}
    result["timing"]["clock"] = "gpu (CUDA events)" if runtime == "tensorrt" else clock
    result["nms_input_boxes"] = {v: count_nms_inputs(folder, v, images, runtime) for v in VARIANTS}
    result["cost_ratios"] = cost_ratios(folder.report)
    return result


def cost_ratios(report) -> dict[str, float]:
    """Pruned / baseline head MACs, total MACs and boxes, from the export's report (beside the latency ratios)."""
    cost = report.get("cost") or {}
    base, pruned = cost.get("baseline") or {}, cost.get("pruned") or {}
    return {k: pruned[k] / base[k] for k in ("head_macs", "total_macs", "num_boxes")
            if isinstance(base.get(k), (int, float)) and base[k] and isinstance(pruned.get(k), (int, float))}


def measure_rounds(run, stages: list[str], *, warmup: int, iters: int | str, max_time: float, settled=None,
                   progress: bool = True, desc: str = "bench", clock=None) -> dict:
    """Interleaved rounds: in round ``i`` both variants run (``run(variant, i)`` -> ns per stage), alternating order.

    Baseline goes first on even rounds and pruned on odd ones, so drift of the machine hits both alike. With
    ``iters`` a number, exactly that many rounds after ``warmup``. With ``"auto"``, rounds until every
    ratio's interval is within the target (and ``settled(ratios)`` is true, if given), checked each time
    the count has grown by a quarter, or until ``max_time`` seconds (never fewer than
    :data:`~.stats.MIN_ROUNDS` rounds). ``clock`` (seconds; default ``time.perf_counter``) is for tests.

    Returns:
        ``samples`` (variant -> (n, S) ns array), ``count``, ``seconds``, ``auto``, ``target_reached``
        and ``summary`` (:func:`~.stats.summarise_rounds` of the samples, in ns).
    """
    import math
    import time

    from .stats import MIN_ROUNDS, summarise_rounds, target_reached

    clock = clock or time.perf_counter
    auto = iters == "auto"
    rows: dict[str, list[list[int]]] = {v: [] for v in VARIANTS}
    bar = progress_bar(None, desc=desc, disable=not progress, total=None if auto else warmup + int(iters))

    def one_round(i: int) -> None:
        for v in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
            times = run(v, i)
            if i >= warmup:
                rows[v].append([times[s] for s in stages])
        if bar is not None:
            bar.update(1)

    def summary() -> dict:
        return summarise_rounds(np.asarray(rows["baseline"]), np.asarray(rows["pruned"]), stages)

    try:  # the bar is closed on an error too, so the error line starts a line of its own
        for i in range(warmup):
            one_round(i)
        start, count, next_check, stats, reached = clock(), 0, MIN_ROUNDS, None, False
        while True:
            one_round(warmup + count)
            count += 1
            if not auto:
                if count >= int(iters):
                    break
                continue
            out_of_time = count >= MIN_ROUNDS and clock() - start >= max_time
            if count >= next_check or out_of_time:
                stats = summary()
                ratios = {s: row["ratio"] for s, row in stats.items()}
                reached = target_reached(ratios)
                if out_of_time or (reached and (settled is None or settled(ratios))):
                    break
                next_check = max(count + 1, math.ceil(count * 1.25))
        seconds = clock() - start
    finally:
        if bar is not None:
            bar.close()
    if stats is None:  # a fixed number of rounds
        stats = summary()
        reached = count >= MIN_ROUNDS and target_reached({s: row["ratio"] for s, row in stats.items()})
    return {"samples": {v: np.asarray(rows[v]) for v in VARIANTS}, "count": count, "seconds": seconds,
            "auto": auto, "max_time": max_time, "target_reached": reached, "summary": stats}


def timing_record(rounds: dict, stages: list[str], *, threads: int) -> dict:
    """The JSON fields of a measurement: per-stage statistics, ratios with intervals, timing and stability."""
    from . import stats

    summary = rounds["summary"]
    stages_out: dict[str, dict] = {}
    for v in VARIANTS:
        stages_out[v] = {}
        for j, s in enumerate(stages):
            _, lo, hi = summary[s][v]
            stages_out[v][s] = {**stats_ms(rounds["samples"][v][:, j].tolist()), "median_ci": [lo / 1e6, hi / 1e6]}
    load = stats.load_average()
    cpus = os.cpu_count()
    stable = stats.stability(summary, load=load, cpu_count=cpus, threads=threads, rounds=rounds["count"])
    return {
        "stages": stages_out,
        "ratios": {s: summary[s]["ratio"][0] for s in stages},  # the median of the rounds' own ratios
        "ratio_intervals": {s: list(summary[s]["ratio"][1:]) for s in stages},
        "ratio_of_medians": {s: summary[s]["ratio_of_medians"] for s in stages},  # for information
        "timing": {"iters": "auto" if rounds["auto"] else rounds["count"], "rounds": rounds["count"],
                   "seconds": round(rounds["seconds"], 3), "max_time_s": rounds["max_time"] if rounds["auto"] else None,
                   "target_half_width": stats.TARGET_HALF_WIDTH, "target_reached": rounds["target_reached"],
                   "widest_half_width": _finite(max(stats.relative_half_width(*summary[s]["ratio"]) for s in stages)),
                   "confidence": stats.CONFIDENCE, "resamples": stats.NUM_RESAMPLES, "seed": stats.SEED,
                   "interval": "percentile bootstrap over rounds; ratios paired by round"},
        "stability": {**stable, "load_average": load, "cpu_count": cpus, "threads": threads,
                      "spread_p90_over_median": {v: {s: summary[s]["spread"][v] for s in stages} for v in VARIANTS}},
    }


def _finite(x: float) -> float | None:
    """``x``, or None where it is inf or nan (JSON has neither)."""
    return x if np.isfinite(x) else None


def timing_lines(result: dict, command: str = "bench") -> tuple[str, str | None]:
    """The stderr line on whether the target was reached, and the instability warning (or None)."""
    t = result["timing"]
    target = f"±{100 * t['target_half_width']:.0f} %"
    widest = "widest ratio interval " + (f"±{100 * t['widest_half_width']:.1f} %" if t["widest_half_width"] is not None
                                         else "unbounded")
    done = f"{t['rounds']} rounds in {t['seconds']:.1f} s"
    if t["iters"] != "auto":
        line = f"{command}: {done} (--iters {t['iters']}); {widest}, target {target} " + \
            ("met" if t["target_reached"] else "not met")
    elif t["target_reached"]:
        line = f"{command}: target reached: every ratio's 95 % interval within {target} after {done}"
    else:
        line = f"{command}: target {target} not reached within --max-time {t['max_time_s']:g} s ({done}; {widest})"
    return line, result["stability"]["warning"]


def report_timing(result: dict, command: str) -> None:
    """Log :func:`timing_lines` of a result (or a regress measurement): the target line, then any warning."""
    from ..io import log, warn

    line, warning = timing_lines(result, command)
    log(line)
    if warning:
        warn(f"warning: {warning}")


def progress_bar(iterable, *, desc: str, disable: bool = False, total: int | None = None):
    """tqdm's bar over ``iterable`` when tqdm is installed (the device path does not need it), else ``iterable``.

    With ``iterable`` None: a bar to ``update`` by hand (``total`` None: a count without an end), or None.
    """
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, disable=disable, leave=False, total=total)


def can_plot() -> bool:
    """True if matplotlib (for :func:`plot_result`) is installed; the device path does not need it."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def format_result(result: dict) -> str:
    """The readable table: medians and ratios with their 95 % intervals, then the settings and the load."""
    from .stats import interval_text, load_text

    rows = []
    for s in result["ratios"]:
        b, p = result["stages"]["baseline"][s], result["stages"]["pruned"][s]
        ratio = interval_text(result["ratios"][s], *result["ratio_intervals"][s])
        rows.append([s, interval_text(b["median"], *b["median_ci"]), f"{b['p90']:.3f}",
                     interval_text(p["median"], *p["median_ci"]), f"{p['p90']:.3f}", ratio])
    nms = result["nms_input_boxes"]
    counted = ("median" in nms["baseline"] and f"boxes entering NMS per image (median): baseline "
               f"{nms['baseline']['median']:.0f}, pruned {nms['pruned']['median']:.0f}")
    t, st = result["timing"], result["stability"]
    lines = [format_table(["stage", "baseline median ms [95 % CI]", "p90", "pruned median ms [95 % CI]", "p90",
                           "pruned/baseline [95 % CI]"], rows),
             counted or f"boxes entering NMS: {nms['baseline']['note']}",
             *([("cost, pruned/baseline (the export's report): " + ", ".join(
                 f"{name} x{result['cost_ratios'][key]:.3f}" for key, name in
                 (("head_macs", "head MACs"), ("total_macs", "total MACs"), ("num_boxes", "boxes"))
                 if key in result["cost_ratios"]))] if result.get("cost_ratios") else []),
             f"{result['runtime']} {result['settings'].get('version')} at "
             f"{canonical_precision(result.get('precision', 'fp32'))}, threads "
             f"{_threads(result['settings'])}, on {result['machine']['cpu']} ({st['cpu_count']} CPUs, "
             f"{load_text(st['load_average'])}); {t['rounds']} interleaved rounds in {t['seconds']:.1f} s after "
             f"{result['warmup']} warm-up" + ("; CPU time, not wall time" if t.get("clock") == "cpu" else "")
             + ("; UNSTABLE, see the warning" if st["unstable"] else "")]
    return "\n".join(lines)


def _threads(settings: dict):
    for key in ("intra_op_num_threads", "inference_num_threads", "threads"):
        if key in settings:
            return settings[key]
    return "default"


def plot_result(result: dict, path) -> None:
    """Write :func:`edgeanchor.benchmark.plot.bench_figure` of ``result`` to ``path`` as a PNG (atomically)."""
    from ..io import atomic_path
    from .plot import bench_figure

    fig = bench_figure(result)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def is_bench_result(path) -> bool:
    """True if ``path`` holds a result bench wrote."""
    from ..io import peek_json

    obj = peek_json(path)
    return isinstance(obj, dict) and {"stages", "ratio_of_medians", "runtime"} <= set(obj)


def is_png(path) -> bool:
    """True if ``path`` is a PNG image (bench's plot)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == b"\x89PNG\r\n\x1a\n"
    except OSError:
        return False
