"""Every prune-and-export flag reaches the pipeline; search and prune-and-export share one method rule;
--json prints only JSON; --cost latency with a given latency model works end to end."""

import importlib.util
import json
import socket

import pytest

from edgeanchor.cli import build_parser, main
from edgeanchor.models import build_detector
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
    """main(['prune-and-export', ...]) with the run (after the settings are checked) replaced by a recorder."""
    import edgeanchor.api.deploy as deploy
    from edgeanchor.exporting.folder import ExportFolder

    calls = []

    def record(settings):
        settings.validate()  # what the real run does first
        calls.append(settings)
        report = fake_report(None) | {"out": settings.out}
        return ExportFolder(settings.out or "exports/x", report)

    monkeypatch.setattr(deploy, "_prune_and_export", record)
    return calls


def subparser(name):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name]


def test_prune_and_export_json_tensorrt_and_split(split, tmp_path, captured, capsys):
    # (every flag reaching its setting: tests/test_one_path.py, over the settings' fields)
    images, anns = split
    base = ["prune-and-export", "--model", "edgeanchor:demo_ssd", "--data", images, "--ann", anns["val"],
            "--out", str(tmp_path / "o"), "--json"]
    # --json: the report as JSON on stdout; without it, a table and a summary line
    capsys.readouterr()
    assert main(base) == 0 and json.loads(capsys.readouterr().out)["mAP"]["pruned"] == 0.5
    assert main([a for a in base if a != "--json"]) == 0
    assert "wrote" in capsys.readouterr().out.splitlines()[-1]
    # --tensorrt: needs TensorRT and a GPU, which this machine lacks: one line, exit 2, before any work
    n = len(captured)
    assert main(base + ["--tensorrt", "fp16"]) == 2 and len(captured) == n
    assert "TensorRT" in capsys.readouterr().err
    # a listening socket stands in for a Ray cluster: the flags are checked (the address answers), not run
    if importlib.util.find_spec("ray") is not None:
        listener = socket.create_server(("127.0.0.1", 0))
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        assert main(base + ["--executor", "ray", "--ray-address", address]) == 0
        assert captured[-1].search_options().ray_address == address
        listener.close()
    # --min-map replaces the default --max-drop; no floor means max_drop 0.005
    assert main(base + ["--min-map", "0.3"]) == 0
    assert (captured[-1].search_options().min_map, captured[-1].search_options().max_drop) == (0.3, None)
    assert main(base) == 0 and captured[-1].search_options().max_drop == 0.005


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


class _ExportStepReached(Exception):
    """Raised in place of prune-and-export's export step."""


@pytest.mark.slow
def test_prune_and_export_with_cost_latency_and_a_given_latency_model(split, tmp_path, capsys, monkeypatch):
    """The search and the choice of prune-and-export rank by the given latency model. They come before the
    export step, which is stubbed: it records the report's ``chosen`` entry and the folder's search.json."""
    import edgeanchor.pipeline as pipeline

    seen = {}

    def export_step(folder, *args, chosen, **kwargs):
        seen.update(chosen=chosen, search=json.loads(folder.search_json_path.read_text()))
        raise _ExportStepReached

    monkeypatch.setattr(pipeline, "write_export_folder", export_step)
    images, anns = split
    det = build_detector("demo")
    model = demo_latency_model(det, tmp_path / "lm.json")
    out = tmp_path / "e"
    with pytest.raises(_ExportStepReached):
        main(["prune-and-export", "--model", "demo", "--data", images, "--ann", anns["val"], "--report-ann",
              anns["test"], "--cost", "latency", "--latency-model", str(tmp_path / "lm.json"), "--max-evals", "40",
              "--workers", "1", "--parity-images", "1", "--matrix-iters", "0", "--out", str(out), "--json"])
    assert seen["chosen"]["cost"] == "latency"  # the report's chosen entry
    search = seen["search"]
    assert search["settings"]["cost"] == "latency" and len(search["nodes"]) > 1
    for node in search["nodes"]:  # every node was ranked by the given model's prediction
        assert node["cost"] == pytest.approx(model.predict(node["removed"]))
    bad = tmp_path / "not_a_model.json"
    bad.write_text("{}")
    assert main(["prune-and-export", "--model", "demo", "--data", images, "--ann", anns["val"], "--cost", "latency",
                 "--latency-model", str(bad), "--out", str(tmp_path / "f")]) == 2
    assert "not an edgeanchor latency model" in capsys.readouterr().err
