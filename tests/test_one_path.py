"""One path per job: prune-and-export is the public steps composed, ea.export writes the same folder, each
setting is defined once, and one run does each piece of work once."""

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest

import edgeanchor as ea
from edgeanchor.cli import build_parser, main

from tests.helpers import synth_split


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return synth_split(tmp_path_factory, "one_path_split", num_images=24, seed=31, splits=(0.2, 0.4, 0.4))


class Counts:
    """Calls of the functions whose repetition the issue counted, recorded during one run."""

    def __init__(self, monkeypatch):
        import edgeanchor.api.deploy as deploy
        import edgeanchor.datasets.coco as coco
        import edgeanchor.evaluation.coco_map as coco_map
        import edgeanchor.exporting.folder as folder
        import edgeanchor.io as io
        import edgeanchor.pipeline as pipeline
        import edgeanchor.subset_search.run as run

        self.calls: Counter = Counter()
        self.reads: Counter = Counter()

        def counted(module, name, key=None):
            original = getattr(module, name)

            def wrapper(*args, **kwargs):
                self.calls[key or name] += 1
                return original(*args, **kwargs)
            monkeypatch.setattr(module, name, wrapper)

        counted(run, "resolve_method")
        counted(run, "check_search_spec")
        counted(run, "check_target_head_macs")
        counted(folder, "check_output")
        counted(pipeline.ExportSettings, "validate", "ExportSettings.validate")
        original_read = io.read_json

        def read_json(path, what="JSON file"):
            self.reads[str(Path(path).resolve())] += 1
            return original_read(path, what)
        for module in (io, coco):  # every JSON file edgeanchor parses goes through io.read_json
            monkeypatch.setattr(module, "read_json", read_json)
        load_gt = coco_map.load_gt

        def counted_gt(ann, backend="faster"):
            if isinstance(ann, (str, Path)):  # a path is parsed by pycocotools / faster-coco-eval
                self.reads[str(Path(ann).resolve())] += 1
            return load_gt(ann, backend)
        monkeypatch.setattr(coco_map, "load_gt", counted_gt)
        monkeypatch.setattr("edgeanchor.evaluation.subset.load_gt", counted_gt)
        self.deploy = deploy


@pytest.fixture(scope="module")
def command_run(split, tmp_path_factory):
    """prune-and-export on a small split, once, with the repeated work counted."""
    images, anns = split
    out = tmp_path_factory.mktemp("one_path") / "pe"
    with pytest.MonkeyPatch.context() as mp:
        counts = Counts(mp)
        code = main(["prune-and-export", "--model", "demo", "--data", images, "--ann", anns["val"], "--report-ann",
                     anns["test"], "--max-evals", "20", "--workers", "1", "--parity-images", "1", "--matrix-iters",
                     "1", "--out", str(out), "--json"])
    assert code == 0
    return out, counts


@pytest.mark.slow
def test_one_run_resolves_checks_and_parses_each_thing_once(command_run, split):
    out, counts = command_run
    assert counts.calls["resolve_method"] == 1
    assert counts.calls["check_search_spec"] == 1
    assert counts.calls["check_target_head_macs"] == 1
    assert counts.calls["check_output"] == 1
    assert counts.calls["ExportSettings.validate"] == 1
    _, anns = split
    for ann in (anns["val"], anns["test"]):  # the search split and the report split: each parsed once
        assert counts.reads[str(Path(ann).resolve())] == 1, (ann, counts.reads)


@pytest.mark.slow
def test_api_export_writes_the_same_report_as_the_command(command_run, split, tmp_path):
    out, _ = command_run
    images, anns = split
    command = json.loads((out / "report.json").read_text())
    det = ea.load("demo")
    pruned = ea.prune(det, command["chosen"]["removed"] and
                      sorted(set(det.anchor_set.ids) - set(command["chosen"]["removed"])))
    folder = ea.export(pruned, tmp_path / "api", baseline=det, data=ea.data(images, anns["test"]),
                       parity_images=1, matrix_iters=1, progress=False)
    api = folder.report
    assert set(api) == set(command)  # the same keys: regress, bench and evaluate --export need no special case
    assert set(api["mAP"]) == set(command["mAP"]) == {"baseline", "pruned"}
    assert set(api["mAP_as_deployed"]) == set(command["mAP_as_deployed"])
    assert set(api["runtimes"]) == set(command["runtimes"])
    # the same models on the same split: the same mAPs (the command's from the cache, exact) and costs
    assert api["mAP"] == pytest.approx(command["mAP"], abs=1e-12)
    assert api["mAP_as_deployed"] == command["mAP_as_deployed"]
    assert api["cost"] == command["cost"]
    assert api["chosen"] == {"source": "given"} and command["chosen"]["source"] == "search"
    # evaluate --export on the API's folder compares with the PyTorch mAP it recorded
    got = ea.evaluate(folder, progress=False)
    assert got["pytorch_mAP"] == api["mAP_as_deployed"]["pruned"]
    assert abs(got["mAP"] - got["pytorch_mAP"]) <= 0.001


def test_every_prune_and_export_flag_is_a_setting_and_reaches_the_api(monkeypatch, tmp_path):
    """Flags are generated from PruneAndExportSettings: each flag sets its field, and the API gets it."""
    from edgeanchor.api.settings import PruneAndExportSettings
    from edgeanchor.settings import option_strings

    received = []

    def record(settings):
        received.append(settings)
        raise _Stop

    monkeypatch.setattr("edgeanchor.api.deploy._prune_and_export", record)
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["prune-and-export"]
    flags = {s for a in sub._actions for s in a.option_strings} - {"-h", "--help", "--json"}
    fields = {f.name: f for f in dataclasses.fields(PruneAndExportSettings)}
    assert flags == {s for f in fields.values() for s in option_strings(f)}  # one flag per setting, no other
    values = {"image_size": (["128", "96"], [128, 96]), "split": (["test"], "test"),
              "method": (["layerwise"], "layerwise"), "cost": (["boxes"], "boxes"), "metric": (["voc07"], "voc07"), "executor": (["ray"], "ray"),
              "backend": (["pycocotools"], "pycocotools"), "tensorrt": (["fp16"], "fp16")}
    default = PruneAndExportSettings()
    for name, f in fields.items():
        names = option_strings(f)
        if not names:
            continue
        action = next(a for a in sub._actions if a.dest == name)
        if name in values:
            argv, expected = values[name]
        elif action.nargs == 0:
            argv, expected = [], True
        elif isinstance(f.default, int) and not isinstance(f.default, bool) or action.type is int:
            argv, expected = ["7"], 7
        elif isinstance(f.default, float) or action.type is float:
            argv, expected = ["0.25"], 0.25
        else:
            argv, expected = [str(tmp_path / name)], str(tmp_path / name)
        for flag in names:
            received.clear()
            with pytest.raises(_Stop):
                main(["prune-and-export", flag, *argv])
            got = getattr(received[-1], name)
            assert (list(got) if isinstance(got, tuple) else got) == expected, flag
            assert got != getattr(default, name), f"{flag} changed nothing"


class _Stop(Exception):
    """Raised in place of the run: the settings reached the API."""


def test_prune_and_export_signature_and_docs_are_the_settings():
    import inspect

    from edgeanchor.api.settings import PruneAndExportSettings

    sig = inspect.signature(ea.prune_and_export)
    fields = dataclasses.fields(PruneAndExportSettings)
    assert list(sig.parameters) == [f.name for f in fields]
    assert all(sig.parameters[f.name].default == f.default for f in fields)
    assert all(f"{f.name}:" in ea.prune_and_export.__doc__ for f in fields)
    with pytest.raises(TypeError):
        ea.prune_and_export(no_such_setting=1)


def test_data_roles_of_a_yolo_data_set_follow_split(tmp_path, split):
    from edgeanchor.api.data import roles

    images, _ = split
    yaml = tmp_path / "data.yaml"
    yaml.write_text(f"val: {images}\ntrain: {images}\nnames: [pole, plank, coin, crate, kite]\n")
    default, other = roles(str(yaml)), roles(str(yaml), split="train")
    assert default.search.ann.endswith("val.json") and other.search.ann.endswith("train.json")
    assert default.report.ann == default.search.ann  # no test split: reported on the searched one
    assert default.train is not None and default.train.ann.endswith("train.json")
    with pytest.raises(ea.EdgeAnchorError, match="not used with a YOLO data.yaml"):
        roles(str(yaml), report_ann="x.json")
