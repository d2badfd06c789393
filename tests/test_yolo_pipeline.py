"""prune-and-export, bench and regress on the shipped YOLO demo (demo-yolo), on a small synthetic split."""

import json
import re

import pytest
import torch

from edgeanchor.cli import main
from edgeanchor.datasets.coco import CocoDetection
from edgeanchor.evaluation.coco_map import coco_map
from edgeanchor.evaluation.predict import predict
from edgeanchor.models import build_detector, load_checkpoint
from edgeanchor.models.registry import DEMO_YOLO_CHECKPOINT
from tests.helpers import build_once, shared_synth_split
from tests.test_pipeline import conv_out_channels


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return shared_synth_split(tmp_path_factory, "yolo_pe_split", num_images=24, seed=31, splits=(0.2, 0.4, 0.4))


@pytest.fixture(scope="module")
def yolo_export(split, tmp_path_factory):
    images, anns = split

    def build(root):  # the runtime matrix is not under test here
        assert main(["prune-and-export", "--model", "demo-yolo", "--data", images, "--ann", anns["val"],
                     "--report-ann", anns["test"], "--max-evals", "40", "--workers", "1", "--parity-images", "2",
                     "--out", str(root / "demo-yolo"), "--nonms-topk", "50", "--matrix-iters", "0", "--json"]) == 0

    return build_once(tmp_path_factory, "yolo_export", build) / "demo-yolo"


def test_demo_yolo_is_a_trained_yolov5n_at_320():
    det = build_detector("demo-yolo")
    assert det.arch == "yolov5:n" and det.image_size == (320, 320) and det.num_classes == 5
    assert det.anchor_set.anchors_per_level() == [3, 3, 3]
    assert DEMO_YOLO_CHECKPOINT.stat().st_size < 10e6
    meta = torch.load(DEMO_YOLO_CHECKPOINT, weights_only=True)["meta"]
    assert len(meta["train"]["epochs"]) == 30 and meta["train"]["epochs"][-1]["val"]["mAP"] > 0.5


@pytest.mark.slow
def test_export_prunes_detect_and_reports(yolo_export, split):
    images, anns = split
    report = json.loads((yolo_export / "report.json").read_text())
    pruned = load_checkpoint(yolo_export / "pruned.pt")
    base = build_detector("demo-yolo")
    assert report["cost"]["pruned"]["head_macs"] < report["cost"]["baseline"]["head_macs"]
    assert report["cost"]["pruned"]["num_boxes"] < report["cost"]["baseline"]["num_boxes"]
    # the graphs' Detect convolutions have na * (5 + nc) channels of the kept anchors
    graph = conv_out_channels(yolo_export / "head.onnx")
    for ch in report["export"]["pruned"]["head_channels"]:
        a = pruned.anchor_set.levels[ch["level"]].num_anchors
        assert ch["one_conv"] and ch["cls_channels"] == graph[f"cls_{ch['level']}"] == a * 10
    assert sum(graph.values()) < sum(conv_out_channels(yolo_export / "baseline" / "head.onnx").values())
    # graphs: deploy rule; checkpoint: val rule; ONNX Runtime matched PyTorch
    assert report["export"]["pruned"]["postprocess"]["score_thresh"] == 0.25
    assert pruned.postprocess_spec.score_thresh == 0.001
    assert all(report["export"][v]["parity"]["passed"] for v in ("pruned", "baseline"))
    # the reported mAP is the pruned checkpoint's mAP on the report split, with labels 0..nc-1
    data = CocoDetection(images, anns["test"], num_classes=5, first_label=0, image_size=pruned.image_size)
    assert coco_map(anns["test"], predict(pruned, data, progress=False))["mAP"] == report["mAP"]["pruned"]
    assert report["mAP"]["baseline"] == coco_map(anns["test"], predict(base, data, progress=False))["mAP"] > 0.3
    md = (yolo_export / "report.md").read_text()
    assert "Detect conv" in md and "deploy rule" in md
    # the graph without NMS keeps --nonms-topk candidates, and matched PyTorch's candidates
    import onnx

    nonms = onnx.load(str(yolo_export / "model_nonms.onnx"))
    assert [d.dim_value for d in nonms.graph.output[0].type.tensor_type.shape.dim] == [1, 50, 4]
    assert report["export"]["pruned"]["parity"]["model_nonms"]["passed"]


@pytest.mark.slow
def test_bench_and_regress_on_the_yolo_export(yolo_export, tmp_path, capsys):
    assert main(["bench", str(yolo_export), "--iters", "3", "--warmup", "1", "--threads", "1", "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)
    assert set(bench["stages"]["pruned"]) >= {"backbone", "head", "postprocess", "end_to_end"}
    # boxes entering NMS are counted with the graphs' deploy rule: the pruned model has no more
    assert bench["nms_input_boxes"]["pruned"]["mean"] <= bench["nms_input_boxes"]["baseline"]["mean"]
    base = tmp_path / "base.json"
    args = ["regress", "--baseline", str(base), "--export", str(yolo_export), "--iters", "3", "--warmup", "1"]
    assert main([*args, "--update"]) == 0
    capsys.readouterr()
    assert main([*args, "--latency-tol", "100"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("head channels"))
    assert re.search(r"L\d:\d+ ", line) and "/" not in line  # one Detect count per level, not cls/box
    assert json.loads(base.read_text())["identity"]["arch"] == "yolov5:n"


@pytest.mark.slow
def test_deployed_map_is_checked_against_pytorch_with_the_graphs_rule(yolo_export, split, tmp_path, capsys):
    from edgeanchor.benchmark.accuracy import evaluate_export
    from edgeanchor.exporting.folder import ExportFolder

    images, anns = split
    folder = ExportFolder.open(yolo_export)
    report = folder.report
    # the graphs use the deploy preset, the checkpoints the val preset: the report measures both
    as_deployed = report["mAP_as_deployed"]
    assert as_deployed["same_as_reported"] is False and as_deployed["metric"] == "coco"
    for variant in ("pruned", "baseline"):
        det = folder.graph_detector(variant)
        assert det.postprocess_spec.score_thresh == 0.25
        data = CocoDetection(images, anns["test"], num_classes=5, first_label=0, image_size=det.image_size)
        assert as_deployed[variant] == coco_map(anns["test"], predict(det, data, progress=False))["mAP"]
        got = evaluate_export(folder, variant=variant, progress=False)
        assert got["pytorch_mAP"] == as_deployed[variant]  # not the val-rule mAP of report["mAP"]
        assert abs(got["mAP"] - got["pytorch_mAP"]) <= 0.001
    assert as_deployed["pruned"] != report["mAP"]["pruned"]
    assert "With the graphs' rule, PyTorch's COCO mAP" in (yolo_export / "report.md").read_text()
    # another annotation file: no reported figure to compare with
    assert evaluate_export(folder, data=images, ann=anns["val"], progress=False)["pytorch_mAP"] is None


@pytest.mark.slow
def test_regress_refuses_a_yolo_baseline_without_a_deployed_map(yolo_export, tmp_path, capsys):
    base = tmp_path / "base.json"
    args = ["regress", "--baseline", str(base), "--export", str(yolo_export), "--iters", "2", "--warmup", "0"]
    assert main([*args, "--update"]) == 0
    stored = json.loads(base.read_text())
    assert stored["deployed_mAP"]["same_rule_as_pytorch"] is False
    # an older baseline held only the PyTorch (val rule) mAP, no reference for the deploy-rule graph
    del stored["deployed_mAP"]
    base.write_text(json.dumps(stored))
    capsys.readouterr()
    assert main([*args, "--latency-tol", "100"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no deployed mAP for onnxruntime at fp32" in err
    assert "write the baseline anew" in err
