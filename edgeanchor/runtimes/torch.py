"""Eager PyTorch stages of a checkpoint (``bench --runtime torch``): the one runtime that needs torch.

``torch`` is imported when a runner is made, so that asking which precisions this runtime has
imports nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

NAME = "PyTorch"
PRECISIONS = ("fp32",)


class TorchRunner:
    """Eager PyTorch stages of a checkpoint."""

    def __init__(self, det, *, threads: int = 0):
        self.clock: Callable[[], int] = time.perf_counter_ns  # what run_all counts (base.CLOCKS)
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.det = det.eval()
        self.settings = {"runtime": "torch", "version": torch.__version__, "mode": "eager, no_grad",
                         "intra_op_num_threads": torch.get_num_threads()}

    def run_all(self, image: np.ndarray) -> dict[str, int]:
        import torch

        with torch.no_grad():
            x = torch.from_numpy(image)
            t0 = self.clock()
            feats = self.det.backbone(x)
            t1 = self.clock()
            head = self.det.head(feats)
            t2 = self.clock()
            self.det.postprocess(head)
            t3 = self.clock()
            self.det(x)
            t4 = self.clock()
        return {"backbone": t1 - t0, "head": t2 - t1, "postprocess": t3 - t2, "end_to_end": t4 - t3}
