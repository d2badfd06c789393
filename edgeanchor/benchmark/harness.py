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


def check_timing(iters: int, warmup: int, threads: int) -> None:
    """Timing settings, checked before anything is opened or measured.

    Raises:
        EdgeAnchorError: iters < 1, warmup < 0 or threads < 0.
    """
    if iters < 1 or warmup < 0 or threads < 0:
        raise EdgeAnchorError(
            f"`iters` must be >= 1, `warmup` >= 0 and `threads` >= 0 (got {iters}, {warmup}, {threads})"
        )


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


def run_bench(export, *, runtime: str = "onnxruntime", threads: int = 0, warmup: int = 10, iters: int = 100,
              image_dir=None, opt_level: str = "all", progress: bool = True, precision: str = "fp32",
              end_to_end: str | None = None) -> dict:
    """Time both variants of an export folder (an :class:`ExportFolder` or its path); returns the JSON-ready result.

    ``precision`` (fp32, bf16, fp16 or int8; also f32, f16) is what the runtime runs the graphs at; int8 runs the
    export's int8 graphs. It is recorded in the result, with the runtime's settings. ``end_to_end`` names
    the graph of the end-to-end stage (default: model.onnx; OpenCV: model_nonms.onnx + NMSBoxesBatched).
    """
    from ..runtimes import check_graph_for_runtime, check_precision

    precision = canonical_precision(precision)
    check_timing(iters, warmup, threads)
    check_precision(runtime, precision)
    if end_to_end:
        check_graph_for_runtime(end_to_end, runtime)
    folder = open_export(export)
    images, source = load_images(folder, image_dir)
    runners = {v: make_runner(runtime, folder, v, threads=threads, opt_level=opt_level, precision=precision,
                              end_to_end=end_to_end) for v in VARIANTS}
    stages = [s for s in STAGES if s in getattr(runners["pruned"], "stages", STAGES)]
    samples: dict[str, dict[str, list[int]]] = {v: {s: [] for s in stages} for v in VARIANTS}
    for i in progress_bar(range(warmup + iters), desc=f"bench {runtime}", disable=not progress):
        image = images[i % len(images)]
        order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
        for v in order:
            times = runners[v].run_all(image)
            if i >= warmup:
                for s in stages:
                    samples[v][s].append(times[s])
    result = {"export_dir": str(folder.root), "runtime": runtime, "precision": precision,
              "settings": runners["pruned"].settings,
              "machine": machine_info(), "warmup": warmup, "iters": iters, "images": source,
              "num_images": len(images), "stages": {}, "ratio_of_medians": {}}
    for v in VARIANTS:
        result["stages"][v] = {s: stats_ms(samples[v][s]) for s in stages}
    for s in stages:
        result["ratio_of_medians"][s] = result["stages"]["pruned"][s]["median"] / \
            result["stages"]["baseline"][s]["median"]
    result["nms_input_boxes"] = {v: count_nms_inputs(folder, v, images, runtime) for v in VARIANTS}
    return result


def progress_bar(iterable, *, desc: str, disable: bool = False):
    """tqdm's bar over ``iterable`` when tqdm is installed (the device path does not need it), else ``iterable``."""
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, disable=disable, leave=False)


def can_plot() -> bool:
    """True if matplotlib (for :func:`plot_result`) is installed; the device path does not need it."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def format_result(result: dict) -> str:
    """The readable table."""
    rows = []
    for s in result["ratio_of_medians"]:
        b, p = result["stages"]["baseline"][s], result["stages"]["pruned"][s]
        rows.append([s, f"{b['median']:.3f}", f"{b['p90']:.3f}", f"{p['median']:.3f}", f"{p['p90']:.3f}",
                     f"{result['ratio_of_medians'][s]:.3f}"])
    nms = result["nms_input_boxes"]
    counted = ("median" in nms["baseline"] and f"boxes entering NMS per image (median): baseline "
               f"{nms['baseline']['median']:.0f}, pruned {nms['pruned']['median']:.0f}")
    lines = [format_table(["stage", "baseline med ms", "p90", "pruned med ms", "p90", "pruned/baseline"], rows),
             counted or f"boxes entering NMS: {nms['baseline']['note']}",
             f"{result['runtime']} {result['settings'].get('version')} at "
             f"{canonical_precision(result.get('precision', 'fp32'))}, threads "
             f"{_threads(result['settings'])}, on {result['machine']['cpu']} "
             f"({result['machine']['logical_cores']} cores); {result['iters']} iterations after "
             f"{result['warmup']} warm-up, interleaved"]
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
