"""The export folder: one versioned format with one owner.

Layout (format_version 2)::

    OUT/report.json            the validated, versioned report (format, format_version, graphs, ...)
    OUT/report.md              the human-readable report
    OUT/pruned.pt              pruned checkpoint            OUT/baseline/baseline.pt
    OUT/anchors.json           pruned anchor set            OUT/baseline/anchors.json
    OUT/{backbone,head,postprocess,model,model_nonms,model_ncnn,model_trt}.onnx   OUT/baseline/<the same>
    OUT/{backbone,head,model}_int8.onnx                     OUT/baseline/<the same>   (with --int8)
    OUT/openvino/<graph>.xml/.bin                           OUT/baseline/openvino/... (when OpenVINO is installed)
    OUT/pareto.png, OUT/search.json                         (when the anchors came from a search)
    OUT/bench_<runtime>.json/.png                           (written by bench)
    OUT/data/annotations.json  the report split's annotations        (format 2)
    OUT/data/images/<file_name>  its images, up to BUNDLE_IMAGES_MAX_BYTES in all (format 2)
    OUT/tensorrt/<graph>_<precision>_trt<version>_<gpu>.engine (+ .log, its build log)   OUT/baseline/tensorrt/...
                               TensorRT engines, built by prune-and-export --tensorrt (model_trt) and by
                               bench / evaluate --export on first use (the graphs they time)
    OUT/timing.cache, OUT/calib.cache                       OUT/baseline/<the same>   TensorRT's timing and int8
                               calibration caches, shared by every build of the variant and its trtexec line
    OUT/model_trt_<precision>.engine                        OUT/baseline/<the same>   (the report's trtexec line)

Format 2 makes the folder self-contained for the device: ``report.json``'s
``device`` section holds the input preprocessing (size, resize mode, scaling,
channel order, layout), the label map (model label -> category id) and the
model's identity, and ``data/`` holds the report split, so ``bench``,
``regress`` and ``evaluate --export`` need no torch, checkpoint or original
data there. A format-1 folder still opens; what it lacks comes from its
checkpoints (torch needed) and from the data the user gives (the paths it
recorded are named in errors, never read: a folder may come from anyone, and
everything it names must resolve inside it, see :meth:`ExportFolder.inside`).

:class:`ExportFolder` alone knows these names (and the module functions here, for a graph or an
engine outside an export folder: :func:`graph_file`, :func:`engine_beside`, :func:`default_build_log`,
:func:`default_calib_cache`). The pipeline writes through
:meth:`ExportFolder.build` (built beside the final path, renamed into place
when complete); bench, regress and the benchmark scripts open it with
:meth:`ExportFolder.open`, which validates ``report.json`` first.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from ..errors import EdgeAnchorError
from ..io import (
    atomic_dir,
    clean_stale_builds,
    first_foreign,
    output_lock,
    peek_json,
    read_json,
    read_manifest,
    write_json,
    write_text,
)
from .report_schema import (  # noqa: F401 - re-exported
    FORMAT,
    FORMAT_VERSION,
    Report,
    label_map_json,
    model_json,
    preprocess_json,
    validate_report,
    variant_map,
)

BUNDLE_IMAGES_MAX_BYTES = 256 * 2**20  # report-split images up to this size are copied into data/images
DATA_DIR = "data"
TRT_DIR = "tensorrt"  # TensorRT engines bench builds on the device, beside each variant's graphs
VARIANTS = ("pruned", "baseline")
GRAPHS = ("backbone", "head", "postprocess", "model", "model_nonms", "model_ncnn", "model_trt",
          "backbone_int8", "head_int8", "model_int8")  # the int8 graphs: prune-and-export --int8 (exporting/int8.py)
# The stage each timed stage runs from, per runtime (bench's four stages).
STAGE_GRAPHS = {"backbone": "backbone", "head": "head", "postprocess": "postprocess", "end_to_end": "model"}
# Which runtimes each graph is for. model_trt holds the EfficientNMS_TRT plugin, which only TensorRT has.
GRAPH_RUNTIMES = {
    "backbone": ("onnxruntime", "openvino", "opencv", "tensorrt"),
    "head": ("onnxruntime", "openvino", "opencv", "tensorrt"),
    # NonMaxSuppression: OpenCV 5 runs these, OpenCV 4 has no such layer (see the report's runtime matrix)
    "postprocess": ("onnxruntime", "openvino", "opencv", "tensorrt"),
    "model": ("onnxruntime", "openvino", "opencv", "tensorrt"),
    "model_nonms": ("onnxruntime", "openvino", "opencv", "tensorrt"),  # no NMS inside: for any runtime
    # decoded boxes and scores only (no TopK/Gather/Where/comparisons): for ncnn via pnnx, and any runtime
    "model_ncnn": ("onnxruntime", "openvino", "opencv"),
    "model_trt": ("tensorrt",),
    # QDQ int8 (exporting/int8.py): ONNX Runtime and OpenVINO run them in int8; TensorRT is untested with them.
    "backbone_int8": ("onnxruntime", "openvino"),
    "head_int8": ("onnxruntime", "openvino"),
    "model_int8": ("onnxruntime", "openvino"),
}
DECODED_GRAPH = "model_decoded"  # export_onnx(decoded=True)'s graph: the input of model_trt, not kept in a folder
_CHECKPOINT = {"pruned": "pruned.pt", "baseline": "baseline.pt"}
IR_DIR = "openvino"  # OpenVINO IR of each variant's graphs, beside them


@dataclass(frozen=True)
class EngineFiles:
    """Where one TensorRT engine and the files of its build go.

    Attributes:
        engine: the serialized engine.
        timing_cache: TensorRT's timing cache, read and updated by the build.
        calib_cache: the int8 calibration cache (read and written by an int8 build).
        build_log: the builder's log.
    """

    engine: Path
    timing_cache: Path
    calib_cache: Path
    build_log: Path


def graph_file(directory: str | os.PathLike, graph: str) -> Path:
    """The ONNX file of ``graph`` in ``directory`` (a variant's folder, or any folder export_onnx writes to)."""
    return Path(directory) / f"{graph}.onnx"


def engine_beside(onnx_path: str | os.PathLike, precision: str) -> Path:
    """An engine of ``onnx_path`` beside it, without TensorRT version or GPU: ``<stem>_<precision>.engine``.

    The name the trtexec line gives the engine it builds on the device.
    """
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f"{onnx_path.stem}_{precision}.engine")


def default_build_log(engine: str | os.PathLike) -> Path:
    """The build log of an engine: beside it, ``.log`` for ``.engine``."""
    return Path(engine).with_suffix(".log")


def default_calib_cache(engine: str | os.PathLike) -> Path:
    """The int8 calibration cache of an engine built outside an export folder: beside it, ``.calib``."""
    return Path(engine).with_suffix(".calib")


class ExportFolder:
    """An export folder on disk: paths of its parts, its report, its detectors.

    Use :meth:`open` for an existing folder and :meth:`build` for a new one.
    """

    def __init__(self, root: str | os.PathLike, report: Report | None = None):
        self.root = Path(root)
        self._report = report
        self._detectors: dict = {}

    # ---------------------------------------------------------------------------------------- paths

    def variant_dir(self, variant: str) -> Path:
        """The folder holding one variant's graphs, checkpoint and anchors."""
        _check_variant(variant)
        return self.root if variant == "pruned" else self.root / "baseline"

    def inside(self, path: str | os.PathLike, what: str) -> Path:
        """``path`` if it resolves inside the folder, symlinks followed; else a one-line refusal.

        An export folder may come from anyone: everything it names must stay inside it. Only paths the
        user gives (``data``, ``images``, ``ann``) may point elsewhere.

        Raises:
            EdgeAnchorError: naming the entry and where it leads.
        """
        path = Path(path)
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise EdgeAnchorError(
                f"{self.root}: {what} leads outside the export folder (to {resolved}); an export folder may only "
                "name files inside it: copy the file into the folder, or give its path on the command line"
            )
        return path

    def graph_path(self, variant: str, graph: str) -> Path:
        if graph not in GRAPHS:
            raise ValueError(f"unknown graph {graph!r}; one of {GRAPHS}")
        path = graph_file(self.variant_dir(variant), graph)
        return self.inside(path, str(path.relative_to(self.root)))

    def graph_files(self, variant: str, graphs) -> dict[str, Path]:
        """Graph name -> its file in the variant's folder, for ``graphs`` (names of ``GRAPHS``)."""
        return {g: self.graph_path(variant, g) for g in graphs}

    def ir_path(self, variant: str, graph: str) -> Path:
        """Where a graph's OpenVINO IR goes: ``openvino/<graph>.xml`` (+ ``.bin``) beside its ONNX file."""
        path = self.graph_path(variant, graph).parent / IR_DIR / f"{graph}.xml"
        self.inside(path.with_suffix(".bin"), str(path.with_suffix(".bin").relative_to(self.root)))
        return self.inside(path, str(path.relative_to(self.root)))

    def runtime_file(self, runtime: str, variant: str, graph: str) -> Path:
        """The file ``runtime`` runs for ``graph``: OpenVINO its IR when the export has one, else the ONNX file."""
        ir = self.ir_path(variant, graph)
        return ir if runtime == "openvino" and ir.is_file() else self.graph_path(variant, graph)

    def checkpoint_path(self, variant: str) -> Path:
        path = self.variant_dir(variant) / _CHECKPOINT[variant]
        return self.inside(path, str(path.relative_to(self.root)))

    def anchors_path(self, variant: str) -> Path:
        path = self.variant_dir(variant) / "anchors.json"
        return self.inside(path, str(path.relative_to(self.root)))

    def drop_in_paths(self, variant: str) -> dict[str, Path]:
        """An ONNX source's drop-in: ``model_raw`` (the user's graph with the variant's anchors: same inputs
        and outputs), ``head_json`` (its head spec) and its priors in the head spec's own convention
        (``priors_json``, ``priors_npy``)."""
        vdir = self.variant_dir(variant)
        paths = {"model_raw": vdir / "model_raw.onnx", "head_json": vdir / "head.json",
                 "priors_json": vdir / "priors.json", "priors_npy": vdir / "priors.npy"}
        return {k: self.inside(p, str(p.relative_to(self.root))) for k, p in paths.items()}

    @property
    def report_path(self) -> Path:
        return self.inside(self.root / "report.json", "report.json")

    @property
    def report_md_path(self) -> Path:
        return self.root / "report.md"

    @property
    def search_json_path(self) -> Path:
        return self.root / "search.json"

    @property
    def pareto_path(self) -> Path:
        return self.root / "pareto.png"

    def engine_path(self, variant: str, graph: str, precision: str, *, trt_version: str, gpu: str) -> Path:
        """Where a graph's TensorRT engine goes: one per precision, TensorRT version and GPU model.

        prune-and-export (``model_trt``) and bench / evaluate (the graphs they time) build here, so each
        reuses what the other built. An engine runs only with the TensorRT version and GPU it was built
        for, so both are in its name.
        """
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", gpu).strip("-").lower() or "gpu"
        path = self.variant_dir(variant) / TRT_DIR / f"{graph}_{precision}_trt{trt_version}_{slug}.engine"
        return self.inside(path, str(path.relative_to(self.root)))

    def build_log_path(self, variant: str, graph: str, precision: str, *, trt_version: str, gpu: str) -> Path:
        """The TensorRT build log of :meth:`engine_path`'s engine, beside it."""
        return default_build_log(self.engine_path(variant, graph, precision, trt_version=trt_version, gpu=gpu))

    def timing_cache_path(self, variant: str) -> Path:
        """The variant's TensorRT timing cache, shared by its engine builds (and its trtexec line)."""
        path = self.variant_dir(variant) / "timing.cache"
        return self.inside(path, str(path.relative_to(self.root)))

    def calib_cache_path(self, variant: str) -> Path:
        """The variant's TensorRT int8 calibration cache (written by an int8 build, read by its trtexec line)."""
        path = self.variant_dir(variant) / "calib.cache"
        return self.inside(path, str(path.relative_to(self.root)))

    def engine_files(self, variant: str, graph: str, precision: str, *, trt_version: str, gpu: str) -> EngineFiles:
        """The engine of ``graph`` (:meth:`engine_path`) with the timing cache, calibration cache and build log."""
        return EngineFiles(engine=self.engine_path(variant, graph, precision, trt_version=trt_version, gpu=gpu),
                           timing_cache=self.timing_cache_path(variant), calib_cache=self.calib_cache_path(variant),
                           build_log=self.build_log_path(variant, graph, precision, trt_version=trt_version, gpu=gpu))

    def trtexec_engine_path(self, variant: str, graph: str, precision: str) -> Path:
        """The engine the report's trtexec line builds on the device: beside the graph (:func:`engine_beside`)."""
        return engine_beside(self.graph_path(variant, graph), precision)

    def bench_path(self, runtime: str, precision: str = "fp32") -> Path:
        """Default place of ``edgeanchor bench``'s JSON for ``runtime`` (its plot goes beside it).

        fp32 (also spelled f32) keeps the plain name ``bench_<runtime>.json`` that earlier versions wrote.
        """
        from ..runtimes import canonical_precision

        precision = canonical_precision(precision)
        return self.root / (f"bench_{runtime}.json" if precision == "fp32" else f"bench_{runtime}_{precision}.json")

    # ---------------------------------------------------------------------------------------- contents

    @property
    def report(self) -> Report:
        if self._report is None:
            self._report = cast(Report, validate_report(read_json(self.report_path, "export report"),
                                                        self.report_path))
        return self._report

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.report["image_size"]
        return int(h), int(w)

    @property
    def resize(self) -> str:
        """How images reach the input size ("stretch", or "letterbox" for YOLO); older reports: stretch."""
        return self.report.get("resize", "stretch")

    @property
    def data(self) -> str:
        """Image folder of the report split (the default images of evaluate and regress): the copy in the folder.

        Raises:
            EdgeAnchorError: the folder holds no copy (format 1, or a split too large to bundle); the path
                recorded at export is named, never read.
        """
        return self.images_dir("data")

    def images_dir(self, param: str) -> str:
        """:attr:`data`, with ``param`` the parameter the message tells the user to pass instead."""
        bundled = (self.report.get("device") or {}).get("images")
        if bundled:
            return str(self.inside(self.root / bundled, f"device.images {bundled!r}"))
        hint = "a folder of images to time on" if param == "images" else "the folder that holds them"
        if self.report["format_version"] < 2:
            hint += ", or re-run prune-and-export to write export format 2, which holds them"
        raise EdgeAnchorError(f"{self.root} does not hold its report split's images (this export does not hold its "
                              f"images; export format {self.report['format_version']}; at export they were in "
                              f"{self.report['data']}, which is not read from what a folder says); pass `{param}`, "
                              f"{hint}")

    @property
    def report_ann(self) -> str:
        """The report split's annotations: the copy in the folder (format 2).

        Raises:
            EdgeAnchorError: a format-1 folder, which holds no copy; the path recorded at export is named, never read.
        """
        return self.annotations_file("ann")

    def annotations_file(self, param: str) -> str:
        """:attr:`report_ann`, with ``param`` the parameter the message tells the user to pass instead."""
        bundled = (self.report.get("device") or {}).get("annotations")
        if bundled:
            return str(self.inside(self.root / bundled, f"device.annotations {bundled!r}"))
        what = "a folder of images to time on" if param == "images" else "the report split's annotation file"
        raise EdgeAnchorError(f"{self.root} is export format 1, which holds no copy of its report split (at export: "
                              f"{self.report['report_ann']}, which is not read from what a folder says); pass "
                              f"`{param}`, {what}, or re-run prune-and-export to write format 2")

    def image_file(self, images_dir: str | os.PathLike, name, ann) -> Path:
        """The image ``name`` (a ``file_name`` of the annotation file ``ann``) under ``images_dir``.

        A ``file_name`` must be a relative path that stays below ``images_dir``; under the folder's own
        images it must also resolve inside the folder (symlinks followed).

        Raises:
            EdgeAnchorError: an absolute ``file_name``, one with ``..``, or one that leads outside the folder.
        """
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise EdgeAnchorError(f"{ann}: file_name {name!r} leaves the image folder; file names must be relative "
                                  "paths below it")
        path = Path(images_dir) / relative
        bundled = (self.report.get("device") or {}).get("images")
        if bundled and Path(images_dir) == self.root / bundled:
            self.inside(path, f"image {name!r} of {Path(ann).name}")
        return path

    @property
    def preprocess(self) -> dict:
        """How an image becomes the graphs' ``images`` input (see :func:`preprocess_json`)."""
        device = self.report.get("device")
        return device["preprocess"] if device else preprocess_json(self.image_size, self.resize)

    @property
    def model_info(self) -> dict:
        """arch, num_classes, first_label, image_size and the baseline's anchor count.

        Format 1 records them only in the checkpoints, read with torch.

        Raises:
            EdgeAnchorError: a format-1 folder on a machine without torch.
        """
        device = self.report.get("device")
        if device:
            return device["model"]
        _require_torch(self, "its model's classes")
        return model_json(self.load_detector("baseline"))

    def label_to_category(self) -> dict[int, int]:
        """Model label -> category id of the report split (from the folder; format 1: its checkpoint)."""
        device = self.report.get("device")
        if device:
            return {int(k): int(v) for k, v in device["label_to_category"].items()}
        info = self.model_info
        return label_map_json(self.report_ann, info["num_classes"], info["first_label"])

    def graphs(self, variant: str) -> dict[str, Path]:
        """The graphs of one variant that exist, by name."""
        return {g: self.graph_path(variant, g) for g in GRAPHS if self.graph_path(variant, g).is_file()}

    def graphs_for_runtime(self, runtime: str, variant: str, precision: str = "fp32",
                           stage_graphs: dict[str, str] | None = None) -> dict[str, Path]:
        """Stage -> graph file of the timed stages on ``runtime``.

        ``stage_graphs`` maps stage -> graph name (default ``STAGE_GRAPHS``). At int8 the backbone, head
        and end-to-end stages run the ``*_int8`` graphs. OpenVINO runs a graph's IR
        (``openvino/<graph>.xml``) when the export has it.

        Raises:
            EdgeAnchorError: a graph the runtime needs is missing from the folder.
        """
        paths = {}
        for stage, graph in (stage_graphs or STAGE_GRAPHS).items():
            if precision == "int8" and f"{graph}_int8" in GRAPHS:
                graph = f"{graph}_int8"
            path = self.graph_path(variant, graph)
            if runtime not in GRAPH_RUNTIMES[graph]:
                raise EdgeAnchorError(f"the {graph} graph of {self.root} is not for runtime {runtime}")
            if not path.is_file():
                if graph.endswith("_int8"):
                    raise EdgeAnchorError(f"{self.root} has no int8 graphs ({path.name}); re-run prune-and-export "
                                          "with `int8` on to write them")
                raise EdgeAnchorError(
                    f"{self.root} has no {variant} {graph} graph ({path.name}); re-run prune-and-export to rebuild it"
                )
            paths[stage] = self.runtime_file(runtime, variant, graph)
        return paths

    def runtimes(self) -> dict[str, list[str]]:
        """Runtime -> the graphs of this folder it can run (from the graphs present in both variants)."""
        present = [g for g in GRAPHS if all(self.graph_path(v, g).is_file() for v in VARIANTS)]
        out: dict[str, list[str]] = {}
        for graph in present:
            for runtime in GRAPH_RUNTIMES[graph]:
                out.setdefault(runtime, []).append(graph)
        return out

    def load_detector(self, variant: str):
        """The variant's detector from its checkpoint (loaded once per folder object)."""
        if variant not in self._detectors:
            from ..models import load_checkpoint

            path = self.checkpoint_path(variant)
            if not path.is_file():
                raise EdgeAnchorError(f"{self.root} has no {variant} checkpoint ({path.name}); re-run prune-and-export")
            self._detectors[variant] = load_checkpoint(path).eval()
        return self._detectors[variant]

    def graph_detector(self, variant: str):
        """The variant's detector with the post-processing rule its graphs use (YOLO: the deploy preset).

        :meth:`load_detector` keeps the checkpoint's own rule, which evaluation uses.
        """
        from ..postprocess import PostprocessRule

        det = self.load_detector(variant)
        rule = ((self.report.get("export") or {}).get(variant) or {}).get("postprocess")
        return det if rule is None else det.with_postprocess(PostprocessRule.from_json(rule))

    # ---------------------------------------------------------------------------------------- writing

    def write_variant(self, variant: str, detector, *, meta: dict | None = None) -> None:
        """Write one variant's checkpoint and anchor set."""
        from ..models import save_checkpoint

        self.variant_dir(variant).mkdir(parents=True, exist_ok=True)
        save_checkpoint(detector, self.checkpoint_path(variant), meta=meta)
        write_json(self.anchors_path(variant), detector.anchor_set.to_json())
        self._detectors[variant] = detector

    def write_report(self, report: Report, render=None, *, annotations: dict | None = None) -> Report:
        """Stamp ``report`` with the format, its version, the graph table and the device section; write report.json.

        The device section needs both variants written (:meth:`write_variant`); the report split's
        annotations (and its images, up to ``BUNDLE_IMAGES_MAX_BYTES``) are copied into ``data/``.

        Args:
            report: the report's contents (needs image_size, data, report_ann and resize).
            render: a function of the stamped report returning Markdown, written as report.md.
            annotations: the report split's annotation file, parsed (default: read from ``report_ann``).
        """
        graphs = {v: {g: {"file": str(p.relative_to(self.root)), "runtimes": list(GRAPH_RUNTIMES[g])}
                      for g, p in self.graphs(v).items()} for v in VARIANTS}
        stamped = {"format": FORMAT, "format_version": FORMAT_VERSION, **report, "graphs": graphs,
                   "device": self._write_device_data(report, annotations)}
        full = cast(Report, validate_report(stamped, self.report_path))
        write_json(self.report_path, full)
        if render is not None:
            write_text(self.report_md_path, render(full))
        self._report = full
        return full

    def _write_device_data(self, report: Report, ann: dict | None = None) -> dict:
        """Copy the report split into ``data/``; returns the report's device section."""
        base = self._detectors["baseline"]
        if ann is None:
            ann = read_json(report["report_ann"], "report annotations")
        images = [im["file_name"] for im in ann.get("images", [])]
        sources = [Path(report["data"]) / name for name in images]
        size = sum(p.stat().st_size for p in sources if p.is_file())
        data = self.root / DATA_DIR
        data.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report["report_ann"], data / "annotations.json")  # byte for byte: regress hashes it
        inside = all(not Path(n).is_absolute() and ".." not in Path(n).parts for n in images)  # stays in data/
        bundled = inside and size <= BUNDLE_IMAGES_MAX_BYTES and all(p.is_file() for p in sources)
        for name, src in zip(images, sources) if bundled else ():
            dst = data / "images" / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        return {"preprocess": preprocess_json(report["image_size"], report.get("resize", "stretch")),
                "label_to_category": {str(k): v for k, v in label_map_json(
                    ann, base.num_classes, base.first_label).items()},
                "model": model_json(base), "annotations": f"{DATA_DIR}/annotations.json",
                "images": f"{DATA_DIR}/images" if bundled else None, "num_images": len(images),
                "images_bytes": size}

    # ---------------------------------------------------------------------------------------- lifecycle

    @classmethod
    def open(cls, path: str | os.PathLike) -> ExportFolder:
        """Open an existing export folder; its report is validated now.

        Raises:
            EdgeAnchorError: not a folder, no or malformed report.json, or a format version this edgeanchor
                cannot read.
        """
        path = Path(path)
        if not path.is_dir():
            try:
                clean_stale_builds(path)  # an export killed between the two renames of its swap: put it back
            except OSError:  # a folder this reader may not write: the error below names the path
                pass
        if not path.is_dir():
            raise EdgeAnchorError(f"export folder {path} does not exist; run prune-and-export first or check the path")
        folder = cls(path)
        if not folder.report_path.is_file():
            raise EdgeAnchorError(f"{path} is not an edgeanchor export folder (no report.json); run prune-and-export")
        _ = folder.report  # validate now, before any long work
        return folder

    @classmethod
    @contextmanager
    def build(cls, out: str | os.PathLike, *, overwrite: bool = False, inputs=()) -> Iterator[ExportFolder]:
        """Build a new export folder beside ``out``; it replaces ``out`` only when the block succeeds.

        The output's lock is taken first (:func:`~edgeanchor.io.output_lock`: a second run into ``out``
        stops with one line), then the builds of killed runs are cleaned (a swap killed half-way is put
        back), then the checks of :func:`check_output` run. Inside the block the folder object points at
        the build folder; afterwards at ``out``. The build records what it wrote in its manifest, so a
        later ``overwrite`` replaces only that.
        """
        out = Path(out)
        with output_lock(out):  # a second run into the same folder stops here, before any work
            clean_stale_builds(out)  # a swap killed half-way is put back first: the decision below sees it
            check_output(out, overwrite=overwrite, inputs=inputs)
            with atomic_dir(out, replace=out.exists(), manifest=True) as tmp:
                folder = cls(tmp)
                yield folder
                if folder._report is None:
                    raise RuntimeError("an export folder was built without a report; call write_report last")
        folder.root = out


def default_export_dir(name: str = "demo") -> Path:
    """Where an export of the model ``name`` goes by default: ``exports/<name>``."""
    return Path("exports") / name


def _require_torch(folder: ExportFolder, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise EdgeAnchorError(
            f"{folder.root} is export format 1, which keeps {what} only in its checkpoints (torch needed); "
            "re-run prune-and-export with this edgeanchor to write format 2, which runs without torch"
        )


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")


def is_export_folder(path: str | os.PathLike) -> bool:
    """True if ``path`` is a folder with a report.json that edgeanchor wrote (any format version)."""
    report = peek_json(ExportFolder(path).report_path)
    return isinstance(report, dict) and report.get("format") == FORMAT


def check_output(out: str | os.PathLike, *, overwrite: bool, inputs=()) -> None:
    """Refuse an output folder that would lose something of the user's.

    An existing ``out`` is replaced only if it is an edgeanchor export folder,
    ``overwrite`` is set, and everything in it was written by edgeanchor: named
    in its manifest, or added later by bench or evaluate (a folder from before
    manifests: every file is a name of the layout); an empty folder is reused. An ``out`` that is,
    or contains, one of ``inputs`` (image folder, annotation files, weights,
    anchor files) is always refused, since replacing it would delete the input.

    Raises:
        EdgeAnchorError: naming the path and what to do.
    """
    out = Path(out)
    resolved = out.resolve()
    for item in inputs:
        if item is None:
            continue
        if Path(item).resolve().is_relative_to(resolved):  # the output is the input, or holds it
            raise EdgeAnchorError(
                f"the output folder {out} is also an input of this run ({item}); choose another `out` folder"
            )
    if not out.exists():
        return
    if not out.is_dir():
        raise EdgeAnchorError(f"the output {out} is a file, not a folder; choose a folder path")
    if not any(out.iterdir()):
        return
    if not is_export_folder(out):
        raise EdgeAnchorError(
            f"the output folder {out} exists and is not an edgeanchor export folder (no report.json of ours); "
            "refusing to replace it: choose another `out` folder or remove it yourself"
        )
    known = is_added_file if read_manifest(out) is not None else is_layout_file
    foreign = first_foreign(out, known)
    if foreign is not None:
        raise EdgeAnchorError(
            f"the output folder {out} holds {foreign}, which edgeanchor did not write; refusing to replace the "
            "folder: move that file out, or choose another `out` folder"
        )
    if not overwrite:
        raise EdgeAnchorError(f"the output folder {out} exists; pass `overwrite` to replace it, or choose another "
                              "folder")


# Files bench and evaluate add to a finished export folder (not in its manifest): bench results and plots, and
# TensorRT engines with their caches and logs; atomic_path's temporary files of a killed writer are theirs too.
_ADDED = re.compile(r"(baseline/)?(bench_[A-Za-z0-9_.-]+\.(json|png)|tensorrt/|tensorrt/[^/]+\.(engine|log)"
                    r"|(timing|calib)\.cache|model_trt_[a-z0-9]+\.engine)")
# Every file of the layout (module docstring), for a folder written before manifests. The bundled images
# keep the report split's own names, so anything under data/images/ is taken as written by the export.
_LAYOUT = re.compile(r"(baseline/)?((pruned|baseline)\.pt|anchors\.json|priors\.(json|npy)|model_raw\.onnx|head\.json"
                     r"|(" + "|".join(GRAPHS) + r")\.onnx"
                     r"|openvino/|openvino/(" + "|".join(GRAPHS) + r")\.(xml|bin))|baseline/"
                     r"|report\.(json|md)|pareto\.png|search\.json|data/|data/annotations\.json|data/images/.*")
_TMP = re.compile(r"(.*/)?\.(?P<name>[^/]+)\.[A-Za-z0-9_]+\.tmp")


def is_added_file(rel: str) -> bool:
    """True for a file (relative POSIX path; folders end with /) that bench or evaluate adds to an export."""
    tmp = _TMP.fullmatch(rel)
    if tmp:
        rel = rel[: tmp.start("name") - 1] + tmp.group("name")
    return _ADDED.fullmatch(rel) is not None


def is_layout_file(rel: str) -> bool:
    """True for a path of the export layout: what an export folder from before manifests may hold."""
    return _LAYOUT.fullmatch(rel) is not None or is_added_file(rel)
