"""The shipped demo checkpoints: what they are, and that they are complete runs of `edgeanchor train`."""

import pytest
import torch

from edgeanchor.models.registry import SHIPPED, build_detector


def _meta(name):
    return torch.load(SHIPPED[name], map_location="cpu", weights_only=False)["meta"]


@pytest.mark.parametrize("name, anchors_per_level", [("demo", 6), ("demo-over", 15)])
def test_shipped_ssd_demos_are_finished_30_epoch_runs(name, anchors_per_level):
    det = build_detector(name)
    # demo: 5 levels x 6 anchors = 30; demo-over: overanchorized 3 scales x 5 ratios = 15 per level, 75 in all
    assert [len(level.anchors) for level in det.anchor_set.levels] == [anchors_per_level] * 5
    meta = _meta(name)
    assert meta["command"] == "edgeanchor train" and meta["seed"] == 0 and meta["init"] is None
    train = meta["train"]
    # the README's schedule, run to the end (never a half-trained model): 30 epochs, every epoch recorded
    assert train["config"]["epochs"] == 30 and train["config"]["seed"] == 0
    assert [e["epoch"] for e in train["epochs"]] == list(range(30))


def test_demo_over_differs_from_demo_only_in_its_anchors():
    over, demo = build_detector("demo-over"), build_detector("demo")
    assert over.anchor_set.image_size == demo.anchor_set.image_size
    assert [lv.feature_size for lv in over.anchor_set.levels] == [lv.feature_size for lv in demo.anchor_set.levels]
    ratios = {round(a.h / a.w, 3) for lv in over.anchor_set.levels for a in lv.anchors}
    assert len(ratios) == 5  # five aspect ratios (h/w) on every level
