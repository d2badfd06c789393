"""Accuracy and latency regression checks against a stored baseline.

Measures an export (or a model, exported on the fly): COCO mAP of the pruned
model's deployed graph in the chosen runtime (and of the pruned checkpoint in
PyTorch where torch is installed), per-stage latency ratios pruned/unpruned
measured in the same run with the benchmark harness (absolute times drift
between runs and machines; ratios of interleaved measurements do not), and
the exported head's output channels per level. Then compares each metric
with its bound. Without torch everything but the PyTorch mAP is measured,
from the export folder alone.
"""

from __future__ import annotations

import json

from .benchmark.stats import decide, interval_text
from .errors import EdgeAnchorError, first_line
from .io import is_number, read_json, write_json
from .runtimes import canonical_precision

FORMAT = "edgeanchor.regress/1"
GATED_STAGES = ("backbone", "head", "postprocess", "end_to_end")


def is_verdict(path) -> bool:
    """True if ``path`` holds a verdict regress wrote (--json-out)."""
    from .io import peek_json

    obj = peek_json(path)
    return isinstance(obj, dict) and {"passed", "rows", "measured"} <= set(obj)


def is_baseline(path) -> bool:
    """True if ``path`` holds a baseline regress wrote (--update)."""
    from .io import peek_json

    obj = peek_json(path)
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def is_summary(path) -> bool:
    """True if ``path`` holds a Markdown summary regress wrote (--summary)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline().startswith("### edgeanchor regress")
    except (OSError, ValueError):
        return False


def measure(export, *, data=None, ann=None, iters: int | str = "auto", max_time: float = 60.0, clock: str = "cpu",
            warmup: int = 10, threads: int = 1, runtime: str = "onnxruntime", precision: str = "fp32",
            progress: bool = True, limits: dict[str, float] | None = None) -> dict:
    """mAP, latency ratios (with their 95 % intervals) and head channels of an export folder (or its path).

    ``deployed_mAP`` is the pruned model.onnx's (``model_int8`` at int8) in ``runtime`` at ``precision``;
    ``mAP`` the pruned checkpoint's in PyTorch, measured only where torch is installed. With ``iters`` auto
    and ``limits`` (stage -> the bound on its ratio), the timing goes on while an interval straddles its
    bound, until ``max_time``.
    """
    from .benchmark.accuracy import evaluate_export, graphs_use_reported_rule
    from .benchmark.harness import check_timing, open_export, run_bench
    from .evaluation.pseudo import reference_info

    precision = canonical_precision(precision)
    check_timing(iters, warmup, threads, max_time, clock)  # before the (slower) mAP evaluation
    folder = open_export(export)
    data = data or folder.data
    ann = ann or folder.report_ann
    identity = measured_identity(folder, ann)
    deployed = evaluate_export(folder, runtime=runtime, precision=precision, data=data, ann=ann, progress=progress)
    settled = None
    if limits:
        def settled(ratios: dict) -> bool:  # every gated ratio's interval on one side of its bound
            return all(decide(ratios[s][1:], limits[s]) != "inconclusive" for s in GATED_STAGES)
    bench = run_bench(folder, runtime=runtime, precision=precision, threads=threads, iters=iters, max_time=max_time,
                      warmup=warmup, progress=progress, settled=settled, clock=clock)
    measured = {
        "format": FORMAT,
        "identity": identity,
        "deployed_mAP": {"runtime": runtime, "precision": precision, "graph": deployed["graph"],
                         "mAP": deployed["mAP"], "mAP50": deployed["mAP50"],
                         "same_rule_as_pytorch": graphs_use_reported_rule(folder)},
        "ann": str(ann),
        "reference": "pseudo-labels" if reference_info(ann) is not None else "labels",  # pseudo: mAP is fidelity
        "latency_ratios": {s: bench["ratios"][s] for s in GATED_STAGES},
        "latency_intervals": {s: bench["ratio_intervals"][s] for s in GATED_STAGES},
        "absolute_ms": {v: {s: bench["stages"][v][s]["median"] for s in GATED_STAGES} for v in bench["stages"]},
        "head_channels": read_head_channels(folder),
        "bench_settings": {"runtime": runtime, "precision": precision, "threads": threads, "iters": iters,
                           "max_time": max_time, "clock": bench["timing"]["clock"], "warmup": warmup},
        "timing": bench["timing"],
        "stability": bench["stability"],
        "machine": bench["machine"],
    }
    if torch_installed():
        measured.update(pytorch_map(folder, data, ann, progress))
    return measured


def torch_installed() -> bool:
    """True if torch can be imported here (the PyTorch mAP is measured only then)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def pytorch_map(folder, data, ann, progress: bool) -> dict:
    """``mAP`` and ``mAP50`` of the pruned checkpoint in PyTorch (its evaluation rule)."""
    from .datasets.coco import CocoDetection
    from .evaluation.coco_map import coco_map
    from .evaluation.predict import predict

    det = folder.load_detector("pruned")
    metrics = coco_map(ann, predict(det, CocoDetection.for_detector(det, data, ann), progress=progress))
    return {"mAP": metrics["mAP"], "mAP50": metrics["mAP50"]}


def measured_identity(folder, ann) -> dict:
    """What a measurement is of: the architecture, classes, input size, the unpruned anchors and the data.

    The pruned anchors and the weights are not part of it: a change there is what regress is for.
    """
    import hashlib
    from pathlib import Path

    from .benchmark.harness import open_export

    folder = open_export(folder)
    info = folder.model_info  # format 2: from report.json, no torch
    try:
        digest = hashlib.sha256(Path(ann).read_bytes()).hexdigest()
    except OSError as exc:
        raise EdgeAnchorError(f"cannot read the annotations {ann}: {exc.strerror}; check the path") from None
    return {"arch": info["arch"], "num_classes": info["num_classes"], "image_size": list(info["image_size"]),
            "baseline_anchors": info["baseline_anchors"], "ann_sha256": digest}


def check_runtime(baseline: dict, runtime: str, precision: str, path) -> None:
    """Latency ratios of another runtime or precision are no baseline for these: a usage error, before measuring.

    Raises:
        EdgeAnchorError: naming both.
    """
    settings = baseline.get("bench_settings") or {}
    # f32: what baselines written before precision had one spelling hold
    stored = (settings.get("runtime", "onnxruntime"), canonical_precision(settings.get("precision", "fp32")))
    if stored != (runtime, precision):
        raise EdgeAnchorError(
            f"{path} was measured with {stored[0]} at {stored[1]}, not {runtime} at {precision}; pass `runtime` "
            f"{stored[0]} and `precision` {stored[1]}, or write a baseline for {runtime} by measuring with `update` set"
        )


def check_identity(baseline: dict, folder, ann, path) -> None:
    """A baseline of another model or split is a usage error, not a regression; checked before measuring.

    ``ann``: the user's annotation file, or None for the export's own copy of its report split.

    Raises:
        EdgeAnchorError: the baseline records no identity, or the first field that differs.
    """
    stored = baseline.get("identity")
    if not isinstance(stored, dict):
        raise EdgeAnchorError(f"{path} does not record which model and data it measured (an older baseline); "
                              "write one by measuring with `update` set")
    identity = measured_identity(folder, ann or folder.report_ann)
    for key, value in identity.items():
        if stored.get(key) != value:
            what = "annotation file contents" if key == "ann_sha256" else key
            raise EdgeAnchorError(
                f"{path} was measured for another model or data ({what}: baseline {stored.get(key)!r}, "
                f"this export {value!r}); compare against a baseline of this export, or write one by measuring "
                "with `update` set"
            )


def read_head_channels(folder) -> list[dict]:
    """Per active level, (cls, box) output channels read from the pruned head.onnx of an export folder."""
    import onnx

    from .exporting.head_channels import read_head_channels as from_graph

    path = folder.graph_path("pruned", "head")
    try:
        model = onnx.load(str(path), load_external_data=False)  # edgeanchor writes no external data
    except Exception as exc:  # protobuf's DecodeError and others, for a file that is not ONNX
        raise EdgeAnchorError(f"cannot read {path} as an ONNX graph ({first_line(exc)}); re-run prune-and-export "
                              "to write the folder anew") from None
    names = [o.name for o in model.graph.output if o.name.startswith("cls_")]
    if not names or not all(n[4:].isdigit() for n in names):
        raise EdgeAnchorError(f"{path} has outputs {[o.name for o in model.graph.output][:8]}, not cls_<level> and "
                              "box_<level> as an edgeanchor head graph; re-run prune-and-export to write it anew")
    return from_graph(model, sorted(int(n[4:]) for n in names))


def latency_limits(baseline: dict, latency_tol: float) -> dict[str, float]:
    """The bound on each gated stage's ratio: the baseline's ratio raised by ``latency_tol`` (relative)."""
    return {s: baseline["latency_ratios"][s] * (1 + latency_tol) for s in GATED_STAGES}


def compare(measured: dict, baseline: dict, *, map_tol: float, latency_tol: float) -> list[dict]:
    """One row per metric: value, bound, result (pass, fail or inconclusive) and passed.

    The deployed mAP is held to the baseline's deployed mAP of the same runtime and precision, or to its
    PyTorch mAP where the baseline has none; the PyTorch mAP (measured only with torch) to the baseline's.
    These and the head channels are exact: pass or fail. A latency row is decided from the measured ratio's
    95 % interval (:func:`~edgeanchor.benchmark.stats.decide`): pass when all of it is within the bound, fail
    when all of it is above, inconclusive when it straddles the bound. ``passed`` is false only on a fail.
    """
    rows = []
    name = "fidelity mAP" if measured.get("reference") == "pseudo-labels" else "mAP"  # against pseudo-labels
    if "mAP" in measured and is_number(baseline.get("mAP")):
        rows.append({"metric": f"{name} (PyTorch)", "value": measured["mAP"], "baseline": baseline["mAP"],
                     "bound": f">= {baseline['mAP'] - map_tol:.4f}",
                     "passed": measured["mAP"] >= baseline["mAP"] - map_tol})
    got = measured["deployed_mAP"]
    ref = deployed_reference(baseline, runtime=got["runtime"], precision=got["precision"],
                             same_rule_as_pytorch=got.get("same_rule_as_pytorch", True))
    rows.append({"metric": f"{name} deployed ({got['graph']}, {got['runtime']} {got['precision']})",
                 "value": got["mAP"], "baseline": ref, "bound": f">= {ref - map_tol:.4f}",
                 "passed": got["mAP"] >= ref - map_tol})
    limits = latency_limits(baseline, latency_tol)
    for stage in GATED_STAGES:
        value, ref = measured["latency_ratios"][stage], baseline["latency_ratios"][stage]
        lo, hi = measured.get("latency_intervals", {}).get(stage, (value, value))
        result = decide((lo, hi), limits[stage])
        rows.append({"metric": f"latency ratio {stage} (pruned/unpruned)", "value": value, "interval": [lo, hi],
                     "baseline": ref, "bound": f"<= {limits[stage]:.3f}", "result": result,
                     "passed": result != "fail"})
    same = measured["head_channels"] == baseline["head_channels"]
    rows.append({"metric": "head channels per level", "value": _channels(measured["head_channels"]),
                 "baseline": _channels(baseline["head_channels"]), "bound": "equal", "passed": same})
    for row in rows:
        row.setdefault("result", "pass" if row["passed"] else "fail")
    return rows


def verdict(rows: list[dict], *, strict: bool = False) -> tuple[str, bool, int]:
    """The whole check: (result, passed, exit code).

    ``fail`` (exit 1) if any row failed; else ``inconclusive`` if any latency row straddles its bound: it
    passes with exit code 3, or fails with exit 1 under ``strict``; else ``pass`` (exit 0).
    """
    results = {r["result"] for r in rows}
    if "fail" in results:
        return "fail", False, 1
    if "inconclusive" in results:
        return ("inconclusive", False, 1) if strict else ("inconclusive", True, 3)
    return "pass", True, 0


def inconclusive_line(rows: list[dict], measured: dict, *, strict: bool = False) -> str:
    """One line naming the latency rows whose interval straddles the bound, and what to do."""
    names = [r["metric"].split()[2] for r in rows if r["result"] == "inconclusive"]
    t = measured.get("timing", {})
    counted = "FAILED (--strict)" if strict else "counted as passing (exit 3; --strict fails it)"
    return (f"regress: inconclusive: the 95 % interval of the {', '.join(names)} latency ratio straddles its bound "
            f"after {t.get('rounds')} rounds in {t.get('seconds', 0):.0f} s; {counted}; a longer --max-time or a "
            "quieter machine decides it")


def deployed_reference(baseline: dict, *, runtime: str, precision: str, same_rule_as_pytorch: bool = True,
                       path="the baseline") -> float:
    """The baseline's deployed mAP for the same runtime and precision, else its PyTorch mAP where comparable.

    The PyTorch mAP is the checkpoint's, with its own rule; it is a reference for the deployed graph only where
    the graphs use that rule (``same_rule_as_pytorch``; not YOLO's deploy preset). Called before measuring
    (for its error) and when comparing.

    Raises:
        EdgeAnchorError: the baseline holds no comparable mAP.
    """
    stored = baseline.get("deployed_mAP")
    if isinstance(stored, dict) and (stored.get("runtime"), canonical_precision(str(stored.get("precision")))) \
            == (runtime, canonical_precision(precision)) \
            and is_number(stored.get("mAP")):
        return float(stored["mAP"])
    if is_number(baseline.get("mAP")) and same_rule_as_pytorch:
        return float(baseline["mAP"])
    raise EdgeAnchorError(
        f"{path} holds no deployed mAP for {runtime} at {precision}, and its PyTorch "
        "mAP is no reference for this export's graphs (they use another post-processing rule than the checkpoint, "
        "e.g. YOLO's deploy preset); write the baseline anew by measuring with `update` set"
    )


def _channels(chs: list[dict]) -> str:
    from .exporting.report_md import channels_text

    return " ".join(f"L{c['level']}:{channels_text(c)}" for c in chs)


def value_text(row: dict) -> str:
    """A row's value as printed: a latency ratio with its 95 % interval, an mAP to 4 places."""
    if "interval" in row:
        return interval_text(row["value"], *row["interval"])
    return f"{row['value']:.4f}" if isinstance(row["value"], float) else str(row["value"])


RESULT_TEXT = {"pass": "pass", "fail": "FAIL", "inconclusive": "inconclusive"}


def markdown(rows: list[dict], measured: dict, *, strict: bool = False) -> str:
    """A Markdown summary for a CI job summary."""
    result, passed, _ = verdict(rows, strict=strict)
    title = {"pass": "passed", "fail": "FAILED"}.get(result) or \
        ("FAILED (inconclusive, --strict)" if not passed else "passed, inconclusive")
    lines = [f"### edgeanchor regress: {title}", "",
             "| metric | value [95 % CI] | baseline | bound | result |", "| --- | ---: | ---: | --- | --- |"]
    for r in rows:
        base = f"{r['baseline']:.4f}" if isinstance(r["baseline"], float) else str(r["baseline"])
        shown = RESULT_TEXT[r["result"]]
        lines.append(f"| {r['metric']} | {value_text(r)} | {base} | {r['bound']} | "
                     f"{'**' + shown + '**' if r['result'] == 'fail' else shown} |")
    lines += ["", timing_note(measured), ""]
    return "\n".join(lines)


def timing_note(measured: dict) -> str:
    """How the latency ratios were measured: rounds, time, target, threads, CPUs, load; and the flag."""
    from .benchmark.stats import load_text

    bs, m = measured["bench_settings"], measured["machine"]
    t, st = measured.get("timing") or {}, measured.get("stability") or {}
    threads = bs["threads"]
    clock = {"cpu": "CPU time", "wall": "wall time"}.get(bs.get("clock", "wall"), bs.get("clock"))
    text = (f"Latency ratios ({clock}) are medians of interleaved {bs['runtime']} rounds "
            f"({t.get('rounds', bs['iters'])} rounds in {t.get('seconds', 0):.1f} s, {threads} "
            f"thread{'s' if threads != 1 else ''}; target ±"
            f"{100 * t.get('target_half_width', 0):.0f} % {'reached' if t.get('target_reached') else 'not reached'}) "
            f"on {m.get('cpu')} ({st.get('cpu_count', m.get('logical_cores'))} CPUs, "
            f"{load_text(st.get('load_average'))}), with 95 % bootstrap intervals over paired rounds; "
            "absolute medians (ms, for information): "
            + json.dumps({v: {s: round(x, 3) for s, x in d.items()} for v, d in measured["absolute_ms"].items()}))
    if st.get("unstable"):
        text += f". **Unstable timing**: {st['warning'].removeprefix('unstable timing: ')}"
    return text


def load_baseline(path) -> dict:
    """Read and validate a baseline before anything is measured.

    Raises:
        EdgeAnchorError: not a baseline of this format, or a field of the wrong type.
    """
    obj = read_json(path, "regression baseline")
    fix = "write one by measuring with `update` set"
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise EdgeAnchorError(f"{path} is not an edgeanchor regression baseline ({FORMAT}); {fix}")
    deployed = obj.get("deployed_mAP")
    if "deployed_mAP" in obj and not (isinstance(deployed, dict) and is_number(deployed.get("mAP"))):
        raise EdgeAnchorError(f"{path}: deployed_mAP must hold runtime, precision and mAP; {fix}")
    if not is_number(obj.get("mAP")) and not (deployed and "mAP" not in obj):
        raise EdgeAnchorError(f"{path}: mAP must be a number, got {obj.get('mAP')!r}; {fix}")
    ratios = obj.get("latency_ratios")
    if not isinstance(ratios, dict) or any(not is_number(ratios.get(s)) or ratios[s] <= 0 for s in GATED_STAGES):
        raise EdgeAnchorError(
            f"{path}: latency_ratios must give a positive number for each of {', '.join(GATED_STAGES)}; {fix}"
        )
    chans = obj.get("head_channels")
    keys = ("level", "cls_channels", "box_channels")
    if not isinstance(chans, list) or not all(isinstance(c, dict) and all(isinstance(c.get(k), int) for k in keys)
                                              for c in chans):
        raise EdgeAnchorError(f"{path}: head_channels must list {{level, cls_channels, box_channels}} per level; {fix}")
    return obj


def save_baseline(path, measured: dict, *, map_tol: float, latency_tol: float) -> None:
    write_json(path, {**measured, "tolerances_when_written": {"map_tol": map_tol, "latency_tol": latency_tol}})
