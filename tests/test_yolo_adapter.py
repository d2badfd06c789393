"""The YOLOv5 detector adapter: three stages, decode and NMS rule, exact slicing, weights, checkpoints."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeanchor.cli import main
from edgeanchor.cost import measure_cost
from edgeanchor.datasets.coco import CocoDetection, make_label_map
from edgeanchor.errors import EdgeAnchorError
from edgeanchor.evaluation.cache import build_cache
from edgeanchor.evaluation.coco_map import coco_map
from edgeanchor.evaluation.predict import predict
from edgeanchor.evaluation.subset import SubsetScorer
from edgeanchor.models import build_detector, load_checkpoint, save_checkpoint
from edgeanchor.models.yolo import needed_layers
from edgeanchor.models.yolov5_arch import build_yolov5
from edgeanchor.postprocess import select, yolo_decode, yolo_grid
from edgeanchor.pruning import prune
from edgeanchor.subset_search.costs import build_cost_model
from tests.helpers import shared_synth_split

SIZE = (128, 160)


def confident(det, seed=0):
    """Random Detect biases so that many boxes pass the val threshold, with varied scores."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in det.detect.m:
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 1.5)
    return det


FIXTURE = Path(__file__).parent / "fixtures" / "yolov5"


@pytest.fixture(scope="module")
def det():
    """yolov5n (nc 3) with the compatibility fixture's weights: varied, realistic scores."""
    return build_detector("yolov5:n", weights=FIXTURE / "yolov5n_nc3.pt", image_size=SIZE).eval()


@pytest.fixture(scope="module")
def images():
    """Two crops of the fixture's images (coloured shapes on a smooth background)."""
    full = torch.from_numpy(np.load(FIXTURE / "yolov5n_nc3_reference.npz")["images"]).float() / 255
    return torch.stack([full[0, :, :SIZE[0], :SIZE[1]], full[1, :, -SIZE[0]:, -SIZE[1]:]])


KEEPS = {
    "partial": [0, 2, 3, 5, 7, 8],
    "drop-P3": [3, 4, 5, 6, 7, 8],
    "drop-P5": [0, 1, 4],
    "one": [8],
}


@pytest.mark.parametrize("name, size, macs", [("s", 640, 365_568_000), ("n", 640, 182_784_000)])
def test_head_macs_and_boxes_at_640(name, size, macs):
    cost = measure_cost(build_detector(f"yolov5:{name}", num_classes=80))
    width = 128 if name == "s" else 64  # P3 channels; P4, P5 double each time
    assert cost.head_macs == macs == 6400 * width * 255 + 1600 * 2 * width * 255 + 400 * 4 * width * 255
    assert cost.num_boxes == 25_200 and cost.boxes_per_level == [19200, 4800, 1200]


def test_inspect_reports_the_issue_figures(capsys):
    assert main(["inspect", "--model", "yolov5:s", "--num-classes", "80", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["num_anchors"], info["num_boxes"], info["head_macs"]) == (9, 25_200, 365_568_000)
    assert [lv["cls_channels"] + lv["box_channels"] for lv in info["levels"]] == [255] * 3  # na * (5 + nc)


def test_decode_is_hand_worked():
    # zero outputs: sigmoid 0.5, so xy = (1 + col - 0.5) * stride = cell centre, wh = anchor
    grid = torch.tensor([[2 - 0.5, 1 - 0.5, 8.0, 8.0, 10.0, 13.0]])
    assert torch.equal(yolo_decode(torch.zeros(1, 4), grid), torch.tensor([[20.0 - 5, 12 - 6.5, 20 + 5, 12 + 6.5]]))
    # saturated: xy = (2 + col - 0.5) * stride, wh = 4 * anchor
    big = yolo_decode(torch.full((1, 4), 50.0), grid)
    assert torch.allclose(big, torch.tensor([[28.0 - 20, 20 - 26, 28 + 20, 20 + 26]]))


def test_grid_rows_follow_the_flattened_box_order(det):
    grid = yolo_grid(det.anchor_set, det.active_levels)
    assert grid.shape == (det.anchor_set.num_boxes, 6)
    a = det.anchor_set.levels[0].anchors
    fw = det.anchor_set.levels[0].feature_size[1]
    # box (row 1, col 2, anchor 1) of level 0
    row = grid[(1 * fw + 2) * 3 + 1]
    assert row.tolist() == [1.5, 0.5, 8.0, 8.0, a[1].w, a[1].h]


def test_scores_are_objectness_times_class_and_multi_label(det, images):
    with torch.no_grad():
        head = det.head(det.backbone(images[:1]))
    cls, _ = det.flatten_head(head)
    cands = det.image_candidates(head)[0]
    probs = torch.sigmoid(cls[0])
    conf = probs[:, 1:] * probs[:, :1]
    expected = torch.nonzero(conf > 0.001)  # (box, class) order
    assert torch.equal(cands.box_index, expected[:, 0]) and torch.equal(cands.labels, expected[:, 1])
    assert torch.equal(cands.scores, conf[expected[:, 0], expected[:, 1]])
    assert len(set(cands.box_index.tolist())) < len(cands)  # some boxes carry several labels


def test_select_is_class_offset_nms_capped_at_max_det(det, images):
    with torch.no_grad():
        cands = det.image_candidates(det.head(det.backbone(images[:1])))[0]
    out = select(cands, det.postprocess_spec, det.level_starts)
    assert len(out["boxes"]) == 300
    assert torch.all(out["scores"][:-1] >= out["scores"][1:])
    # the same as one NMS per class, merged by score
    per_class = []
    import torchvision

    for c in range(3):
        m = cands.labels == c
        keep = torchvision.ops.nms(cands.boxes_xyxy[m], cands.scores[m], 0.6)
        per_class.append(cands.scores[m][keep])
    assert torch.equal(out["scores"], torch.cat(per_class).sort(descending=True).values[:300])


@pytest.mark.parametrize("keep", list(KEEPS), ids=list(KEEPS))
def test_pruned_detections_equal_masked_unpruned(det, images, keep):
    ids = KEEPS[keep]
    pruned = prune(det, ids)
    with torch.no_grad():
        ref_head = det.head(det.backbone(images))
        got_head = pruned.head(pruned.backbone(images))
        out = pruned.postprocess(got_head)
    cls, box = det.flatten_head(ref_head)
    pcls, pbox = pruned.flatten_head(got_head)
    mask = torch.isin(det.box_anchor_ids(), torch.tensor(ids))
    assert torch.equal(pcls, cls[:, mask]) and torch.equal(pbox, box[:, mask])  # exact raw outputs
    for i, cands in enumerate(det.image_candidates(ref_head)):
        kept = cands.take(torch.isin(det.box_anchor_ids()[cands.box_index], torch.tensor(ids)))
        ref = select(kept, det.postprocess_spec, det.level_starts)
        for k in ("boxes", "scores", "labels"):
            assert torch.equal(ref[k], out[i][k]), k
    # the Detect convolutions really shrink; a level with no anchors has none
    assert [c.out_channels for c in pruned.detect.m] == [8 * lv.num_anchors for lv in pruned.anchor_set.levels
                                                         if lv.num_anchors]


def test_neck_runs_only_what_the_active_levels_need(det):
    layers = det.model
    assert needed_layers(layers, [17, 20, 23]) == list(range(24))
    assert needed_layers(layers, [17, 20]) == list(range(21))  # P5 dropped: layers 21-23 skipped
    assert 17 in needed_layers(layers, [23])  # P3 dropped: still computed for the path to P5
    assert measure_cost(prune(det, KEEPS["drop-P5"])).backbone_macs < measure_cost(det).backbone_macs
    assert measure_cost(prune(det, KEEPS["drop-P3"])).backbone_macs == measure_cost(det).backbone_macs


@pytest.mark.parametrize("keep", ["partial", "drop-P3", "one"])
def test_cost_model_equals_measured_cost(det, keep):
    model = build_cost_model(det)
    removed = set(det.anchor_set.ids) - set(KEEPS[keep])
    measured = measure_cost(prune(det, KEEPS[keep]))
    assert model.head_macs(removed) == measured.head_macs
    assert model.boxes(removed) == measured.num_boxes


def test_checkpoint_round_trip_of_a_pruned_model(det, images, tmp_path):
    pruned = prune(det, KEEPS["drop-P3"])
    save_checkpoint(pruned, tmp_path / "p.pt")
    back = load_checkpoint(tmp_path / "p.pt")
    assert back.arch == "yolov5:n" and back.anchor_set == pruned.anchor_set and back.first_label == 0
    with torch.no_grad():
        a, b = pruned(images), back(images)
    assert all(torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["labels"], y["labels"]) for x, y in zip(a, b))


def test_plain_state_dict_with_yolov5_names_loads(tmp_path, images):
    torch.manual_seed(3)
    net = build_yolov5("n", nc=4)
    net.detect.anchors.mul_(1.25)  # the weights' anchors replace the defaults
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    det = build_detector("yolov5:n", weights=tmp_path / "sd.pt", image_size=SIZE)
    assert det.num_classes == 4
    assert det.anchor_set.levels[0].anchors[0].w == pytest.approx(12.5)
    with torch.no_grad():
        raw = net.eval()(images)
        head = det.head(det.backbone(images))
    for j, (cls, box) in enumerate(head):
        n, _, h, w = raw[j].shape
        v = raw[j].view(n, 3, 9, h, w)
        assert torch.equal(box, v[:, :, :4].reshape(n, 12, h, w)) and torch.equal(cls, v[:, :, 4:].reshape(n, 15, h, w))


def test_weight_mismatches_are_one_line_errors(tmp_path):
    torch.save(build_yolov5("n", nc=4).state_dict(), tmp_path / "n.pt")
    with pytest.raises(EdgeAnchorError, match=r"yolov5:n model, not yolov5:s; use model yolov5:n"):
        build_detector("yolov5:s", weights=tmp_path / "n.pt")
    with pytest.raises(EdgeAnchorError, match="have nc 4, not `num_classes` 80"):
        build_detector("yolov5:n", weights=tmp_path / "n.pt", num_classes=80)
    with pytest.raises(EdgeAnchorError, match="not a multiple of the largest stride 32"):
        build_detector("yolov5:n", image_size=(320, 300))
    with pytest.raises(EdgeAnchorError, match="at least 1"):
        build_detector("yolov5:n", num_classes=0)


def test_yolo_labels_have_no_background():
    assert make_label_map([3, 1, 7], 3, first_label=0) == {1: 0, 3: 1, 7: 2}
    with pytest.raises(EdgeAnchorError, match="use `num_classes` 3"):
        make_label_map([3, 1, 7], 4, first_label=0)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return shared_synth_split(tmp_path_factory, "ysplit", num_images=16, seed=4, splits=(0.5, 0.25, 0.25),
                              image_size=160)


def test_cached_score_equals_sliced_model(split):
    images_dir, anns = split
    torch.manual_seed(1)
    det = confident(build_detector("yolov5:n", num_classes=5, image_size=(160, 160)), seed=2)
    data = CocoDetection(images_dir, anns["train"], num_classes=5, first_label=0, image_size=det.image_size)
    scorer = SubsetScorer(build_cache(det, data, progress=False), anns["train"])
    seen = set()
    for keep in KEEPS.values():
        removed = set(det.anchor_set.ids) - set(keep)
        real_dets = predict(prune(det, keep), data, progress=False)
        assert scorer.score(removed) == coco_map(anns["train"], real_dets), keep
        rows = scorer.detections(removed)  # (D, 7): image, x, y, w, h, score, category, in detection order
        expected = np.array([[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in real_dets])
        assert np.array_equal(rows, expected)
        seen.add(rows.tobytes())
    assert len(seen) == len(KEEPS)  # the subsets really differ


@pytest.fixture(scope="module")
def yolo_export(det, tmp_path_factory):
    from edgeanchor.exporting import export_onnx
    from edgeanchor.pipeline import deployed

    out = {}
    for name, model in (("full", det), ("pruned", prune(det, KEEPS["drop-P3"]))):
        model = deployed(model, {"score_thresh": 0.1})  # the fixture's weights score below 0.25 here
        out[name] = (model, export_onnx(model, tmp_path_factory.mktemp(name), decoded=True))
    return out


@pytest.mark.slow
def test_export_uses_the_deploy_rule_and_keeps_the_model_unchanged(det, yolo_export):
    from edgeanchor.pipeline import deployed

    assert (deployed(det).postprocess_spec.score_thresh, deployed(det).postprocess_spec.nms_thresh) == (0.25, 0.45)
    model, _ = yolo_export["full"]
    assert (model.postprocess_spec.score_thresh, model.postprocess_spec.nms_thresh) == (0.1, 0.45)  # overridden
    assert (det.postprocess_spec.score_thresh, det.postprocess_spec.nms_thresh) == (0.001, 0.6)
    assert model.detect is det.detect  # the same weights


@pytest.mark.slow
@pytest.mark.parametrize("name", ["full", "pruned"])
def test_onnxruntime_matches_pytorch(yolo_export, images, name):
    from edgeanchor.exporting import check_parity

    model, result = yolo_export[name]
    parity = check_parity(model, result["out_dir"], images)
    assert parity["passed"], parity
    assert parity["model"]["counts_torch"] == parity["model"]["counts_onnx"]
    assert min(parity["model"]["counts_torch"]) > 20  # real detections were compared


@pytest.mark.slow
def test_exported_detect_convs_shrink(yolo_export):
    full = {c["level"]: c for c in yolo_export["full"][1]["head_channels"]}
    pruned = {c["level"]: c for c in yolo_export["pruned"][1]["head_channels"]}
    assert {k: c["cls_channels"] for k, c in full.items()} == {0: 24, 1: 24, 2: 24}  # 3 x (5 + 3)
    assert {k: c["cls_channels"] for k, c in pruned.items()} == {1: 24, 2: 24}  # P3 dropped
    assert all(c["one_conv"] and c["box_channels"] == c["cls_channels"] for c in pruned.values())


@pytest.mark.slow
def test_tensorrt_graph_takes_yolo_confidences(yolo_export, images, tmp_path):
    import onnx

    from edgeanchor.exporting import make_session, run_session
    from edgeanchor.exporting.tensorrt import make_trt_graph

    model, result = yolo_export["pruned"]
    decoded = result["files"]["decoded"]
    info = make_trt_graph(decoded, tmp_path / "model_trt.onnx", model.postprocess_spec)
    assert info["num_classes"] == 3 and info["num_boxes"] == model.anchor_set.num_boxes
    attrs = info["attributes"]
    assert (attrs["background_class"], attrs["score_threshold"], attrs["iou_threshold"]) == (-1, 0.1, 0.45)
    nodes = [n.op_type for n in onnx.load(tmp_path / "model_trt.onnx").graph.node]
    assert nodes[-1] == "EfficientNMS_TRT"
    # the plugin's inputs: decoded xyxy boxes and obj x cls, as PyTorch computes them
    out = run_session(make_session(decoded), {"images": images[:1]})
    with torch.no_grad():
        cls, box = model.flatten_head(model.head(model.backbone(images[:1])))
    probs = torch.sigmoid(cls[0])
    assert np.allclose(out["scores"][0], (probs[:, 1:] * probs[:, :1]).numpy(), atol=1e-5)
    assert np.allclose(out["boxes_xyxy"][0], yolo_decode(box[0], model.yolo_grid).numpy(), atol=1e-3)


def test_exact_sigmoid_does_not_depend_on_position():
    # torch.sigmoid computes a tensor's tail (and each thread's) with scalar code: a sliced tensor can get
    # other last bits for the same element, which would break the pruned == masked invariant
    from edgeanchor.postprocess import exact_sigmoid

    g = torch.Generator().manual_seed(0)
    for n in (1260, 40_000, 100_003):
        x = torch.randn(n, 4, generator=g) * 3
        mask = torch.rand(n, generator=g) > 0.3
        assert torch.equal(exact_sigmoid(x)[mask], exact_sigmoid(x[mask]))
        assert torch.allclose(exact_sigmoid(x), torch.sigmoid(x), rtol=0, atol=1e-7)
    assert exact_sigmoid(torch.zeros(0, 3)).shape == (0, 3)


@pytest.mark.slow
def test_overanchorized_yolo_fits_anchors_to_the_training_boxes(split, tmp_path, capsys):
    images_dir, anns = split
    out = tmp_path / "oa.pt"
    assert main(["train", "--model", "yolov5:n", "--image-size", "160", "160", "--num-classes", "5", "--anchors",
                 "overanchorized:2x2", "--data", str(images_dir), "--ann", str(anns["train"]), "--epochs", "1",
                 "--max-iters-per-epoch", "1", "--batch-size", "2", "--out", str(out), "--no-progress"]) == 0
    det = load_checkpoint(out)
    assert det.anchor_set.anchors_per_level() == [4, 4, 4]
    areas = [a.w * a.h for lv in det.anchor_set.levels for a in lv.anchors]
    assert areas == sorted(areas)  # smallest to P3
    assert [c.out_channels for c in det.detect.m] == [4 * 10] * 3
    # the shapes are the training boxes' clusters: every box has an anchor within YOLOv5's ratio bound
    data = CocoDetection(images_dir, anns["train"], num_classes=5, first_label=0, image_size=(160, 160))
    wh = data.box_sizes()
    shapes = np.array([[a.w, a.h] for lv in det.anchor_set.levels for a in lv.anchors])
    ratio = np.maximum(wh[:, None] / shapes[None], shapes[None] / wh[:, None]).max(2).min(1)
    assert (ratio < 4.0).mean() > 0.95
    assert "fitted by k-means" in capsys.readouterr().err


def test_custom_model_definition_yaml(tmp_path, images):
    import yaml

    from edgeanchor.models.yolov5_arch import V7_LAYOUT

    layout = {"nc": 2, "depth_multiple": 0.33, "width_multiple": 0.25,
              "anchors": [[10, 13, 16, 30], [30, 61, 62, 45], [116, 90, 156, 198]],  # 2 per level
              "backbone": V7_LAYOUT["backbone"], "head": V7_LAYOUT["head"]}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(layout))
    det = build_detector(f"yolov5:{path}", image_size=SIZE)
    assert det.num_classes == 2 and det.anchor_set.anchors_per_level() == [2, 2, 2]
    assert [c.out_channels for c in det.detect.m] == [2 * 7] * 3
    pruned = prune(det, [0, 1, 3])
    save_checkpoint(pruned, tmp_path / "p.pt")
    path.unlink()  # the checkpoint records the definition: it rebuilds without the YAML
    back = load_checkpoint(tmp_path / "p.pt")
    with torch.no_grad():
        assert torch.equal(back.head(back.backbone(images))[1][0], pruned.head(pruned.backbone(images))[1][0])
    assert main(["inspect", "--model", "yolov5:missing.yaml"]) == 2


def test_letterbox_is_yolov5s_and_maps_back(tmp_path):
    from PIL import Image

    from edgeanchor.datasets.coco import letterbox_params, to_original

    assert letterbox_params((480, 640), (320, 320)) == (0.5, 0, 40, 240, 320)  # hand-worked
    assert letterbox_params((100, 200), (64, 64)) == (0.32, 0, 16, 32, 64)
    Image.new("RGB", (200, 100), (255, 0, 0)).save(tmp_path / "a.png")  # w 200, h 100
    ann = {"images": [{"id": 1, "file_name": "a.png", "width": 200, "height": 100}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 10, 40, 40], "area": 1600,
                            "iscrowd": 0}], "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "a.json").write_text(json.dumps(ann))
    data = CocoDetection(tmp_path, tmp_path / "a.json", num_classes=1, first_label=0, image_size=(64, 64),
                         resize="letterbox")
    image, target = data[0]
    assert torch.allclose(target["boxes"], torch.tensor([[6.4, 16 + 3.2, 19.2, 16 + 16.0]]))
    assert torch.allclose(image[:, 0, 0], torch.tensor([114 / 255] * 3))  # grey band above
    assert torch.allclose(image[:, 30, 30], torch.tensor([1.0, 0.0, 0.0]))  # the image
    sx, sy, px, py = to_original((100, 200), (64, 64), "letterbox")
    back = (target["boxes"].double() - torch.tensor([px, py, px, py])) * torch.tensor([sx, sy, sx, sy])
    assert torch.allclose(back, torch.tensor([[20.0, 10, 60, 50]], dtype=torch.float64))
    assert np.allclose(data.box_sizes(), [[12.8, 12.8]])


def test_cached_score_equals_sliced_model_on_letterboxed_images(det, tmp_path):
    """Non-square files into a non-square input: boxes go through the letterbox and back, in both paths."""
    from PIL import Image

    g = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(6):
        canvas = (g.random((96, 160, 3)) * 60 + 60).astype(np.uint8)
        for _ in range(3):
            x, y = int(g.integers(0, 120)), int(g.integers(0, 60))
            w, h = int(g.integers(12, 40)), int(g.integers(12, 36))
            canvas[y:y + h, x:x + w] = g.integers(0, 255, 3)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(g.integers(1, 4)),
                                "bbox": [x, y, min(w, 160 - x), min(h, 96 - y)], "area": w * h, "iscrowd": 0})
        Image.fromarray(canvas).save(tmp_path / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 160, "height": 96})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations,
                               "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)]}))
    data = CocoDetection.for_detector(det, tmp_path, ann)
    assert data.resize == "letterbox"
    scorer = SubsetScorer(build_cache(det, data, progress=False), ann)
    for keep in KEEPS.values():
        real = predict(prune(det, keep), data, progress=False)
        rows = scorer.detections(set(det.anchor_set.ids) - set(keep))
        assert np.array_equal(rows, np.array([[d["image_id"], *d["bbox"], d["score"], d["category_id"]]
                                              for d in real]).reshape(-1, 7))
        assert len(real) > 40
        assert all(0 <= d["bbox"][1] and d["bbox"][1] + d["bbox"][3] <= 96 + 1e-9 for d in real)  # clipped to the file
