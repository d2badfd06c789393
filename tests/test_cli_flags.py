"""Every prune-and-export flag reaches the pipeline; search and prune-and-export share one method rule;
--json prints only JSON; --cost latency with a given latency model works end to end."""

import importlib.util
import json
import socket

import pytest
import torch

import edgeanchor.pipeline as pipeline_module
from edgeanchor.cli import build_parser, main
from edgeanchor.models import build_detector
from edgeanchor.pipeline import PipelineSpec
from edgeanchor.subset_search.run import SearchSpec

from tests.helpers import shared_synth_split


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return shared_synth_split(tmp_path_factory, "flags_split", num_images=30, seed=5, splits=(0.2, 0.4, 0.4))


def fake_report(det) -> dict:
    cost = {"head_macs": 10, "num_boxes": 5, "num_anchors": 3}
    return {"mAP": {"baseline": 0.5, "pruned": 0.5}, "cost": {"baseline": cost, "pruned": cost},
            "export": {v: {"head_channels": [], "parity": {"passed": True}} for v in ("baseline", "pruned")},
            "seconds": {"total": 1.0}}


@pytest.fixture
def captured(monkeypatch):
    """main(['prune-and-export', ...]) with the pipeline replaced by a recorder."""
    calls = []

    def record(det, pipeline, out, *, overwrite=False, **kwargs):
        calls.append({"det": det, "pipeline": pipeline, "out": str(out), "overwrite": overwrite})
        return fake_report(det)

    monkeypatch.setattr(pipeline_module, "run_pipeline", record)
    return calls


def subparser(name):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name]


def keep_file(tmp_path):
    det = build_detector("edgeanchor:demo_ssd")
    path = tmp_path / "keep.json"
    path.write_text(json.dumps(det.anchor_set.subset([0, 1, 7]).to_json()))
    return str(path)


def weights_file(tmp_path):
    """A torchvision-style state dict of the demo architecture, and the detector it gives."""
    from edgeanchor.models.registry import ARCHS

    torch.manual_seed(123)
    tv = ARCHS["edgeanchor:demo_ssd"].builder(ARCHS["edgeanchor:demo_ssd"].num_classes, (320, 320))
    path = tmp_path / "w.pth"
    torch.save(tv.state_dict(), path)
    return str(path), build_detector("edgeanchor:demo_ssd", weights=str(path))


def test_every_prune_and_export_flag_changes_what_it_should(split, tmp_path, captured, capsys):
    images, anns = split
    base = ["prune-and-export", "--model", "edgeanchor:demo_ssd", "--data", images, "--ann", anns["val"],
            "--out", str(tmp_path / "o"), "--json"]
    assert main(base) == 0
    ref = captured[-1]
    assert ref["pipeline"] == PipelineSpec(data=images, ann=anns["val"], report_ann=anns["val"],
                                           search=SearchSpec(), model_name="edgeanchor:demo_ssd")
    wpath, wdet = weights_file(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    listener_address = f"127.0.0.1:{listener.getsockname()[1]}"

    def field(path):
        def get(call):
            obj = call["pipeline"]
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        return get

    cases = {  # flag: (extra argv, what it must change, expected value)
        "--model": (["--model", "torchvision:ssdlite320_mobilenet_v3_large"], field("model_name"),
                    "torchvision:ssdlite320_mobilenet_v3_large"),
        "--num-classes": (["--num-classes", "4"], lambda c: c["det"].num_classes, 4),
        "--weights": (["--weights", wpath],
                      lambda c: all(torch.equal(a, b) for a, b in zip(c["det"].state_dict().values(),
                                                                         wdet.state_dict().values())), True),
        "--anchors": (["--anchors", keep_file(tmp_path)], field("anchors"), keep_file(tmp_path)),
        "--keep-anchors": (["--keep-anchors", keep_file(tmp_path)], field("anchors"), keep_file(tmp_path)),
        "--image-size": (["--image-size", "256", "256"], lambda c: tuple(c["det"].image_size), (256, 256)),
        "--data": (["--data", str(tmp_path)], field("data"), str(tmp_path)),
        "--ann": (["--ann", anns["test"]], field("ann"), anns["test"]),
        "--report-ann": (["--report-ann", anns["test"]], field("report_ann"), anns["test"]),
        "--train-ann": (["--train-ann", anns["train"]], field("train_ann"), anns["train"]),
        "--target-head-macs": (["--target-head-macs", "2e7"], field("target_head_macs"), 2e7),
        "--finetune-epochs": (["--finetune-epochs", "2", "--train-ann", anns["train"]], field("finetune_epochs"), 2),
        "--finetune-lr": (["--finetune-lr", "0.01"], field("finetune_lr"), 0.01),
        "--opset": (["--opset", "13"], field("opset"), 13),
        "--parity-images": (["--parity-images", "7"], field("parity_images"), 7),
        "--out": (["--out", str(tmp_path / "other")], lambda c: c["out"], str(tmp_path / "other")),
        "--overwrite": (["--overwrite"], lambda c: c["overwrite"], True),
        "--method": (["--method", "layerwise"], field("search.method"), "layerwise"),
        "--cost": (["--cost", "boxes"], field("search.cost"), "boxes"),
        "--min-map": (["--min-map", "0.3"], lambda c: (c["pipeline"].search.min_map, c["pipeline"].search.max_drop),
                      (0.3, None)),
        "--max-drop": (["--max-drop", "0.02"], field("search.max_drop"), 0.02),
        "--tol": (["--tol", "0.001"], field("search.tol"), 0.001),
        "--max-per-level": (["--max-per-level", "2"], field("search.max_per_level"), 2),
        "--max-evals": (["--max-evals", "17"], field("search.max_evals"), 17),
        "--workers": (["--workers", "1"], field("search.workers"), 1),
        "--backend": (["--backend", "pycocotools"], field("search.backend"), "pycocotools"),
        "--metric": (["--metric", "voc07"], field("search.metric"), "voc07"),
        # a listening socket stands in for a Ray cluster: the flags are checked (the address answers), not run
        "--executor": (["--executor", "ray"], field("search.executor"), "ray"),
        "--ray-address": (["--executor", "ray", "--ray-address", listener_address], field("search.ray_address"),
                          listener_address),
        "--cache": (["--cache", str(tmp_path / "c.npz")], field("cache"), str(tmp_path / "c.npz")),
        "--latency-model": (["--latency-model", str(tmp_path / "lm.json")], field("latency_model"),
                            str(tmp_path / "lm.json")),
        "--score-thresh": (["--score-thresh", "0.3"], lambda c: c["det"].postprocess_spec.score_thresh, 0.3),
        "--nms-thresh": (["--nms-thresh", "0.5"], lambda c: c["det"].postprocess_spec.nms_thresh, 0.5),
        "--max-det": (["--max-det", "50"], lambda c: c["det"].postprocess_spec.detections_per_img, 50),
        "--deploy-score-thresh": (["--deploy-score-thresh", "0.4"], field("deploy_score_thresh"), 0.4),
        "--deploy-nms-thresh": (["--deploy-nms-thresh", "0.5"], field("deploy_nms_thresh"), 0.5),
        "--nonms-topk": (["--nonms-topk", "50"], field("nonms_topk"), 50),
        "--int8": (["--int8"], field("int8"), True),
        "--matrix-iters": (["--matrix-iters", "0"], field("matrix_iters"), 0),
    }
    without_ray = importlib.util.find_spec("ray") is None  # the [ray] extra: checked when installed
    for flag, (extra, get, expected) in cases.items():
        if without_ray and "ray" in extra:
            continue
        argv = base + extra
        assert main(argv) == 0, flag
        call = captured[-1]
        assert get(call) == expected, flag
        assert get(call) != get(ref), f"{flag} did not change anything"
    listener.close()
    # --json: the report as JSON on stdout; without it, a table and a summary line
    capsys.readouterr()
    assert main(base) == 0 and json.loads(capsys.readouterr().out)["mAP"]["pruned"] == 0.5
    assert main([a for a in base if a != "--json"]) == 0
    assert "wrote" in capsys.readouterr().out.splitlines()[-1]
    # --tensorrt: needs TensorRT and a GPU, which this machine lacks: one line, exit 2, before any work
    n = len(captured)
    assert main(base + ["--tensorrt", "fp16"]) == 2 and len(captured) == n
    assert "TensorRT" in capsys.readouterr().err
    # --split: which split of a YOLO data.yaml is searched on (here a one-split set made from the same images)
    yaml = tmp_path / "data.yaml"
    yaml.write_text(f"val: {images}\ntrain: {images}\nnames: [pole, plank, coin, crate, kite]\n")
    yolo = [a for a in base if a not in ("--data", images, "--ann", anns["val"])] + ["--data", str(yaml)]
    assert main(yolo) == 0 and main(yolo + ["--split", "train"]) == 0
    assert captured[-1]["pipeline"].ann != captured[-2]["pipeline"].ann
    assert captured[-1]["pipeline"].ann.endswith("train.json") and captured[-2]["pipeline"].ann.endswith("val.json")
    handled = set(cases) | {"--json", "--tensorrt", "--split", "-h", "--help"}
    flags = {s for a in subparser("prune-and-export")._actions for s in a.option_strings}
    assert flags == handled, f"flags without a test row: {sorted(flags - handled)}"


@pytest.mark.parametrize("argv, message", [
    (["--opset", "99"], "--opset 99 is not supported"),
    (["--opset", "5"], "--opset 5 is not supported"),
    (["--parity-images", "0"], "--parity-images must be >= 1"),
    (["--target-head-macs", "-5"], "--target-head-macs must be a positive number"),
    (["--finetune-lr", "nan"], "--finetune-lr must be a positive number"),
])
def test_bad_pipeline_flags_fail_before_any_work(argv, message, captured, capsys, tmp_path, monkeypatch):
    import edgeanchor.datasets.demo_data as demo_data

    def no_data(*a, **k):
        raise AssertionError("the demo data was generated before the flags were checked")

    monkeypatch.setattr(demo_data, "ensure_demo_data", no_data)
    code = main(["prune-and-export", "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_one_method_rule_for_search_and_prune_and_export(tmp_path, capsys):
    errors = []
    for cmd in (["search", "--out", str(tmp_path / "s")], ["prune-and-export", "--out", str(tmp_path / "p")]):
        assert main([*cmd, "--model", "torchvision:retinanet_resnet50_fpn", "--image-size", "128", "128",
                     "--method", "greedy"]) == 2
        errors.append(capsys.readouterr().err)
    assert errors[0] == errors[1]
    assert "--method shared" in errors[0] and errors[0].count("\n") == 1


def test_search_json_on_a_fresh_cache_prints_only_json(tmp_path, monkeypatch, capsys):
    import edgeanchor.datasets.demo_data as demo_data

    monkeypatch.setenv("EDGEANCHOR_CACHE", str(tmp_path / "fresh-cache"))
    monkeypatch.setattr(demo_data, "DEMO_NUM_IMAGES", 30)  # a small demo set, generated now
    assert main(["search", "--model", "demo", "--out", str(tmp_path / "s"), "--json", "--max-evals", "12",
                 "--workers", "1"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # stdout is one JSON document and nothing else
    assert result["num_evals"] >= 1 and result["front"]
    assert "generating the demo data set" in captured.err and "candidates" in captured.err


def demo_latency_model(det, path):
    from edgeanchor.benchmark.latency_model import LatencyModel

    levels = det.anchor_set.levels
    model = LatencyModel(
        level_base_ms=[0.05] * len(levels), level_per_anchor_ms=[0.02 * (i + 1) for i in range(len(levels))],
        post_fixed_ms=0.1, post_per_box_ms=1e-5, nms_per_box_ms=1e-3,
        anchor_boxes={a.id: lv.feature_size[0] * lv.feature_size[1] for lv in levels for a in lv.anchors},
        anchor_nms_boxes={a.id: 1.0 + a.id % 3 for lv in levels for a in lv.anchors},
        level_of=det.anchor_set.level_of(), settings={"note": "hand-written for a test"})
    model.save(path)
    return model


@pytest.mark.slow
def test_prune_and_export_with_cost_latency_and_a_given_latency_model(split, tmp_path, capsys):
    images, anns = split
    det = build_detector("demo")
    model = demo_latency_model(det, tmp_path / "lm.json")
    out = tmp_path / "e"
    assert main(["prune-and-export", "--model", "demo", "--data", images, "--ann", anns["val"], "--report-ann",
                 anns["test"], "--cost", "latency", "--latency-model", str(tmp_path / "lm.json"), "--max-evals", "40",
                 "--workers", "1", "--parity-images", "1", "--matrix-iters", "0", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chosen"]["cost"] == "latency"
    search = json.loads((out / "search.json").read_text())
    assert search["settings"]["cost"] == "latency" and len(search["nodes"]) > 1
    for node in search["nodes"]:  # every node was ranked by the given model's prediction
        assert node["cost"] == pytest.approx(model.predict(node["removed"]))
    bad = tmp_path / "not_a_model.json"
    bad.write_text("{}")
    assert main(["prune-and-export", "--model", "demo", "--data", images, "--ann", anns["val"], "--cost", "latency",
                 "--latency-model", str(bad), "--out", str(tmp_path / "f")]) == 2
    assert "not an edgeanchor latency model" in capsys.readouterr().err
