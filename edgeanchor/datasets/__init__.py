"""Data sets: a COCO-format detection reader and a synthetic data set generator.

The reader's names are re-exported lazily so that ``edgeanchor.datasets.synth``
(and its worker processes) never import torch.
"""

from __future__ import annotations

import importlib

_COCO_NAMES = ("CocoDetection", "detection_collate", "invert_label_map", "make_label_map")

__all__ = list(_COCO_NAMES)


def __getattr__(name: str):
    if name in _COCO_NAMES:
        return getattr(importlib.import_module(".coco", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
