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
from typing import TYPE_CHECKING

__version__ = "0.2.0.dev0"

# public name -> the module that defines it
_LAZY = {
    "load": ".api.loading", "wrap": ".api.loading", "inspect": ".api.loading",
    "data": ".api.data", "Data": ".api.data",
    "evaluate": ".api.workflow", "search": ".api.workflow", "prune": ".api.workflow", "save": ".api.workflow",
    "finetune": ".api.workflow",
    "export": ".api.deploy", "bench": ".api.deploy", "prune_and_export": ".api.deploy",
    "regress": ".api.gate", "synth": ".api.synth",
    "SearchResult": ".api.results", "FrontPoint": ".api.results", "BenchResult": ".api.results",
    "Detector": ".models.base", "AnchorSet": ".anchors", "ExportFolder": ".exporting.folder",
    "EdgeAnchorError": ".errors", "CheckFailed": ".errors",
}
# No module of ours is named like a public name (the packages are datasets, evaluation, subset_search,
# exporting, benchmark; the modules pruning, regression), so importing one never rebinds ea.search & co.

__all__ = sorted([*_LAZY, "__version__"])

if TYPE_CHECKING:
    from .anchors import AnchorSet
    from .api.data import Data, data
    from .api.deploy import bench, export, prune_and_export
    from .api.gate import regress
    from .api.loading import inspect, load, wrap
    from .api.results import BenchResult, FrontPoint, SearchResult
    from .api.synth import synth
    from .api.workflow import evaluate, finetune, prune, save, search
    from .errors import CheckFailed, EdgeAnchorError
    from .exporting.folder import ExportFolder
    from .models.base import Detector


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
