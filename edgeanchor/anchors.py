"""Anchor sets as plain values.

An :class:`AnchorSet` is the whole truth about a detector's anchors: per
level, the cell stride, the feature-map size and a list of anchor boxes
``(w, h)`` in input pixels. Every anchor has a stable integer ``id``: its
global index (level-major) in the unpruned set it came from. Pruning keeps a
subset of ids; ids never get renumbered, so reports, searches and keep files
always talk about the same anchor.

Ratio convention: **ratio = h / w** everywhere in this project (torchvision's
``AnchorGenerator`` uses h/w too; its ``DefaultBoxGenerator`` uses w/h, and the
conversion happens in :func:`from_default_box_generator`).

Centre convention: ``centre_offset`` is where a cell's anchors are centred, in
cells. 0.5 is the cell centre (SSD, ``DefaultBoxGenerator``); 0.0 is the cell's
top-left corner (torchvision's ``AnchorGenerator``, used by RetinaNet).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch

from .errors import EdgeAnchorError

FORMAT = "edgeanchor.anchors/1"


@dataclass(frozen=True)
class AnchorBox:
    """One anchor shape: ``w`` and ``h`` in input pixels, and its global id."""

    id: int
    w: float
    h: float

    @property
    def ratio(self) -> float:
        """Aspect ratio h / w."""
        return self.h / self.w

    @property
    def size(self) -> float:
        """Geometric mean of w and h, in pixels."""
        return math.sqrt(self.w * self.h)


@dataclass(frozen=True)
class AnchorLevel:
    """One feature level.

    Attributes:
        feature_size: (H, W) of the feature map at the anchor set's image size.
        stride: (sy, sx) pixels between neighbouring cells, or None when the
            cells tile the image exactly (stride = image size / feature size).
        anchors: the anchor shapes at every cell of this level; may be empty.
    """

    feature_size: tuple[int, int]
    stride: tuple[float, float] | None
    anchors: tuple[AnchorBox, ...] = field(default_factory=tuple)

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)

    @property
    def num_boxes(self) -> int:
        return self.feature_size[0] * self.feature_size[1] * len(self.anchors)


@dataclass(frozen=True)
class AnchorSet:
    """Per-level anchor shapes of a detector at a fixed input size.

    Attributes:
        image_size: (H, W) of the model input, in pixels.
        centre_offset: anchor centre within a cell, in cells (0.5 centre, 0.0 corner).
        levels: one :class:`AnchorLevel` per feature level of the model; a pruned
            set keeps every level, with empty levels for dropped ones.
    """

    image_size: tuple[int, int]
    centre_offset: float
    levels: tuple[AnchorLevel, ...]

    # ---- queries -------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return len(self.levels)

    @property
    def num_anchors(self) -> int:
        return sum(level.num_anchors for level in self.levels)

    @property
    def num_boxes(self) -> int:
        return sum(level.num_boxes for level in self.levels)

    @property
    def ids(self) -> list[int]:
        """Global anchor ids, level-major."""
        return [a.id for level in self.levels for a in level.anchors]

    @property
    def active_levels(self) -> list[int]:
        """Indices of levels with at least one anchor."""
        return [i for i, level in enumerate(self.levels) if level.anchors]

    def anchors_per_level(self) -> list[int]:
        return [level.num_anchors for level in self.levels]

    def level_of(self) -> dict[int, int]:
        """Map anchor id -> level index."""
        return {a.id: i for i, level in enumerate(self.levels) for a in level.anchors}

    # ---- derived sets --------------------------------------------------
    def subset(self, keep: Iterable[int]) -> AnchorSet:
        """The anchor set restricted to the ids in ``keep``.

        Ids that belong to the unpruned parent but are no longer in this set
        are ignored, so ``a.subset(k1).subset(k2) == a.subset(k1 & k2)``.

        Raises:
            EdgeAnchorError: if nothing would be kept.
        """
        keep = {int(k) for k in keep}
        levels = tuple(
            replace(level, anchors=tuple(a for a in level.anchors if a.id in keep)) for level in self.levels
        )
        result = replace(self, levels=levels)
        if result.num_anchors == 0:
            raise EdgeAnchorError(
                f"the keep set removes every anchor ({self.num_anchors} of {self.num_anchors}); keep at least one"
            )
        return result

    def renumbered(self) -> AnchorSet:
        """The same shapes with ids 0..N-1 (a fresh, unpruned set)."""
        counter = iter(range(self.num_anchors))
        levels = tuple(
            replace(level, anchors=tuple(replace(a, id=next(counter)) for a in level.anchors))
            for level in self.levels
        )
        return replace(self, levels=levels)

    # ---- JSON ----------------------------------------------------------
    def to_json(self) -> dict:
        """A JSON-ready dict; ``ratio_hw`` and ``boxes`` are for readers only."""
        return {
            "format": FORMAT,
            "ratio": "h/w",
            "image_size": list(self.image_size),
            "centre_offset": self.centre_offset,
            "num_boxes": self.num_boxes,
            "levels": [
                {
                    "feature_size": list(level.feature_size),
                    "stride": list(level.stride) if level.stride is not None else None,
                    "anchors": [
                        {"id": a.id, "w": a.w, "h": a.h, "ratio_hw": round(a.ratio, 6)} for a in level.anchors
                    ],
                }
                for level in self.levels
            ],
        }

    @classmethod
    def from_json(cls, obj: dict) -> AnchorSet:
        """Parse :meth:`to_json` output.

        Raises:
            EdgeAnchorError: on a malformed object.
        """
        try:
            if obj.get("format") != FORMAT:
                raise ValueError(f"'format' is {obj.get('format')!r}, expected {FORMAT!r}")
            levels = []
            for lv in obj["levels"]:
                stride = lv["stride"]
                anchors = tuple(AnchorBox(int(a["id"]), float(a["w"]), float(a["h"])) for a in lv["anchors"])
                for a in anchors:
                    if not (a.w > 0 and a.h > 0):
                        raise ValueError(f"anchor {a.id} has non-positive size {a.w}x{a.h}")
                levels.append(
                    AnchorLevel(
                        feature_size=_pair(lv["feature_size"], int),
                        stride=None if stride is None else _pair(stride, float),
                        anchors=anchors,
                    )
                )
            result = cls(
                image_size=_pair(obj["image_size"], int),
                centre_offset=float(obj["centre_offset"]),
                levels=tuple(levels),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgeAnchorError(f"malformed anchor set: {_describe(exc)}; write it with edgeanchor") from None
        ids = result.ids
        if len(set(ids)) != len(ids):
            raise EdgeAnchorError("malformed anchor set: anchor ids repeat; every anchor needs its own id")
        return result


def is_anchor_file(path) -> bool:
    """True if ``path`` is an anchor file edgeanchor wrote (never raises)."""
    from .io import peek_json

    obj = peek_json(path)
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def match_anchor_ids(model: AnchorSet, wanted: AnchorSet, *, source: str = "the anchor file") -> set[int]:
    """Ids of ``model``'s anchors that ``wanted`` names, matched by level and shape.

    An anchor matches when its width and height are each within 1 px or 1 %
    of the model's (anchor files round sizes); the closest match wins.

    Raises:
        EdgeAnchorError: an anchor of ``wanted`` is not one of the model's.
    """
    keep = set()
    for i, (mine, theirs) in enumerate(zip(model.levels, wanted.levels)):
        for a in theirs.anchors:
            match = [b for b in mine.anchors
                     if abs(b.w - a.w) <= max(1.0, 0.01 * b.w) and abs(b.h - a.h) <= max(1.0, 0.01 * b.h)]
            if not match:
                raise EdgeAnchorError(
                    f"anchor {a.w:.1f}x{a.h:.1f} px on level {i} of {source} is not one of the model's anchors; "
                    "anchors to keep must be a subset of the model's anchors"
                )
            keep.add(min(match, key=lambda b: abs(b.w - a.w) + abs(b.h - a.h)).id)
    return keep


def _pair(value, cast) -> tuple:
    if isinstance(value, (int, float)):
        return (cast(value), cast(value))
    if len(value) != 2:
        raise ValueError(f"expected a pair, got {value!r}")
    return (cast(value[0]), cast(value[1]))


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing key {exc.args[0]!r}"
    return str(exc)


# ---- the reference code's form ------------------------------------------
def from_reference(obj: dict, template: AnchorSet) -> AnchorSet:
    """Build an anchor set from the paper's reference form.

    The form is ``{"base_size": B, "scale_ratios": [[[scale, ratio], ...], ...]}``,
    one list per level (a level may be ``[]``), with w = B*scale/sqrt(ratio)
    and h = B*scale*sqrt(ratio) (ratio = h/w). Feature sizes, strides and the
    centre convention come from ``template`` (the model's own anchor set).

    Raises:
        EdgeAnchorError: on a malformed object or a level count that does not
            match the model.
    """
    try:
        base = float(obj["base_size"])
        per_level = obj["scale_ratios"]
        pairs = [[(float(s), float(r)) for s, r in level] for level in per_level]
    except (KeyError, TypeError, ValueError) as exc:
        raise EdgeAnchorError(
            f"malformed reference anchor file: {_describe(exc)}; expected "
            '{"base_size": 300, "scale_ratios": [[[scale, ratio], ...], ...]}'
        ) from None
    if not (math.isfinite(base) and base > 0):
        raise EdgeAnchorError(f"reference anchor file: base_size must be a positive number of pixels (got {base})")
    if len(pairs) != template.num_levels:
        raise EdgeAnchorError(
            f"the anchor file has {len(pairs)} levels but the model has {template.num_levels}; "
            "give one list per level (use [] for an empty level)"
        )
    counter = iter(range(10**9))
    levels = []
    for level, level_pairs in zip(template.levels, pairs):
        anchors = []
        for scale, ratio in level_pairs:
            if not (math.isfinite(scale) and math.isfinite(ratio) and scale > 0 and ratio > 0):
                raise EdgeAnchorError(f"reference anchor ({scale}, {ratio}) must have positive, finite scale and ratio")
            anchors.append(
                AnchorBox(next(counter), base * scale / math.sqrt(ratio), base * scale * math.sqrt(ratio))
            )
        levels.append(replace(level, anchors=tuple(anchors)))
    return replace(template, levels=tuple(levels))


def to_reference(anchor_set: AnchorSet) -> dict:
    """The reference form of an anchor set, with base_size = min(image_size)."""
    base = float(min(anchor_set.image_size))
    return {
        "base_size": base,
        "scale_ratios": [[[a.size / base, a.ratio] for a in level.anchors] for level in anchor_set.levels],
    }


def parse_anchor_file(obj: dict, template: AnchorSet) -> AnchorSet:
    """Parse either form of anchor file against the model's own anchor set."""
    if isinstance(obj, dict) and ("scale_ratios" in obj or "base_size" in obj):
        return from_reference(obj, template)
    if not isinstance(obj, dict):
        raise EdgeAnchorError("malformed anchor set: expected a JSON object")
    result = AnchorSet.from_json(obj)
    if result.num_levels != template.num_levels:
        raise EdgeAnchorError(
            f"the anchor file has {result.num_levels} levels but the model has {template.num_levels}; "
            "write one entry per model level (an empty level has no anchors)"
        )
    return result


# ---- overanchorized sets -------------------------------------------------
def overanchorized(template: AnchorSet, *, num_scales: int = 3, ratios: Sequence[float] | None = None) -> AnchorSet:
    """A dense anchor set: ``num_scales`` scales x ``ratios`` (h/w) per level.

    Each level's base size is the size of the template level's first anchor;
    scales step by 2**(1/num_scales) from there (RetinaNet's octave scales),
    so pruning rather than a designer picks the shapes.
    """
    if ratios is None:
        ratios = (0.25, 0.5, 1.0, 2.0, 4.0)
    if num_scales < 1 or not ratios or any(r <= 0 for r in ratios):
        raise EdgeAnchorError("overanchorized needs at least one scale and positive ratios, e.g. overanchorized:3x5")
    counter = iter(range(10**9))
    levels = []
    for i, level in enumerate(template.levels):
        base = level.anchors[0].size if level.anchors else _guess_level_size(template, i)
        anchors = []
        for k in range(num_scales):
            size = base * 2.0 ** (k / num_scales)
            for r in ratios:
                anchors.append(AnchorBox(next(counter), size / math.sqrt(r), size * math.sqrt(r)))
        levels.append(replace(level, anchors=tuple(anchors)))
    return replace(template, levels=tuple(levels))


def _guess_level_size(template: AnchorSet, index: int) -> float:
    h, w = template.image_size
    fh, fw = template.levels[index].feature_size
    return 4.0 * math.sqrt((h / fh) * (w / fw))


def geometric_ratios(num_ratios: int, low: float = 0.25, high: float = 4.0) -> tuple[float, ...]:
    """``num_ratios`` ratios spread geometrically from ``low`` to ``high``."""
    if num_ratios == 1:
        return (1.0,)
    step = (math.log(high) - math.log(low)) / (num_ratios - 1)
    return tuple(math.exp(math.log(low) + i * step) for i in range(num_ratios))


def parse_overanchorized(text: str, template: AnchorSet) -> AnchorSet:
    """Parse ``overanchorized`` or ``overanchorized:SxR`` (e.g. ``overanchorized:3x5``)."""
    head, sep, counts = text.partition(":")
    usage = f"cannot read {text!r}; write overanchorized or overanchorized:SCALESxRATIOS, e.g. overanchorized:3x5"
    if head != "overanchorized" or (sep and not counts):
        raise EdgeAnchorError(usage)
    if not counts:
        return overanchorized(template)
    try:
        scales, ratios = (int(v) for v in counts.lower().split("x"))
    except ValueError:
        raise EdgeAnchorError(usage) from None
    if not (1 <= scales <= 16 and 1 <= ratios <= 16):
        raise EdgeAnchorError(f"{text!r}: scales and ratios must each be 1 to 16 (got {scales}x{ratios})")
    return overanchorized(template, num_scales=scales, ratios=geometric_ratios(ratios))


# ---- grids of boxes ------------------------------------------------------
def grid_anchors(anchor_set: AnchorSet, levels: Iterable[int] | None = None) -> list[torch.Tensor]:
    """Tile every level's anchors over its feature map.

    Box order within a level is (row, column, anchor), the order of the head's
    flattened outputs. Arithmetic follows torchvision's float32 formulas for
    the two centre conventions, so the boxes are bit-identical to its
    ``DefaultBoxGenerator`` (offset 0.5) and ``AnchorGenerator`` (offset 0.0).

    Args:
        anchor_set: the anchor set.
        levels: level indices to tile; all levels by default.

    Returns:
        One float32 tensor per requested level, shape (fh*fw*A, 4), boxes_xyxy
        in input pixels.
    """
    if levels is None:
        levels = range(anchor_set.num_levels)
    return [_grid_level(anchor_set, i) for i in levels]


def _grid_level(anchor_set: AnchorSet, index: int) -> torch.Tensor:
    level = anchor_set.levels[index]
    img_h, img_w = anchor_set.image_size
    fh, fw = level.feature_size
    wh = torch.tensor([[a.w, a.h] for a in level.anchors], dtype=torch.float64).reshape(-1, 2)
    if anchor_set.centre_offset == 0.0 and level.stride is not None:
        return _grid_corner(fh, fw, level.stride, wh)
    return _grid_normalised(fh, fw, level.stride, (img_h, img_w), anchor_set.centre_offset, wh)


def _grid_corner(fh: int, fw: int, stride: tuple[float, float], wh: torch.Tensor) -> torch.Tensor:
    # torchvision AnchorGenerator: integer shifts plus zero-centred cell anchors.
    shifts_x = torch.arange(fw, dtype=torch.float64) * stride[1]
    shifts_y = torch.arange(fh, dtype=torch.float64) * stride[0]
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shifts = torch.stack((shift_x.reshape(-1), shift_y.reshape(-1)) * 2, dim=1).float()  # (fh*fw, 4)
    half = (wh / 2).float()
    cell = torch.cat((-half, half), dim=1)  # (A, 4)
    return (shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4)  # (fh*fw*A, 4)


def _grid_normalised(fh, fw, stride, image_size, offset, wh) -> torch.Tensor:
    # torchvision DefaultBoxGenerator: centres and sizes in [0, 1], scaled at the end.
    img_h, img_w = image_size
    x_f = img_w / stride[1] if stride is not None else fw
    y_f = img_h / stride[0] if stride is not None else fh
    shifts_x = ((torch.arange(0, fw) + offset) / x_f).to(dtype=torch.float32)
    shifts_y = ((torch.arange(0, fh) + offset) / y_f).to(dtype=torch.float32)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    num_a = wh.shape[0]
    centres = torch.stack((shift_x.reshape(-1), shift_y.reshape(-1)) * num_a, dim=-1).reshape(-1, 2)
    wh_norm = (wh / torch.tensor([img_w, img_h], dtype=torch.float64)).float().repeat(fh * fw, 1)
    size = torch.tensor([img_w, img_h])
    return torch.cat(((centres - 0.5 * wh_norm) * size, (centres + 0.5 * wh_norm) * size), -1)


# ---- from torchvision generators ---------------------------------------
def from_default_box_generator(generator, image_size, feature_sizes) -> AnchorSet:
    """The anchor set of a torchvision ``DefaultBoxGenerator`` (SSD, SSDLite).

    Args:
        generator: a ``torchvision.models.detection.anchor_utils.DefaultBoxGenerator``.
        image_size: (H, W) model input size in pixels.
        feature_sizes: per level (H, W) of the feature maps at that size.
    """
    img_h, img_w = image_size
    counter = iter(range(10**9))
    levels = []
    for k, f_size in enumerate(feature_sizes):
        pairs = generator._wh_pairs[k]
        if generator.clip:
            pairs = pairs.clamp(min=0, max=1)
        # Stored in float64 from the float32 pairs, so w / W gives back the same float32.
        anchors = tuple(
            AnchorBox(next(counter), float(w) * img_w, float(h) * img_h) for w, h in pairs.tolist()
        )
        step = None if generator.steps is None else (float(generator.steps[k]), float(generator.steps[k]))
        f_h, f_w = f_size
        levels.append(AnchorLevel(feature_size=(int(f_h), int(f_w)), stride=step, anchors=anchors))
    return AnchorSet(image_size=(int(img_h), int(img_w)), centre_offset=0.5, levels=tuple(levels))


def from_anchor_generator(generator, image_size, feature_sizes) -> AnchorSet:
    """The anchor set of a torchvision ``AnchorGenerator`` (RetinaNet).

    The cell anchors are torchvision's rounded ones, so w and h are the
    extents the model really uses.
    """
    img_h, img_w = image_size
    counter = iter(range(10**9))
    levels = []
    for cell, f_size in zip(generator.cell_anchors, feature_sizes):
        fh, fw = (int(v) for v in f_size)
        anchors = tuple(
            AnchorBox(next(counter), float(x2 - x1), float(y2 - y1)) for x1, y1, x2, y2 in cell.tolist()
        )
        stride = (float(img_h // fh), float(img_w // fw))
        levels.append(AnchorLevel(feature_size=(fh, fw), stride=stride, anchors=anchors))
    return AnchorSet(image_size=(int(img_h), int(img_w)), centre_offset=0.0, levels=tuple(levels))


def with_feature_sizes(anchor_set: AnchorSet, feature_sizes, image_size) -> AnchorSet:
    """Re-grid an anchor set for another input size (shapes kept in pixels)."""
    if len(feature_sizes) != anchor_set.num_levels:
        raise EdgeAnchorError(
            f"the anchor set has {anchor_set.num_levels} levels but the model has {len(feature_sizes)}"
        )
    img_h, img_w = image_size
    levels = []
    for level, (fh, fw) in zip(anchor_set.levels, feature_sizes):
        stride = level.stride
        if stride is not None and anchor_set.centre_offset == 0.0:
            stride = (float(img_h // fh), float(img_w // fw))
        levels.append(replace(level, feature_size=(int(fh), int(fw)), stride=stride))
    return replace(anchor_set, image_size=(int(img_h), int(img_w)), levels=tuple(levels))
