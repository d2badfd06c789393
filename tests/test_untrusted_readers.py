"""Property tests of the readers of files from elsewhere (docs/trust.md): whatever a field holds, the reader
either accepts the file or says why in one EdgeAnchorError, and what it accepts can be used."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

from edgeanchor.errors import EdgeAnchorError
from edgeanchor.exporting.folder import ExportFolder
from edgeanchor.exporting.report_schema import preprocess_json, validate_report
from edgeanchor.models.checkpoint_file import check_checkpoint
from edgeanchor.models.registry import DEMO_CHECKPOINT, detector_from_checkpoint

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
settings = hypothesis.settings(max_examples=60, deadline=None,
                               suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])

# JSON-like values, as a crafted file may hold them (torch.load's weights-only load gives the same kinds)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6) | st.integers(), inner,
                                                                 max_size=4),
    max_leaves=12,
)

DEMO = torch.load(DEMO_CHECKPOINT, map_location="cpu", weights_only=True)
CHECKPOINT_FIELDS = [("arch",), ("num_classes",), ("anchors",), ("anchors", "image_size"), ("anchors", "levels"),
                     ("anchors", "levels", 0), ("anchors", "levels", 0, "anchors"),
                     ("anchors", "levels", 0, "feature_size"), ("anchors", "levels", 0, "anchors", 0),
                     ("anchors", "centre_offset"), ("postprocess",), ("postprocess", "score_thresh"),
                     ("postprocess", "topk_candidates"), ("postprocess", "box_weights"), ("state_dict",),
                     ("meta",)]


def replaced(obj, where: tuple, value):
    """A deep copy of ``obj`` with the field at ``where`` (keys and indices) set to ``value``."""
    out = copy.deepcopy(obj)
    node = out
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    return out


@settings
@hypothesis.given(where=st.sampled_from(CHECKPOINT_FIELDS), value=VALUES)
def test_a_checkpoint_field_is_accepted_and_usable_or_refused_in_one_line(where, value):
    obj = replaced({k: v for k, v in DEMO.items() if k != "state_dict"}, where, value)
    obj.setdefault("state_dict", DEMO["state_dict"])  # shared, never changed: the copy above skips it
    try:
        check_checkpoint(obj, "crafted.pt")
    except EdgeAnchorError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("crafted.pt")
        return
    try:  # accepted: it builds, or fails in one line of ours (weights that do not fit a changed anchor set)
        detector_from_checkpoint(obj, "crafted.pt")
    except EdgeAnchorError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize("num_classes, accepted", [(6, True), (0, False), (True, False), (100_000, False),
                                                   (100_001, False), (6.0, False)])
def test_num_classes_bounds(num_classes, accepted):
    # 100,000 is inside the bound, but demo's weights hold 6 classes: found on the meta device, nothing allocated
    obj = {**DEMO, "num_classes": num_classes}
    if accepted:
        assert check_checkpoint(obj, "x.pt") is obj
    else:
        with pytest.raises(EdgeAnchorError, match="x.pt: "):
            check_checkpoint(obj, "x.pt")


def test_an_integer_too_long_to_print_is_one_line():
    # a pickle may hold an int of any size; repr() refuses one of more than 4,300 digits, float() overflows
    huge = 10**5000  # 16,610 bits: log2(10) * 5000 = 16609.6
    for field in ("num_classes", ("postprocess", "score_thresh")):
        obj = {**DEMO, "num_classes": huge} if field == "num_classes" else replaced(
            {k: v for k, v in DEMO.items() if k != "state_dict"}, field, huge) | {"state_dict": DEMO["state_dict"]}
        with pytest.raises(EdgeAnchorError, match="is an integer of 16,610 bits, but it must be"):
            check_checkpoint(obj, "x.pt")


def valid_report() -> dict:
    """A format-2 report.json with every field readers use (as ExportFolder.write_report stamps it)."""
    return {"format": "edgeanchor.export", "format_version": 2, "data": "/elsewhere/images",
            "report_ann": "/elsewhere/val.json", "image_size": [320, 320], "resize": "stretch",
            "device": {"preprocess": preprocess_json([320, 320], "stretch"),
                       "label_to_category": {"1": 3, "2": 7},
                       "model": {"arch": "edgeanchor:demo_ssd", "num_classes": 6, "first_label": 1,
                                 "image_size": [320, 320], "baseline_anchors": 30},
                       "annotations": "data/annotations.json", "images": "data/images", "num_images": 1,
                       "images_bytes": 10}}


REPORT_FIELDS = [("image_size",), ("data",), ("device",), ("device", "preprocess"),
                 ("device", "preprocess", "image_size"), ("device", "preprocess", "resize"),
                 ("device", "label_to_category"), ("device", "label_to_category", "1"), ("device", "model"),
                 ("device", "model", "arch"), ("device", "model", "num_classes"), ("device", "model", "image_size"),
                 ("device", "model", "first_label"), ("device", "annotations"), ("device", "images")]


@settings
@hypothesis.given(where=st.sampled_from(REPORT_FIELDS), value=VALUES)
@hypothesis.example(where=("device", "label_to_category"), value={"\u00b2": 1})  # str.isdigit, but int() refuses
def test_a_report_field_is_accepted_and_usable_or_refused_in_one_line(where, value, tmp_path):
    report = replaced(valid_report(), where, value)
    try:
        validate_report(report, "report.json")
    except EdgeAnchorError as exc:
        assert "\n" not in str(exc)
        return
    folder = ExportFolder(tmp_path, report)  # accepted: the readers' values have their types
    assert all(isinstance(v, int) and 0 < v <= 16_384 for v in (*folder.image_size, *folder.preprocess["image_size"]))
    assert all(type(k) is int and type(v) is int for k, v in folder.label_to_category().items())
    info = folder.model_info
    assert isinstance(info["arch"], str) and 1 <= info["num_classes"] <= 100_000
    for read in (lambda: folder.data, lambda: folder.report_ann):  # a path inside, or one line
        try:
            assert Path(read()).resolve().is_relative_to(tmp_path.resolve())
        except EdgeAnchorError as exc:
            assert "\n" not in str(exc)


def test_the_valid_report_is_valid():
    assert validate_report(valid_report(), "report.json")["device"]["model"]["num_classes"] == 6


@settings
@hypothesis.given(name=st.lists(st.sampled_from(["..", ".", "a", "b", "", "/", "data", "x.json"]), min_size=1,
                                max_size=6).map("/".join))
def test_inside_agrees_with_a_lexical_reference(name, tmp_path):
    # no symlinks here, so the reference is plain path arithmetic: normpath, then commonpath with the root
    root = tmp_path / "exp"
    root.mkdir(exist_ok=True)
    joined = os.path.normpath(os.path.join(root, name))
    expected = os.path.commonpath([str(root), joined]) == str(root)
    folder = ExportFolder(root, {})
    try:
        folder.inside(root / name, "x")
        assert expected, name
    except EdgeAnchorError as exc:
        assert not expected, name
        assert "leads outside the export folder" in str(exc)


def test_inside_follows_symlinks(tmp_path):
    root = tmp_path / "exp"
    root.mkdir()
    (tmp_path / "secret.json").write_text(json.dumps({}))
    (root / "a.json").symlink_to(tmp_path / "secret.json")
    (root / "b.json").symlink_to(root / "c.json")  # a symlink that stays inside is fine
    folder = ExportFolder(root, {})
    with pytest.raises(EdgeAnchorError, match=r"a.json leads outside the export folder \(to .*secret.json\)"):
        folder.inside(root / "a.json", "a.json")
    assert folder.inside(root / "b.json", "b.json") == root / "b.json"


@pytest.mark.parametrize("text, line", [
    ("", "ValueError"),  # no text: the type's name (an empty .pt gave IndexError from splitlines()[0])
    ("\n\n  second  \nthird", "second"),
    ("\x1b[1mdo those\x1b[0m steps. \nmore", "do those steps."),  # torch colours its advice
    ("Exception from src/inference/src/cpp/core.cpp:84:\nException from src/x/model_reader.cpp:148:\nUnable to read",
     "Unable to read"),
    ("alpha beta gamma delta", "alpha beta gamma..."),  # 16 characters, then a space: cut there
    ("alpha beta gammadelta", "alpha beta..."),  # the 16th character is inside a word: cut before that word
])
def test_first_line(text, line):
    from edgeanchor.errors import first_line

    assert first_line(ValueError(text), limit=16) == line
