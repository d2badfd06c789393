"""Reading yolov5 training checkpoints (``best.pt``, ``last.pt``) without the yolov5 package.

Those files are pickles of ``{'model': models.yolo.DetectionModel, 'ema': ..., 'opt': {...}, ...}``
holding yolov5's own classes. Unpickling them normally imports and runs yolov5
code. Here a restricted unpickler maps yolov5's and torch.nn's module classes to
inert containers that only store their attributes, rebuilds tensors, and
refuses every other global (``os.system``, ``builtins.eval``, ...) with a
one-line error. From the inert tree it extracts what edgeanchor needs: the
state dict, the Detect anchors (stride units), the strides, nc, the class
names and the model YAML. No yolov5 code is imported or executed.
"""

from __future__ import annotations

import pickle
import types
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import EdgeAnchorError, first_line
from ..limits import (
    MAX_ANCHORS_PER_LEVEL,
    MAX_CLASSES,
    MAX_IMAGE_SIDE,
    MAX_LEVELS,
    check_int,
    is_int,
    out_of_bounds,
)

# Globals a yolov5 checkpoint legitimately references besides module classes.
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("torch", "Size"), ("torch", "float16"), ("torch", "float32"),
    ("copyreg", "_reconstructor"), ("copyreg", "__newobj__"), ("builtins", "object"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "slice"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"), ("_codecs", "encode"),  # numpy scalars (best_fitness) pickle their bytes so
    # numpy arrays (a mid-training best_fitness): numpy's own constructors, nothing else
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
}
# Packages whose classes become inert containers (never imported).
_INERT_PACKAGES = ("models.", "torch.nn.modules.", "utils.")
_ANCHOR_FREE_PACKAGES = ("ultralytics.",)


class _Inert:
    """Stands in for a yolov5 or torch.nn class: keeps the pickled attributes, runs nothing."""

    _origin = "?"

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


_INERT_CLASSES: dict[str, type] = {}


def _inert_class(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _INERT_CLASSES:
        _INERT_CLASSES[key] = type(name, (_Inert,), {"_origin": key})
    return _INERT_CLASSES[key]


class _AnchorFree(Exception):
    pass


class _Disallowed(pickle.UnpicklingError):
    pass


# Python 2 names that protocol-2 pickles use for builtins and copyreg.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class RestrictedUnpickler(pickle.Unpickler):
    """Allows tensors, plain containers and inert module classes; refuses every other global."""

    def find_class(self, module: str, name: str):
        module = _PY2_MODULES.get(module, module)
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        if module.startswith(_ANCHOR_FREE_PACKAGES):
            raise _AnchorFree(f"{module}.{name}")
        if module.startswith(_INERT_PACKAGES):
            return _inert_class(module, name)
        raise _Disallowed(f"the checkpoint asks for {module}.{name}, which is not allowed")


def _restricted_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


# torch.load takes a pickle *module*; this one exposes only the restricted unpickler.
restricted_pickle = types.SimpleNamespace(Unpickler=RestrictedUnpickler, load=_restricted_load,
                                          __name__="restricted_pickle")


@dataclass
class YoloV5Checkpoint:
    """What edgeanchor takes from a yolov5 checkpoint."""

    state_dict: dict
    anchors_stride_units: torch.Tensor  # (levels, anchors, 2)
    strides: list[float]
    num_classes: int
    names: list[str]
    yaml: dict | None

    @property
    def anchors_px(self) -> torch.Tensor:
        """Anchors in input pixels, (levels, anchors, 2) as (w, h)."""
        return self.anchors_stride_units * torch.tensor(self.strides).view(-1, 1, 1)


_MAX_MODULE_VISITS = 100_000  # yolov5x has about 1,000 modules; shared ones are visited once per path


def _modules(node, path) -> list[tuple[str, object]]:
    """(name prefix, module) of an inert module tree, parents first.

    A module may appear under several names (yolov5 shares one activation module), but not inside itself:
    a cycle is refused, and so is a tree whose walk exceeds ``_MAX_MODULE_VISITS``.
    """
    out: list[tuple[str, object]] = []
    stack: list[tuple[str, object, frozenset]] = [("", node, frozenset())]
    while stack:
        prefix, module, ancestors = stack.pop()
        name = prefix.rstrip(".") or "model"
        if id(module) in ancestors:
            raise EdgeAnchorError(f"{path}: module {name} contains itself (a cycle in the model's module tree); "
                                  "the file is not a checkpoint yolov5 wrote")
        if len(out) >= _MAX_MODULE_VISITS:
            raise EdgeAnchorError(f"{path}: the model's module tree has more than {_MAX_MODULE_VISITS:,} modules; "
                                  "the file is not a checkpoint yolov5 wrote")
        out.append((prefix, module))
        children = getattr(module, "_modules", None) or {}
        if not isinstance(children, dict):
            raise out_of_bounds(path, f"{name}._modules", type(children).__name__, "a dict of modules")
        inside = ancestors | {id(module)}
        stack.extend((f"{prefix}{key}.", child, inside) for key, child in reversed(list(children.items()))
                     if child is not None)
    return out


def _state_dict(tree: list[tuple[str, object]], path) -> dict:
    """The state dict of an inert module tree (parameters and persistent buffers, float32)."""
    out = {}
    for prefix, node in tree:
        skip = set(getattr(node, "_non_persistent_buffers_set", ()) or ())
        for key in ("_parameters", "_buffers"):
            tensors = getattr(node, key, None) or {}
            if not isinstance(tensors, dict):
                raise out_of_bounds(path, f"{prefix}{key}", type(tensors).__name__, "a dict of tensors")
            for name, tensor in tensors.items():
                if tensor is None or name in skip:
                    continue
                if not isinstance(tensor, torch.Tensor):
                    raise out_of_bounds(path, f"{prefix}{name}", type(tensor).__name__, "a tensor")
                t = tensor.detach()
                out[prefix + str(name)] = t.float() if t.is_floating_point() else t
    return out


def _names(names, nc: int, path) -> list[str]:
    """Class names as a list: yolov5 stores a list, or a dict of index -> name."""
    if names is None:
        return [str(i) for i in range(nc)]
    if isinstance(names, dict):
        if not all(is_int(k) for k in names):
            raise out_of_bounds(path, "names", names, "a list of class names, or a dict of integer index -> name")
        names = [names[k] for k in sorted(names)]
    if not (isinstance(names, (list, tuple)) and len(names) == nc and all(isinstance(n, str) for n in names)):
        raise out_of_bounds(path, "names", names, f"{nc} class names (strings), one per class of nc")
    return list(names)


def _anchors_and_strides(detect, path) -> tuple[torch.Tensor, list[float]]:
    buffers = getattr(detect, "_buffers", {}) or {}
    anchors = buffers.get("anchors")
    stride = getattr(detect, "stride", None)
    stride = buffers.get("stride") if stride is None else stride
    if anchors is None or stride is None:
        raise EdgeAnchorError(f"{path}: the Detect layer holds no anchors or strides; is it a yolov5 v6/v7 model?")
    if not (isinstance(anchors, torch.Tensor) and anchors.dim() == 3 and anchors.shape[-1] == 2
            and 1 <= anchors.shape[0] <= MAX_LEVELS and 1 <= anchors.shape[1] <= MAX_ANCHORS_PER_LEVEL
            and anchors.is_floating_point() and bool(torch.isfinite(anchors).all()) and bool((anchors > 0).all())):
        shown = list(anchors.shape) if isinstance(anchors, torch.Tensor) else anchors
        raise out_of_bounds(path, "Detect.anchors", shown, f"a tensor (levels <= {MAX_LEVELS}, anchors <= "
                            f"{MAX_ANCHORS_PER_LEVEL:,}, 2) of positive sizes")
    try:  # yolov5 keeps a tensor; a list of numbers is as good
        stride = torch.as_tensor(stride, dtype=torch.float64).flatten() if not isinstance(stride, str) else None
    except (TypeError, ValueError, RuntimeError):
        stride = None
    if stride is None or stride.numel() != anchors.shape[0] or not bool(
            (torch.isfinite(stride) & (stride > 0) & (stride <= MAX_IMAGE_SIDE)).all()):
        raise out_of_bounds(path, "Detect.stride", getattr(detect, "stride", None),
                            f"{anchors.shape[0]} positive strides, one per level")
    return anchors.detach().float(), [float(v) for v in stride.flatten().tolist()]


def read_yolov5_checkpoint(path) -> YoloV5Checkpoint:
    """Read a yolov5 ``train.py`` checkpoint with the restricted unpickler.

    Raises:
        EdgeAnchorError: unreadable file, a disallowed global, an anchor-free (YOLOv8/YOLO11) model, or a
            pickle without a yolov5 model.
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", pickle_module=restricted_pickle, weights_only=False)
    except _AnchorFree as exc:
        raise EdgeAnchorError(f"{path} is anchor-free ({exc} is a YOLOv8/YOLO11-style model): it has no anchors "
                              "to prune") from None
    except _Disallowed as exc:
        raise EdgeAnchorError(f"refusing to load {path}: {exc}; only yolov5 checkpoints are read") from None
    except FileNotFoundError:
        raise EdgeAnchorError(f"weights file {path} does not exist; check the `weights` path") from None
    except Exception as exc:  # a damaged or foreign file: torch raises many types
        raise EdgeAnchorError(f"cannot read {path} as a yolov5 checkpoint ({type(exc).__name__}: "
                              f"{first_line(exc, 120)})") from None
    model = None
    if isinstance(obj, dict):
        model = obj.get("ema") or obj.get("model")
    if model is None or not isinstance(model, _Inert):
        raise EdgeAnchorError(f"{path} holds no yolov5 model (expected a train.py checkpoint with 'model')")
    tree = _modules(model, path)
    detect = next((m for _, m in tree if getattr(m, "_origin", "").endswith(".Detect")), None)
    if detect is None:
        raise EdgeAnchorError(f"{path}: the model has no Detect layer, so it has no anchors to prune")
    anchors, strides = _anchors_and_strides(detect, path)
    nc = getattr(detect, "nc", None)
    names = getattr(model, "names", None)
    if nc is None and isinstance(names, (list, tuple, dict)):
        nc = len(names)
    nc = check_int(nc, path, "Detect.nc", 1, MAX_CLASSES)
    yaml = getattr(model, "yaml", None)
    return YoloV5Checkpoint(state_dict=_state_dict(tree, path), anchors_stride_units=anchors, strides=strides,
                            num_classes=nc, names=_names(names, nc, path),
                            yaml=yaml if isinstance(yaml, dict) else None)
