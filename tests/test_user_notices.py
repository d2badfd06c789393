"""What a user notices outside the results: a fast ``--help`` (no torch), OpenCV kept quiet, a reused search said so."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgeanchor.cli import SUBCOMMANDS

NO_TORCH_AFTER_HELP = """
import sys
from edgeanchor.cli import main
code = main(sys.argv[1:])
print(code, 'torch' in sys.modules, 'torchvision' in sys.modules)
"""


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_help_imports_no_torch(command):
    # In a fresh interpreter: building every parser (settings -> argparse) and printing the help must not
    # import torch, which costs seconds and hundreds of MB.
    argv = ([command] if command else []) + ["--help"]
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_AFTER_HELP, *argv], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: edgeanchor" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "0 False False"


def test_train_help_names_every_data_format(capsys):
    from edgeanchor.cli import main

    assert main(["--help"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("train"))
    assert "COCO" in line and "YOLO" in line
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "COCO, YOLO (data.yaml) or Pascal VOC data" in text and "VOCdevkit" in text


# ------------------------------------------------------------------------------------------ OpenCV's logger

def tiny_conv_graph(path) -> None:
    """A one-Conv ONNX graph: (1, 3, 4, 4) -> (1, 2, 4, 4), every weight 1."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["images", "w"], ["out"])], "tiny",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 4, 4])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_opencv_runs_a_graph_without_its_log_lines(tmp_path, capfd, monkeypatch):
    import numpy as np

    from edgeanchor.runtimes import open_graph

    cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed (pip install opencv-python-headless)")
    monkeypatch.delenv("OPENCV_LOG_LEVEL", raising=False)
    tiny_conv_graph(tmp_path / "tiny.onnx")
    before = cv2.utils.logging.getLogLevel()
    capfd.readouterr()
    out = open_graph("opencv", tmp_path / "tiny.onnx").run({"images": np.ones((1, 3, 4, 4), np.float32)})
    err = capfd.readouterr().err  # OpenCV writes to file descriptor 2
    assert out["out"].shape == (1, 2, 4, 4) and np.all(out["out"] == 3.0)  # 3 channels x weight 1
    assert "WARN" not in err and "setPreferableTarget" not in err, err
    assert cv2.utils.logging.getLogLevel() == before  # restored for whoever uses OpenCV next
    if int(cv2.__version__.split(".")[0]) >= 5:  # the control: OpenCV 5 says it when driven directly
        net = cv2.dnn.readNetFromONNX(str(tmp_path / "tiny.onnx"))
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        assert "setPreferableTarget" in capfd.readouterr().err


def test_opencv_log_level_is_lowered_to_errors_and_restored(monkeypatch):
    from edgeanchor.runtimes.opencv import quiet_logs

    cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed (pip install opencv-python-headless)")
    logging = cv2.utils.logging
    monkeypatch.delenv("OPENCV_LOG_LEVEL", raising=False)
    previous = logging.getLogLevel()
    try:
        logging.setLogLevel(logging.LOG_LEVEL_INFO)
        with pytest.raises(RuntimeError), quiet_logs(cv2):
            assert logging.getLogLevel() == logging.LOG_LEVEL_ERROR  # errors still print
            raise RuntimeError("restored even when the block fails")
        assert logging.getLogLevel() == logging.LOG_LEVEL_INFO
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)  # quieter already: kept
        with quiet_logs(cv2):
            assert logging.getLogLevel() == logging.LOG_LEVEL_SILENT
        logging.setLogLevel(logging.LOG_LEVEL_DEBUG)
        monkeypatch.setenv("OPENCV_LOG_LEVEL", "DEBUG")  # the user asked for OpenCV's lines: left alone
        with quiet_logs(cv2):
            assert logging.getLogLevel() == logging.LOG_LEVEL_DEBUG
    finally:
        logging.setLogLevel(previous)
