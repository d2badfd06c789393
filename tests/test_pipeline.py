"""prune-and-export end to end, its output folder, and its bad-input handling; bench on its export."""

import json
from pathlib import Path

import onnx
import pytest
import torch

from edgeanchor.cli import main
from edgeanchor.datasets.synth import generate
from edgeanchor.models import load_checkpoint
from tests.helpers import copy_of
from tests.helpers import demo_export_args as demo_args


@pytest.fixture(scope="module")
def split(demo_split):
    return demo_split


def conv_out_channels(path: Path) -> dict[str, int]:
    """Output channels of the convolutions producing each graph output, read from the ONNX file."""
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    out = {}
    for o in model.graph.output:
        node = producer[o.name]
        if node.op_type == "Slice" and producer[node.input[0]].op_type == "Conv":
            # the fused SSD head (exporting/fused_head.py): cls and box are slices of one conv; count the slice
            out[o.name] = o.type.tensor_type.shape.dim[1].dim_value
            continue
        while node.op_type != "Conv":
            node = producer[node.input[0]]
        out[o.name] = inits[node.input[1]].dims[0]
    return out


@pytest.mark.slow
def test_export_folder_is_complete(demo_export):
    names = {"anchors.json", "pruned.pt", "model.onnx", "backbone.onnx", "head.onnx", "postprocess.onnx",
             "model_trt.onnx", "report.json", "report.md", "pareto.png", "search.json"}
    assert names <= {p.name for p in demo_export.iterdir()}
    assert {"model.onnx", "backbone.onnx", "head.onnx", "postprocess.onnx", "baseline.pt", "anchors.json"} <= {
        p.name for p in (demo_export / "baseline").iterdir()}
    assert not list(demo_export.parent.glob(".demo.*"))  # no temporary folder left behind


@pytest.mark.slow
def test_report_names_its_splits_budget_and_floor(demo_export):
    report = json.loads((demo_export / "report.json").read_text())
    chosen = report["chosen"]
    assert (report["search_split"], report["report_split"]) == ("val", "test")  # the annotation files' names
    assert chosen["budget"] == {"max_drop": 0.005} and chosen["plot"] == "pareto.png"
    assert chosen["floor"] == pytest.approx(chosen["search_baseline_mAP"] - 0.005)
    assert chosen["search_mAP"] >= chosen["floor"]
    assert json.loads((demo_export / "search.json").read_text())["split"] == "val"
    md = (demo_export / "report.md").read_text()
    assert f"The floor on the val split is {chosen['floor']:.4f} (unpruned: {chosen['search_baseline_mAP']:.4f})" in md
    assert f"val mAP {chosen['search_mAP']:.4f}, test mAP {report['mAP']['pruned']:.4f}" in md
    assert "](pareto.png)" in md and (demo_export / "pareto.png").stat().st_size > 10_000


@pytest.mark.slow
def test_report_matches_the_graphs_and_the_checkpoint(demo_export):
    report = json.loads((demo_export / "report.json").read_text())
    pruned = load_checkpoint(demo_export / "pruned.pt")
    assert pruned.anchor_set.to_json() == json.loads((demo_export / "anchors.json").read_text())
    assert report["cost"]["pruned"]["head_macs"] < report["cost"]["baseline"]["head_macs"]
    assert report["mAP"]["pruned"] >= report["chosen"]["floor"] - 0.05  # report split differs from search split
    graph = conv_out_channels(demo_export / "head.onnx")
    for ch in report["export"]["pruned"]["head_channels"]:
        a = pruned.anchor_set.levels[ch["level"]].num_anchors
        assert ch["cls_channels"] == graph[f"cls_{ch['level']}"] == a * pruned.num_classes
        assert ch["box_channels"] == graph[f"box_{ch['level']}"] == a * 4
    base = conv_out_channels(demo_export / "baseline" / "head.onnx")
    assert sum(graph.values()) < sum(base.values())
    for name in ("pruned", "baseline"):
        parity = report["export"][name]["parity"]
        assert parity["passed"] and parity["head"]["strict_allclose"]
        assert parity["model"]["matched_fraction"] == 1.0
    md = (demo_export / "report.md").read_text()
    assert "Head output channels per level" in md and "trtexec --onnx=model_trt.onnx" in md
    # the SSD graphs use the checkpoints' rule and the metric is COCO's: the reported mAPs are the deployed
    # graphs' reference, not measured twice; model.onnx in ONNX Runtime agrees with them
    as_deployed = report["mAP_as_deployed"]
    assert as_deployed == {"metric": "coco", "same_as_reported": True, "baseline": report["mAP"]["baseline"],
                           "pruned": report["mAP"]["pruned"]}
    from edgeanchor.benchmark.accuracy import evaluate_export

    got = evaluate_export(demo_export, progress=False)
    assert got["pytorch_mAP"] == report["mAP"]["pruned"] and abs(got["mAP"] - got["pytorch_mAP"]) <= 0.001


@pytest.mark.slow
def test_report_holds_the_runtime_matrix(demo_export):
    """prune-and-export times every graph in every installed runtime (test_runtimes tests the matrix itself)."""
    report = json.loads((demo_export / "report.json").read_text())
    matrix = report["runtimes"]
    assert matrix["iters"] == 1 and matrix["runtimes"]["onnxruntime"]["installed"]
    cells = matrix["runtimes"]["onnxruntime"]["graphs"]
    for graph in ("backbone", "head", "postprocess", "model", "model_nonms", "model_ncnn"):
        assert cells[graph]["loads"] and cells[graph]["parity"]["passed"], (graph, cells[graph])
    assert "## Runtime matrix" in (demo_export / "report.md").read_text()


@pytest.mark.slow
def test_detections_output_is_fixed_shape(demo_export):
    model = onnx.load(str(demo_export / "model.onnx"))
    det = next(o for o in model.graph.output if o.name == "detections")
    dims = [d.dim_value for d in det.type.tensor_type.shape.dim]
    assert dims == [1, load_checkpoint(demo_export / "pruned.pt").postprocess_spec.detections_per_img, 6]
    assert [i.name for i in model.graph.input] == ["images"]


@pytest.mark.slow
def test_rerun_reuses_the_search_and_refuses_existing_folder(split, demo_export_run, capsys, tmp_path, monkeypatch):
    demo_export, _, cache = demo_export_run
    demo_export = copy_of(demo_export, tmp_path)  # the same run, its own folder and cache: it is overwritten
    monkeypatch.setenv("EDGEANCHOR_CACHE", str(copy_of(cache, tmp_path)))
    assert main(demo_args(split, demo_export)) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(demo_args(split, demo_export, "--overwrite", "--matrix-iters", "0")) == 0  # the matrix: not tested
    err = capsys.readouterr().err
    assert "reusing candidate cache" in err and "resuming the search" in err
    # the same --max-evals: the whole search's budget, so nothing new is scored and the same point is chosen
    import re

    first = json.loads((demo_export_run[0] / "report.json").read_text())["chosen"]
    again = json.loads((demo_export / "report.json").read_text())["chosen"]
    assert (again["removed"], again["num_evals"]) == (first["removed"], first["num_evals"])
    evaluated = re.search(r"evaluated (\d+) subsets \(max_evals \d+\): 0 scored in this run", err)
    assert evaluated and int(evaluated.group(1)) == again["num_evals"], err[-600:]


@pytest.mark.slow
def test_bench_runs_on_the_export(demo_export, capsys, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", str(demo_export), "--iters", "4", "--warmup", "1", "--threads", "1",
                 "--json-out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pruned/baseline" in text and "boxes entering NMS" in text
    result = json.loads(out.read_text())
    for variant in ("baseline", "pruned"):
        for stage in ("backbone", "head", "postprocess", "end_to_end"):
            s = result["stages"][variant][stage]
            assert s["n"] == 4 and s["min"] <= s["median"] <= s["p90"] <= s["p99"]
    assert result["settings"]["intra_op_num_threads"] == 1
    assert result["nms_input_boxes"]["pruned"]["mean"] <= result["nms_input_boxes"]["baseline"]["mean"]
    cost = json.loads((demo_export / "report.json").read_text())["cost"]  # the MACs ratio beside the latency's
    assert result["cost_ratios"]["head_macs"] == cost["pruned"]["head_macs"] / cost["baseline"]["head_macs"] < 1
    assert f"head MACs x{result['cost_ratios']['head_macs']:.3f}" in text
    assert out.with_suffix(".png").stat().st_size > 5000
    assert main(["bench", str(tmp_path / "nope")]) == 2


def random_ssdlite_weights(path: Path) -> None:
    """User weights for SSDLite: random, but with O(1) features and varied scores.

    torchvision's fresh SSDLite has near-zero features (its extra blocks are
    initialised with std 0.03), so every box would tie; variance-preserving
    convolutions and random classifier biases give a realistic spread.
    """
    from edgeanchor.models.registry import ARCHS
    from tests.helpers import randomize_head_biases

    torch.manual_seed(0)
    tv = ARCHS["torchvision:ssdlite320_mobilenet_v3_large"].builder(6, (320, 320))
    for m in tv.backbone.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    randomize_head_biases(tv)
    torch.save(tv.state_dict(), path)


@pytest.mark.slow
def test_random_weight_ssdlite_with_user_data(tmp_path, capsys):
    """The same command on a real torchvision architecture, user weights and user data."""
    info = generate(tmp_path / "data", num_images=10, seed=5, image_size=320, splits=(0.2, 0.4, 0.4), workers=1)
    weights = tmp_path / "ssdlite.pth"
    random_ssdlite_weights(weights)
    out = tmp_path / "ssdlite"
    argv = ["prune-and-export", "--model", "torchvision:ssdlite320_mobilenet_v3_large", "--num-classes", "6",
            "--weights", str(weights), "--data", info["image_dir"], "--ann", info["annotations"]["val"],
            "--max-evals", "40", "--workers", "1", "--parity-images", "2", "--matrix-iters", "0", "--out", str(out),
            "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    base = conv_out_channels(out / "baseline" / "head.onnx")
    pruned = conv_out_channels(out / "head.onnx")
    assert sum(pruned.values()) < sum(base.values())
    assert report["export"]["pruned"]["parity"]["passed"]


def test_bad_input(split, tmp_path, capsys, monkeypatch):
    # below any reachable head: refused before the search; reachable but not above the floor: after it
    assert main(demo_args(split, tmp_path / "a", "--target-head-macs", "10")) == 2
    assert "below the cheapest head this search can reach" in capsys.readouterr().err
    assert main(demo_args(split, tmp_path / "a", "--target-head-macs", "100000")) == 2
    assert "no front point has head MACs" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a.*"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(demo_args(split, blocker / "out")) == 2
    assert "choose a writable output folder" in capsys.readouterr().err
    assert main(demo_args(split, tmp_path / "t", "--tensorrt", "fp16")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "TensorRT" in err and "\n" not in err

    import edgeanchor.pipeline as pipeline

    def boom(*args, **kwargs):
        raise RuntimeError("simulated failure during export")

    monkeypatch.setattr(pipeline, "export_pair", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        main(demo_args(split, tmp_path / "b"))
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))


@pytest.mark.slow
def test_regress_passes_on_its_own_output_and_fails_on_unmeetable_baselines(demo_export, tmp_path, capsys):
    base = tmp_path / "baseline.json"
    common = ["--export", str(demo_export), "--iters", "6", "--warmup", "1"]
    assert main(["regress", "--baseline", str(base), "--update", *common]) == 0
    stored = json.loads(base.read_text())
    assert {"mAP", "deployed_mAP", "latency_ratios", "head_channels", "absolute_ms"} <= set(stored)
    # Its own output passes (timing noise is not under test: the latency bound is wide here).
    summary = tmp_path / "summary.md"
    verdict = tmp_path / "verdict.json"
    assert main(["regress", "--baseline", str(base), *common, "--latency-tol", "100",
                 "--summary", str(summary), "--json-out", str(verdict)]) == 0
    assert "regress: passed" in capsys.readouterr().out
    assert json.loads(verdict.read_text())["passed"] is True
    assert "| mAP (PyTorch) |" in summary.read_text() and "| mAP deployed (model.onnx, onnxruntime fp32) |" in \
        summary.read_text()

    def fails_with(change, metric):
        bad = dict(stored)
        change(bad)
        path = tmp_path / f"bad_{metric.split()[0]}.json"
        path.write_text(json.dumps(bad))
        assert main(["regress", "--baseline", str(path), *common, "--latency-tol", "100"]) == 1
        out = capsys.readouterr().out
        assert "regress: FAILED" in out
        failed = [line for line in out.splitlines() if line.rstrip().endswith("FAIL")]
        assert len(failed) == 1 and failed[0].startswith(metric)

    fails_with(lambda b: b.update(mAP=b["mAP"] + 0.05), "mAP (PyTorch)")
    fails_with(lambda b: b.update(deployed_mAP={**b["deployed_mAP"], "mAP": b["deployed_mAP"]["mAP"] + 0.05}),
               "mAP deployed")
    fails_with(lambda b: b.update(head_channels=[{**c, "cls_channels": c["cls_channels"] + 6}
                                                 for c in b["head_channels"]]), "head channels")
    fails_with(lambda b: b.update(latency_ratios={**b["latency_ratios"], "head": 1e-6}), "latency ratio head")

    # A baseline of another split or model is a usage error (exit 2), found before anything is measured.
    for key, value in (("ann_sha256", "0" * 64), ("arch", "torchvision:ssd300_vgg16"), ("image_size", [300, 300])):
        other = dict(stored, identity={**stored["identity"], key: value})
        path = tmp_path / f"other_{key}.json"
        path.write_text(json.dumps(other))
        assert main(["regress", "--baseline", str(path), *common]) == 2
        err = capsys.readouterr().err
        assert "measured for another model or data" in err and err.count("error:") == 1


@pytest.mark.slow
def test_regress_bad_baseline(demo_export, tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"hello": 1}))
    assert main(["regress", "--baseline", str(bad), "--export", str(demo_export)]) == 2
    assert "not an edgeanchor regression baseline" in capsys.readouterr().err
