"""Build detectors by name, and save and load edgeanchor checkpoints.

Names:
- ``torchvision:ssd300_vgg16``, ``torchvision:ssdlite320_mobilenet_v3_large``,
  ``torchvision:retinanet_resnet50_fpn``, ``torchvision:retinanet_resnet50_fpn_v2``:
  torchvision architectures, randomly initialised unless ``weights`` is given
  (nothing is ever downloaded);
- ``edgeanchor:demo_ssd``: the demo architecture, untrained;
- ``yolov5:n`` ... ``yolov5:x`` (the v7.0 sizes) and ``yolov5:PATH.yaml`` (a yolov5 model
  definition): our YOLOv5 implementation, randomly initialised unless ``weights`` is given (a yolov5
  ``train.py`` checkpoint, a plain state dict, or an edgeanchor checkpoint); num_classes is nc
  (YOLO has no background class);
- ``demo``: the trained demo checkpoint shipped inside the package; ``demo-yolo``: the shipped
  YOLOv5n-sized demo; ``demo-over``: the demo architecture with an overanchorized set (3 scales x 5
  ratios per level, 75 anchors), trained on the same schedule as ``demo`` (the paper's starting point);
- a path to an edgeanchor checkpoint (``.pt``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..anchors import AnchorSet, parse_anchor_file, parse_overanchorized
from ..errors import EdgeAnchorError, first_line
from ..io import atomic_path, read_json
from ..limits import MAX_CLASSES, MAX_IMAGE_SIDE
from ..postprocess import PostprocessRule
from .base import Detector

CHECKPOINT_FORMAT = "edgeanchor.checkpoint/1"
ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_CHECKPOINT = ASSETS / "demo.pt"
DEMO_YOLO_CHECKPOINT = ASSETS / "demo-yolo.pt"
DEMO_OVER_CHECKPOINT = ASSETS / "demo-over.pt"
SHIPPED = {"demo": DEMO_CHECKPOINT, "demo-yolo": DEMO_YOLO_CHECKPOINT, "demo-over": DEMO_OVER_CHECKPOINT}


@dataclass(frozen=True)
class Architecture:
    """How to build one architecture: builder(num_classes, image_size) -> torchvision model."""

    family: str  # "ssd" or "retinanet"
    builder: Callable
    image_size: tuple[int, int]
    num_classes: int
    head_init: str = "xavier"


def _tv(name: str) -> Callable:
    def build(num_classes: int, image_size: tuple[int, int]):
        import torchvision.models.detection as det

        kwargs = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
        if name.startswith("retinanet"):
            kwargs.update(min_size=min(image_size), max_size=max(image_size))
        return getattr(det, name)(**kwargs)

    return build


def _demo(num_classes: int, image_size: tuple[int, int]):
    from .demo import build_demo_ssd

    return build_demo_ssd(num_classes, image_size=image_size)


ARCHS: dict[str, Architecture] = {
    "torchvision:ssd300_vgg16": Architecture("ssd", _tv("ssd300_vgg16"), (300, 300), 91),
    "torchvision:ssdlite320_mobilenet_v3_large": Architecture(
        "ssd", _tv("ssdlite320_mobilenet_v3_large"), (320, 320), 91, head_init="normal"
    ),
    "torchvision:retinanet_resnet50_fpn": Architecture("retinanet", _tv("retinanet_resnet50_fpn"), (800, 800), 91),
    "torchvision:retinanet_resnet50_fpn_v2": Architecture(
        "retinanet", _tv("retinanet_resnet50_fpn_v2"), (800, 800), 91
    ),
    "edgeanchor:demo_ssd": Architecture("ssd", _demo, (320, 320), 6),
}


def model_names() -> list[str]:
    return [*SHIPPED, *ARCHS, "yolov5:n|s|m|l|x", "yolov5:PATH.yaml"]


def build_detector(
    name: str,
    *,
    num_classes: int | None = None,
    weights: str | os.PathLike | None = None,
    anchors: str | AnchorSet | None = None,
    image_size: tuple[int, int] | None = None,
    head: str | os.PathLike | None = None,
) -> Detector:
    """Build a detector by name, or load one from a checkpoint.

    Args:
        name: a name from :data:`ARCHS`, ``demo``, or a checkpoint path.
        num_classes: classifier outputs K (background included for SSD).
        weights: a torchvision state dict or an edgeanchor checkpoint to load.
        anchors: an :class:`AnchorSet`, a path to an anchor JSON file (either
            form), or ``overanchorized[:SxR]``; replaces the model's anchors.
        image_size: (H, W) fixed input size; the architecture's default if None.
        head: for ``onnx:PATH``, the head spec: a preset name or a spec file (``docs/onnx-head-spec.md``).

    Raises:
        EdgeAnchorError: unknown name, missing file, weights that do not fit.
    """
    if name.startswith("onnx:"):
        from ..onnx_source.detector import build_onnx_detector

        return build_onnx_detector(name, head=head, image_size=image_size, num_classes=num_classes, weights=weights,
                                   anchors=anchors)
    if head is not None:
        raise EdgeAnchorError(f"`head` describes an ONNX model's head; {name} is not one (give `model` as onnx:PATH)")
    if name.startswith("yolov5:"):
        from .yolo_build import build_yolo

        return build_yolo(name, num_classes=num_classes, weights=weights, anchors=anchors, image_size=image_size)
    if name in SHIPPED or (name not in ARCHS and (name.endswith(".pt") or Path(name).is_file())):
        path = SHIPPED.get(name, Path(name))
        if path.is_file() and _is_yolo_pickle(path):
            from .yolo_build import yolo_from_train_checkpoint

            if weights is not None:
                raise EdgeAnchorError(f"{name} is a yolov5 checkpoint with its own weights; drop `weights`")
            return yolo_from_train_checkpoint(path, num_classes=num_classes, anchors=anchors, image_size=image_size)
        if anchors is not None or image_size is not None:
            raise EdgeAnchorError(
                f"anchors and `image_size` cannot change a checkpoint ({name}); prune it to slice its anchors"
            )
        det = load_checkpoint(path)
        if num_classes is not None and num_classes != det.num_classes:
            raise EdgeAnchorError(f"{name} has {det.num_classes} classes, not {num_classes}; leave `num_classes` unset")
        if weights is not None:
            load_weights(det, weights)
        return det
    if name not in ARCHS:
        raise EdgeAnchorError(
            f"unknown model {name!r}; choose one of {', '.join(model_names())}, or give a checkpoint path"
        )
    arch = ARCHS[name]
    min_classes = 2 if arch.family == "ssd" else 1  # SSD counts the background class
    if num_classes is not None and not (isinstance(num_classes, int) and min_classes <= num_classes <= MAX_CLASSES):
        raise EdgeAnchorError(
            f"`num_classes` must be at least {min_classes} and at most {MAX_CLASSES:,} for {name} (got {num_classes}"
            f"{'; it counts the background class' if arch.family == 'ssd' else ''})"
        )
    check_image_size(image_size)
    num_classes = num_classes or arch.num_classes
    image_size = (image_size[0], image_size[1]) if image_size else arch.image_size  # a list (JSON) -> (H, W)
    try:
        tv_model = arch.builder(num_classes, image_size)
    except (RuntimeError, ValueError) as exc:
        raise _size_does_not_fit(name, image_size, exc) from None
    ckpt_anchors = None
    if weights is not None:
        state = _read_weights(weights)
        if state.get("format") == CHECKPOINT_FORMAT:
            ckpt_anchors = AnchorSet.from_json(state["anchors"])
        else:
            _load_state(tv_model, _state_dict_of(state), weights)
    try:
        det = wrap(name, tv_model, image_size=image_size, anchors=anchors if ckpt_anchors is None else ckpt_anchors)
    except RuntimeError as exc:  # a feature map vanishes at this input size
        raise _size_does_not_fit(name, image_size, exc) from None
    if ckpt_anchors is not None:
        _load_state(det, state["state_dict"], weights)
    return det


def check_image_size(image_size) -> None:
    """Refuse an image_size that is not None or two integers from 32 to MAX_IMAGE_SIDE (height, width)."""
    if image_size is not None and (len(tuple(image_size)) != 2
                                   or not all(isinstance(v, int) and 32 <= v <= MAX_IMAGE_SIDE for v in image_size)):
        raise EdgeAnchorError(f"`image_size` must be two integers from 32 to {MAX_IMAGE_SIDE:,} (height, width), "
                              f"got {list(image_size)}")


def _size_does_not_fit(name: str, image_size, exc: Exception) -> EdgeAnchorError:
    return EdgeAnchorError(f"`image_size` {list(image_size)} does not fit {name} ({first_line(exc, 120)}); "
                           "choose a larger `image_size`")


def wrap(name: str, tv_model, *, image_size, anchors=None) -> Detector:
    """Wrap a torchvision model of architecture ``name`` with optional new anchors."""
    arch_spec = ARCHS[name]
    default = _wrap(arch_spec, name, tv_model, image_size, None)
    anchor_set = resolve_anchors(anchors, default.anchor_set)
    if anchor_set is default.anchor_set:
        return default
    return _wrap(arch_spec, name, tv_model, image_size, anchor_set)


def _wrap(arch_spec, name, tv_model, image_size, anchor_set):
    from .retinanet import wrap_retinanet
    from .ssd import wrap_ssd

    if arch_spec.family == "ssd":
        return wrap_ssd(tv_model, arch=name, image_size=image_size, anchor_set=anchor_set,
                        head_init=arch_spec.head_init)
    return wrap_retinanet(tv_model, arch=name, image_size=image_size, anchor_set=anchor_set)


def resolve_anchors(anchors, template: AnchorSet) -> AnchorSet:
    """Turn an ``--anchors`` value into an AnchorSet, checked against the model's own."""
    if anchors is None:
        return template
    if isinstance(anchors, AnchorSet):
        result = anchors
    elif str(anchors).startswith("overanchorized") and not Path(str(anchors)).is_file():
        result = parse_overanchorized(str(anchors), template)
    else:
        result = parse_anchor_file(read_json(anchors, "anchor file"), template)
    if result.num_levels != template.num_levels:
        raise EdgeAnchorError(
            f"the anchor set has {result.num_levels} levels but the model has {template.num_levels}; "
            "give one entry per level"
        )
    sizes = [lv.feature_size for lv in template.levels]
    if [lv.feature_size for lv in result.levels] != sizes or result.image_size != template.image_size:
        raise EdgeAnchorError(
            f"the anchor set is for input {list(result.image_size)} with feature sizes "
            f"{[list(lv.feature_size) for lv in result.levels]}, but the model has input "
            f"{list(template.image_size)} and {[list(s) for s in sizes]}; give the matching `image_size`"
        )
    if result.num_anchors == 0:
        raise EdgeAnchorError("the anchor set has no anchors; keep at least one")
    return result


# ---- weights and checkpoints -------------------------------------------
def _read_weights(path) -> dict:
    """A weights file's contents (one weights-only load); an edgeanchor checkpoint's fields are checked too."""
    from .checkpoint_file import check_checkpoint, read_torch_file

    obj = read_torch_file(path)
    if not isinstance(obj, dict):
        raise EdgeAnchorError(f"weights {path} hold a {type(obj).__name__}, not a state dict")
    if obj.get("format") == CHECKPOINT_FORMAT:
        check_checkpoint(obj, path)
    return obj


def _state_dict_of(obj: dict) -> dict:
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            return obj[key]
    return obj


def _load_state(module: torch.nn.Module, state: dict, source) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else lines[0]
        raise EdgeAnchorError(
            f"weights {source} do not fit the model ({detail[:300]}); check the model name and `num_classes`"
        ) from None


def load_weights(det: Detector, weights) -> None:
    """Load an edgeanchor checkpoint's or a plain state dict's weights into ``det``."""
    state = _read_weights(weights)
    state_dict = state["state_dict"] if state.get("format") == CHECKPOINT_FORMAT else _state_dict_of(state)
    _load_state(det, state_dict, weights)


def save_checkpoint(det: Detector, path, *, meta: dict | None = None, extra: dict | None = None) -> None:
    """Write ``det`` as a self-describing checkpoint, atomically."""
    obj = {"format": CHECKPOINT_FORMAT, **det.checkpoint_state(), "meta": meta or {}}
    obj.update(extra or {})
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)  # through a Python file, so a full disk surfaces as OSError (ENOSPC), not a bare C++ error


def load_checkpoint(path) -> Detector:
    """Rebuild a detector from an edgeanchor checkpoint (architecture, anchors, weights)."""
    path = Path(path)
    if not path.is_file():
        hint = "train it with the command in the README" if path in SHIPPED.values() else "check the path"
        raise EdgeAnchorError(f"checkpoint {path} does not exist; {hint}")
    return detector_from_checkpoint(read_checkpoint(path), path)


def read_checkpoint(path) -> dict:
    """The contents of an edgeanchor checkpoint file (read once; see :func:`detector_from_checkpoint`).

    Raises:
        EdgeAnchorError: unreadable, or not a checkpoint edgeanchor wrote.
    """
    obj = _read_weights(path)
    if obj.get("format") != CHECKPOINT_FORMAT:
        raise EdgeAnchorError(
            f"{path} is not an edgeanchor checkpoint; give it as `weights` with the matching `model` name"
        )
    return obj


def detector_from_checkpoint(obj: dict, path) -> Detector:
    """Rebuild the detector that :func:`read_checkpoint` read from ``path``."""
    arch = obj["arch"]
    if arch == "onnx":  # an export folder's record of an ONNX source: the graph lives beside it, not in it
        raise EdgeAnchorError(f"{path} records a model held as ONNX; load the pruned graph beside it: "
                              "`model` onnx:model_raw.onnx with `head` head.json")
    if arch.startswith("yolov5:"):
        from .yolo_build import yolo_from_checkpoint

        return yolo_from_checkpoint(obj, path)
    if arch not in ARCHS:
        raise EdgeAnchorError(f"{path} was written for unknown architecture {arch!r}")
    anchor_set = AnchorSet.from_json(obj["anchors"])
    arch_spec = ARCHS[arch]
    tv_model = arch_spec.builder(obj["num_classes"], anchor_set.image_size)
    det = _wrap(arch_spec, arch, tv_model, anchor_set.image_size, anchor_set)
    _load_state(det, obj["state_dict"], path)
    det.postprocess_spec = PostprocessRule.from_json(obj["postprocess"])
    return det.eval()


def is_checkpoint(path) -> bool:
    """True if ``path`` is a checkpoint edgeanchor wrote (never raises)."""
    try:
        read_checkpoint(path)
    except EdgeAnchorError:  # missing, unreadable or someone else's: not ours
        return False
    return True


def _is_yolo_pickle(path) -> bool:
    """True if ``path`` is a torch zip whose pickle names yolov5's model classes, or ultralytics' (anchor-free
    models, which the yolov5 reader refuses in one line); read, never unpickled.

    torch.save pickles with protocol 2, where a class is the GLOBAL opcode ``c`` + module + newline;
    strings are length-prefixed, so no path or name stored in a checkpoint of ours can look like this.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("/data.pkl")), None)
            data = z.read(pkl) if pkl is not None else b""
            return b"cmodels.yolo\n" in data or b"cultralytics." in data
    except (OSError, zipfile.BadZipFile):
        return False


def checkpoint_meta(path) -> dict:
    """The ``meta`` dict of a checkpoint (training record), or {}."""
    obj = _read_weights(path)
    return obj.get("meta", {}) if obj.get("format") == CHECKPOINT_FORMAT else {}
