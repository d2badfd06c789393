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
