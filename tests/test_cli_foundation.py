"""`edgeanchor inspect` and `edgeanchor prune` end to end, and their bad-input errors."""

import json

import pytest
import torch

from edgeanchor.cli import main
from edgeanchor.models import build_detector, load_checkpoint


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def expect_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err
    return err


@pytest.mark.slow  # builds the VGG-16 SSD300 at 81 classes
def test_inspect_ssd300_json(capsys):
    info = run_json(capsys, ["inspect", "--model", "torchvision:ssd300_vgg16", "--num-classes", "81", "--json"])
    assert info["num_boxes"] == 8732 and info["head_macs"] == 4_231_319_040
    assert [lv["num_anchors"] for lv in info["levels"]] == [4, 6, 6, 6, 4, 4]
    assert [lv["feature_size"] for lv in info["levels"]] == [[38, 38], [19, 19], [10, 10], [5, 5], [3, 3], [1, 1]]
    assert info["levels"][1]["anchors"][0]["id"] == 4  # global ids are level-major
    assert info["total_macs"] > info["head_macs"]


def test_inspect_table(capsys):
    assert main(["inspect", "--model", "edgeanchor:demo_ssd"]) == 0
    out = capsys.readouterr().out
    assert "head MACs" in out and "12804 boxes" in out


def test_inspect_with_reference_anchor_file(tmp_path, capsys):
    # the demo has 5 levels; keep one anchor on level 0 and two on level 2
    path = tmp_path / "ref.json"
    path.write_text(json.dumps({"base_size": 320, "scale_ratios": [[[0.05, 1.0]], [], [[0.25, 1.0], [0.25, 2.0]], [], []]}))
    info = run_json(capsys, ["inspect", "--model", "edgeanchor:demo_ssd", "--anchors", str(path), "--json"])
    assert [lv["num_anchors"] for lv in info["levels"]] == [1, 0, 2, 0, 0]
    assert info["num_boxes"] == 40 * 40 + 10 * 10 * 2
    assert info["levels"][2]["anchors"][1]["ratio_hw"] == pytest.approx(2.0)


def test_prune_cli_by_ids_and_file(tmp_path, capsys):
    out = tmp_path / "p.pt"
    info = run_json(capsys, ["prune", "--model", "edgeanchor:demo_ssd", "--remove", "0,1,24,25,26,27,28,29",
                             "--out", str(out), "--json"])
    assert info["num_anchors"] == [30, 22]
    assert info["num_boxes"][1] == 12804 - 2 * 1600 - 54
    det = load_checkpoint(out)
    assert det.active_levels == [0, 1, 2, 3]
    # the written anchor file prunes the same model to the same set
    out2 = tmp_path / "q.pt"
    run_json(capsys, ["prune", "--model", "edgeanchor:demo_ssd", "--anchors", info["anchors"], "--out", str(out2), "--json"])
    assert load_checkpoint(out2).anchor_set == det.anchor_set


def test_unknown_model(capsys):
    expect_error(capsys, ["inspect", "--model", "yolo"], "unknown model 'yolo'", "torchvision:ssd300_vgg16")


def test_malformed_anchor_file(tmp_path, capsys):
    path = tmp_path / "a.json"
    path.write_text("{not json")
    expect_error(capsys, ["inspect", "--model", "edgeanchor:demo_ssd", "--anchors", str(path)], "not valid JSON")


def test_anchor_file_with_wrong_level_count(tmp_path, capsys):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"base_size": 320, "scale_ratios": [[[0.1, 1.0]]]}))
    expect_error(capsys, ["inspect", "--model", "edgeanchor:demo_ssd", "--anchors", str(path)], "1 levels", "has 5")


def test_keep_set_that_removes_everything(tmp_path, capsys):
    ids = ",".join(str(i) for i in range(30))
    out = tmp_path / "p.pt"
    expect_error(capsys, ["prune", "--model", "edgeanchor:demo_ssd", "--remove", ids, "--out", str(out)],
                 "removes every anchor")
    assert not out.exists()


def test_weights_that_do_not_fit(tmp_path, capsys):
    path = tmp_path / "w.pth"
    torch.save(build_detector("edgeanchor:demo_ssd", num_classes=3).state_dict(), path)
    expect_error(capsys, ["inspect", "--model", "edgeanchor:demo_ssd", "--weights", str(path)], "do not fit the model")
    expect_error(capsys, ["inspect", "--model", "edgeanchor:demo_ssd", "--weights", str(tmp_path / "nope.pth")],
                 "does not exist")


def test_torchvision_state_dict_loads(tmp_path):
    from edgeanchor.models.registry import ARCHS

    tv_model = ARCHS["torchvision:ssdlite320_mobilenet_v3_large"].builder(4, (320, 320))
    path = tmp_path / "w.pth"
    torch.save(tv_model.state_dict(), path)
    det = build_detector("torchvision:ssdlite320_mobilenet_v3_large", num_classes=4, weights=path)
    assert torch.equal(det.cls_heads[0][1].weight, tv_model.head.classification_head.module_list[0][1].weight)


def test_a_torch_command_without_torch_is_one_line(tmp_path):
    """On a device install (requirements-device.txt: no torch) `inspect` printed a ModuleNotFoundError
    traceback and exited 1; torch is hidden here from a fresh interpreter as pip would leave it out."""
    import subprocess
    import sys

    hide = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "from edgeanchor.cli import main\n"
            "sys.exit(main(['inspect', '--model', 'demo']))\n")
    done = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-800:]
    assert done.stderr.strip() == ("error: edgeanchor inspect needs torch, which is not installed; pip install "
                                   "edgeanchor with its dependencies (bench, evaluate --export and regress --export "
                                   "run without it)")
