"""One path per job: prune-and-export is the public steps composed, ea.export writes the same folder, each
setting is defined once, and one run does each piece of work once."""

import argparse
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
        counted(run, "check_search_options")
        counted(run, "check_target_head_macs")
        counted(folder, "check_output")
        counted(pipeline.ExportOptions, "validate", "ExportOptions.validate")
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
    assert counts.calls["check_search_options"] == 1
    assert counts.calls["check_target_head_macs"] == 1
    assert counts.calls["check_output"] == 1
    assert counts.calls["ExportOptions.validate"] == 1
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


# command -> (its settings, the API functions its run calls (patched, in call order; the last one stops the run),
#             flags a field's flag needs beside it to reach the API, and what the run passes a field on as:
#             the API's parameter name, or (the flag's value, what the API gets) where the run parses it, or None
#             for a setting only the command's validate() reads)
_PRUNE_RESULT = {"num_anchors": 1, "head_macs": 1, "num_boxes": 1}
COMMANDS = {
    "prune-and-export": ("PruneAndExportSettings", ["edgeanchor.api.deploy._prune_and_export"], {}, {}),
    "search": ("SearchCommandSettings", ["edgeanchor.api.data", "edgeanchor.api.load",
                                         "edgeanchor.api.workflow.search_with_options"],
               {"split": ["--data", "{tmp}/images"]},
               {"model": "name_or_path", "data": "images", "report_ann": "report"}),
    "prune": ("PruneSettings", ["edgeanchor.api.load", "edgeanchor.api.prune", "edgeanchor.api.inspect",
                                "edgeanchor.api.save"], {},
              {"model": "name_or_path", "anchors": "keep", "keep": ("7", [7]), "remove": ("7", [7]),
               "out": "path"}),
    "inspect": ("InspectSettings", ["edgeanchor.api.load", "edgeanchor.api.inspect"], {}, {"model": "name_or_path"}),
    "evaluate": ("EvaluateSettings", ["edgeanchor.api.data", "edgeanchor.api.load",  # a model's checked path
                                      ("edgeanchor.api.workflow.evaluate_checked", "edgeanchor.api.evaluate")],
                 {name: ["--export", "{tmp}/export"] for name in ("runtime", "precision", "variant")},
                 {"model": "name_or_path", "data": "images", "export": "det", "overwrite": None}),
    "train": ("TrainSettings", ["edgeanchor.api.training.train_checkpoint"], {}, {}),
    "data synth": ("SynthSettings", ["edgeanchor.api.synth"], {}, {}),
    "bench": ("BenchSettings", ["edgeanchor.api.bench"], {}, {"iters": ("7", 7)}),  # auto or a number
    "regress": ("RegressSettings", ["edgeanchor.api.regress"], {}, {"iters": ("7", 7)}),
}


def _subparser(command: str):
    parser = build_parser()
    for word in command.split():
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    return parser


def _test_value(f, action, tmp_path):
    """(argv, parsed value) of a value of field ``f`` other than its default."""
    from edgeanchor.settings import flag_of

    spec = flag_of(f)
    if spec.action == "store_true":
        return [], True
    if spec.action == "store_false":
        return [], False
    if spec.choices:
        choice = next(c for c in spec.choices if c != f.default)
        return [choice], choice
    if action.nargs == 2:
        return ["128", "96"], [128, 96]
    if action.type is int or isinstance(f.default, int) and not isinstance(f.default, bool):
        return ["7"], 7
    if action.type is float or isinstance(f.default, float):
        return ["0.25"], 0.25
    return [str(tmp_path / f.name)], str(tmp_path / f.name)


def _recorder(monkeypatch, targets: list, received: dict):
    """Replace each API function in ``targets`` by one that records its arguments by parameter name (a settings
    dataclass by its fields); the last one ends the run (a tuple there: whichever of them the run calls)."""
    import importlib
    import inspect
    import types

    fake = types.SimpleNamespace(anchor_set=types.SimpleNamespace(ids=[0]))
    last = len(targets) - 1
    steps = [(i, t) for i, step in enumerate(targets) for t in (step if isinstance(step, tuple) else (step,))]
    for i, target in steps:
        module_name, name = target.rsplit(".", 1)
        module = importlib.import_module(module_name)
        signature = inspect.signature(getattr(module, name))

        def wrapper(*args, _sig=signature, _last=i == last, _name=name, **kwargs):
            for key, value in _sig.bind(*args, **kwargs).arguments.items():
                if dataclasses.is_dataclass(value):
                    received.update({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
                elif isinstance(value, dict) and _sig.parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
                    received.update(value)
                else:
                    received[key] = value
            if _last:
                raise _Stop
            return _PRUNE_RESULT if _name == "inspect" else fake
        monkeypatch.setattr(module, name, wrapper)


def _required_argv(cls, parser, skip: str, tmp_path) -> list[str]:
    """Values of the required settings (one flag of a required exclusive group), other than field ``skip``."""
    from edgeanchor.settings import flag_of, option_strings

    argv, groups = [], {flag_of(f).exclusive for f in dataclasses.fields(cls) if f.name == skip}
    for f in dataclasses.fields(cls):
        spec = flag_of(f)
        if f.name == skip or not spec.required or (spec.exclusive and spec.exclusive in groups):
            continue
        groups.add(spec.exclusive)
        action = next(a for a in parser._actions if a.dest == f.name)
        values, _ = _test_value(f, action, tmp_path)
        argv += [*option_strings(f)[:1], *values]
    return argv


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_is_a_setting_and_reaches_the_api(command, monkeypatch, tmp_path):
    """Each command's flags are generated from its settings dataclass: one flag (or positional argument) per
    field and no other, each flag sets its field, and the value reaches the API function the run calls."""
    import edgeanchor.api.settings as settings_module
    from edgeanchor.settings import flag_of, option_strings

    class_name, targets, context, converted = COMMANDS[command]
    cls = getattr(settings_module, class_name)
    for other in vars(settings_module).values():  # the checks have their own tests; here, the plumbing
        if isinstance(other, type) and "validate" in vars(other):
            monkeypatch.setattr(other, "validate", lambda self: None)
    received: dict = {}
    _recorder(monkeypatch, targets, received)
    sub = _subparser(command)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    flags = {s for a in sub._actions for s in a.option_strings} - {"-h", "--help", "--json"}
    assert flags == {s for f in fields.values() for s in option_strings(f)}  # one flag per setting, no other
    positionals = {a.dest for a in sub._actions if not a.option_strings and a.dest != "help"}
    assert positionals == {name for name, f in fields.items() if flag_of(f).positional}
    for name, f in fields.items():
        spec = flag_of(f)
        names = option_strings(f)
        if not names and not spec.positional:
            continue  # an API-only setting (e.g. progress)
        action = next(a for a in sub._actions if a.dest == name)
        argv, want = _test_value(f, action, tmp_path)
        key = converted.get(name, name)
        if key is None:  # read by validate() alone: the detections file is checked before the model is built
            continue
        if isinstance(key, tuple):  # the run parses this field: (the flag's value, what the API gets)
            argv, want, key = [key[0]], key[1], name
        around = [a.replace("{tmp}", str(tmp_path)) for a in context.get(name, [])]
        around += _required_argv(cls, sub, name, tmp_path)
        for flag in names or (None,):
            received.clear()
            with pytest.raises(_Stop):
                main([*command.split(), *around, *([flag] if flag else []), *argv])
            got = received[key]
            assert (list(got) if isinstance(got, tuple) else got) == want, (command, flag or name)
            assert got != f.default, f"{flag or name} changed nothing"


def test_api_functions_take_their_command_settings():
    """An API function that runs a whole command keeps its explicit signature (what IDEs and mypy read); it is
    the settings dataclass's: the same names, the same defaults, a required flag where there is no default."""
    import inspect

    import edgeanchor.api.settings as s
    from edgeanchor.api.training import train_checkpoint
    from edgeanchor.settings import flag_of

    whole = {ea.bench: s.BenchSettings, ea.regress: s.RegressSettings, ea.synth: s.SynthSettings,
             train_checkpoint: s.TrainSettings, ea.prune_and_export: s.PruneAndExportSettings}
    for fn, cls in whole.items():
        params = inspect.signature(fn).parameters
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(params) == set(fields), fn.__name__
        for name, p in params.items():
            if p.default is inspect.Parameter.empty:
                assert flag_of(fields[name]).required or flag_of(fields[name]).positional, (fn.__name__, name)
            else:
                assert p.default == fields[name].default, (fn.__name__, name)
    # the composed commands' settings are the keywords of the API functions they call, with their defaults
    parts = {ea.search: [s.SearchSettings], ea.load: [s.ModelWithAnchors],
             ea.evaluate: [s._EvaluateOwn, s._EvaluateExport]}
    for fn, classes in parts.items():
        params = inspect.signature(fn).parameters
        for cls in classes:
            for f in dataclasses.fields(cls):
                if f.name in ("model", "data", "ann", "split", "export", "cache", "latency_model", "runtime"):
                    continue  # given positionally, through ea.data, or the command's own default (runtime)
                assert params[f.name].default == f.default, (fn.__name__, f.name)


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
