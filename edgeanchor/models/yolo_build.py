"""Build YOLOv5-family detectors by name, from real yolov5 weights, and from edgeanchor checkpoints.

``yolov5:n`` ... ``yolov5:x`` are the v7.0 sizes, ``yolov5:PATH.yaml`` a yolov5 model definition.
Weights may be a yolov5 ``train.py`` checkpoint (read by the restricted unpickler of
:mod:`.yolov5_checkpoint`, never by importing yolov5), a plain state dict with yolov5's names, or an
edgeanchor checkpoint. A yolov5 checkpoint's own anchors and nc override the defaults.
"""

from __future__ import annotations

import torch

from ..anchors import AnchorSet
from ..errors import EdgeAnchorError
from ..limits import MAX_MULTIPLE, check_number
from ..postprocess import PostprocessRule
from .model_size import check_layout, check_weights_hold
from .yolo import YoloDetector, wrap_yolov5
from .yolov5_arch import SIZES, YoloV5, layout_for, make_divisible

DEFAULT_IMAGE_SIZE = (640, 640)
DEFAULT_NUM_CLASSES = 80


def _spec_name(name: str) -> str:
    return name.split(":", 1)[1]


def _infer_size(state: dict) -> str | None:
    """The v7.0 size whose first width and C3 depth match a yolov5 state dict, or None."""
    first = state.get("model.0.conv.weight")
    if first is None:
        return None
    depth = len({k.split(".")[3] for k in state if k.startswith("model.2.m.")})  # C3 bottlenecks of layer 2
    for size, (gd, gw) in SIZES.items():
        if first.shape[0] == make_divisible(64 * gw) and depth == max(round(3 * gd), 1):
            return size
    return None


def _read_yolo_weights(path) -> dict:
    """{"kind": "edgeanchor" | "yolov5" | "state_dict", ...} read from a weights file."""
    from .checkpoint_file import HoldsObjects, check_checkpoint, read_torch_file
    from .registry import CHECKPOINT_FORMAT, _is_yolo_pickle, _state_dict_of

    try:
        obj = read_torch_file(path)
    except HoldsObjects:
        if not _is_yolo_pickle(path):
            raise
        from .yolov5_checkpoint import read_yolov5_checkpoint  # a train.py pickle: yolov5 classes inside

        ck = read_yolov5_checkpoint(path)
        return {"kind": "yolov5", "state": ck.state_dict, "anchors_px": ck.anchors_px.tolist(), "nc": ck.num_classes,
                "names": ck.names}
    if not isinstance(obj, dict):
        raise EdgeAnchorError(f"weights {path} hold a {type(obj).__name__}, not a state dict")
    if obj.get("format") == CHECKPOINT_FORMAT:
        return {"kind": "edgeanchor", "obj": check_checkpoint(obj, path)}
    state = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
             for k, v in _state_dict_of(obj).items()}
    return {"kind": "state_dict", "state": state}


def build_yolo(name: str, *, num_classes: int | None, weights, anchors, image_size, layout=None) -> YoloDetector:
    """A YOLOv5 detector by name (see the module docstring); ``layout`` = (definition, gd, gw) if known."""
    from .registry import _load_state, check_image_size

    layout, gd, gw = layout or layout_for(_spec_name(name))
    check_image_size(image_size)
    image_size = tuple(image_size) if image_size else DEFAULT_IMAGE_SIZE
    if num_classes is not None and not (isinstance(num_classes, int) and num_classes >= 1):
        raise EdgeAnchorError(f"`num_classes` must be at least 1 for {name} (got {num_classes}; it is nc, "
                              "YOLO has no background class)")
    read = _read_yolo_weights(weights) if weights is not None else None
    if read is not None and read["kind"] == "edgeanchor":
        obj = read["obj"]
        if not str(obj["arch"]).startswith("yolov5:"):
            raise EdgeAnchorError(f"{weights} is a {obj['arch']} checkpoint, not a yolov5 one; give it as the model")
        return yolo_from_checkpoint(obj, weights)
    nc = num_classes or (layout["nc"] if isinstance(layout.get("nc"), int) else DEFAULT_NUM_CLASSES)
    ckpt_anchors = None
    detect_index = len(layout["backbone"]) + len(layout["head"]) - 1
    if read is not None:
        state = read["state"]
        size = _infer_size(state)
        wanted = _spec_name(name)
        if wanted in SIZES and size is not None and size != wanted:
            raise EdgeAnchorError(f"weights {weights} are a yolov5:{size} model, not {name}; use model yolov5:{size}")
        weights_nc = read.get("nc")
        conv = state.get(f"model.{detect_index}.m.0.weight")
        if weights_nc is None and conv is not None:
            na = len(layout["anchors"][0]) // 2 if isinstance(layout["anchors"], list) else int(layout["anchors"])
            weights_nc = conv.shape[0] // na - 5
        if weights_nc is not None:
            if num_classes is not None and num_classes != weights_nc:
                raise EdgeAnchorError(f"weights {weights} have nc {weights_nc}, not `num_classes` {num_classes}; "
                                      "leave `num_classes` unset or give the matching value")
            nc = weights_nc
        ckpt_anchors = read.get("anchors_px")
    needed = check_layout(layout, weights if read is not None and read["kind"] == "yolov5" else name,
                          depth_multiple=gd, width_multiple=gw, nc=nc)
    if read is not None:
        check_weights_hold(needed, read["state"], weights, f"nc {nc}")
    net = YoloV5(layout, nc, gd, gw)
    if read is not None:
        state = dict(read["state"])
        key = f"model.{detect_index}.anchors"
        if key in state and ckpt_anchors is None:  # a plain state dict: anchors in stride units
            ckpt_anchors = (state[key] * net.detect.stride.view(-1, 1, 1)).tolist()
        state.setdefault(key, net.detect.anchors.clone())  # a state dict without them keeps the defaults
        _load_state(net, state, weights)
        if ckpt_anchors is not None:
            anchors_t = torch.tensor(ckpt_anchors, dtype=torch.float32)
            if anchors_t.shape != net.detect.anchors.shape:
                raise EdgeAnchorError(f"weights {weights} have anchors of shape {list(anchors_t.shape)}, the model "
                                      f"{list(net.detect.anchors.shape)}; check the model definition")
            net.detect.anchors.copy_(anchors_t / net.detect.stride.view(-1, 1, 1))
    return wrap_with_anchors(net, arch=name, image_size=image_size, anchors=anchors)


def wrap_with_anchors(net: YoloV5, *, arch: str, image_size, anchors) -> YoloDetector:
    """``net`` as a detector that records its definition, with ``anchors`` (a file, overanchorized, or None:
    the network's own)."""
    from .registry import resolve_anchors

    config = {"yolo_layout": net.layout, "depth_multiple": net.depth_multiple, "width_multiple": net.width_multiple}
    det = wrap_yolov5(net, arch=arch, image_size=image_size, config=config)
    anchor_set = resolve_anchors(anchors, det.anchor_set)
    if anchor_set is det.anchor_set:
        return det
    return wrap_yolov5(net, arch=arch, image_size=image_size, anchor_set=anchor_set, config=config)


def yolo_from_checkpoint(obj: dict, path) -> YoloDetector:
    """Rebuild a YOLO detector from an edgeanchor checkpoint's contents."""
    from .registry import _load_state

    cfg = obj["config"]
    anchor_set = AnchorSet.from_json(obj["anchors"])
    net = YoloV5(cfg["yolo_layout"], int(obj["num_classes"]), float(cfg["depth_multiple"]),
                 float(cfg["width_multiple"]))
    det = wrap_yolov5(net, arch=obj["arch"], image_size=anchor_set.image_size, anchor_set=anchor_set,
                      config={k: cfg[k] for k in ("yolo_layout", "depth_multiple", "width_multiple")})
    _load_state(det, obj["state_dict"], path)
    det.postprocess_spec = PostprocessRule.from_json(obj["postprocess"])
    return det.eval()


def yolo_from_train_checkpoint(path, *, num_classes, anchors, image_size) -> YoloDetector:
    """A yolov5 ``train.py`` checkpoint given as the model: its own definition, weights, anchors and nc.

    Raises:
        EdgeAnchorError: not a yolov5 checkpoint, or one without a model definition.
    """
    from .yolov5_arch import V7_LAYOUT, normalise_layout
    from .yolov5_checkpoint import read_yolov5_checkpoint

    ck = read_yolov5_checkpoint(path)
    doc = ck.yaml
    if not isinstance(doc, dict) or not {"backbone", "head", "anchors"} <= set(doc):
        raise EdgeAnchorError(f"{path} holds no model definition; give the model as yolov5:SIZE or yolov5:MODEL.yaml "
                              f"and pass {path} as weights")
    doc = normalise_layout(doc)
    gd = check_number(doc.get("depth_multiple", 1.0), path, "yaml.depth_multiple", 0.0, MAX_MULTIPLE, low_open=True)
    gw = check_number(doc.get("width_multiple", 1.0), path, "yaml.width_multiple", 0.0, MAX_MULTIPLE, low_open=True)
    standard = [s for s, m in SIZES.items() if m == (gd, gw) and doc["backbone"] == V7_LAYOUT["backbone"]
                and doc["head"] == V7_LAYOUT["head"]]
    name = f"yolov5:{standard[0]}" if standard else "yolov5:custom"
    return build_yolo(name, num_classes=num_classes, weights=path, anchors=anchors, image_size=image_size,
                      layout=(doc, gd, gw))
