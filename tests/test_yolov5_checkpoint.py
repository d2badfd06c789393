"""yolov5 train.py checkpoints read without yolov5: a restricted unpickler, inert classes, no code run."""

import os
import sys
import types

import numpy as np
import pytest
import torch

from edgeanchor.errors import EdgeAnchorError
from edgeanchor.models import yolov5_arch as arch
from edgeanchor.models.yolov5_checkpoint import read_yolov5_checkpoint


def _fake_yolov5_package():
    """Modules named like yolov5's (models.common, models.yolo) whose classes pickle by those names."""
    common, yolo = types.ModuleType("models.common"), types.ModuleType("models.yolo")
    classes = {}
    for mod, names in ((common, ("Conv", "C3", "SPPF", "Concat", "Bottleneck")), (yolo, ("Detect",))):
        for name in names:
            cls = type(name, (getattr(arch, name),), {"__module__": mod.__name__})
            setattr(mod, name, cls)
            classes[getattr(arch, name)] = cls
    model_cls = type("DetectionModel", (arch.YoloV5,), {"__module__": "models.yolo"})
    yolo.DetectionModel = model_cls
    return {"models": types.ModuleType("models"), "models.common": common, "models.yolo": yolo}, classes, model_cls


def write_checkpoint(path, nc=3, names=("a", "b", "c"), change=None):
    """A checkpoint shaped like yolov5 v7.0 train.py's (half-precision ema model, opt, git, date); ``change``,
    a function of the model, alters it before it is saved (crafted checkpoints)."""
    modules, classes, model_cls = _fake_yolov5_package()
    torch.manual_seed(0)
    model = arch.build_yolov5("n", nc=nc)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    for m in model.modules():
        if type(m) in classes:
            m.__class__ = classes[type(m)]
    model.__class__ = model_cls
    detect = model.detect
    stride = detect.stride.clone()
    del detect._buffers["stride"]  # yolov5 keeps stride as a plain attribute
    detect._non_persistent_buffers_set.discard("stride")
    detect.stride = stride
    model.names = list(names)
    model.yaml = {"nc": nc, "depth_multiple": 0.33, "width_multiple": 0.25, "anchors": arch.DEFAULT_ANCHORS}
    ckpt = {"epoch": -1, "best_fitness": np.float64(0.42), "model": None, "ema": model.half(), "updates": 10,
            "optimizer": None, "opt": {"imgsz": 640, "save_dir": "runs/train/exp"}, "git": {"tag": "v7.0"},
            "date": "2026-11-24T00:00:00"}
    if change is not None:
        change(model)
    saved = {k: sys.modules.get(k) for k in modules}
    sys.modules.update(modules)
    try:
        torch.save(ckpt, path)
    finally:
        for k, v in saved.items():
            sys.modules.pop(k) if v is None else sys.modules.__setitem__(k, v)
    return reference


def test_reads_a_yolov5_checkpoint_without_yolov5(tmp_path):
    path = tmp_path / "best.pt"
    reference = write_checkpoint(path)
    assert "models.yolo" not in sys.modules and "models" not in sys.modules
    ckpt = read_yolov5_checkpoint(path)
    assert "models" not in sys.modules  # nothing of yolov5's was imported
    assert ckpt.num_classes == 3 and ckpt.names == ["a", "b", "c"] and ckpt.strides == [8.0, 16.0, 32.0]
    assert ckpt.yaml["width_multiple"] == 0.25
    assert torch.allclose(ckpt.anchors_px, torch.tensor(arch.DEFAULT_ANCHORS, dtype=torch.float32).view(3, 3, 2))
    assert set(ckpt.state_dict) == set(reference)
    for k, v in reference.items():  # stored in half precision
        assert ckpt.state_dict[k].dtype == v.dtype
        assert torch.allclose(ckpt.state_dict[k].float(), v.float(), rtol=1e-3, atol=1e-3), k
    fresh = arch.build_yolov5("n", nc=3)
    fresh.load_state_dict(ckpt.state_dict)  # yolov5's names load into our architecture


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_refuses_any_other_global(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(EdgeAnchorError, match=r"asks for (posix|os)\.system, which is not allowed"):
        read_yolov5_checkpoint(path)


def test_anchor_free_models_and_non_checkpoints(tmp_path):
    fake = {n: types.ModuleType(n) for n in ("ultralytics", "ultralytics.nn", "ultralytics.nn.tasks")}
    cls = type("DetectionModel", (torch.nn.Module,), {"__module__": "ultralytics.nn.tasks"})
    fake["ultralytics.nn.tasks"].DetectionModel = cls
    assert not set(fake) & set(sys.modules)
    sys.modules.update(fake)
    try:
        torch.save({"model": cls()}, tmp_path / "v8.pt")
    finally:
        for n in fake:
            del sys.modules[n]
    with pytest.raises(EdgeAnchorError, match="is anchor-free .* no anchors to prune"):
        read_yolov5_checkpoint(tmp_path / "v8.pt")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "sd.pt")
    with pytest.raises(EdgeAnchorError, match="holds no yolov5 model"):
        read_yolov5_checkpoint(tmp_path / "sd.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EdgeAnchorError, match="cannot read"):
        read_yolov5_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(EdgeAnchorError, match="does not exist"):
        read_yolov5_checkpoint(tmp_path / "missing.pt")
