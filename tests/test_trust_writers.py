"""Trust, round 3 (issue 24), the writers: nothing of the user's is lost.

- ``overwrite`` replaces only what edgeanchor wrote (the build's manifest, plus what bench adds later);
  a folder holding anything else is refused in one line naming the first foreign file;
- a cache path holding a file of the user's is never rebuilt;
- a ``kill -9`` at any step of the final swap leaves the export restorable, and the next run works;
- a second run into the same output stops at once;
- a full disk is one ``error:`` line naming the path, with nothing half-written left;
- outputs that cannot be written are found before the work.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edgeanchor.cli import main
from edgeanchor.errors import EdgeAnchorError
from edgeanchor.evaluation.cache import check_cache_file
from edgeanchor.exporting.folder import ExportFolder, check_output
from edgeanchor.io import (
    KILL_AT_ENV,
    MANIFEST,
    atomic_dir,
    atomic_path,
    output_lock,
    read_manifest,
    write_json,
)
from tests.test_export_folder import write_minimal

REPO = Path(__file__).resolve().parents[1]


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>")
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def export(tmp_path):
    """A small export folder, built once per test (no search: both variants are the demo)."""
    out = tmp_path / "exp"
    with ExportFolder.build(out) as folder:
        write_minimal(folder, tmp_path)
    return out


def build_never_starts(out, **kwargs):
    """ExportFolder.build must refuse before its block runs (before any model work)."""
    with ExportFolder.build(out, **kwargs):
        raise AssertionError("the build started")


# ------------------------------------------------------------------------------- the manifest and overwrite


def test_the_manifest_names_exactly_what_the_build_wrote(export):
    listed = set()
    for dirpath, dirnames, filenames in os.walk(export):  # an independent listing
        rel = Path(dirpath).relative_to(export)
        listed |= {(rel / n).as_posix() for n in dirnames + filenames}
    assert read_manifest(export) == listed - {MANIFEST}
    assert {"report.json", "report.md", "pruned.pt", "baseline", "baseline/baseline.pt", "data/annotations.json"} \
        <= read_manifest(export)


@pytest.mark.parametrize("plant, foreign", [
    (lambda out: (out / "NOTES.md").write_text("notes\n"), "NOTES.md"),
    (lambda out: (out / "baseline" / "drafts").mkdir(), "baseline/drafts"),
    (lambda out: (out / "data" / "mine.csv").write_text("1,2\n"), "data/mine.csv"),
])
def test_overwrite_refuses_an_export_holding_a_file_it_did_not_write(export, plant, foreign):
    plant(export)
    before = tree_hashes(export)
    message = f"holds {foreign}, which edgeanchor did not write"
    for overwrite in (True, False):  # said first: passing `overwrite` would not help
        with pytest.raises(EdgeAnchorError, match=message):
            check_output(export, overwrite=overwrite)
    with pytest.raises(EdgeAnchorError, match=message):
        build_never_starts(export, overwrite=True)
    assert tree_hashes(export) == before
    assert sorted(p.name for p in export.parent.iterdir()) == ["exp"]  # no lock or build folder left


def test_a_copied_report_does_not_make_a_folder_ours(export, tmp_path):
    """The issue's case: `cp exp/report.json mine/ && echo draft > mine/thesis.tex`, then --overwrite."""
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(export / "report.json", mine / "report.json")
    (mine / "thesis.tex").write_text("draft\n")
    with pytest.raises(EdgeAnchorError, match="holds thesis.tex, which edgeanchor did not write"):
        build_never_starts(mine, overwrite=True)
    assert (mine / "thesis.tex").read_text() == "draft\n"


def test_files_bench_adds_later_are_ours(export, tmp_path):
    write_json(export / "bench_onnxruntime.json", {"runtime": "onnxruntime"})
    (export / "bench_onnxruntime.png").write_bytes(b"\x89PNG")
    engine = export / "baseline" / "tensorrt" / "model_trt_fp16_trt10.3.0_gpu.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"engine")
    (export / "timing.cache").write_bytes(b"cache")
    (export / ".bench_onnxruntime.json.k3j_x.tmp").write_text("{")  # a killed bench's temporary file
    with ExportFolder.build(export, overwrite=True) as folder:
        write_minimal(folder, tmp_path)
    assert not (export / "bench_onnxruntime.json").exists() and (export / "report.json").is_file()


def test_a_folder_from_before_manifests_is_ours_when_every_file_is_a_layout_name(export, tmp_path):
    (export / MANIFEST).unlink()
    (export / "data" / "images" / "sub").mkdir(parents=True)
    (export / "data" / "images" / "sub" / "0001.jpg").write_bytes(b"jpeg")  # bundled images keep their names
    check_output(export, overwrite=True)
    (export / "NOTES.md").write_text("notes\n")  # not a name of the layout
    with pytest.raises(EdgeAnchorError, match="holds NOTES.md"):
        check_output(export, overwrite=True)
    (export / "NOTES.md").unlink()
    (export / "front").mkdir()  # a search's folder, never part of an export
    with pytest.raises(EdgeAnchorError, match="holds front,"):
        check_output(export, overwrite=True)


def test_a_crafted_manifest_reaches_nothing_outside_the_folder(export, tmp_path):
    """Manifest entries are only compared with what is found inside; a link is never ours, even if listed."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    entries = sorted(read_manifest(export) | {"../victim.txt", str(victim), "link", "link/x"})
    write_json(export / MANIFEST, {"format": "edgeanchor.manifest/1", "entries": entries})
    (export / "link").symlink_to(tmp_path)
    with pytest.raises(EdgeAnchorError, match="holds link,"):
        check_output(export, overwrite=True)
    (export / "link").unlink()
    with ExportFolder.build(export, overwrite=True) as folder:  # the rest is ours: replaced
        write_minimal(folder, tmp_path)
    assert victim.read_text() == "precious\n" and sorted(p.name for p in tmp_path.iterdir())[-2:] == [
        "exp", "victim.txt"]


def test_a_sub_folder_that_cannot_be_listed_is_not_ours(export, monkeypatch):
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "baseline":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(EdgeAnchorError, match=f"cannot read {export / 'baseline'}: Permission denied; refusing"):
        check_output(export, overwrite=True)


def test_a_manifest_that_is_not_ours_makes_nothing_ours(export):
    (export / MANIFEST).write_text("[1, 2]")
    with pytest.raises(EdgeAnchorError, match="holds anchors.json"):  # the first file, in name order
        check_output(export, overwrite=True)


# ------------------------------------------------------------------------------- one run per output


@contextmanager
def lock_held_elsewhere(out: Path) -> Iterator[None]:
    """Another process holds ``out``'s output lock while the block runs; it then lets go and must exit 0."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from edgeanchor.io import output_lock\n"
         f"with output_lock({str(out)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0


def test_a_second_run_into_the_same_output_stops_before_any_work(tmp_path):
    out = tmp_path / "exp"
    with lock_held_elsewhere(out):
        with pytest.raises(EdgeAnchorError, match=f"another edgeanchor run is writing {out} now"):
            build_never_starts(out)
    assert list(tmp_path.iterdir()) == []  # the holder removed its lock file; nothing else was written
    with ExportFolder.build(out) as folder:  # free again
        write_minimal(folder, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


def test_the_lock_is_taken_again_on_the_file_now_at_the_path(tmp_path):
    """A lock on a lock file its holder has unlinked guards nothing: the next holder relocks the new file."""
    out = tmp_path / "exp"
    with output_lock(out):
        assert (tmp_path / ".exp.lock").is_file()
        with pytest.raises(EdgeAnchorError, match="another edgeanchor run"):
            with output_lock(out):
                pass
    assert not (tmp_path / ".exp.lock").exists()


# ------------------------------------------------------------------------------- kill -9 during the swap

TINY_BUILD = """
import json, sys
from edgeanchor.exporting.folder import FORMAT, ExportFolder
out, run = sys.argv[1], sys.argv[2]
with ExportFolder.build(out, overwrite=True) as folder:
    (folder.root / "report.json").write_text(json.dumps({"format": FORMAT, "format_version": 1, "data": "imgs",
                                                         "report_ann": "ann.json", "image_size": [8, 8]}))
    (folder.root / "model.onnx").write_text(run)
    folder._report = {}
"""


def tiny_build(out: Path, run: str, *, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if kill_at:
        env[KILL_AT_ENV] = kill_at
    return subprocess.run([sys.executable, "-c", TINY_BUILD, str(out), run], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("step", ["old-aside", "build-into-place", "remove-old"])
def test_kill_9_at_any_step_of_the_swap_loses_nothing(tmp_path, step):
    """A real SIGKILL (the process kills itself at the step, through the test hook), then the next run."""
    out = tmp_path / "exp"
    (tmp_path / "notes.txt").write_text("the user's\n")
    assert tiny_build(out, "1").returncode == 0
    killed = tiny_build(out, "2", kill_at=step)
    assert killed.returncode == -9, killed.stderr[-2000:]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".exp.")]
    assert leftovers, "the kill left no trace: the hook did not fire at the swap"
    # a reader finds the export (the previous one if the swap was cut before the new one was in place)
    expected = "2" if step == "remove-old" else "1"
    assert (ExportFolder.open(out).root / "model.onnx").read_text() == expected
    # the next run decides after the restore: without overwrite one line, with it a clean swap
    with pytest.raises(EdgeAnchorError, match="pass `overwrite`"):
        build_never_starts(out)
    assert tiny_build(out, "3").returncode == 0
    assert (out / "model.onnx").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "notes.txt"]  # no build, old or lock left
    assert (tmp_path / "notes.txt").read_text() == "the user's\n"


# ------------------------------------------------------------------------------- caches of the user's


@pytest.mark.parametrize("content", [b"PK\x03\x04partial", b"", b"some notes\n", bytes(range(256))],
                         ids=["half-downloaded-zip", "empty", "text", "binary"])
def test_a_cache_path_holding_a_users_file_is_refused(tmp_path, content):
    path = tmp_path / "download.zip"
    path.write_bytes(content)
    with pytest.raises(EdgeAnchorError, match="is not a candidate cache written by edgeanchor; refusing"):
        check_cache_file(path)
    assert path.read_bytes() == content


def test_a_damaged_cache_in_edgeanchors_cache_folder_is_ours(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEANCHOR_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "cache" / "candidates" / "x.npz"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert check_cache_file(path)[0] == "broken"


def test_search_refuses_a_users_file_as_cache_before_the_model_runs(tmp_path, capsys, monkeypatch):
    import edgeanchor.evaluation.cache as cache

    monkeypatch.setattr(cache, "build_cache", lambda *a, **k: pytest.fail("the candidate pass ran"))
    (tmp_path / "notes.txt").write_text("")
    before = tree_hashes(tmp_path)
    code = main(["search", "--model", "demo", "--cache", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        f"error: {tmp_path / 'notes.txt'} exists and is not a candidate cache written by edgeanchor; refusing to "
        "replace it: choose another cache path or remove the file yourself"]
    assert tree_hashes(tmp_path) == before


# ------------------------------------------------------------------------------- outputs found unwritable first

def test_a_checkpoint_and_its_anchor_file_are_replaced_as_a_pair(tmp_path, monkeypatch):
    """ea.save with overwrite: a full disk while writing the anchor file leaves the old pair, both files."""
    import edgeanchor as ea
    import edgeanchor.io as eio
    from edgeanchor.models import build_detector

    det = build_detector("demo")
    ea.save(det, tmp_path / "p.pt")
    before = tree_hashes(tmp_path)
    monkeypatch.setattr(eio, "write_json", _enospc)
    with pytest.raises(EdgeAnchorError, match=f"^cannot write {tmp_path / 'p.anchors.json'}: no space left"):
        ea.save(det, tmp_path / "p.pt", overwrite=True, meta={"run": 2})  # other bytes than the first
    assert tree_hashes(tmp_path) == before  # the checkpoint was not replaced without its anchor file


def _small_tmpfs_works() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-r", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _small_tmpfs_works(), reason="no user namespace to mount a small tmpfs in")

# Runs each command with its outputs on a tmpfs mounted by the caller (read-only, or 64 KiB), and prints, per
# command, the exit code, stderr and what was left on the tmpfs. The candidate pass and the data loader fail
# the run if PASS_MUST_NOT_RUN is set (an output must be refused before them).
RUN_WRITERS = """
import contextlib, io, json, os, sys
from edgeanchor.cli import main
from edgeanchor.models import build_detector
mnt, data, work = sys.argv[1], sys.argv[2], sys.argv[3]
if os.environ.get("PASS_MUST_NOT_RUN"):
    import edgeanchor.evaluation.cache as cache, edgeanchor.evaluation.predict as predict
    def ran(*args, **kwargs):
        raise SystemExit("the model ran over the data before the output was checked")
    cache.build_cache = predict.make_loader = ran
D = ["--data", f"{data}/images", "--ann", f"{data}/annotations/val.json"]
S = ["--max-evals", "3", "--workers", "1"]
runs = {
    "prune-out": ["prune", "--model", "demo", "--keep", "0,1", "--out", f"{mnt}/p.pt"],
    "evaluate-detections": ["evaluate", "--model", "demo", *D, "--detections", f"{mnt}/d.json"],
    "search-cache": ["search", "--model", "demo", *D, *S, "--cache", f"{mnt}/c.npz", "--out", f"{work}/s1"],
    "search-out": ["search", "--model", "demo", *D, *S, "--cache", f"{work}/c.npz", "--out", f"{mnt}/s2"],
    "prune-and-export": ["prune-and-export", "--model", "demo", *D, "--report-ann", f"{data}/annotations/val.json",
                         "--keep-anchors", f"{work}/keep.json", "--matrix-iters", "0", "--parity-images", "1",
                         "--out", f"{mnt}/exp"],
}
with open(f"{work}/keep.json", "w") as fh:
    json.dump(build_detector("demo").anchor_set.subset([0, 1, 2]).to_json(), fh)
def fill(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError:
        os.close(fd)
results = {}
for name, argv in runs.items():
    if os.environ.get("FILL_DISK"):  # every byte written fails; creating an empty file still works
        fill(f"{mnt}/.filler")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    if os.environ.get("FILL_DISK"):
        os.unlink(f"{mnt}/.filler")
    results[name] = {"code": code, "stderr": err.getvalue(), "left": sorted(
        os.path.relpath(os.path.join(d, n), mnt) for d, dirs, files in os.walk(mnt) for n in dirs + files)}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def writers_data(tmp_path_factory):
    from edgeanchor.datasets.synth import generate

    data = tmp_path_factory.mktemp("writers") / "data"
    generate(data, num_images=10, seed=3, image_size=320, splits=(0.5, 0.25, 0.25), workers=1)
    return data


def run_writers(tmp_path, data, mount_options: str, **env_extra) -> dict:
    work, mnt = tmp_path / "work", tmp_path / "mnt"
    work.mkdir()
    mnt.mkdir()
    script = tmp_path / "writers.py"
    script.write_text(textwrap.dedent(RUN_WRITERS))
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEANCHOR_CACHE": str(work / "cache"), **env_extra}
    proc = subprocess.run(["unshare", "-r", "-m", "sh", "-c", f'mount -t tmpfs -o {mount_options} tmpfs "{mnt}" && '
                           f'exec "{sys.executable}" "{script}" "{mnt}" "{data}" "{work}"'],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def one_error_line(name: str, result: dict) -> str:
    errors = [ln for ln in result["stderr"].splitlines() if ln.startswith("error:")]
    assert result["code"] == 2 and "Traceback" not in result["stderr"] and len(errors) == 1, \
        (name, result["stderr"][-2000:])
    return errors[0]


@needs_tmpfs
def test_an_output_that_cannot_be_written_is_found_before_the_work(tmp_path, writers_data):
    """Every writer with its output on a read-only file system (a read-only tmpfs: root is refused too)."""
    results = run_writers(tmp_path, writers_data, "ro", PASS_MUST_NOT_RUN="1")
    for name, r in results.items():
        line = one_error_line(name, r)
        assert "Read-only file system" in line and f"{tmp_path / 'mnt'}" in line, (name, line)


# ------------------------------------------------------------------------------- a full disk


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_in_a_file_write_is_one_line_and_leaves_nothing(tmp_path):
    path = tmp_path / "out.json"
    with pytest.raises(EdgeAnchorError) as info:
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            _enospc()
    assert str(info.value) == (f"cannot write {path}: no space left on the device (nothing was left half-written); "
                               "free some space or choose an output on another disk, then run again")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_inside_a_folder_build_names_the_folder(tmp_path):
    out = tmp_path / "exp"
    with pytest.raises(EdgeAnchorError, match=f"^cannot write {out}: no space left on the device"):
        with atomic_dir(out) as tmp, atomic_path(tmp / "graph.onnx") as inner:
            inner.write_text("half")
            _enospc()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # five commands, a search and an export among them, in a fresh process
@needs_tmpfs
def test_every_writer_on_a_full_disk_says_one_line_and_leaves_nothing(tmp_path, writers_data):
    """A real ENOSPC: the outputs go to a 64 KiB tmpfs, mounted in a user namespace (unshare -r -m) and filled."""
    mnt = tmp_path / "mnt"
    for name, r in run_writers(tmp_path, writers_data, "size=64k", FILL_DISK="1").items():
        line = one_error_line(name, r)
        assert f"cannot write {mnt}/" in line and "no space left on the device" in line, (name, line)
        # nothing written is left; only the search folder, empty, that search --out made before its first write
        assert set(r["left"]) <= {"s2"}, (name, r["left"])


# ------------------------------------------------------------------------------- the synthetic data set's folder


def test_synth_overwrite_replaces_only_what_it_wrote(tmp_path, capsys):
    out = tmp_path / "ds"
    argv = ["data", "synth", "--out", str(out), "--num-images", "4", "--seed", "1", "--workers", "1", "--overwrite"]
    assert main(argv) == 0
    assert "annotations/train.json" in read_manifest(out)
    (out / "images" / "train" / "NOTES.md").write_text("notes\n")
    before = tree_hashes(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"error: --out {out} holds images/train/NOTES.md, which edgeanchor did not write; "
                                    "refusing to replace the folder: move that file out, or choose another synth "
                                    "folder")
    assert "Traceback" not in err and tree_hashes(tmp_path) == before
    (out / "images" / "train" / "NOTES.md").unlink()
    (out / MANIFEST).unlink()  # a folder from before manifests: its files are all of the layout
    assert main(argv) == 0 and (out / MANIFEST).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


# ------------------------------------------------------------------------------- the issue's cases, end to end
# Rows as in tests/test_bad_input.py: exit 2, exactly one `error:` line (the last), no traceback, no file changed.


def _copied_report(root: Path) -> None:
    """`mkdir mine && cp exp/report.json mine/ && echo draft > mine/thesis.tex`"""
    (root / "mine").mkdir()
    (root / "mine" / "report.json").write_text(json.dumps({"format": "edgeanchor.export", "format_version": 2}))
    (root / "mine" / "thesis.tex").write_text("draft\n")


def _export_with_notes(root: Path) -> None:
    """`echo notes > exp/NOTES.md` in a real export folder"""
    with ExportFolder.build(root / "exp") as folder:
        write_minimal(folder, root)
    (root / "exp" / "NOTES.md").write_text("notes\n")


ROWS = [
    ("pe-overwrite-copied-report", ["prune-and-export", "--out", "{root}/mine", "--overwrite"], _copied_report,
     "holds thesis.tex, which edgeanchor did not write"),
    ("pe-overwrite-notes-in-export", ["prune-and-export", "--out", "{root}/exp", "--overwrite"], _export_with_notes,
     "holds NOTES.md, which edgeanchor did not write"),
    ("search-cache-half-downloaded-zip", ["search", "--cache", "{root}/download.zip", "--out", "{root}/s"],
     lambda root: (root / "download.zip").write_bytes(b"PK\x03\x04partial"),
     "download.zip exists and is not a candidate cache written by edgeanchor"),
    ("search-cache-empty-notes", ["search", "--cache", "{root}/notes.txt", "--out", "{root}/s"],
     lambda root: (root / "notes.txt").write_text(""), "notes.txt exists and is not a candidate cache"),
]


@pytest.mark.parametrize("argv, setup, expect", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_the_issues_cases_are_one_line_and_change_nothing(tmp_path, capsys, monkeypatch, argv, setup, expect):
    import edgeanchor.evaluation.cache as cache

    monkeypatch.setattr(cache, "build_cache", lambda *a, **k: pytest.fail("the candidate pass ran"))
    root = tmp_path / "w"
    root.mkdir()
    setup(root)
    monkeypatch.chdir(root)
    before = tree_hashes(root)
    code = main([a.replace("{root}", str(root)) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1 and lines[-1] == errors[0], err[-2000:]
    assert expect in errors[0]
    assert tree_hashes(root) == before


def test_a_second_prune_and_export_into_the_same_folder_is_one_line(tmp_path, capsys):
    out = tmp_path / "exp"
    with lock_held_elsewhere(out):
        code = main(["prune-and-export", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines()[-1] == (f"error: another edgeanchor run is writing {out} now; wait for it "
                                                  "to finish or choose another output")
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_prune_and_export_killed_between_the_renames_then_rerun(tmp_path, writers_data, demo_keep_export, capsys):
    """The issue's case end to end: a real kill -9 between the two renames of the final swap (the hook), then
    `prune-and-export --overwrite` again: it used to die with FileExistsError after the whole export. The folder
    replaced is a copy of the session's export (any export folder of edgeanchor's will do)."""
    from edgeanchor.models import build_detector

    keep = tmp_path / "keep.json"
    keep.write_text(json.dumps(build_detector("demo").anchor_set.subset([0, 1, 2]).to_json()))
    out = tmp_path / "out" / "exp"
    argv = ["prune-and-export", "--model", "demo", "--data", f"{writers_data}/images", "--ann",
            f"{writers_data}/annotations/val.json", "--report-ann", f"{writers_data}/annotations/val.json",
            "--keep-anchors", str(keep), "--matrix-iters", "0", "--parity-images", "1", "--out", str(out),
            "--overwrite"]
    shutil.copytree(demo_keep_export.root, out)
    check_output(out, overwrite=True)  # an export folder that --overwrite replaces
    env = {**os.environ, "PYTHONPATH": str(REPO), KILL_AT_ENV: "build-into-place"}
    killed = subprocess.run([sys.executable, "-m", "edgeanchor", *argv], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not out.exists()  # killed with the old folder aside and the new one not yet in place
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["exp"]  # no build, old or lock left
    assert ExportFolder.open(out).report["format_version"] == 2 and "pruned.pt" in read_manifest(out)
