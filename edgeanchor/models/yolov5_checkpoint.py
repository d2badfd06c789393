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

from ..errors import EdgeAnchorError

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


def _state_dict(node, prefix: str = "") -> dict:
    """The state dict of an inert module tree (parameters and persistent buffers, float32)."""
    out = {}
    skip = set(getattr(node, "_non_persistent_buffers_set", ()) or ())
    for key in ("_parameters", "_buffers"):
        for name, tensor in (getattr(node, key, None) or {}).items():
            if tensor is not None and name not in skip:
                t = tensor.detach() if isinstance(tensor, torch.Tensor) else tensor
                out[prefix + name] = t.float() if t.is_floating_point() else t
    for name, child in (getattr(node, "_modules", None) or {}).items():
        if child is not None:
            out.update(_state_dict(child, f"{prefix}{name}."))
    return out


def _find_detect(node):
    if getattr(node, "_origin", "").endswith(".Detect"):
        return node
    for child in (getattr(node, "_modules", None) or {}).values():
        found = _find_detect(child) if child is not None else None
        if found is not None:
            return found
    return None


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
        raise EdgeAnchorError(f"cannot read {path} as a yolov5 checkpoint ({str(exc).splitlines()[0][:120]})") from None
    model = None
    if isinstance(obj, dict):
        model = obj.get("ema") or obj.get("model")
    if model is None or not isinstance(model, _Inert):
        raise EdgeAnchorError(f"{path} holds no yolov5 model (expected a train.py checkpoint with 'model')")
    detect = _find_detect(model)
    if detect is None:
        raise EdgeAnchorError(f"{path}: the model has no Detect layer, so it has no anchors to prune")
    buffers = getattr(detect, "_buffers", {}) or {}
    anchors = buffers.get("anchors")
    stride = getattr(detect, "stride", None)
    stride = buffers.get("stride") if stride is None else stride
    if anchors is None or stride is None:
        raise EdgeAnchorError(f"{path}: the Detect layer holds no anchors or strides; is it a yolov5 v6/v7 model?")
    names = getattr(model, "names", None)
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    nc = int(getattr(detect, "nc", len(names or [])))
    return YoloV5Checkpoint(state_dict=_state_dict(model), anchors_stride_units=anchors.detach().float(),
                            strides=[float(s) for s in torch.as_tensor(stride).flatten().tolist()], num_classes=nc,
                            names=list(names) if names else [str(i) for i in range(nc)],
                            yaml=getattr(model, "yaml", None))
