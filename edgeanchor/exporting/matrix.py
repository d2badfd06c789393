"""The runtime matrix of an export: every runtime × every graph, loads / parity / latency.

For each runtime (ONNX Runtime, OpenVINO, OpenCV DNN, TensorRT) and each graph
of the export, :func:`runtime_matrix` records whether the graph loads and
runs, its parity with PyTorch (:func:`~edgeanchor.exporting.parity.check_parity`
on that graph alone) and the median latency of pruned against baseline,
measured interleaved on the parity images. A runtime that is not installed,
or a graph it cannot run, gets one line saying why. OpenVINO runs its IR
(``openvino/*.xml``) when the export has it, else the ONNX file; all at f32.
The int8 graphs, when present, get latency rows at int8 (their accuracy is
the int8 mAP table's business, not parity's).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import EdgeAnchorError
from ..runtimes import RUNTIMES, TRT_ONLY, open_graph, require, version
from .folder import GRAPH_RUNTIMES, GRAPHS, VARIANTS, ExportFolder
from .graphs import level_names

INT8_SUFFIX = "_int8"


def graph_feeds(detector, image: torch.Tensor) -> dict[str, dict[str, np.ndarray]]:
    """Inputs of each stage graph for one image (1, 3, H, W), from the PyTorch detector."""
    names = level_names(detector)
    with torch.no_grad():
        feats = detector.backbone(image)
        head = [t for pair in detector.head(feats) for t in pair]
    images = {"images": image.numpy()}
    return {"images": images, "features": {n: f.numpy() for n, f in zip(names["features"], feats)},
            "head": {n: t.numpy() for n, t in zip(names["head"], head)}}


_INPUTS = {"backbone": "images", "head": "features", "postprocess": "head"}


def _feeds_for(graph: str) -> str:
    return _INPUTS.get(graph.removesuffix(INT8_SUFFIX), "images")


def _not_installed(runtime: str) -> str | None:
    """Why ``runtime`` cannot run here (its one-line error: the extra to install), or None."""
    try:
        require(runtime)
    except EdgeAnchorError as exc:
        return str(exc)
    return None


def runtime_matrix(folder: ExportFolder, images: torch.Tensor, *, iters: int = 20, threads: int = 1,
                   runtimes=RUNTIMES, detectors: dict | None = None, log=None) -> dict:
    """Runtime x graph: ``loads``, ``parity``, ``latency_ms`` (pruned, baseline, ratio) or ``why``.

    Args:
        folder: a written export folder (both variants).
        images: float32 (N, 3, H, W) in [0, 1] as the model sees them; parity and timing run on them.
        iters: timed runs per graph and variant (interleaved, after one warm-up run per image).
        threads: intra-op threads of every runtime.
        detectors: variant -> the detector the graphs were exported from, with their rule (default: the
            folder's ``graph_detector``, which needs the folder's report.json).
    """
    from ..benchmark.machine import machine_info
    from .parity import check_parity

    dets = detectors or {v: folder.graph_detector(v) for v in VARIANTS}
    feeds = {v: [graph_feeds(dets[v], img[None]) for img in images.float()] for v in VARIANTS}
    graphs = [g for g in GRAPHS if all(folder.graph_path(v, g).is_file() for v in VARIANTS)]
    out: dict[str, Any] = {"machine": machine_info(), "threads": threads, "iters": iters,
                           "num_images": int(images.shape[0]), "precision": "fp32 (int8 graphs: int8)", "runtimes": {}}
    for runtime in runtimes:
        why = _not_installed(runtime)
        if why:
            out["runtimes"][runtime] = {"installed": False, "why": why}
            continue
        entry: dict[str, Any] = {"installed": True, "version": version(runtime), "graphs": {}}
        if log:
            log(f"runtime matrix: {runtime} {entry['version']}")
        for graph in graphs:
            entry["graphs"][graph] = _cell(folder, runtime, graph, dets, feeds, images, iters, threads, check_parity)
        out["runtimes"][runtime] = entry
    out["stability"] = _matrix_stability(out)
    return out


def _cell(folder, runtime, graph, dets, feeds, images, iters, threads, check_parity) -> dict:
    if graph.startswith(TRT_ONLY) and runtime != "tensorrt":
        return {"loads": False, "why": f"{graph}.onnx is for TensorRT only (EfficientNMS_TRT plugin)"}
    if runtime == "tensorrt":
        return {"loads": None, "why": "TensorRT engines are built and timed by edgeanchor bench with runtime tensorrt"}
    if runtime not in GRAPH_RUNTIMES.get(graph, ()):
        return {"loads": False, "why": f"{graph}.onnx is for {', '.join(GRAPH_RUNTIMES[graph])}"}
    int8 = graph.endswith(INT8_SUFFIX)
    precision = "int8" if int8 else "fp32"
    kind = _feeds_for(graph)
    try:
        opened = {v: open_graph(runtime, folder.runtime_file(runtime, v, graph), threads=threads, precision=precision)
                  for v in VARIANTS}
        for v in VARIANTS:  # one run per image: loads and runs on every image, and warms up
            for f in feeds[v]:
                opened[v].run(f[kind])
    except EdgeAnchorError as exc:
        return {"loads": False, "why": str(exc)}
    cell: dict[str, Any] = {"loads": True, "file": str(opened["pruned"].path.relative_to(folder.root)),
                            "precision": precision}
    if int8:
        cell["parity"] = None  # int8 differs from fp32 by design; see the int8 mAP rows
    else:
        passed, detail = True, {}
        for v in VARIANTS:
            try:
                res = check_parity(dets[v], folder.variant_dir(v), images, runtime=runtime,
                                   intra_op_num_threads=threads, files={graph: folder.runtime_file(runtime, v, graph)})
            except EdgeAnchorError as exc:
                return {"loads": False, "why": str(exc)}
            passed = passed and res["passed"]
            detail[v] = _parity_summary(res[graph])
        cell["parity"] = {"passed": passed, **detail}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(iters):
        order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
        for v in order:
            f = feeds[v][i % len(feeds[v])][kind]
            times[v].append(opened[v].timed(f)[1])
    cell["latency_ms"], cell["stability"] = _latency(times, threads)
    return cell


def _latency(times: dict[str, list[float]], threads: int) -> tuple[dict, dict]:
    """Medians (ms) and the pruned/baseline ratio of interleaved rounds, each with its 95 % interval, and
    whether the timing is stable (:func:`~edgeanchor.benchmark.stats.stability`)."""
    import os

    from ..benchmark import stats

    summary = stats.summarise_rounds(np.asarray(times["baseline"])[:, None], np.asarray(times["pruned"])[:, None],
                                     ["graph"])
    row = summary["graph"]
    ms = {v: [x / 1e6 for x in row[v]] for v in VARIANTS}  # (median, lo, hi)
    latency = {"pruned": ms["pruned"][0], "baseline": ms["baseline"][0], "ratio": row["ratio"][0],
               "pruned_ci": ms["pruned"][1:], "baseline_ci": ms["baseline"][1:], "ratio_ci": list(row["ratio"][1:]),
               "ratio_of_medians": row["ratio_of_medians"], "spread_p90_over_median": row["spread"]}
    stable = stats.stability(summary, load=stats.load_average(), cpu_count=os.cpu_count(), threads=threads,
                             rounds=len(times["pruned"]))
    return latency, {k: stable[k] for k in ("unstable", "causes", "fixes")}


def _matrix_stability(out: dict) -> dict:
    """The matrix's flag: the load, the CPUs, the threads, and how many timed cells were unstable and why."""
    import os

    from ..benchmark import stats

    cells = [c for e in out["runtimes"].values() for c in e.get("graphs", {}).values() if "stability" in c]
    bad = [c["stability"] for c in cells if c["stability"]["unstable"]]
    causes = list(dict.fromkeys(_cause_kind(c) for st in bad for c in st["causes"]))
    fixes = list(dict.fromkeys(f for st in bad for f in st["fixes"]))
    return {"unstable": bool(bad), "unstable_cells": len(bad), "timed_cells": len(cells), "causes": causes,
            "fixes": fixes, "load_average": stats.load_average(), "cpu_count": os.cpu_count(),
            "threads": out["threads"], "target_half_width": stats.TARGET_HALF_WIDTH,
            "spread_limit": stats.SPREAD_LIMIT}


def _cause_kind(cause: str) -> str:
    """A cell's cause without its figures: what the matrix's one line lists."""
    if "interval" in cause:
        return "ratio intervals wider than ±3 %" if "target" in cause else "too few rounds"
    if "load average" in cause:
        return "a load average above the CPU count"
    return "a p90 far above the median"


def _parity_summary(res: dict) -> dict:
    if "max_abs_diff" in res:
        return {"max_abs_diff": res["max_abs_diff"], "passed": res["allclose"]}
    if "matched_fraction" in res:
        return {"matched_fraction": res["matched_fraction"], "passed": res["passed"]}
    return {"max_box_diff": res["max_box_diff"], "max_score_diff": res["max_score_diff"], "passed": res["passed"]}


def matrix_markdown(matrix: dict) -> list[str]:
    """report.md lines: one table row per runtime x graph, one line per runtime that is not there.

    Every ratio is printed with its 95 % interval; the load, the CPUs and the threads are stated, and an
    unstable timing is flagged in its row and in one line under the table.
    """
    from ..benchmark.stats import interval_text, load_text

    m = matrix
    st = m.get("stability") or {}
    threads = m["threads"]
    lines = [f"Every graph in every installed runtime, at fp32 (int8 graphs at int8): whether it loads and runs, its "
             f"parity with PyTorch on {m['num_images']} images, and the median of {m['iters']} interleaved rounds "
             f"with its 95 % bootstrap interval ({threads} thread{'s' if threads != 1 else ''}; "
             f"{st.get('cpu_count', m['machine'].get('logical_cores'))} CPUs, "
             f"{load_text(st.get('load_average'))} after the timing).", "",
             "| runtime | graph | loads | parity | pruned ms [95 % CI] | baseline ms [95 % CI] | "
             "pruned / baseline [95 % CI] | timing |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | --- |"]
    notes = []
    for runtime, entry in m["runtimes"].items():
        if not entry["installed"]:
            notes.append(f"- {runtime}: {entry['why']}")
            continue
        name = f"{runtime} {entry['version']}"
        for graph, cell in entry["graphs"].items():
            if not cell["loads"]:
                lines.append(f"| {name} | {graph} | no | | | | | |")
                notes.append(f"- {runtime} / {graph}: {cell['why']}")
                continue
            par = cell.get("parity")
            ptxt = "int8 (see int8 mAP)" if par is None else ("yes" if par["passed"] else "**no**")
            lat = cell["latency_ms"]
            flag = "**unstable**" if cell.get("stability", {}).get("unstable") else "stable"
            shown = [interval_text(lat[k], lat[f"{k}_ci"][0], lat[f"{k}_ci"][1], 2)
                     for k in ("pruned", "baseline", "ratio")]
            lines.append(f"| {name} | {graph} | yes | {ptxt} | {' | '.join(shown)} | {flag} |")
    if st.get("unstable"):
        lines += ["", f"**Unstable timing** in {st['unstable_cells']} of {st['timed_cells']} rows "
                  f"({', '.join(st['causes'])}): read their latencies as rough. For figures to trust, time the "
                  "export with `edgeanchor bench`, which measures until every interval is within "
                  f"±{100 * st['target_half_width']:.0f} %" + (", on a quieter machine" if "a quieter machine" in
                                                               st["fixes"] else "") + "."]
    if notes:
        lines += ["", *notes]
    return lines
