"""Reading a weights or checkpoint file that may come from anyone: one load, then a schema check.

:func:`read_torch_file` is the one place edgeanchor calls ``torch.load`` on a
user's file (yolov5 ``train.py`` checkpoints go through the restricted
unpickler of :mod:`.yolov5_checkpoint` instead). It loads with
``weights_only=True``, so only tensors, numbers, strings and containers come
back, and it words every failure itself: torch's own refusal advises loading
the file unsafely, names a flag edgeanchor does not have, and carries
terminal escapes.

:func:`check_checkpoint` checks an edgeanchor checkpoint's fields, with the
types and bounds of :mod:`edgeanchor.limits`, before anything is built from
them (a crafted ``num_classes`` would otherwise allocate tens of gigabytes).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from ..errors import EdgeAnchorError, first_line
from ..limits import (
    MAX_ANCHORS_PER_LEVEL,
    MAX_CLASSES,
    MAX_LEVELS,
    check_image_side_pair,
    check_int,
    check_number,
    check_type,
    out_of_bounds,
    require_keys,
)
from .model_size import check_layout, check_weights_hold, parameters_needed

ACCEPTED = ("an edgeanchor checkpoint, a state dict saved with torch.save(model.state_dict(), path), "
            "or a yolov5 train.py checkpoint")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class HoldsObjects(EdgeAnchorError):
    """The file pickles Python objects (classes, functions) that a weights-only load does not rebuild."""


def read_torch_file(path, what: str = "weights"):
    """``torch.load(path, weights_only=True)``, with every failure as one line of ours.

    Args:
        path: the file.
        what: what the file is to the user ("weights", "checkpoint"), for the messages.

    Raises:
        HoldsObjects: the file holds Python objects other than tensors and containers (a full-model pickle,
            a yolov5 train.py checkpoint, or something that would run code); nothing of it was run.
        EdgeAnchorError: missing, empty, or not a PyTorch file.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgeAnchorError(f"{what} file {path} does not exist; check the `weights` path")
    if path.stat().st_size == 0:
        raise EdgeAnchorError(f"{what} file {path} is empty; give {ACCEPTED}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise EdgeAnchorError(f"cannot read {what} {path} ({first_line(exc)}); give {ACCEPTED}") from None
        found = _GLOBAL.search(str(exc))
        named = f" ({found.group(1)})" if found else ""
        raise HoldsObjects(
            f"{path} holds Python objects{named} that edgeanchor will not unpickle, since unpickling them could "
            f"run code; it reads only tensors, numbers, strings and containers: give {ACCEPTED}"
        ) from None
    except Exception as exc:  # torch raises many types for a file that is not its own (EOFError, KeyError, ...)
        raise EdgeAnchorError(f"cannot read {what} {path}: it is not a PyTorch file or it is truncated "
                              f"({type(exc).__name__}: {first_line(exc, 120)}); give {ACCEPTED}") from None


# ---------------------------------------------------------------------------------------------- schema

_RULE_CHOICES = {"score_fn": ("softmax", "sigmoid", "yolo"), "topk_scope": ("class", "level", "all"),
                 "box_coding": ("centre_size", "linear_size")}
_RULE_OPTIONAL = ("clip", "box_coding")  # added later: rules written before them read as their defaults
_MAX_TOPK = 10**6  # candidates per scope (yolov5's max_nms is 30,000)


def check_checkpoint(obj: dict, path) -> dict:
    """Check an edgeanchor checkpoint's fields (types and bounds) before anything is built; return ``obj``.

    Raises:
        EdgeAnchorError: one line naming the file, the field, the value and the bound.
    """
    require_keys(obj, ("arch", "num_classes", "anchors", "postprocess", "state_dict"), path, "the checkpoint")
    arch = check_type(obj["arch"], str, path, "arch", "an architecture name (a string)")
    check_int(obj["num_classes"], path, "num_classes", 1, MAX_CLASSES)
    check_anchor_json(obj["anchors"], path, "anchors")
    check_rule_json(obj["postprocess"], path, "postprocess")
    state = check_type(obj["state_dict"], dict, path, "state_dict", "a dict of tensors")
    bad = next((k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))), None)
    if bad is not None:
        raise out_of_bounds(path, f"state_dict[{bad!r}]", type(state[bad]).__name__, "a tensor under a string key")
    if "meta" in obj:
        check_type(obj["meta"], dict, path, "meta", "a dict")
    _check_model_size(obj, arch, state, path)
    return obj


def _check_model_size(obj: dict, arch: str, state: dict, path) -> None:
    """Count the checkpoint's model on the meta device (nothing allocated): at most MAX_PARAMETERS, and, for
    the torchvision families, no more parameters than the file holds weights (a crafted num_classes)."""
    if arch.startswith("yolov5:"):  # nc only sizes Detect's 1x1 convolutions: the bounds and the count suffice
        config = check_type(obj.get("config"), dict, path, "config", "a dict holding yolo_layout")
        require_keys(config, ("yolo_layout", "depth_multiple", "width_multiple"), path, "config")
        check_layout(config["yolo_layout"], path, depth_multiple=config["depth_multiple"],
                     width_multiple=config["width_multiple"], nc=obj["num_classes"], field="config.yolo_layout")
        return
    from ..anchors import AnchorSet
    from .registry import ARCHS, _wrap

    if arch == "onnx":  # ours, from an export of an ONNX source: its backbone lives in the ONNX file only
        raise EdgeAnchorError(f"{path} is the checkpoint of a model held as ONNX, which is not rebuilt from a "
                              "checkpoint; load its pruned graph (`model` onnx:model_raw.onnx with `head` head.json) "
                              "or run the export's ONNX graphs")
    if arch not in ARCHS:
        raise out_of_bounds(path, "arch", arch, f"one of {', '.join(ARCHS)} or yolov5:...")
    spec, anchors = ARCHS[arch], AnchorSet.from_json(obj["anchors"])
    claim = f"arch {arch} with num_classes {obj['num_classes']}"
    needed = parameters_needed(lambda: _wrap(spec, arch, spec.builder(obj["num_classes"], anchors.image_size),
                                             anchors.image_size, anchors), path, claim)
    check_weights_hold(needed, state, path, claim)


def check_anchor_json(anchors, path, field: str) -> None:
    """An anchor set's JSON (:meth:`AnchorSet.to_json`): sizes and counts within bounds, before it is parsed."""
    anchors = check_type(anchors, dict, path, field, "an anchor set (a dict)")
    require_keys(anchors, ("image_size", "levels"), path, field)
    check_image_side_pair(anchors["image_size"], path, f"{field}.image_size", low=1)
    levels = check_type(anchors["levels"], list, path, f"{field}.levels", "a list of levels")
    if not 1 <= len(levels) <= MAX_LEVELS:
        raise out_of_bounds(path, f"{field}.levels", f"{len(levels)} levels", f"1 to {MAX_LEVELS} levels",
                            described=True)
    for i, level in enumerate(levels):
        where = f"{field}.levels[{i}]"
        level = check_type(level, dict, path, where, "a dict")
        require_keys(level, ("feature_size", "anchors"), path, where)
        check_image_side_pair(level["feature_size"], path, f"{where}.feature_size")
        boxes = check_type(level["anchors"], list, path, f"{where}.anchors", "a list of anchors")
        if len(boxes) > MAX_ANCHORS_PER_LEVEL:
            raise out_of_bounds(path, f"{where}.anchors", f"{len(boxes):,} anchors",
                                f"at most {MAX_ANCHORS_PER_LEVEL:,} anchors per level", described=True)
    from ..anchors import AnchorSet

    try:
        AnchorSet.from_json(anchors)
    except EdgeAnchorError as exc:  # its own message, which does not know the file
        raise EdgeAnchorError(f"{path}: {field}: {exc}") from None


def check_rule_json(rule, path, field: str) -> None:
    """A post-processing rule's JSON (:meth:`PostprocessRule.to_json`)."""
    from dataclasses import fields

    from ..postprocess import PostprocessRule

    rule = check_type(rule, dict, path, field, "a post-processing rule (a dict)")
    names = [f.name for f in fields(PostprocessRule)]
    require_keys(rule, [n for n in names if n not in _RULE_OPTIONAL], path, field)
    extra = next((k for k in rule if k not in names), None)
    if extra is not None:
        raise out_of_bounds(path, field, f"a rule with a key {extra!r}", f"a rule with the keys {', '.join(names)}",
                            described=True)
    for key, choices in _RULE_CHOICES.items():
        if key in rule and rule[key] not in choices:
            raise out_of_bounds(path, f"{field}.{key}", rule[key], f"one of {', '.join(choices)}")
    check_number(rule["score_thresh"], path, f"{field}.score_thresh", 0.0, 1.0)
    check_number(rule["nms_thresh"], path, f"{field}.nms_thresh", 0.0, 1.0, low_open=True)
    check_int(rule["topk_candidates"], path, f"{field}.topk_candidates", 1, _MAX_TOPK)
    check_int(rule["detections_per_img"], path, f"{field}.detections_per_img", 1, _MAX_TOPK)
    weights = rule["box_weights"]
    if not (isinstance(weights, (list, tuple)) and len(weights) == 4):
        raise out_of_bounds(path, f"{field}.box_weights", weights, "4 positive numbers")
    for w in weights:
        check_number(w, path, f"{field}.box_weights", 0.0, 1e6, low_open=True)
    if not isinstance(rule.get("clip", True), bool):
        raise out_of_bounds(path, f"{field}.clip", rule["clip"], "true or false")
