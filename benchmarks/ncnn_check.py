"""The ncnn decoded graph (edgeanchor.exporting.ncnn_graph) through pnnx into ncnn, against ONNX Runtime and PyTorch.

  python benchmarks/ncnn_check.py [EXPORT ...] [--num-images 8] [--ncnn-python PY] [--pnnx PNNX]
      [--out benchmarks/results/ncnn_check.json]

Run by the project's interpreter (edgeanchor, torch, onnxruntime), for each export folder (default
exports/demo and exports/demo-yolo) and both variants (pruned, baseline; the detector with the rule
its graphs use, ``ExportFolder.graph_detector``) it:

1. exports :class:`~edgeanchor.exporting.ncnn_graph.NcnnDecodedGraph` to ONNX in a temporary folder and
   records its op types;
2. runs ONNX Runtime on ``--num-images`` images of the report split (as the model sees them) and
   compares with PyTorch (``DecodeBoxes`` on the detector's own head outputs, background column
   dropped): max abs differences of boxes (px) and scores;
3. converts the ONNX file with pnnx (``inputshape=[1,3,H,W] fp16=0``; ``--pnnx``, default: the
   ``pnnx`` next to ``--ncnn-python``, else on PATH) and runs the ncnn net (fp16/bf16 off) on the same
   images, in this interpreter if it imports ``ncnn``, else as a worker under ``--ncnn-python``
   (``worker`` mode: NumPy and ncnn only, images and references passed as an .npz);
4. writes one JSON: versions, per export/variant the ops, ncnn layer counts, layers ncnn lacks, max
   diffs ncnn vs ONNX Runtime and ONNX Runtime vs PyTorch, pass/fail, and the load average.

Tolerances: boxes 1e-3 px, scores 1e-4 (max abs). No timings.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("pruned", "baseline")
BOX_TOL, SCORE_TOL = 1e-3, 1e-4


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------ ncnn worker (NumPy + ncnn only)

def run_ncnn(param: str, binfile: str, images: np.ndarray) -> dict:
    """Run the converted net on (N, 3, H, W) images: ``boxes`` (N, B, 4), ``scores`` (N, B, C) or an error."""
    import ncnn

    layers = Counter(line.split()[0] for line in Path(param).read_text().splitlines()[2:] if line.strip())
    out = {"ncnn_version": ncnn.__version__, "layers": dict(sorted(layers.items())),
           "layers_not_in_ncnn": {t: n for t, n in sorted(layers.items()) if ncnn.layer_to_index(t) < 0}}
    net = ncnn.Net()
    for opt in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, opt, False)
    if net.load_param(param) != 0 or net.load_model(binfile) != 0:
        return {**out, "loads": False}
    boxes, scores = [], []
    for image in images:
        x = np.ascontiguousarray(image, dtype=np.float32)  # (3, H, W): ncnn Mats have no batch axis
        mat = ncnn.Mat(x)  # wraps x's memory: x must outlive the extraction
        ex = net.create_extractor()
        ex.input("in0", mat)
        got = []
        for name in ("out0", "out1"):  # boxes, scores: the ONNX graph's output order
            ret, m = ex.extract(name)
            if ret != 0:
                return {**out, "loads": True, "error": f"extract {name} returned {ret}"}
            got.append(np.array(m).copy())
        boxes.append(got[0])
        scores.append(got[1])
    return {**out, "loads": True, "boxes": np.stack(boxes), "scores": np.stack(scores)}


def worker(argv) -> int:
    parser = argparse.ArgumentParser(description="run one converted ncnn net on saved images (NumPy + ncnn)")
    parser.add_argument("--param", required=True)
    parser.add_argument("--bin", required=True)
    parser.add_argument("--images", required=True, help=".npy (N, 3, H, W) float32")
    parser.add_argument("--out", required=True, help=".npz written with the outputs; .json beside it")
    args = parser.parse_args(argv)
    result = run_ncnn(args.param, args.bin, np.load(args.images))
    arrays = {k: result.pop(k) for k in ("boxes", "scores") if k in result}
    np.savez(args.out, **arrays)
    Path(args.out).with_suffix(".json").write_text(json.dumps(result))
    return 0


# ------------------------------------------------------------------ driver (project interpreter)

def pnnx_convert(pnnx: str, onnx_path: Path, shape: list[int]) -> dict:
    """pnnx on ``onnx_path`` (in its folder, fp32 weights): return code, notes and the ncnn files."""
    inputshape = "[" + ",".join(str(d) for d in shape) + "]"
    run = subprocess.run([pnnx, onnx_path.name, f"inputshape={inputshape}", "fp16=0"], cwd=onnx_path.parent,
                         capture_output=True, text=True, timeout=600, check=False)
    text = run.stdout + run.stderr
    notes = sorted({line.strip() for line in text.splitlines()
                    if any(w in line.lower() for w in ("not supported", "unsupported", "not exist", "error"))})
    stem = onnx_path.parent / onnx_path.stem.replace("-", "_")  # pnnx writes names with '_' for '-'
    return {"rc": run.returncode, "notes": notes[:12], "param": f"{stem}.ncnn.param", "bin": f"{stem}.ncnn.bin"}


def ncnn_outputs(python: str | None, param: str, binfile: str, images: np.ndarray, work: Path) -> dict:
    """ncnn's outputs, in this interpreter if it has ncnn, else via ``python``'s worker."""
    try:
        import ncnn  # noqa: F401

        return run_ncnn(param, binfile, images)
    except ImportError:
        pass
    if not python:
        return {"error": "ncnn is not importable here and no --ncnn-python was given"}
    np.save(work / "images.npy", images)
    out = work / "ncnn_out.npz"
    run = subprocess.run([python, __file__, "worker", "--param", param, "--bin", binfile,
                          "--images", str(work / "images.npy"), "--out", str(out)],
                         capture_output=True, text=True, check=False)
    if run.returncode != 0:
        return {"error": (run.stderr.strip().splitlines() or ["worker failed"])[-1]}
    result = json.loads(out.with_suffix(".json").read_text())
    result.update(dict(np.load(out)))
    return result


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0


def check_variant(folder, variant: str, num_images: int, pnnx: str, python: str | None, work: Path) -> dict:
    import onnxruntime as ort
    import torch

    from edgeanchor.datasets.coco import load_image
    from edgeanchor.exporting.graphs import DecodeBoxes
    from edgeanchor.exporting.ncnn_graph import FORBIDDEN_OPS, export_ncnn_graph

    det = folder.graph_detector(variant).eval()
    files = sorted(img["file_name"] for img in json.loads(Path(folder.report_ann).read_text())["images"])
    images = np.stack([load_image(Path(folder.data) / f, folder.image_size, folder.resize)[0].numpy()
                       for f in files[:num_images]]).astype(np.float32)
    onnx_path = work / f"{variant}_ncnn.onnx"
    info = export_ncnn_graph(det, onnx_path, trace_images=torch.from_numpy(images[:1]))
    entry = {"onnx_ops": info["ops"], "forbidden_ops": sorted(set(info["ops"]) & FORBIDDEN_OPS),
             "outputs": info["outputs"], "simplified": info["simplified"]}
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_boxes, ort_scores, torch_box_diff, torch_score_diff = [], [], 0.0, 0.0
    decoder = DecodeBoxes(det)
    for image in images:
        b, s = sess.run(["boxes", "scores"], {"images": image[None]})
        with torch.no_grad():
            x = torch.from_numpy(image[None])
            tb, tp = decoder([t for pair in det.head(det.backbone(x)) for t in pair])
        if det.postprocess_spec.score_fn == "softmax":
            tp = tp[:, 1:]
        torch_box_diff = max(torch_box_diff, max_diff(b[0], tb.numpy()))
        torch_score_diff = max(torch_score_diff, max_diff(s[0], tp.numpy()))
        ort_boxes.append(b[0])
        ort_scores.append(s[0])
    ort_boxes, ort_scores = np.stack(ort_boxes), np.stack(ort_scores)
    entry["ort_vs_torch"] = {"max_box_diff_px": torch_box_diff, "max_score_diff": torch_score_diff,
                             "passed": torch_box_diff <= BOX_TOL and torch_score_diff <= SCORE_TOL}
    conv = pnnx_convert(pnnx, onnx_path, [1, 3, *folder.image_size])
    entry["pnnx"] = {"rc": conv["rc"], "notes": conv["notes"]}
    if conv["rc"] != 0 or not Path(conv["param"]).is_file():
        entry["ncnn_vs_ort"] = {"converted": False, "passed": False}
        return entry
    got = ncnn_outputs(python, conv["param"], conv["bin"], images, work)
    res = {k: got[k] for k in ("ncnn_version", "layers", "layers_not_in_ncnn", "loads", "error") if k in got}
    if "boxes" in got and got["boxes"].size == ort_boxes.size and got["scores"].size == ort_scores.size:
        bd = max_diff(got["boxes"].reshape(ort_boxes.shape), ort_boxes)
        sd = max_diff(got["scores"].reshape(ort_scores.shape), ort_scores)
        res.update(max_box_diff_px=bd, max_score_diff=sd, passed=bd <= BOX_TOL and sd <= SCORE_TOL)
    else:
        if "boxes" in got:
            res["error"] = f"output shapes {list(got['boxes'].shape)}, {list(got['scores'].shape)}"
        res["passed"] = False
    entry["ncnn_vs_ort"] = res
    entry["passed"] = bool(entry["ort_vs_torch"]["passed"] and res["passed"] and not entry["forbidden_ops"])
    return entry


def default_pnnx(python: str | None) -> str | None:
    if python and Path(python).with_name("pnnx").is_file():
        return str(Path(python).with_name("pnnx"))
    return shutil.which("pnnx")


def drive(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="*", default=["exports/demo", "exports/demo-yolo"])
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--ncnn-python", default=None, help="an interpreter with ncnn (when this one has none)")
    parser.add_argument("--pnnx", default=None, help="pnnx executable (default: next to --ncnn-python, else PATH)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ncnn_check.json"))
    args = parser.parse_args(argv)
    pnnx = args.pnnx or default_pnnx(args.ncnn_python)
    if not pnnx:
        parser.error("no pnnx executable found; pass --pnnx")
    sys.path.insert(0, str(ROOT))
    import onnxruntime
    import torch

    from edgeanchor.exporting.folder import ExportFolder

    started = load_average()
    results = {}
    for export in args.exports:
        folder = ExportFolder.open(export)
        for variant in VARIANTS:
            with tempfile.TemporaryDirectory() as tmp:
                entry = check_variant(folder, variant, args.num_images, pnnx, args.ncnn_python, Path(tmp))
            results[f"{Path(export).name}/{variant}"] = entry
            n = entry["ncnn_vs_ort"]
            t = entry["ort_vs_torch"]
            print(f"{Path(export).name}/{variant}: ORT vs torch box {t['max_box_diff_px']:.3g} px, "
                  f"score {t['max_score_diff']:.3g}; ncnn vs ORT box {n.get('max_box_diff_px')} px, "
                  f"score {n.get('max_score_diff')}: {'passed' if entry.get('passed') else 'FAILED'}")
    ncnn_version = next((e["ncnn_vs_ort"].get("ncnn_version") for e in results.values()
                         if e["ncnn_vs_ort"].get("ncnn_version")), None)
    report = {"benchmark": "ncnn_check", "date": datetime.date.today().isoformat(),
              "versions": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "ncnn": ncnn_version,
                           "pnnx": pnnx_version(args.ncnn_python), "python": sys.version.split()[0]},
              "pnnx": pnnx, "ncnn_python": args.ncnn_python,
              "settings": {"pnnx_fp16": 0, "use_fp16_storage": False, "use_fp16_packed": False,
                           "use_fp16_arithmetic": False, "use_bf16_storage": False},
              "num_images": args.num_images, "tolerances": {"box_px": BOX_TOL, "score": SCORE_TOL},
              "results": results, "passed": all(e.get("passed", False) for e in results.values()),
              "load_average_1_5_15min": {"start": started, "end": load_average()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'passed' if report['passed'] else 'FAILED'}; wrote {args.out}")
    return 0 if report["passed"] else 1


def pnnx_version(python: str | None) -> str | None:
    """The pnnx package's version in ``python``'s environment (or this one's), if it is one."""
    code = "from importlib import metadata; print(metadata.version('pnnx'))"
    try:
        run = subprocess.run([python or sys.executable, "-c", code], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return run.stdout.strip() or None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["worker"]:
        return worker(argv[1:])
    return drive(argv)


if __name__ == "__main__":
    sys.exit(main())
