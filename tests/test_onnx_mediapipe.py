"""MediaPipe's box coding ("linear_size"), on hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from edgeanchor.errors import EdgeAnchorError
from edgeanchor.models.checkpoint_file import check_rule_json
from edgeanchor.postprocess import PostprocessRule, candidates, decode, linear_size_decode

# ---- the decode, by hand ----------------------------------------------------------------------------------


def rule(box_coding: str, weights=(10.0, 10.0, 5.0, 5.0)) -> PostprocessRule:
    return PostprocessRule(score_fn="sigmoid", topk_scope="class", score_thresh=0.5, topk_candidates=100,
                           nms_thresh=0.3, detections_per_img=10, box_weights=weights, clip=False,
                           box_coding=box_coding)


def test_linear_size_decode_hand_worked():
    anchors = torch.tensor([[0.0, 0.0, 128.0, 128.0], [10.0, 20.0, 30.0, 60.0]])
    deltas = torch.tensor([[16.0, -32.0, 64.0, 32.0], [1.0, -2.0, 5.0, 2.5]])
    # box 0, weights 128 (MediaPipe's x_scale ... h_scale at 128 x 128): anchor centre (64, 64), size 128:
    #   cx = 64 + 16 / 128 * 128 = 80, cy = 64 - 32 / 128 * 128 = 32, w = 64 / 128 * 128 = 64, h = 32
    #   -> (80 - 32, 32 - 16, 80 + 32, 32 + 16) = (48, 16, 112, 48)
    got = linear_size_decode(deltas[:1], anchors[:1], (128.0, 128.0, 128.0, 128.0))
    assert got.tolist() == [[48.0, 16.0, 112.0, 48.0]]
    # box 1, weights (10, 10, 5, 5): anchor centre (20, 40), size (20, 40):
    #   cx = 20 + 1 / 10 * 20 = 22, cy = 40 - 2 / 10 * 40 = 32, w = 5 / 5 * 20 = 20, h = 2.5 / 5 * 40 = 20
    #   -> (12, 22, 32, 42)
    torch.testing.assert_close(decode(deltas[1:], anchors[1:], rule("linear_size")),
                               torch.tensor([[12.0, 22.0, 32.0, 42.0]]), rtol=0, atol=1e-5)
    # the same deltas with "centre_size" (torchvision's BoxCoder): w = 20 * exp(5 / 5), h = 40 * exp(2.5 / 5)
    w, h = 20 * math.e, 40 * math.exp(0.5)
    torch.testing.assert_close(decode(deltas[1:], anchors[1:], rule("centre_size")),
                               torch.tensor([[22 - w / 2, 32 - h / 2, 22 + w / 2, 32 + h / 2]]), rtol=1e-6, atol=1e-4)


def test_candidates_decode_with_the_rules_box_coding():
    anchors = torch.tensor([[0.0, 0.0, 128.0, 128.0], [10.0, 20.0, 30.0, 60.0]])
    deltas = torch.tensor([[16.0, -32.0, 64.0, 32.0], [1.0, -2.0, 5.0, 2.5]])
    logits = torch.tensor([[2.0], [-3.0]])  # sigmoid 0.88 and 0.047: only box 0 is above 0.5
    cands = candidates(logits, deltas, anchors, (128, 128), rule("linear_size", (128.0, 128.0, 128.0, 128.0)))
    assert cands.box_index.tolist() == [0] and cands.boxes_xyxy.tolist() == [[48.0, 16.0, 112.0, 48.0]]


def test_rule_json_reads_rules_written_before_box_coding(tmp_path):
    new = rule("linear_size")
    assert new.to_json()["box_coding"] == "linear_size"
    assert PostprocessRule.from_json(new.to_json()) == new
    old = {k: v for k, v in rule("centre_size").to_json().items() if k not in ("box_coding", "clip")}
    check_rule_json(old, tmp_path / "ckpt.pt", "postprocess")  # optional, as clip is
    assert PostprocessRule.from_json(old).box_coding == "centre_size"
    with pytest.raises(EdgeAnchorError, match=r"postprocess\.box_coding.*one of centre_size, linear_size"):
        check_rule_json({**new.to_json(), "box_coding": "exp"}, tmp_path / "ckpt.pt", "postprocess")
