"""edgeanchor: anchor pruning for one-stage anchor-based detectors, for the edge.

The Python API (``import edgeanchor as ea``)::

    det = ea.load("demo")                                   # or ea.wrap(a torchvision SSD / RetinaNet, a YoloV5)
    result = ea.search(det, ea.data("demo", split="val"))   # the Pareto front of mAP against head MACs
    pruned = ea.prune(det, result.choose(max_drop=0.005))
    folder = ea.export(pruned, "exports/mine", baseline=det, data=ea.data("demo", split="test"))
    print(ea.bench(folder).table())

Boxes are xyxy in input pixels, anchors (w, h) in input pixels with ratio = h/w. User mistakes raise
:class:`EdgeAnchorError`. The names below load their modules on first use, so ``import edgeanchor``
does not import torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "load": ".api.loading", "wrap": ".api.loading", "inspect": ".api.loading",
    "data": ".api.data", "Data": ".api.data",
    "evaluate": ".api.workflow", "search": ".api.workflow", "prune": ".api.workflow", "save": ".api.workflow",
    "finetune": ".api.workflow",
    "export": ".api.deploy", "bench": ".api.deploy", "prune_and_export": ".api.deploy",
    "regress": ".api.gate", "synth": ".api.synth",
    "SearchResult": ".api.results", "FrontPoint": ".api.results", "BenchResult": ".api.results",
    "Detector": ".models.base", "AnchorSet": ".anchors", "ExportFolder": ".export.folder",
    "EdgeAnchorError": ".errors", "CheckFailed": ".errors",
}
# API functions that share their name with a subpackage or module of ours (edgeanchor.search, ...).
# ``edgeanchor.search`` must stay the package for imports (``import edgeanchor.search.run``, pickling,
# monkeypatching), and Python binds it on this module whenever it is imported; so the package itself
# becomes callable, and calling it calls the API function.
_CALLABLE_PACKAGES = ("data", "evaluate", "search", "prune", "export", "bench", "regress")

__all__ = sorted([*_LAZY, "__version__"])

if TYPE_CHECKING:
    from .anchors import AnchorSet
    from .api.data import Data, data
    from .api.deploy import bench, export, prune_and_export
    from .api.gate import regress
    from .api.synth import synth
    from .api.loading import inspect, load, wrap
    from .api.results import BenchResult, FrontPoint, SearchResult
    from .api.workflow import evaluate, finetune, prune, save, search
    from .errors import CheckFailed, EdgeAnchorError
    from .export.folder import ExportFolder
    from .models.base import Detector


def _api_function(name: str):
    return getattr(importlib.import_module(_LAZY[name], __name__), name)


class _CallableModule(types.ModuleType):
    """A subpackage named like an API function: ``edgeanchor.search(...)`` calls :func:`edgeanchor.api.search`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _api_function(self.__name__.rpartition(".")[2])(*args, **kwargs)

    @property
    def __wrapped__(self):  # inspect.signature(ea.search) gives the API function's signature
        return _api_function(self.__name__.rpartition(".")[2])

    @property
    def __doc__(self) -> str:  # type: ignore[override]  # help(ea.search): the API function first
        import inspect

        name = self.__name__.rpartition(".")[2]
        fn = _api_function(name)
        own = self.__dict__.get("__doc__") or ""
        return (f"ea.{name}{inspect.signature(fn)}\n\n{inspect.getdoc(fn)}\n\n"
                f"(Called, this package is the API function above; as a package, {self.__name__}: {own.strip()})")


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _CALLABLE_PACKAGES and type(value) is types.ModuleType:
            value.__class__ = _CallableModule  # the import system binds subpackages here
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in _CALLABLE_PACKAGES:
        return importlib.import_module(f".{name}", __name__)  # bound (and made callable) by the import
    if name in _LAZY:
        value = _api_function(name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
