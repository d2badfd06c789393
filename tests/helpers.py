"""Helpers shared by tests."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock

DEMO_SPLIT = {"num_images": 30, "seed": 21, "splits": (0.2, 0.4, 0.4)}


def randomize_head_biases(tv_model, std: float = 2.0) -> None:
    """Give a random-weight torchvision detector confident, varied scores.

    Fresh heads score every class near the prior (SSD ~1/K, RetinaNet 0.01),
    below or at the score thresholds; random biases on the final classifier
    convolutions give a realistic spread of candidates to compare.
    """
    g = torch.Generator().manual_seed(1)
    head = tv_model.head.classification_head
    convs = [head.cls_logits] if hasattr(head, "cls_logits") else [
        [m for m in mod.modules() if isinstance(m, torch.nn.Conv2d)][-1] for mod in head.module_list
    ]
    with torch.no_grad():
        for conv in convs:
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * std)


def synth_split(tmp_path_factory, name: str, *, num_images: int, seed: int, splits, image_size: int = 320):
    """A small synthetic data set in a fresh temporary folder: (image folder, {split: annotation file})."""
    from edgeanchor.datasets.synth import generate

    info = generate(tmp_path_factory.mktemp(name), num_images=num_images, seed=seed, image_size=image_size,
                    splits=splits, workers=1)
    return info["image_dir"], info["annotations"]


def _session_root(tmp_path_factory) -> Path:
    """A folder of this test session that every xdist worker of it shares (and no other session)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    root.mkdir(exist_ok=True)
    return root


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def build_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``name``, built by ``build(folder)`` once per test session, shared by all xdist workers.

    The first worker to ask builds it under a file lock, with a cache of its own (:func:`build_cache`, so a
    test can reuse the build's candidate cache and search); the others wait and reuse it. A failed build
    leaves no mark, so the next asker retries (and fails the same way, in its own test).
    """
    root = _session_root(tmp_path_factory)
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir()
            state = torch.get_rng_state()
            torch.manual_seed(0)
            try:
                with _env("EDGEANCHOR_CACHE", str(build_cache(folder))):
                    build(folder)
            finally:
                torch.set_rng_state(state)
            done.write_text("built\n")
    return folder


def build_cache(folder: Path) -> Path:
    """The ``EDGEANCHOR_CACHE`` that :func:`build_once` gave the build of ``folder`` (candidate caches, searches)."""
    return folder.with_name(f"{folder.name}.cache")


def copy_of(folder: Path, tmp_path: Path) -> Path:
    """A private copy of a shared folder, for a test that changes it."""
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def demo_export_args(split, out, *extra) -> list[str]:
    """prune-and-export of the demo on :func:`demo_split`: searches val, reports on test."""
    images, anns = split
    return ["prune-and-export", "--model", "demo", "--data", images, "--ann", anns["val"], "--report-ann",
            anns["test"], "--max-evals", "60", "--workers", "1", "--parity-images", "2", "--out", str(out), *extra]


def shared_synth_split(tmp_path_factory, name: str, *, num_images: int, seed: int, splits, image_size: int = 320):
    """:func:`synth_split`, built once per test session and shared by all xdist workers. Read-only."""
    from edgeanchor.datasets.synth import generate

    def build(folder: Path) -> None:
        generate(folder / "synth", num_images=num_images, seed=seed, image_size=image_size, splits=splits, workers=1)

    folder = build_once(tmp_path_factory, f"split-{name}", build) / "synth"
    names = [s for s in ("train", "val", "test") if (folder / "annotations" / f"{s}.json").is_file()]
    return str(folder / "images"), {s: str(folder / "annotations" / f"{s}.json") for s in names}
