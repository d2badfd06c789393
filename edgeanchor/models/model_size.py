"""Checking a model definition from a file before it is built: bounds, structure, and its size in parameters.

A yolov5 model definition (a YAML, a yolov5 checkpoint's ``yaml``, an edgeanchor
checkpoint's ``yolo_layout``) and a checkpoint's ``num_classes`` decide how much
memory the model takes. :func:`check_layout` checks a definition's fields against
:mod:`edgeanchor.limits`; :func:`parameters_needed` builds a model on torch's
``meta`` device (shapes only, no memory) and counts its parameters, so that a
model larger than :data:`~edgeanchor.limits.MAX_PARAMETERS`, or larger than the
weights a file holds, is refused before it is allocated.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import EdgeAnchorError, first_line
from ..limits import (
    MAX_ANCHORS_PER_LEVEL,
    MAX_CLASSES,
    MAX_LAYERS,
    MAX_LEVELS,
    MAX_MULTIPLE,
    MAX_PARAMETERS,
    MAX_REPEATS,
    check_int,
    check_number,
    check_type,
    is_int,
    out_of_bounds,
    require_keys,
)

_MAX_UPSAMPLE = 64  # nn.Upsample's scale factor in a model definition (yolov5: 2)


def check_layout(doc, source, *, depth_multiple, width_multiple, nc: int | None = None,
                 field: str = "model definition") -> int:
    """Check a yolov5 model definition (and its multiples) before it is built; return its parameter count.

    ``nc`` is the number of classes the model will have (default: the definition's own, else 80).

    Raises:
        EdgeAnchorError: one line naming ``source``, the field, the value and the bound.
    """
    from .yolov5_arch import MODULES, build_layers

    doc = check_type(doc, dict, source, field, "a yolov5 model definition (a dict)")
    require_keys(doc, ("anchors", "backbone", "head"), source, field)
    gd = check_number(depth_multiple, source, "depth_multiple", 0.0, MAX_MULTIPLE, low_open=True)
    gw = check_number(width_multiple, source, "width_multiple", 0.0, MAX_MULTIPLE, low_open=True)
    if doc.get("nc") is not None:
        check_int(doc["nc"], source, f"{field}.nc", 1, MAX_CLASSES)
    _check_anchors(doc["anchors"], source, f"{field}.anchors")
    layers = [*check_type(doc["backbone"], list, source, f"{field}.backbone", "a list of layers"),
              *check_type(doc["head"], list, source, f"{field}.head", "a list of layers")]
    if not 1 <= len(layers) <= MAX_LAYERS:
        raise out_of_bounds(source, f"{field} layers", len(layers), f"1 to {MAX_LAYERS:,} layers")
    for i, layer in enumerate(layers):
        where = f"{field} layer {i}"
        if not (isinstance(layer, list) and len(layer) == 4):
            raise out_of_bounds(source, where, layer, "[from, number, module, args]")
        sources, number, name, args = layer
        froms = [sources] if is_int(sources) else sources
        if not (isinstance(froms, list) and froms and all(is_int(s) and -max(i, 1) <= s < max(i, 1) for s in froms)):
            raise out_of_bounds(source, f"{where} from", sources, "-1 or indices of earlier layers")
        check_int(number, source, f"{where} number", 1, MAX_REPEATS)
        if name not in MODULES or (name == "Detect") != (i == len(layers) - 1):
            raise out_of_bounds(source, f"{where} module", name,
                                f"one of {', '.join(m for m in MODULES if m != 'Detect')}, and Detect last")
        check_type(args, list, source, f"{where} args", "a list")
        if name == "nn.Upsample" and not (len(args) == 3 and isinstance(args[1], (int, float))
                                           and 0 < args[1] <= _MAX_UPSAMPLE):
            raise out_of_bounds(source, f"{where} args", args, f"[None, scale up to {_MAX_UPSAMPLE}, mode]")
    if nc is None:
        nc = doc["nc"] if is_int(doc.get("nc")) else 80
    check_int(nc, source, "nc", 1, MAX_CLASSES)
    return parameters_needed(lambda: torch.nn.ModuleList(build_layers(doc, nc, gd, gw)[0]), source,
                             f"{field} with nc {nc}")


def _check_anchors(anchors, source, field: str) -> None:
    if is_int(anchors):
        check_int(anchors, source, field, 1, MAX_ANCHORS_PER_LEVEL)
        return
    levels = check_type(anchors, list, source, field, "a list of levels of w, h pairs, or a count per level")
    if not 1 <= len(levels) <= MAX_LEVELS:
        raise out_of_bounds(source, field, f"{len(levels)} levels", f"1 to {MAX_LEVELS} levels",
                            described=True)
    for i, level in enumerate(levels):
        ok = (isinstance(level, list) and 2 <= len(level) <= 2 * MAX_ANCHORS_PER_LEVEL and len(level) % 2 == 0
              and len(level) == len(levels[0])
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf")
                      for v in level))
        if not ok:
            raise out_of_bounds(source, f"{field}[{i}]", level, f"w, h pairs in pixels (1 to "
                                f"{MAX_ANCHORS_PER_LEVEL:,} anchors, as many as on the first level)")


def parameters_needed(build: Callable[[], torch.nn.Module], source, what: str) -> int:
    """Parameters of the model ``build()`` makes, counted on the meta device (nothing allocated).

    Raises:
        EdgeAnchorError: the build fails (a malformed definition), or the model has more than
            :data:`~edgeanchor.limits.MAX_PARAMETERS` parameters.
    """
    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in build().parameters())
    except EdgeAnchorError:
        raise
    except Exception as exc:  # a malformed definition fails in torch's constructors with many types
        raise EdgeAnchorError(f"{source}: cannot build the model of its {what} ({type(exc).__name__}: "
                              f"{first_line(exc, 120)}); the file is not one edgeanchor can use") from None
    if count > MAX_PARAMETERS:
        raise EdgeAnchorError(f"{source}: its {what} needs a model of {count:,} parameters, above the bound of "
                              f"{MAX_PARAMETERS:,}; the file is not one edgeanchor can use")
    return count


def check_weights_hold(needed: int, state: dict, source, claim: str) -> None:
    """Refuse a model that needs more parameters than the file's weights hold (a crafted size), before building."""
    held = sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor))
    if needed > held:
        raise EdgeAnchorError(f"{source}: {claim} needs a model of {needed:,} parameters, but the file holds only "
                              f"{held:,} weights; the file is not one edgeanchor can use (was it altered?)")
