"""Trust: reproducible training and exact resume, DDP, no orphaned workers, no stale caches, 16-bit images,
failed checks exit 1, and property-based tests of the COCO reader and the anchor-file parser."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edgeanchor.cli import main
from edgeanchor.datasets.coco import CocoDetection, load_image
from edgeanchor.datasets.synth import generate
from edgeanchor.errors import EdgeAnchorError
from edgeanchor.evaluation.cache import load_or_build_cache
from edgeanchor.models import build_detector
from tests.helpers import build_once


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    def build(root):
        info = generate(root / "synth", num_images=24, seed=4, image_size=320, splits=(0.5, 0.25, 0.25), workers=1)
        train = json.loads(Path(info["annotations"]["train"]).read_text())
        train["images"] = train["images"][:8]
        keep = {im["id"] for im in train["images"]}
        train["annotations"] = [a for a in train["annotations"] if a["image_id"] in keep]
        (root / "train8.json").write_text(json.dumps(train))

    root = build_once(tmp_path_factory, "trust", build)
    synth = root / "synth"
    return root, str(synth / "images"), str(root / "train8.json"), str(synth / "annotations" / "val.json")


def train_argv(images, ann, out, *extra):
    return ["train", "--model", "edgeanchor:demo_ssd", "--data", images, "--ann", ann, "--batch-size", "4",
            "--warmup-iters", "1", "--no-progress", "--seed", "0", "--out", str(out), *extra]


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_seed_fixes_the_initial_weights_and_the_whole_run(small, tmp_path):
    """Same seed, same weights, whatever the number of loader workers (augmentation is drawn per sample)."""
    _, images, ann, _ = small
    for name, workers in (("a", "1"), ("b", "1"), ("w0", "0"), ("w2", "2")):
        assert main(train_argv(images, ann, tmp_path / f"{name}.pt", "--epochs", "1", "--workers", workers)) == 0
    for other in ("b", "w0", "w2"):
        assert same_weights(weights(tmp_path / "a.pt"), weights(tmp_path / f"{other}.pt")), other
    assert main(train_argv(images, ann, tmp_path / "c.pt", "--epochs", "1", "--workers", "1", "--seed", "1")) == 0
    assert not same_weights(weights(tmp_path / "a.pt"), weights(tmp_path / "c.pt"))


@pytest.mark.slow
def test_resume_is_exact_with_loader_workers(small, tmp_path, monkeypatch):
    import edgeanchor.train.loop as loop

    _, images, ann, _ = small
    argv = train_argv(images, ann, tmp_path / "r.pt", "--epochs", "2", "--workers", "1")
    assert main(train_argv(images, ann, tmp_path / "full.pt", "--epochs", "2", "--workers", "1")) == 0
    real_save = loop.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    assert main(argv) == 130
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert main([*argv, "--resume", "--seed", "1"]) == 2  # another run's settings (the last flag wins): refused
    assert main([*argv, "--resume", "--workers", "0"]) == 0  # loader workers do not change the result
    full, resumed = torch.load(tmp_path / "full.pt", weights_only=True), torch.load(tmp_path / "r.pt", weights_only=True)
    assert same_weights(full["state_dict"], resumed["state_dict"])
    assert [e["loss"] for e in full["meta"]["train"]["epochs"]] == [e["loss"] for e in resumed["meta"]["train"]["epochs"]]


def _free_port() -> int:
    """A TCP port free now, chosen by the kernel: two test suites side by side never pick the same one."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(small, tmp_path):
    """torchrun, gloo, 1 epoch on 8 images: runs, is reproducible, only rank 0 reports; it differs from the
    single-process run with the same global batch as documented in edgeanchor.train.loop."""
    _, images, ann, _ = small
    args = ["-m", "edgeanchor", *train_argv(images, ann, "OUT", "--epochs", "1", "--workers", "0",
                                                "--batch-size", "2", "--device", "cpu")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outs = []
    for k in range(2):
        out = tmp_path / f"ddp{k}.pt"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), *[str(out) if a == "OUT" else a for a in args]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.count("wrote") == 1  # rank 0 alone reports
        outs.append(weights(out))
    assert same_weights(outs[0], outs[1])
    assert main(train_argv(images, ann, tmp_path / "single.pt", "--epochs", "1", "--workers", "0")) == 0
    single = weights(tmp_path / "single.pt")
    init = build_detector("edgeanchor:demo_ssd").state_dict()
    moved = [k for k in init if init[k].is_floating_point() and not torch.equal(init[k], outs[0][k])]
    assert moved, "DDP did not train"
    assert not same_weights(outs[0], single)  # per-process BatchNorm statistics and augmentation: documented


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the worker processes")
def test_search_workers_exit_when_the_search_is_killed(small, tmp_path):
    _, images, _, val = small
    env = {**os.environ, "EDGEANCHOR_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "edgeanchor", "search", "--model", "demo", "--data", images,
                             "--ann", val, "--out", str(tmp_path / "s"), "--workers", "2", "--max-evals", "100000",
                             "--tol", "0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        workers: list[int] = []
        deadline = time.time() + 240
        while time.time() < deadline and len(workers) < 2:
            workers = [p for p in _children(proc.pid) if "spawn" in Path(f"/proc/{p}/cmdline").read_text()]
            time.sleep(0.5)
        assert len(workers) >= 2, "the search did not start its workers"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # A worker dies with its search even while still starting (worker_start ties it first, before torch);
    # the deadline only bounds how long a busy machine takes to schedule that (two suites side by side).
    deadline = time.time() + 60
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers), "scoring workers outlived their search"


WORKER_START = """
import ctypes, os, sys
import edgeanchor.subset_search.worker_start as start
assert "torch" not in sys.modules, "the worker's first module imports torch"
start.exit_with_parent(int(sys.argv[1]))
sig = ctypes.c_int(0)
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).prctl(2, ctypes.byref(sig))  # PR_GET_PDEATHSIG
print("alive", sig.value)
"""


def test_a_starting_worker_is_tied_to_its_search_before_importing_torch():
    """The scoring workers' initializer (worker_start) imports no torch, asks the kernel for SIGKILL on the
    search's death, and exits at once when the search is already gone (it died while the worker started)."""
    from edgeanchor.subset_search.evaluator import Evaluator
    from edgeanchor.subset_search.worker_start import init_worker

    assert "init_worker" in Evaluator.__init__.__code__.co_names  # what the worker pool runs first
    assert init_worker.__module__ == "edgeanchor.subset_search.worker_start"
    run = [sys.executable, "-c", WORKER_START]
    alive = subprocess.run([*run, str(os.getpid())], capture_output=True, text=True, timeout=120)
    assert alive.returncode == 0, alive.stderr[-2000:]
    expected = signal.SIGKILL if sys.platform.startswith("linux") else 0
    assert alive.stdout.split() == ["alive", str(int(expected))]
    orphan = subprocess.run([*run, str(os.getpid() + 10**7)], capture_output=True, text=True, timeout=120)
    assert orphan.returncode == 1 and "alive" not in orphan.stdout, orphan.stderr[-2000:]


def test_candidate_cache_follows_the_image_contents(small, tmp_path):
    _, images, _, val = small
    data_dir = tmp_path / "images"
    shutil.copytree(images, data_dir)
    det = build_detector("demo")
    dataset = CocoDetection(data_dir, val, num_classes=det.num_classes, image_size=det.image_size)
    messages = []
    path = tmp_path / "c.npz"
    first = load_or_build_cache(det, dataset, path, progress=False, log=messages.append)
    # the same contents with a new modification time: verified by hash and reused
    target = dataset.image_paths()[0]
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = load_or_build_cache(det, dataset, path, progress=False, log=messages.append)
    assert "reusing candidate cache" in messages[-1] and np.array_equal(first.scores, again.scores)
    # another image under the same name: the cache is stale and rebuilt
    other = dataset.image_paths()[1]
    shutil.copy(other, target)
    rebuilt = load_or_build_cache(det, dataset, path, progress=False, log=messages.append)
    assert "changed since" in messages[-1]
    n0 = slice(first.offsets[0], first.offsets[1])
    n1 = slice(rebuilt.offsets[1], rebuilt.offsets[2])
    assert np.array_equal(rebuilt.scores[slice(rebuilt.offsets[0], rebuilt.offsets[1])], rebuilt.scores[n1])
    assert not np.array_equal(first.scores[n0], rebuilt.scores[slice(rebuilt.offsets[0], rebuilt.offsets[1])])


def test_candidate_cache_sees_new_bytes_behind_a_restored_size_and_mtime(small, tmp_path):
    """Under HASH_ALWAYS_MAX_BYTES of images every image is hashed on reuse: the same size and mtime do not hide
    new contents."""
    _, images, _, val = small
    data_dir = tmp_path / "images"
    shutil.copytree(images, data_dir)
    det = build_detector("demo")
    dataset = CocoDetection(data_dir, val, num_classes=det.num_classes, image_size=det.image_size)
    messages: list[str] = []
    path = tmp_path / "c.npz"
    load_or_build_cache(det, dataset, path, progress=False, log=messages.append)
    target = dataset.image_paths()[0]
    st = target.stat()
    Image.new("RGB", Image.open(target).size, (128, 128, 128)).save(target, format="JPEG")  # a plain grey image
    assert target.stat().st_size < st.st_size
    with open(target, "ab") as fh:  # back to the old size: bytes after the JPEG's end, which decoders ignore
        fh.write(bytes(st.st_size - target.stat().st_size))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    load_or_build_cache(det, dataset, path, progress=False, log=messages.append)
    assert "changed since" in messages[-1]


@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_damaged_cache_is_rebuilt_with_a_warning(small, tmp_path, damage, caplog, monkeypatch):
    """A truncated cache still starts like ours (its first member is key.npy); an empty file is ours only in
    edgeanchor's cache folder (tests/test_trust_writers.py: elsewhere it is the user's, never replaced)."""
    _, images, _, val = small
    det = build_detector("demo")
    dataset = CocoDetection(images, val, num_classes=det.num_classes, image_size=det.image_size)
    monkeypatch.setenv("EDGEANCHOR_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "c.npz" if damage == "truncate" else tmp_path / "cache" / "candidates" / "c.npz"
    good = load_or_build_cache(det, dataset, path, progress=False, log=lambda m: None)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"")
    with caplog.at_level("WARNING", logger="edgeanchor"):
        again = load_or_build_cache(det, dataset, path, progress=False, log=lambda m: None)
    assert "empty or truncated; rebuilding it" in caplog.text
    assert np.array_equal(good.scores, again.scores)


def test_16_bit_png_loads_at_its_true_brightness(tmp_path):
    from edgeanchor.datasets.coco import _to_rgb8

    values = np.full((20, 30), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    values[:, :10] = 65535
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I")  # 16-bit greyscale, as PIL reads such PNGs
    image, size = load_image(path, None)
    assert size == (20, 30) and image.shape == (3, 20, 30)
    assert image[:, :, 10:].mean().item() == pytest.approx(128 / 255, abs=1e-6)  # 32768 / 257 -> 128
    assert image[:, :, :10].min().item() == 1.0
    assert image.mean().item() == pytest.approx((10 * 1.0 + 20 * 128 / 255) / 30, abs=1e-6)
    # a 32-bit integer image holding 16-bit values (older Pillow reads 16-bit PNGs so) is scaled the same way
    wide = Image.fromarray(values.astype(np.int32))
    assert wide.mode == "I" and np.asarray(_to_rgb8(wide))[0, 10].tolist() == [128, 128, 128]


@pytest.mark.slow
def test_a_failed_parity_check_exits_1_and_writes_nothing(small, tmp_path, capsys, monkeypatch):
    import edgeanchor.exporting as export

    _, images, _, val = small
    real = export.check_parity

    def failing(*args, **kwargs):
        result = real(*args, **kwargs)
        result["passed"] = False
        return result

    monkeypatch.setattr(export, "check_parity", failing)
    out = tmp_path / "e"
    code = main(["prune-and-export", "--model", "demo", "--data", images, "--ann", val, "--max-evals", "10",
                 "--workers", "1", "--parity-images", "1", "--matrix-iters", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [err.strip().splitlines()[-1]]
    assert "ONNX Runtime does not match PyTorch" in err
    assert not out.exists() and not list(tmp_path.glob(".e.*"))


# ---------------------------------------------------------------------------------------- property-based

@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("prop_images")
    for name, size in (("a.png", (40, 30)), ("b.jpg", (20, 20))):
        Image.new("RGB", size, (10, 20, 30)).save(root / name)
    return root


scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 120), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=4))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                           max_leaves=12)
images_st = st.lists(st.fixed_dictionaries(
    {"id": st.one_of(st.integers(0, 4), st.text(max_size=2)), "file_name": st.sampled_from(["a.png", "b.jpg", "c.png"])},
    optional={"height": st.one_of(st.integers(-1, 50), st.text(max_size=2)), "width": st.integers(-1, 50)}),
    max_size=4)
anns_st = st.lists(st.fixed_dictionaries(
    {"image_id": st.one_of(st.integers(0, 4), st.none()), "category_id": st.one_of(st.integers(0, 4), st.floats()),
     "bbox": st.one_of(st.lists(st.floats(-10, 50), min_size=4, max_size=4), json_values)},
    optional={"id": st.integers(0, 5), "iscrowd": st.integers(0, 1)}), max_size=6)
cats_st = st.lists(st.fixed_dictionaries({"id": st.one_of(st.integers(-1, 4), st.text(max_size=2))},
                                         optional={"name": st.text(max_size=3)}), max_size=4)
coco_docs = st.one_of(json_values, st.fixed_dictionaries({"images": images_st, "annotations": anns_st,
                                                          "categories": cats_st}))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=coco_docs, num_classes=st.one_of(st.none(), st.integers(1, 8)))
def test_coco_reader_loads_or_says_why(image_dir, tmp_path_factory, doc, num_classes):
    ann = tmp_path_factory.mktemp("prop_ann") / "ann.json"
    ann.write_text(json.dumps(doc))
    try:
        data = CocoDetection(image_dir, ann, num_classes=num_classes, image_size=(32, 32))
    except EdgeAnchorError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    for i in range(len(data)):  # a document that loads also reads every image it lists
        try:
            image, target = data[i]
        except EdgeAnchorError:
            continue  # e.g. declared height/width that do not match the file
        assert image.shape == (3, 32, 32) and target["boxes"].shape[1] == 4


def anchor_docs():
    pair = st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 3), st.text(max_size=2)),
                    min_size=0, max_size=3)
    reference = st.fixed_dictionaries({"base_size": st.one_of(st.floats(allow_nan=True), st.integers(-5, 400),
                                                              st.text(max_size=3)),
                                       "scale_ratios": st.lists(st.lists(pair, max_size=3), max_size=6)})
    return st.one_of(json_values, reference)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=anchor_docs())
def test_anchor_file_parser_parses_or_says_why(tmp_path_factory, doc):
    from edgeanchor.models.registry import resolve_anchors

    template = _demo_template()
    path = tmp_path_factory.mktemp("prop_anchors") / "a.json"
    path.write_text(json.dumps(doc))
    try:
        result = resolve_anchors(str(path), template)
    except EdgeAnchorError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert result.num_levels == template.num_levels and result.num_anchors > 0
    assert all(a.w > 0 and a.h > 0 and np.isfinite([a.w, a.h]).all() for lv in result.levels for a in lv.anchors)


_TEMPLATE = {}


def _demo_template():
    if "t" not in _TEMPLATE:
        _TEMPLATE["t"] = build_detector("edgeanchor:demo_ssd").anchor_set
    return _TEMPLATE["t"]


class _ExportStepReached(Exception):
    """Raised in place of prune-and-export's export step, which a search test does not need."""


@pytest.mark.slow
def test_a_search_is_not_resumed_on_other_images(small, tmp_path, capsys, monkeypatch):
    """Replacing an image's contents invalidates stored search results, not only the candidate cache.

    prune-and-export runs up to its export step, which is stubbed out: what is under test (its search, stored,
    then resumed or not) happens before it, and the other tests of this suite export."""
    import edgeanchor.pipeline as pipeline

    def export_step(*args, **kwargs):
        raise _ExportStepReached

    monkeypatch.setattr(pipeline, "write_export_folder", export_step)
    _, images, _, val = small
    data = tmp_path / "images"
    shutil.copytree(images, data)
    base = ["--model", "demo", "--data", str(data), "--ann", val, "--max-evals", "12", "--workers", "1"]
    pe = ["prune-and-export", *base, "--out", str(tmp_path / "e"), "--overwrite"]
    assert main(["search", *base, "--out", str(tmp_path / "s")]) == 0
    with pytest.raises(_ExportStepReached):
        main(pe)
    capsys.readouterr()
    with pytest.raises(_ExportStepReached):
        main(pe)
    err = capsys.readouterr().err
    assert "resuming the search" in err  # same images: the stored search is reused
    folder = next(line for line in err.splitlines() if line.startswith("searching anchor subsets")).split(" in ")[-1]
    files = [im["file_name"] for im in json.loads(Path(val).read_text())["images"]]
    shutil.copy(data / files[1], data / files[0])  # another image of the split under the first one's name
    assert main(["search", *base, "--out", str(tmp_path / "s")]) == 2
    assert "annotations or images" in capsys.readouterr().err  # the user's search folder is not resumed
    with pytest.raises(_ExportStepReached):
        main(pe)
    err = capsys.readouterr().err
    assert "resuming the search" not in err  # a new search, on the new images, in a new folder
    assert folder not in err and "searching anchor subsets" in err
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".e.*"))  # the stubbed step left no build
