"""API misuse: every public function refuses a value of the wrong type in one line naming the parameter, and
ea.prune reads anchor ids as ids only (no float, no bool mask, no repeat, none outside the model)."""

from __future__ import annotations

import inspect
import os
import typing

import numpy as np
import pytest

import edgeanchor as ea
from edgeanchor.api.results import BenchResult, SearchResult
from edgeanchor.errors import EdgeAnchorError
from edgeanchor.settings import check_type


class Wrong:
    """A value no annotation of the API accepts (only ``Any`` would)."""

    def __repr__(self) -> str:
        return "Wrong()"


@pytest.fixture(scope="module")
def det():
    return ea.load("demo")


def public_callables():
    """(name, callable) of every public function of ``ea``, the public classes' constructors that take user
    values, and the result methods users call with arguments."""
    out = []
    for name in ea.__all__:
        obj = getattr(ea, name)
        if inspect.isfunction(obj):
            out.append((name, obj))
    out.append(("Data", ea.Data))
    result = SearchResult({}, [0, 1], "nowhere")
    out += [("SearchResult.choose", result.choose), ("SearchResult.plot", result.plot),
            ("BenchResult.plot", BenchResult({}).plot)]
    return out


def annotation_members(text: str) -> list[str]:
    return [m.strip() for m in str(text).split("|")]


def a_valid(param: inspect.Parameter, det):
    """A value of the parameter's type (its annotation's first member we can make)."""
    for member in annotation_members(param.annotation):
        if member == "Detector":
            return det
        if member in ("str", "PathArg", "Any") or member.startswith("os.PathLike"):
            return "unused"
        if member == "int":
            return 1
        if member == "float":
            return 1.0
    raise AssertionError(f"no valid value for {param}")


def test_every_public_function_checks_its_annotations():
    for name, fn in public_callables():
        if name == "prune_and_export":  # its parameters are the settings' fields, typed by check_fields
            from dataclasses import fields

            from edgeanchor.api.settings import PruneAndExportSettings

            assert list(inspect.signature(fn).parameters) == [f.name for f in fields(PruneAndExportSettings)]
            continue
        target = fn.__init__ if inspect.isclass(fn) else fn
        assert getattr(target, "__edgeanchor_typechecked__", False), f"{name} is not @typechecked"


@pytest.mark.parametrize("name, fn", public_callables(), ids=[n for n, _ in public_callables()])
def test_a_wrong_type_names_the_parameter_and_the_type(name, fn, det):
    """Each annotated parameter in turn gets a value of no accepted type, the others a valid one: the call
    raises EdgeAnchorError naming that parameter and what it takes, before any work."""
    signature = inspect.signature(fn)
    checked = 0
    for param in signature.parameters.values():
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL) or param.annotation in (param.empty, "Any"):
            continue
        args, kwargs = [], {}
        for other in signature.parameters.values():
            value = Wrong() if other is param else (a_valid(other, det) if other.default is other.empty else None)
            if value is None:
                continue
            if other.kind is other.POSITIONAL_OR_KEYWORD and other.default is other.empty:
                args.append(value)
            else:
                kwargs[other.name] = value
        with pytest.raises(EdgeAnchorError) as info:
            fn(*args, **kwargs)
        message = str(info.value)
        assert message.startswith(f"`{param.name}` must be "), (name, param.name, message)
        assert "(got Wrong" not in message and "(got a Wrong)" in message
        assert "\n" not in message
        checked += 1
    assert checked, f"{name}: no annotated parameter"


@pytest.mark.parametrize("call, words", [  # the issue's own cases are rows of tests/test_bad_input.py
    (lambda det: ea.bench("exp", iters=True), "`iters` must be an int or 'auto' (got True, a bool)"),
    (lambda det: ea.load("demo", image_size=(320, "320")), "`image_size` must be a sequence of int or None "
                                                           "(got (320, '320'), a tuple: '320', a str in it)"),
    (lambda det: ea.prune_and_export(max_evals="10"), "`max_evals` must be an int (got '10', a str)"),
    (lambda det: ea.prune_and_export(5), "`model` must be a str (got 5, an int)"),
])
def test_more_misuses(det, call, words):
    with pytest.raises(EdgeAnchorError) as info:
        call(det)
    assert words in str(info.value)


def test_numbers_as_the_annotations_mean_them():
    """int takes numpy's integers but not bool; float takes ints; Sequence[int] checks its elements."""
    ns = {"typing": typing, "os": os}
    check_type("n", np.int64(3), "int", ns)
    check_type("x", 3, "float", ns)
    check_type("x", np.float32(0.5), "float | None", ns)
    check_type("size", [320, np.int32(320)], "Sequence[int] | None", ns)
    check_type("p", os.curdir, "str | os.PathLike", ns)
    for value, annotation in ((True, "int"), (False, "float"), ("3", "int"), ([1.5], "Sequence[int]"),
                              ("ab", "Sequence[int] | None"), (np.bool_(True), "int")):
        with pytest.raises(EdgeAnchorError, match=r"^`v` must be "):
            check_type("v", value, annotation, ns)


# ------------------------------------------------------------------------------ ea.prune's anchor ids


def test_prune_keeps_exactly_the_ids_given(det):
    """ids, numpy's integers too, in any order: the kept anchors are those ids, nothing rounded."""
    assert ea.prune(det, [3, 0]).anchor_set.ids == [0, 3]
    assert ea.prune(det, np.array([0, 3])).anchor_set.ids == [0, 3]
    assert ea.prune(det, (i for i in (5, 1))).anchor_set.ids == [1, 5]  # an iterator: checked by prune itself
    assert ea.prune(det, remove=range(1, det.anchor_set.num_anchors)).anchor_set.ids == [0]


@pytest.mark.parametrize("keep, words", [
    ([0.5, 1.0], "(got [0.5, 1.0], a list: 0.5, a float in it)"),  # once read as {0, 1}
    ([True, False], "(got [True, False], a list: True, a bool in it)"),  # once read as ids {1, 0}
    (np.array([True, False]), "(got a ndarray: np.True_, a bool in it)"),
    ([1.0], "(got [1.0], a list: 1.0, a float in it)"),  # a whole float is still not an id
    ((v for v in (0, 1.5)), "`keep` holds 1.5, a float; anchor ids are integers"),
    ((v for v in (True, False)), "(a mask? keep the ids it marks"),
    ([0, 2, 0], "`keep` lists anchor ids [0] more than once"),
    ([0, 30], "`keep`: anchor ids [30] are not in the model"),  # the demo has ids 0..29
    ([-1], "`keep`: anchor ids [-1] are not in the model"),
])
def test_prune_refuses_what_is_not_an_anchor_id(det, keep, words):
    assert det.anchor_set.num_anchors == 30
    with pytest.raises(EdgeAnchorError) as info:
        ea.prune(det, keep)
    assert words in str(info.value)


def test_prune_remove_is_checked_the_same_way(det):
    for remove, words in (([1.5], "`remove` must be an iterable of int or None"),
                          ([3, 3], "`remove` lists anchor ids [3] more than once"),
                          ([99], "`remove`: anchor ids [99] are not in the model")):
        with pytest.raises(EdgeAnchorError) as info:
            ea.prune(det, remove=remove)
        assert words in str(info.value)


def test_evaluate_checks_its_settings_once(tmp_path_factory, monkeypatch, capsys):
    """The command checks before the model is built and the API step after it does not check again."""
    import edgeanchor.api.workflow as workflow
    from edgeanchor.cli import main
    from tests.helpers import shared_synth_split

    images, anns = shared_synth_split(tmp_path_factory, "budget", num_images=12, seed=3, splits=(0.5, 0.5, 0.0))
    calls = []
    check = workflow.check_evaluate_settings
    monkeypatch.setattr(workflow, "check_evaluate_settings", lambda **kw: (calls.append(kw), check(**kw))[1])
    assert main(["evaluate", "--model", "demo", "--data", images, "--ann", anns["val"], "--json"]) == 0
    assert len(calls) == 1 and '"mAP"' in capsys.readouterr().out
