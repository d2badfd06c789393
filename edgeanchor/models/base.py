"""The three-stage detector every adapter provides.

``Detector`` splits a one-stage detector into

- :meth:`Detector.backbone`: images -> one feature map per *active* level;
- :meth:`Detector.head`: features -> per active level ``(cls_logits, box_deltas)``,
  raw convolution outputs with anchor-major channels (channel = a*K + k);
- :meth:`Detector.postprocess`: head outputs -> detections, with the anchors
  held as a buffer.

A level is active when the anchor set keeps at least one anchor on it; an
inactive level runs no head, and adapters skip backbone work that only fed it.

Images enter as float32 (N, 3, H, W) RGB in [0, 1] at the anchor set's image
size; normalisation happens inside :meth:`backbone`. Boxes leave as xyxy in
input pixels.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..anchors import AnchorSet, grid_anchors
from ..postprocess import PostprocessRule, candidates, flatten_level, select


class Detector(nn.Module):
    """Base class; adapters implement ``backbone``, ``head`` and ``_sliced``.

    Attributes:
        arch: architecture name, e.g. ``torchvision:ssd300_vgg16`` or ``demo``.
        num_classes: K, the number of classifier outputs per anchor.
        anchor_set: the current anchors.
        postprocess_spec: the post-processing rule (score function, thresholds, top-k, NMS).
        config: plain values that rebuild the architecture (saved in checkpoints).
    """

    arch: str = ""
    shared_head: bool = False
    # Model label of the first category: 1 when label 0 is background (SSD; torchvision's RetinaNet
    # convention), 0 for YOLO, which has no background class.
    first_label: int = 1
    # buffers (register_buffer), declared so that type checkers see tensors, not Tensor | Module
    mean: torch.Tensor  # (3,) per-channel image mean
    std: torch.Tensor  # (3,) per-channel image standard deviation
    anchors_xyxy: torch.Tensor  # (num_boxes, 4) every active level's anchors, flattened
    level_starts: torch.Tensor  # int64 (num_active_levels + 1,) where each level's boxes start

    def __init__(self, *, arch: str, num_classes: int, anchor_set: AnchorSet, postprocess_spec: PostprocessRule,
                 config: dict):
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.anchor_set = anchor_set
        self.postprocess_spec = postprocess_spec
        self.config = dict(config)
        self.register_buffer("mean", torch.tensor(config.get("image_mean", [0.485, 0.456, 0.406])))
        self.register_buffer("std", torch.tensor(config.get("image_std", [0.229, 0.224, 0.225])))
        self._refresh_anchor_buffers()

    # ---- anchors ---------------------------------------------------------
    def _refresh_anchor_buffers(self) -> None:
        active = self.anchor_set.active_levels
        per_level = grid_anchors(self.anchor_set, active)
        counts = [t.shape[0] for t in per_level]
        starts = torch.tensor([0] + counts, dtype=torch.int64).cumsum(0)
        self.register_buffer("anchors_xyxy", torch.cat(per_level) if per_level else torch.zeros(0, 4), persistent=False)
        self.register_buffer("level_starts", starts, persistent=False)

    @property
    def resize_mode(self) -> str:
        """How images reach the input size: "stretch" (SSD, RetinaNet) or "letterbox" (YOLO)."""
        return self.config.get("resize", "stretch")

    @property
    def cls_columns(self) -> int:
        """Columns per anchor of the classification output (K; YOLO: objectness + nc)."""
        return self.num_classes

    @property
    def decode_priors(self) -> torch.Tensor:
        """What :func:`~edgeanchor.postprocess.decode` decodes against, per box (anchors_xyxy by default)."""
        return self.anchors_xyxy

    @property
    def active_levels(self) -> list[int]:
        return self.anchor_set.active_levels

    @property
    def image_size(self) -> tuple[int, int]:
        return self.anchor_set.image_size

    def box_anchor_ids(self) -> torch.Tensor:
        """Global anchor id of every flattened box, int64 (num_boxes,)."""
        ids = []
        for i in self.active_levels:
            level = self.anchor_set.levels[i]
            level_ids = torch.tensor([a.id for a in level.anchors], dtype=torch.int64)
            ids.append(level_ids.repeat(level.feature_size[0] * level.feature_size[1]))  # (H*W*A,)
        return torch.cat(ids)

    # ---- the three stages ------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        # Same expression as torchvision's GeneralizedRCNNTransform, for identical results.
        return (images - self.mean[:, None, None]) / self.std[:, None, None]

    def backbone(self, images: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def head(self, features: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per active level, (cls_logits (N, A*K, H, W), box_deltas (N, A*4, H, W))."""
        return [self.head_at(j, f) for j, f in enumerate(features)]

    def head_at(self, j: int, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """The head on the j-th active level."""
        raise NotImplementedError

    @property
    def extra_points(self) -> int:
        """k, the points (landmarks, keypoints) each anchor predicts besides its box; 0 for torch models."""
        return 0

    def extras_at(self, j: int, feature: torch.Tensor) -> torch.Tensor | None:
        """Extra per-anchor head outputs of the j-th active level (landmarks, keypoints), or None."""
        return None

    def required_levels(self) -> list[int]:
        """Levels that must keep at least one anchor (the search never empties them); none for torch models."""
        return []

    def source_identity(self) -> tuple[str, ...]:
        """What the outputs depend on besides the module's tensors, anchors and rule (an ONNX source's graph
        and head spec), for cache keys; nothing for torch models."""
        return ()

    def write_drop_in(self, paths: dict) -> dict | None:
        """Write the model as its source's own pruned file at ``paths`` (``ExportFolder.drop_in_paths``) and
        return what the report records; None for torch models, which have no such file."""
        return None

    def untraced_macs(self) -> int:
        """Backbone MACs that torch hooks cannot see (a backbone run by ONNX Runtime); 0 for torch models."""
        return 0

    def final_convs(self, j: int) -> tuple[nn.Conv2d, nn.Conv2d]:  # pragma: no cover - abstract
        """The (classification, regression) convolutions whose channels are per anchor, j-th active level."""
        raise NotImplementedError

    def flatten_head(self, head_outputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate per-level head outputs.

        Returns:
            cls_logits (N, num_boxes, cls_columns) and box_deltas (N, num_boxes, 4).
        """
        cls = torch.cat([flatten_level(c, self.cls_columns) for c, _ in head_outputs], dim=1)
        box = torch.cat([flatten_level(b, 4) for _, b in head_outputs], dim=1)
        return cls, box

    def postprocess(self, head_outputs) -> list[dict[str, torch.Tensor]]:
        """Detections per image: dicts with ``boxes`` (xyxy px), ``scores``, ``labels``."""
        cls, box = self.flatten_head(head_outputs)
        results = []
        for i in range(cls.shape[0]):
            cands = candidates(cls[i], box[i], self.decode_priors, self.image_size, self.postprocess_spec)
            results.append(select(cands, self.postprocess_spec, self.level_starts))
        return results

    def image_candidates(self, head_outputs):
        """Per image, all above-threshold candidates (for the search cache)."""
        cls, box = self.flatten_head(head_outputs)
        return [candidates(cls[i], box[i], self.decode_priors, self.image_size, self.postprocess_spec)
                for i in range(cls.shape[0])]

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.postprocess(self.head(self.backbone(images)))

    # ---- pruning hook ----------------------------------------------------
    def common_kwargs(self, anchor_set: AnchorSet) -> dict:
        """Constructor arguments shared by every adapter, with a new anchor set."""
        return {"arch": self.arch, "num_classes": self.num_classes, "anchor_set": anchor_set,
                "postprocess_spec": self.postprocess_spec, "config": self.config}

    def _sliced(self, anchor_set: AnchorSet, keep_per_level: dict[int, list[int]]) -> Detector:
        """A copy whose head keeps, per active level, the given anchor positions."""
        raise NotImplementedError  # pragma: no cover

    def deploy_rule(self, score_thresh: float | None = None, nms_thresh: float | None = None) -> PostprocessRule:
        """The rule of the exported graphs (:meth:`PostprocessRule.for_deployment`; None keeps a value)."""
        return self.postprocess_spec.for_deployment(score_thresh, nms_thresh)

    def with_postprocess(self, spec: PostprocessRule) -> Detector:
        """This detector with another post-processing rule: itself if the rule is the same, else a
        shallow copy that shares every weight (e.g. the exported graphs' deploy rule)."""
        if spec == self.postprocess_spec:
            return self
        other = copy.copy(self)
        other.postprocess_spec = spec
        return other

    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "config": self.config,
            "anchors": self.anchor_set.to_json(),
            "postprocess": self.postprocess_spec.to_json(),
            "state_dict": self.state_dict(),
        }
