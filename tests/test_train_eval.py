"""Training, resuming, fine-tuning a pruned model, and COCO evaluation, on tiny data."""

import json

import pytest
import torch

from edgeanchor.cli import main
from edgeanchor.datasets.coco import CocoDetection, detection_collate
from edgeanchor.models import build_detector, load_checkpoint, save_checkpoint
from edgeanchor.pruning import prune
from edgeanchor.train import loop
from edgeanchor.train.losses import detection_loss
from tests.helpers import shared_synth_split

SIZE = ["--image-size", "128", "128"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return shared_synth_split(tmp_path_factory, "synth", num_images=20, seed=3, splits=(0.6, 0.2, 0.2), image_size=128)


def train_args(synth, out, *extra):
    images, anns = synth
    return ["train", "--data", images, "--ann", anns["train"], "--val-ann", anns["val"], "--epochs", "2",
            "--batch-size", "4", "--warmup-iters", "1", "--workers", "0", "--no-progress", "--out", str(out), *extra]


@pytest.mark.slow
def test_a_few_steps_lower_the_loss(synth):
    images, anns = synth
    det = build_detector("edgeanchor:demo_ssd", image_size=(128, 128))
    data = CocoDetection(images, anns["train"], num_classes=det.num_classes, image_size=det.image_size)
    batch, targets = detection_collate([data[i] for i in range(4)])
    opt = torch.optim.AdamW(det.parameters(), lr=3e-3)
    det.train()
    losses = []
    for _ in range(8):
        loss = sum(detection_loss(det, det.head(det.backbone(batch)), targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.slow  # a ResNet-50 RetinaNet forward and backward
def test_retinanet_loss_is_finite_and_differentiable():
    det = build_detector("torchvision:retinanet_resnet50_fpn", num_classes=4, image_size=(96, 96))
    det.train()
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0]]), "labels": torch.tensor([2])}]
    losses = detection_loss(det, det.head(det.backbone(torch.rand(1, 3, 96, 96))), targets)
    assert set(losses) == {"classification", "bbox_regression"}
    sum(losses.values()).backward()
    assert det.cls_logits.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_train_cli_writes_a_rebuildable_checkpoint(synth, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(train_args(synth, out, "--model", "edgeanchor:demo_ssd", *SIZE, "--json")) == 0
    record = json.loads(capsys.readouterr().out)["record"]
    assert len(record["epochs"]) == 2 and "mAP" in record["epochs"][-1]["val"]
    det = load_checkpoint(out)
    assert det.arch == "edgeanchor:demo_ssd" and det.image_size == (128, 128)
    assert "train_state" not in torch.load(out, weights_only=True)  # finished runs keep no optimizer state


@pytest.mark.slow
def test_resume_continues_an_interrupted_run(synth, tmp_path, monkeypatch, capsys):
    out = tmp_path / "m.pt"
    real = loop._train_epoch
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "_train_epoch", interrupted)
    assert main(train_args(synth, out, "--model", "edgeanchor:demo_ssd", *SIZE)) == 130
    state = torch.load(out, weights_only=True)["train_state"]
    assert state["epoch"] == 0
    monkeypatch.setattr(loop, "_train_epoch", real)
    capsys.readouterr()
    assert main(train_args(synth, out, "--resume", "--json")) == 0
    record = json.loads(capsys.readouterr().out)["record"]
    assert [e["epoch"] for e in record["epochs"]] == [0, 1]


@pytest.mark.slow
def test_init_from_a_pruned_checkpoint_keeps_its_anchors(synth, tmp_path):
    det = build_detector("edgeanchor:demo_ssd", image_size=(128, 128))
    keep = [a.id for lv in det.anchor_set.levels[:3] for a in lv.anchors[:2]]
    pruned_path, out = tmp_path / "pruned.pt", tmp_path / "ft.pt"
    save_checkpoint(prune(det, keep), pruned_path)
    assert main(train_args(synth, out, "--init", str(pruned_path))) == 0
    tuned = load_checkpoint(out)
    assert tuned.anchor_set.ids == sorted(keep)
    assert tuned.active_levels == [0, 1, 2]


def test_train_bad_input(synth, tmp_path, capsys):
    images, anns = synth
    det = build_detector("edgeanchor:demo_ssd", image_size=(128, 128))
    ckpt = tmp_path / "d.pt"
    save_checkpoint(det, ckpt)
    assert main(train_args(synth, tmp_path / "x.pt", "--init", str(ckpt), "--model", "torchvision:ssd300_vgg16")) == 2
    assert "edgeanchor:demo_ssd checkpoint but --model is torchvision:ssd300_vgg16" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    argv = train_args(synth, tmp_path / "y.pt", "--model", "edgeanchor:demo_ssd", *SIZE)
    argv[argv.index("--ann") + 1] = str(empty)
    assert main(argv) == 2
    assert "lists no images" in capsys.readouterr().err
    no_objects = tmp_path / "none.json"
    data = json.loads(open(anns["train"]).read())
    no_objects.write_text(json.dumps({**data, "annotations": []}))
    argv[argv.index("--ann") + 1] = str(no_objects)
    assert main(argv) == 2
    assert "no usable object annotations" in capsys.readouterr().err
    assert not (tmp_path / "y.pt").exists()


@pytest.mark.slow
def test_evaluate_matches_pycocotools_on_written_detections(synth, tmp_path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns = synth
    out = tmp_path / "m.pt"
    assert main(train_args(synth, out, "--model", "edgeanchor:demo_ssd", *SIZE)) == 0
    dets_path = tmp_path / "dets.json"
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", images, "--ann", anns["test"],
                 "--detections", str(dets_path), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"mAP", "mAP50", "mAP75"} <= set(metrics)
    gt = COCO(anns["test"])
    ev = COCOeval(gt, gt.loadRes(str(dets_path)), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert metrics["num_detections"] == len(json.loads(dets_path.read_text())) > 0
    assert metrics["mAP"] == pytest.approx(max(ev.stats[0], 0.0), abs=1e-6)
    assert metrics["mAP50"] == pytest.approx(max(ev.stats[1], 0.0), abs=1e-6)
