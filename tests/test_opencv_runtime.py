"""OpenCV DNN on the exported graphs: backbone, head and model_nonms as ONNX Runtime runs them, and the
README's deployment example (examples/opencv_deploy.py: OpenCV and NumPy only) giving model.onnx's detections.

Exports are built from the shipped trained demos (SSD: stretch, labels from 1; YOLOv5n: letterbox,
labels from 0), pruned and unpruned, on a small synthetic split.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeanchor.datasets.coco import letterbox_params, load_image, to_original
from edgeanchor.errors import EdgeAnchorError
from edgeanchor.evaluation.predict import clip_original
from edgeanchor.exporting.folder import ExportFolder
from edgeanchor.exporting.parity import make_session, run_session
from edgeanchor.models import build_detector
from edgeanchor.pipeline import write_export
from edgeanchor.pruning import prune
from edgeanchor.runtimes.opencv import OpenCvRunner, opencv_parity
from edgeanchor.runtimes.opencv import load as import_cv2
from tests.helpers import build_once, shared_synth_split

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "opencv_deploy.py"
MODELS = ("demo", "demo-yolo")


@pytest.fixture(scope="module")
def cv2():
    return pytest.importorskip("cv2", reason="OpenCV is not installed (pip install opencv-python-headless)")


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("opencv_deploy", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return shared_synth_split(tmp_path_factory, "opencv_split", num_images=10, seed=17, splits=(0.0, 0.5, 0.5))


@pytest.fixture(scope="module")
def exports(split, tmp_path_factory):
    """Model name -> export folder (every other anchor kept), built once."""
    images, anns = split
    cache = {}

    def get(name):
        if name not in cache:
            reference = build_detector(name)
            keep = {a.id for lv in reference.anchor_set.levels for p, a in enumerate(lv.anchors) if p % 2 == 0}
            def build(root):
                write_export(reference, prune(reference, keep), root / name, data=images, report_ann=anns["test"],
                             check=False, log=lambda msg: None)

            cache[name] = ExportFolder.open(build_once(tmp_path_factory, f"opencv_export-{name}", build) / name)
        return cache[name]

    return get


def split_images(folder: ExportFolder, n: int = 4) -> list[Path]:
    files = [img["file_name"] for img in json.loads(Path(folder.report_ann).read_text())["images"]]
    return [Path(folder.data) / f for f in sorted(files)[:n]]


def test_missing_opencv_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
    with pytest.raises(EdgeAnchorError) as err:
        import_cv2()
    assert str(err.value) == 'OpenCV is not installed; pip install "edgeanchor[opencv]"'
    with pytest.raises(EdgeAnchorError, match="OpenCV is not installed"):
        OpenCvRunner({})


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_nonms_graph_carries_its_rule_and_only_plain_ops(exports, name):
    folder = exports(name)
    spec = folder.graph_detector("pruned").postprocess_spec
    model = onnx.load(str(folder.graph_path("pruned", "model_nonms")))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"NonMaxSuppression", "NonZero", "Loop", "If"}  # no NMS, no data-dependent shapes
    # no Div or Mod on TopK's integer indices (OpenCV 4.x computes integer Div in float32)
    downstream, names = [], {n.output[1] for n in model.graph.node if n.op_type == "TopK"}
    for node in model.graph.node:  # nodes are in topological order
        if names & set(node.input):
            downstream.append(node.op_type)
            names |= set(node.output)
    assert downstream and not set(downstream) & {"Div", "Mod", "Cast"}
    meta = {p.key: p.value for p in model.metadata_props}
    yolo = name == "demo-yolo"
    assert float(meta["nms_iou_threshold"]) == spec.nms_thresh == 0.45
    assert int(meta["detections_per_img"]) == spec.detections_per_img == (300 if yolo else 100)
    assert float(meta["score_threshold"]) == spec.score_thresh == (0.25 if yolo else 0.01)
    assert meta["first_label"] == ("0" if yolo else "1") and meta["input_size"] == "320,320"
    assert meta["resize"] == ("letterbox" if yolo else "stretch") and meta.get("letterbox_fill") == ("114" if yolo else None)
    assert int(meta["topk"]) == model.graph.output[0].type.tensor_type.shape.dim[1].dim_value


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["pruned", "baseline"])
@pytest.mark.parametrize("name", MODELS)
def test_opencv_matches_onnxruntime(cv2, exports, name, variant):
    folder = exports(name)
    images = np.stack([load_image(p, folder.image_size, folder.resize)[0].numpy() for p in split_images(folder)])
    result = opencv_parity(folder, variant, images)
    assert result["backbone"]["passed"] and result["head"]["passed"]
    nonms = result["model_nonms"]
    assert nonms["passed"] and nonms["counts_ort"] == nonms["counts_opencv"] and sum(nonms["counts_ort"]) > 0
    assert nonms["max_box_diff"] <= 1e-4 and nonms["max_score_diff"] <= 1e-4  # boxes in pixels
    e2e = result["end_to_end"]
    assert e2e["passed"] and e2e["matched_fraction"] == 1.0 and sum(e2e["counts_ort"]) > 0
    assert result["passed"] and result["runtime"]["winograd"] is False


def bgr_variants(cv2, path: Path, tmp_path: Path) -> list[tuple[str, np.ndarray]]:
    """A split image as it is (320x320) and resized/cropped to non-square sizes, written losslessly and read back."""
    image = cv2.imread(str(path))
    variants = [("as-is", image), ("wide", image[60:260]), ("tall", image[:, 90:250]),
                ("large", cv2.resize(image, (480, 400))), ("small", cv2.resize(image, (150, 200)))]
    out = []
    for tag, img in variants:
        file = tmp_path / f"{path.stem}-{tag}.png"
        cv2.imwrite(str(file), img)
        out.append((str(file), cv2.imread(str(file))))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["pruned", "baseline"])
@pytest.mark.parametrize("name", MODELS)
def test_example_gives_model_onnx_detections(cv2, example, exports, name, variant, tmp_path):
    folder = exports(name)
    nonms_path = folder.graph_path(variant, "model_nonms")
    meta = example.read_metadata(nonms_path)
    net = cv2.dnn.readNetFromONNX(str(nonms_path))
    model, nonms = make_session(folder.graph_path(variant, "model")), make_session(nonms_path)
    spec = folder.graph_detector(variant).postprocess_spec
    checked = 0
    for path in split_images(folder, 3):
        for file, image in bgr_variants(cv2, path, tmp_path):
            got = example.detect(net, meta, image)
            # model.onnx under ONNX Runtime on the example's own input tensor, mapped back as predict() does
            blob, _, _ = example.preprocess(image, folder.image_size, folder.resize)
            out = run_session(model, {"images": blob})
            ref = out["detections"][0][: int(out["num_detections"][0])].astype(np.float64)
            sx, sy, px, py = to_original(image.shape[:2], folder.image_size, folder.resize)
            ref[:, :4] = clip_original((ref[:, :4] - [px, py, px, py]) * [sx, sy, sx, sy], *image.shape[:2])
            # The NMS-free graph's one global top-K stands in for model.onnx's candidate rule (SSD: the
            # best topk_candidates per class; YOLO: the best 30000 overall). Both keep every candidate,
            # so the detections are the same, while no class has more candidates than that and the
            # image has fewer than K: true here (and on the demo exports), asserted so it stays so.
            cands = run_session(nonms, {"images": blob})
            real = cands["scores"][0] > 0
            assert real.sum() < cands["scores"].shape[1]
            assert np.bincount(cands["labels"][0][real]).max(initial=0) <= spec.topk_candidates
            assert len(got) == len(ref), file
            order_got, order_ref = np.lexsort((got[:, 0], -got[:, 4])), np.lexsort((ref[:, 0], -ref[:, 4]))
            got, ref = got[order_got], ref[order_ref]
            assert np.array_equal(got[:, 5], ref[:, 5]), file
            assert np.abs(got[:, 4] - ref[:, 4]).max(initial=0) <= 1e-4, file
            assert np.abs(got[:, :4] - ref[:, :4]).max(initial=0) <= 1e-3, file  # original image pixels
            checked += len(got)
    assert checked > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_example_preprocessing_is_edgeanchors(cv2, example, exports, name, tmp_path):
    folder = exports(name)
    # an image already at the model size: the same tensor as edgeanchor's loader (same JPEG decoder)
    for path in split_images(folder, 2):
        blob, scale, pad = example.preprocess(cv2.imread(str(path)), folder.image_size, folder.resize)
        assert np.array_equal(blob[0], load_image(path, folder.image_size, folder.resize)[0].numpy())
        assert scale == (1.0, 1.0) and pad == (0, 0)
    # other sizes: the same geometry as edgeanchor's letterbox/stretch (pixels differ: cv2 vs PIL resampling)
    for h, w in [(200, 320), (320, 160), (400, 480), (200, 150), (333, 517), (64, 1000)]:
        image = np.full((h, w, 3), 7, np.uint8)
        blob, scale, pad = example.preprocess(image, folder.image_size, folder.resize)
        sx, sy, px, py = to_original((h, w), folder.image_size, folder.resize)
        assert blob.shape == (1, 3, *folder.image_size) and blob.dtype == np.float32
        assert np.allclose(scale, (sx, sy), rtol=1e-12) and pad == (px, py)
        if folder.resize == "letterbox":
            _, left, top, nh, nw = letterbox_params((h, w), folder.image_size)
            inside = np.zeros(folder.image_size, bool)
            inside[top:top + nh, left:left + nw] = True
            assert np.all(blob[0][:, inside] == np.float32(7 / 255)) and np.all(blob[0][:, ~inside] == np.float32(114 / 255))


@pytest.mark.slow
def test_example_command_line(cv2, example, exports):
    folder = exports("demo-yolo")
    model, image = folder.graph_path("pruned", "model_nonms"), split_images(folder, 1)[0]
    run = subprocess.run([sys.executable, str(EXAMPLE), str(model), str(image), "--json"], capture_output=True,
                         text=True, check=True)
    rows = json.loads(run.stdout)
    want = example.detect(cv2.dnn.readNetFromONNX(str(model)), example.read_metadata(model), cv2.imread(str(image)))
    assert len(rows) == len(want) > 0 and [r["label"] for r in rows] == want[:, 5].astype(int).tolist()
    text = subprocess.run([sys.executable, str(EXAMPLE), str(model), str(image)], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    assert len(text) == len(rows) and text[0].startswith("label")
    bad = subprocess.run([sys.executable, str(EXAMPLE), str(folder.graph_path("pruned", "head")), str(image)],
                         capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and "no NMS rule in its metadata" in bad.stderr


@pytest.mark.slow
def test_runner_times_three_stages_and_records_its_settings(cv2, exports):
    folder = exports("demo")
    graphs = {"backbone": folder.graph_path("pruned", "backbone"), "head": folder.graph_path("pruned", "head"),
              "end_to_end": folder.graph_path("pruned", "model_nonms")}
    runner = OpenCvRunner(graphs, threads=1)
    image = load_image(split_images(folder, 1)[0], folder.image_size, folder.resize)[0].numpy()[None]
    times = runner.run_all(image)
    assert set(times) == {"backbone", "head", "end_to_end"} and all(isinstance(t, int) and t > 0 for t in times.values())
    s = runner.settings
    assert s["runtime"] == "opencv" and s["version"] == cv2.__version__ and s["threads"] == 1
    assert s["nms_iou_threshold"] == 0.45 and s["detections_per_img"] == 100
    dets = runner.detections(image)
    assert dets.shape[1] == 6 and len(dets) > 0 and np.all(dets[:-1, 4] >= dets[1:, 4])
    cv2.setNumThreads(-1)
    # a graph without the NMS rule, and a missing graph: one line each
    with pytest.raises(EdgeAnchorError, match="no NMS rule in its metadata"):
        OpenCvRunner({**graphs, "end_to_end": graphs["head"]})
    with pytest.raises(EdgeAnchorError, match="does not exist"):
        OpenCvRunner({**graphs, "head": Path("nowhere/head.onnx")})


def test_readme_shows_the_example_verbatim():
    """The README's OpenCV deployment example is examples/opencv_deploy.py, character for character."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    example = (root / "examples" / "opencv_deploy.py").read_text()
    assert "```python\n" + example + "```" in readme
