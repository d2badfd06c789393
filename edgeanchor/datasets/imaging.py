"""Images as the model sees them, and boxes mapped between file and model input: NumPy and Pillow only.

This is the one definition of the input preprocessing (RGB, bilinear resize,
"stretch" or YOLOv5's "letterbox", scaled to [0, 1], channels first). The
training and evaluation data set (:mod:`edgeanchor.datasets.coco`) and the
torch-free device path (``edgeanchor bench``, ``regress`` and ``evaluate
--export`` on a machine with only a runtime installed) both call it, so
what is deployed sees the same pixels as what was trained and checked.
Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import EdgeAnchorError

RESIZE_MODES = ("stretch", "letterbox")
LETTERBOX_FILL = 114  # YOLOv5's grey padding


def letterbox_params(orig_size: tuple[int, int], size: tuple[int, int]) -> tuple[float, int, int, int, int]:
    """YOLOv5's fixed-size letterbox of an image of ``orig_size`` (H, W) into ``size`` (H, W).

    Returns:
        (gain, left, top, new_h, new_w): the image is resized by ``gain`` (the same on both axes) to
        (new_h, new_w) and placed at (left, top) on a grey canvas; a box maps as xyxy * gain + (left, top).
    """
    (oh, ow), (h, w) = orig_size, size
    gain = min(h / oh, w / ow)
    new_w, new_h = int(round(ow * gain)), int(round(oh * gain))
    left, top = int(round((w - new_w) / 2 - 0.1)), int(round((h - new_h) / 2 - 0.1))
    return gain, left, top, new_h, new_w


def to_input(orig_size: tuple[int, int], input_size: tuple[int, int], resize: str) -> tuple[float, ...]:
    """(scale_x, scale_y, pad_x, pad_y): a box in the file's pixels maps to the input as xyxy * scale + pad."""
    (oh, ow), (in_h, in_w) = orig_size, input_size
    if resize == "letterbox":
        gain, left, top, _, _ = letterbox_params(orig_size, input_size)
        return gain, gain, float(left), float(top)
    return in_w / ow, in_h / oh, 0.0, 0.0


def to_original(orig_size: tuple[int, int], input_size: tuple[int, int], resize: str) -> tuple[float, ...]:
    """(scale_x, scale_y, pad_x, pad_y): a box in input pixels maps to the file as (xyxy - pad) * scale."""
    (oh, ow), (in_h, in_w) = orig_size, input_size
    if resize == "letterbox":
        gain, left, top, _, _ = letterbox_params(orig_size, input_size)
        return 1.0 / gain, 1.0 / gain, float(left), float(top)
    return ow / in_w, oh / in_h, 0.0, 0.0


def to_rgb8(img: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL image, 16-bit greyscale included.

    PIL's ``convert("RGB")`` clips 16-bit ("I;16", "I") values at 255, so a
    16-bit PNG would come out almost white; those are scaled by 1/257
    (65535 -> 255) first.
    """
    if img.mode.startswith("I;16") or img.mode == "I":
        wide = np.asarray(img, dtype=np.float64)  # (H, W) in 0..65535
        grey = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return img.convert("RGB")


def load_image_array(path: Path, image_size: tuple[int, int] | None,
                     resize: str = "stretch") -> tuple[np.ndarray, tuple[int, int]]:
    """Read an image file as RGB, optionally resized (bilinear) to ``image_size``.

    Grayscale, palette and RGBA images are converted to RGB (alpha is dropped).

    Args:
        path: image file (any format PIL reads).
        image_size: (H, W) to resize to, or None to keep the file's size.
        resize: "stretch" (both axes to the size) or "letterbox" (YOLOv5's: aspect kept, grey padding;
            see :func:`letterbox_params`).

    Returns:
        (float32 array (3, H, W) RGB in [0, 1], (H, W) of the file).

    Raises:
        EdgeAnchorError: the file cannot be read as an image.
    """
    try:
        with Image.open(path) as img:
            rgb = to_rgb8(img)
    # DecompressionBombError: a header past Pillow's MAX_IMAGE_PIXELS (a 100-byte PNG may declare 10**10 pixels)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise EdgeAnchorError(f"cannot read image {path} ({exc}); replace or remove the file") from None
    orig_size = (rgb.height, rgb.width)
    # a list (from JSON) compares unequal to a tuple, so compare and pass (H, W) as a tuple
    size = None if image_size is None else (image_size[0], image_size[1])
    if size is not None and size != orig_size:
        if resize == "letterbox":
            _, left, top, new_h, new_w = letterbox_params(orig_size, size)
            canvas = Image.new("RGB", (size[1], size[0]), (LETTERBOX_FILL,) * 3)
            resized = rgb.resize((new_w, new_h), Image.Resampling.BILINEAR) if (new_h, new_w) != orig_size else rgb
            canvas.paste(resized, (left, top))
            rgb = canvas
        else:
            rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
    # (H, W, 3) -> (3, H, W); the same float32 division torch's .float().div_(255.0) does
    return np.ascontiguousarray(array.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0), orig_size


def boxes_to_original(boxes_xyxy: np.ndarray, orig_size: tuple[int, int], input_size: tuple[int, int],
                      resize: str) -> np.ndarray:
    """Boxes in model-input pixels -> the file's pixels, clipped to the image.

    Args:
        boxes_xyxy: float (D, 4) xyxy in input pixels.
        orig_size: (H, W) of the file.
        input_size: (H, W) of the model input.
        resize: how the file reached the input ("stretch" or "letterbox").

    Returns:
        float64 (D, 4) xyxy in the file's pixels.
    """
    sx, sy, px, py = to_original((orig_size[0], orig_size[1]), (input_size[0], input_size[1]), resize)
    out = (np.asarray(boxes_xyxy, dtype=np.float64) - [px, py, px, py]) * [sx, sy, sx, sy]
    out[:, 0::2] = out[:, 0::2].clip(0, orig_size[1])
    out[:, 1::2] = out[:, 1::2].clip(0, orig_size[0])
    return out
