"""model_nonms.onnx (and backbone.onnx, head.onnx) in OpenCV DNN and ncnn, against ONNX Runtime.

  python benchmarks/nonms_runtimes.py [EXPORT ...] [--num-images 20]
      [--opencv-python PY ...] [--ncnn-python PY] [--out benchmarks/results/nonms_runtimes.json]

Run by the project's interpreter (edgeanchor, torch, onnxruntime), it:

1. loads ``--num-images`` images of each export's report split as the model sees them and runs
   ONNX Runtime on both variants' backbone, head (on ONNX Runtime's features), model_nonms and model
   (the references, saved to an .npz per variant);
2. runs itself as a worker (``worker --runtime opencv|ncnn REFS...``) under each interpreter given:
   every ``--opencv-python`` (default: this one, if it has cv2) and ``--ncnn-python`` (one with the
   ``ncnn`` and ``pnnx`` packages; skipped if not given). A worker needs NumPy and its runtime only
   (OpenCV: also onnx, for :class:`edgeanchor.runtimes.opencv.OpenCvRunner`), never torch, so
   OpenCV 5 or ncnn can live in scratch environments;
3. writes one JSON: runtime versions and settings, per export/variant/graph whether it loads, max abs
   differences, pass/fail, and the load average before and after.

Checks (tolerances as in issue 13): model_nonms's real rows (score > 0) matched one to one with ONNX
Runtime's (same label, score within 1e-4, box within 1e-4 px; exactly tied scores may swap at the
top-K cut), as ``edgeanchor.exporting.parity.compare_nonms`` does; backbone and head with
``compare_tensors``'s rule (allclose, rtol 1e-3, atol 1e-5 times the tensor's max |value| when above
1). OpenCV also runs end to end (model_nonms + NMSBoxesBatched, as examples/opencv_deploy.py does)
against model.onnx's detections (every row matched). OpenCV runs with Winograd off (the runner's
default) and again with OpenCV's default (on). ncnn: pnnx converts each ONNX file (fp32 weights), the
ncnn layers it could not produce are listed, and the net runs with fp16/bf16 storage and arithmetic off.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("pruned", "baseline")
GRAPHS = ("backbone", "head", "model_nonms")
BOX_TOL, SCORE_TOL = 1e-4, 1e-4


# ------------------------------------------------------------------ comparisons (NumPy only)

def compare_tensors(ref: dict, got: dict, rtol: float = 1e-3, atol: float = 1e-5) -> dict:
    """Max abs diff and allclose over same-named arrays (edgeanchor.exporting.parity.compare_tensors's rule)."""
    diff, close = 0.0, True
    for name, r in ref.items():
        g = got[name]
        if g.size != r.size:
            return {"max_abs_diff": None, "passed": False, "error": f"{name}: shape {list(g.shape)} vs {list(r.shape)}"}
        g = g.reshape(r.shape)
        scale = max(1.0, float(np.abs(r).max())) if r.size else 1.0
        diff = max(diff, float(np.abs(g.astype(np.float64) - r).max()) if r.size else 0.0)
        close = close and bool(np.allclose(g, r, rtol=rtol, atol=atol * scale))
    return {"max_abs_diff": diff, "passed": close}


def match_rows(ref: dict, got: dict, *, exact_count: bool = False) -> dict:
    """Real rows (score > 0) of ``got`` against ``ref``, one to one: same label, score and box within tolerance.

    An unmatched row is allowed only at the top-K cut (a tie there may let either in), as in
    edgeanchor.exporting.parity.compare_nonms; with ``exact_count`` every row must match.
    """
    rs, gs = ref["scores"].reshape(-1), got["scores"].reshape(-1)
    rr, gr = rs > 0, gs > 0
    order = np.argsort(-rs[rr], kind="stable")
    ref_s, ref_b = rs[rr][order].astype(np.float64), ref["boxes"].reshape(-1, 4)[rr][order].astype(np.float64)
    ref_l = ref["labels"].reshape(-1)[rr][order]
    got_s, got_b = gs[gr].astype(np.float64), got["boxes"].reshape(-1, 4)[gr].astype(np.float64)
    got_l = np.rint(got["labels"].reshape(-1)[gr]).astype(np.int64)
    score_d = np.abs(ref_s[:, None] - got_s[None, :])  # (R, G)
    box_d = np.abs(ref_b[:, None, :] - got_b[None, :, :]).max(-1) if len(ref_s) and len(got_s) else score_d
    ok = (ref_l[:, None] == got_l[None, :]) & (score_d <= SCORE_TOL) & (box_d <= BOX_TOL)
    taken, matched, s_max, b_max, unmatched, near = np.zeros(len(got_s), bool), 0, 0.0, 0.0, [], 0.0
    for i in range(len(ref_s)):  # best first
        js = np.flatnonzero(ok[i] & ~taken)
        if len(js):
            j = js[np.argmin(box_d[i, js])]
            taken[j], matched = True, matched + 1
            s_max, b_max = max(s_max, float(score_d[i, j])), max(b_max, float(box_d[i, j]))
        else:  # how far the nearest free row of the same label and score is: a box off by more than BOX_TOL?
            unmatched.append(ref_s[i])
            free = (ref_l[i] == got_l) & (score_d[i] <= SCORE_TOL) & ~taken
            near = max(near, float(box_d[i, free].min())) if free.any() else near
    cut = ref_s[-1] if len(ref_s) else 0.0
    at_cut = all(abs(s - cut) <= SCORE_TOL for s in unmatched + got_s[~taken].tolist())
    passed = len(ref_s) == len(got_s) and (matched == len(ref_s) if exact_count else at_cut)
    return {"count_ort": len(ref_s), "count": len(got_s), "matched": matched, "max_box_diff": b_max,
            "max_score_diff": s_max, "unmatched_nearest_box_diff": near, "passed": bool(passed)}


def summarise(per_image: list[dict]) -> dict:
    """Per-graph summary over images: worst diffs, counts, all passed."""
    if "count_ort" in per_image[0]:
        return {"counts_ort": [m["count_ort"] for m in per_image], "counts": [m["count"] for m in per_image],
                "matched": [m["matched"] for m in per_image],
                "max_box_diff": max(m["max_box_diff"] for m in per_image),
                "max_score_diff": max(m["max_score_diff"] for m in per_image),
                "unmatched_nearest_box_diff": max(m["unmatched_nearest_box_diff"] for m in per_image),
                "passed": all(m["passed"] for m in per_image)}
    errors = [m["error"] for m in per_image if "error" in m]
    out = {"max_abs_diff": None if errors else max(m["max_abs_diff"] for m in per_image),
           "passed": all(m["passed"] for m in per_image)}
    if errors:
        out["error"] = errors[0]
    return out


# ------------------------------------------------------------------ references (the project's interpreter)

def make_refs(export: Path, variant: str, num_images: int, out: Path) -> dict:
    """ONNX Runtime's outputs of one variant on the report split's first images, saved to ``out`` (.npz)."""
    import json as _json

    from edgeanchor.datasets.coco import load_image
    from edgeanchor.exporting.folder import ExportFolder
    from edgeanchor.exporting.parity import make_session, run_session

    folder = ExportFolder.open(export)
    files = sorted(img["file_name"] for img in _json.loads(Path(folder.report_ann).read_text())["images"])
    images = np.stack([load_image(Path(folder.data) / f, folder.image_size, folder.resize)[0].numpy()
                       for f in files[:num_images]])
    sessions = {g: make_session(folder.graph_path(variant, g)) for g in (*GRAPHS, "model")}
    arrays = {"images": images}
    for i, image in enumerate(images):
        x = image[None]
        feats = run_session(sessions["backbone"], {"images": x})
        outs = {"backbone": feats, "head": run_session(sessions["head"], feats),
                "model_nonms": run_session(sessions["model_nonms"], {"images": x}),
                "model": run_session(sessions["model"], {"images": x})}
        for graph, values in outs.items():
            for name, value in values.items():
                arrays[f"{i}/{graph}/{name}"] = value
    meta = {"export": str(export), "variant": variant, "num_images": len(images),
            "graphs": {g: str(folder.graph_path(variant, g)) for g in (*GRAPHS, "model")},
            "inputs": {g: [i.name for i in sessions[g].get_inputs()] for g in GRAPHS},
            "outputs": {g: [o.name for o in sessions[g].get_outputs()] for g in (*GRAPHS, "model")}}
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(out, **arrays)
    return meta


def load_refs(path: str) -> tuple[dict, dict]:
    data = np.load(path)
    return json.loads(str(data["meta"])), {k: data[k] for k in data.files if k != "meta"}


def ref_outputs(arrays: dict, meta: dict, i: int, graph: str) -> dict:
    return {n: arrays[f"{i}/{graph}/{n}"] for n in meta["outputs"][graph]}


# ------------------------------------------------------------------ OpenCV worker

def check_opencv(refs: list[str]) -> dict:
    import cv2

    sys.path.insert(0, str(ROOT))
    from edgeanchor.errors import EdgeAnchorError
    from edgeanchor.runtimes.opencv import OpenCvRunner  # cv2, NumPy and onnx only

    result = {"runtime": "opencv", "version": cv2.__version__, "configs": {}}
    for winograd in (False, True):
        config, settings = {}, {"winograd": winograd}
        for path in refs:
            meta, arrays = load_refs(path)
            g = meta["graphs"]
            try:
                runner = OpenCvRunner({"backbone": g["backbone"], "head": g["head"], "end_to_end": g["model_nonms"]},
                                      winograd=winograd)
            except EdgeAnchorError as exc:  # a graph OpenCV cannot load: recorded, not fatal
                config[f"{Path(meta['export']).name}/{meta['variant']}"] = {"loads": False, "error": str(exc)[:400]}
                continue
            per = {k: [] for k in ("backbone", "head", "model_nonms", "end_to_end")}
            for i in range(meta["num_images"]):
                x = arrays["images"][i][None]
                per["backbone"].append(compare_tensors(ref_outputs(arrays, meta, i, "backbone"),
                                                       runner.forward("backbone", {"images": x})))
                feats = ref_outputs(arrays, meta, i, "backbone")
                per["head"].append(compare_tensors(ref_outputs(arrays, meta, i, "head"), runner.forward("head", feats)))
                per["model_nonms"].append(match_rows(ref_outputs(arrays, meta, i, "model_nonms"), runner.run_nonms(x)))
                det = ref_outputs(arrays, meta, i, "model")
                n = int(det["num_detections"][0])
                rows = [det["detections"][0][:n], runner.detections(x)]
                ref, got = ({"boxes": r[:, :4], "scores": r[:, 4], "labels": np.rint(r[:, 5]).astype(np.int64)}
                            for r in rows)
                per["end_to_end"].append(match_rows(ref, got, exact_count=True))
            settings = runner.settings
            entry = {"loads": True, **{k: summarise(v) for k, v in per.items()}}
            entry["passed"] = all(entry[k]["passed"] for k in per)
            config[f"{Path(meta['export']).name}/{meta['variant']}"] = entry
        result["configs"]["winograd_" + ("on" if winograd else "off")] = {"settings": settings, "graphs": config}
    result["passed"] = all(e.get("passed", False) for e in result["configs"]["winograd_off"]["graphs"].values())
    return result


# ------------------------------------------------------------------ ncnn worker

@contextlib.contextmanager
def captured_stderr():
    """Capture what C code writes to file descriptor 2 (ncnn prints its load errors there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        box = {}
        try:
            yield box
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box["text"] = tmp.read().decode(errors="replace")


def pnnx_convert(pnnx: str, onnx_path: str, shapes: list[list[int]], work: Path) -> dict:
    """pnnx on one ONNX file (fp32 weights) in ``work``: its notes and the ncnn files it wrote."""
    model = work / Path(onnx_path).name
    shutil.copy(onnx_path, model)
    inputshape = ",".join("[" + ",".join(str(d) for d in s) + "]" for s in shapes)
    t0 = time.perf_counter()
    run = subprocess.run([pnnx, model.name, f"inputshape={inputshape}", "fp16=0"], cwd=work, capture_output=True,
                         text=True, timeout=600, check=False)
    text = run.stdout + run.stderr
    notes = Counter(line.strip() for line in text.splitlines()
                    if re.search(r"not supported|not exist|unsupported|error", line, re.IGNORECASE))
    stem = model.with_suffix("")
    return {"rc": run.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "notes": {k: v for k, v in notes.most_common(12)},
            "param": str(stem) + ".ncnn.param", "bin": str(stem) + ".ncnn.bin"}


def check_ncnn(refs: list[str], pnnx: str) -> dict:
    from importlib import metadata

    import ncnn

    try:
        pnnx_version = metadata.version("pnnx")
    except metadata.PackageNotFoundError:  # a pnnx binary from elsewhere
        pnnx_version = None
    result = {"runtime": "ncnn", "version": ncnn.__version__, "pnnx": pnnx, "pnnx_version": pnnx_version, "graphs": {},
              "settings": {"use_fp16_storage": False, "use_fp16_packed": False, "use_fp16_arithmetic": False,
                           "use_bf16_storage": False, "num_threads": "default", "pnnx_fp16": 0}}
    for path in refs:
        meta, arrays = load_refs(path)
        key = f"{Path(meta['export']).name}/{meta['variant']}"
        result["graphs"][key] = {}
        for graph in GRAPHS:
            feeds = [{n: arrays[f"{i}/backbone/{n}"] for n in meta["inputs"][graph]} if graph == "head"
                     else {"images": arrays["images"][i][None]} for i in range(meta["num_images"])]
            with tempfile.TemporaryDirectory() as tmp:
                entry = ncnn_graph(ncnn, pnnx, meta, arrays, graph, feeds, Path(tmp))
            result["graphs"][key][graph] = entry
    result["passed"] = all(e["passed"] for v in result["graphs"].values() for e in v.values())
    return result


def ncnn_graph(ncnn, pnnx: str, meta: dict, arrays: dict, graph: str, feeds: list[dict], work: Path) -> dict:
    shapes = [list(v.shape) for v in feeds[0].values()]
    conv = pnnx_convert(pnnx, meta["graphs"][graph], shapes, work)
    entry = {"pnnx_rc": conv["rc"], "pnnx_notes": conv["notes"]}
    if conv["rc"] != 0 or not Path(conv["param"]).is_file():
        return {**entry, "converted": False, "loads": False, "passed": False}
    layers = Counter(line.split()[0] for line in Path(conv["param"]).read_text().splitlines()[2:] if line.strip())
    entry["converted"] = True
    entry["layers_not_in_ncnn"] = {t: n for t, n in sorted(layers.items()) if ncnn.layer_to_index(t) < 0}
    net = ncnn.Net()
    for opt in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, opt, False)
    with captured_stderr() as err:
        loaded = net.load_param(conv["param"]) == 0 and net.load_model(conv["bin"]) == 0
    entry["loads"] = bool(loaded)
    if not loaded:
        return {**entry, "error": " ".join(err.get("text", "").split())[:300], "passed": False}
    per = []
    for i, feed in enumerate(feeds):
        ex = net.create_extractor()
        for j, value in enumerate(feed.values()):
            ex.input(f"in{j}", ncnn.Mat(np.ascontiguousarray(value[0])))  # ncnn has no batch axis
        got = {}
        for j, name in enumerate(meta["outputs"][graph]):
            ret, mat = ex.extract(f"out{j}")
            got[name] = np.array(mat) if ret == 0 else np.zeros(0)
        ref = ref_outputs(arrays, meta, i, graph)
        if graph == "model_nonms" and all(got[n].size == ref[n].size for n in ref):
            per.append(match_rows(ref, {n: got[n].reshape(ref[n].shape) for n in ref}))
        elif graph == "model_nonms":
            return {**entry, "error": f"outputs of sizes {[got[n].size for n in ref]}", "passed": False}
        else:
            per.append(compare_tensors(ref, got))
    return {**entry, **summarise(per)}


# ------------------------------------------------------------------ driver

def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_worker(python: str, runtime: str, refs: list[str], extra: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [python, __file__, "worker", "--runtime", runtime, "--out", out.name, *extra, *refs]
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            return {"runtime": runtime, "python": python, "error": run.stderr.strip().splitlines()[-1:],
                    "passed": False}
        result = json.loads(Path(out.name).read_text())
    result["python"] = python
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] != ["worker"]:
        return drive(argv)
    parser = argparse.ArgumentParser(description="check one runtime on saved references (NumPy + the runtime only)")
    parser.add_argument("refs", nargs="+", help=".npz files written by the driver")
    parser.add_argument("--runtime", choices=("opencv", "ncnn"), required=True)
    parser.add_argument("--pnnx", default=None, help="pnnx executable (default: next to this interpreter)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv[1:])
    if args.runtime == "opencv":
        result = check_opencv(args.refs)
    else:
        result = check_ncnn(args.refs, args.pnnx or str(Path(sys.executable).with_name("pnnx")))
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


def drive(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="*", default=["exports/demo", "exports/demo-yolo"])
    parser.add_argument("--num-images", type=int, default=20)
    parser.add_argument("--opencv-python", action="append", default=None,
                        help="an interpreter with cv2 (repeatable; default: this one)")
    parser.add_argument("--ncnn-python", default=None, help="an interpreter with ncnn and pnnx")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 if any OpenCV run fails (CI; ncnn cannot run model_nonms, see the module doc)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nonms_runtimes.json"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from edgeanchor.benchmark.machine import machine_info

    started = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        refs, exports = [], {}
        for export in args.exports:
            for variant in VARIANTS:
                path = Path(tmp) / f"{Path(export).name}-{variant}.npz"
                meta = make_refs(Path(export), variant, args.num_images, path)
                refs.append(str(path))
                exports.setdefault(export, {})[variant] = meta["graphs"]
        runs = [("opencv", py, []) for py in (args.opencv_python or [sys.executable])]
        if args.ncnn_python:
            runs.append(("ncnn", args.ncnn_python, []))
        results = [run_worker(py, runtime, refs, extra) for runtime, py, extra in runs]
    import onnxruntime

    report = {"benchmark": "nonms_runtimes", "date": datetime.date.today().isoformat(), "machine": machine_info(),
              "reference": {"runtime": "onnxruntime", "version": onnxruntime.__version__,
                            "providers": ["CPUExecutionProvider"]},
              "num_images": args.num_images, "tolerances": {"box_px": BOX_TOL, "score": SCORE_TOL},
              "exports": exports, "runtimes": results,
              "load_average_1_5_15min": {"start": started, "end": load_average()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    for r in results:
        print(f"{r['runtime']} {r.get('version', '?')}: {'passed' if r.get('passed') else 'FAILED'}"
              + (f" ({r['error']})" if "error" in r else ""))
    print(f"wrote {args.out}")
    failed = [r for r in results if r["runtime"] == "opencv" and not r.get("passed")]
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
