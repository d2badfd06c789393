"""The settings of the commands built on the Python API, one frozen dataclass per command.

Each field is one setting: the API keyword (its name), the flag, the help text, the default and the check
(see :mod:`edgeanchor.settings`). Every command's flags are generated from its dataclass:

============================  ==============================  =============================================
command                       settings                        API function(s) the fields go to
============================  ==============================  =============================================
``prune-and-export``          :class:`PruneAndExportSettings` :func:`edgeanchor.prune_and_export` (all)
``search``                    :class:`SearchCommandSettings`  :func:`~edgeanchor.load`, :func:`~edgeanchor.data`,
                                                              :func:`edgeanchor.search`
``prune``                     :class:`PruneSettings`          :func:`~edgeanchor.load`, :func:`~edgeanchor.prune`,
                                                              :func:`~edgeanchor.save`
``inspect``                   :class:`InspectSettings`        :func:`~edgeanchor.load`, :func:`~edgeanchor.inspect`
``evaluate`` (``--export``)   :class:`EvaluateSettings`       :func:`~edgeanchor.load`, :func:`~edgeanchor.data`,
                                                              :func:`edgeanchor.evaluate`
``train``                     :class:`TrainSettings`          :func:`~edgeanchor.api.training.train_checkpoint`
``data synth``                :class:`SynthSettings`          :func:`edgeanchor.synth` (all)
``bench``                     :class:`BenchSettings`          :func:`edgeanchor.bench` (all)
``regress``                   :class:`RegressSettings`        :func:`edgeanchor.regress` (all)
============================  ==============================  =============================================

The model and search flags are shared groups (:class:`ModelSource`, :class:`ModelSettings`,
:class:`ModelWithAnchors`, :class:`SearchSettings`), inherited by the commands that have them. An API function
that takes a whole command's settings keeps its explicit signature (what IDEs and mypy read), and
``tests/test_one_path.py`` holds it to the dataclass: the same names, the same defaults, a required flag where
the parameter has no default. Choices are checked by argparse on the command line and by each API function's
own checks (with their messages) in Python.

This module imports no torch: bench, regress and ``evaluate --export`` (the device path) use it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..settings import at_least, check_fields, positive, setting

if TYPE_CHECKING:
    from ..exporting.folder import ExportFolder

PathArg = str | os.PathLike[str]  # a path setting: the flag gives a str, the API takes either

MODEL_NAMES = ("demo, demo-yolo, demo-over, torchvision:ssd300_vgg16, torchvision:ssdlite320_mobilenet_v3_large, "
               "torchvision:retinanet_resnet50_fpn[_v2], edgeanchor:demo_ssd, yolov5:n|s|m|l|x, yolov5:MODEL.yaml, "
               "onnx:PATH.onnx with --head")
DATA_HELP = ("image folder (without --ann: unlabelled, searched label-free), a video file (label-free), a YOLO "
             "DATA.yaml, or Pascal VOC (a VOCdevkit year folder, or images with XML beside them) (default: the "
             "demo's synthetic data)")
SPLIT_HELP = ("with --data DATA.yaml (a YOLO data set) or --data VOCdevkit/VOC2007 (Pascal VOC: "
              "ImageSets/Main/SPLIT.txt): the split to use (default {default})")


def model_help(default: str | None) -> str:
    return f"model name ({MODEL_NAMES}) or a checkpoint path (default: {default})"


@dataclass(frozen=True)
class ModelSource:
    """The model and its weights, as :func:`edgeanchor.load` builds it (every command that loads one)."""

    _LOAD: ClassVar[tuple[str, ...]] = ("num_classes", "weights", "image_size", "head")

    model: str = setting("demo", model_help("demo"))
    num_classes: int | None = setting(None, "classes: SSD and RetinaNet count the background class; for yolov5 "
                                      "it is nc (YOLO has no background class)", type=int)
    weights: str | None = setting(None, "weights to load: a torchvision state dict, an edgeanchor checkpoint, or "
                                  "for yolov5 a train.py checkpoint (best.pt / last.pt) or state dict")
    image_size: Sequence[int] | None = setting(None, "model input size (yolov5: default 640 640, any multiple of "
                                               "the largest stride)", type=int, nargs=2, metavar=("H", "W"))
    head: str | None = setting(None, "with --model onnx:PATH.onnx: the head spec, a preset (retinaface, tf-ssd, "
                               "caffe-ssd, mediapipe, yolov5) or a YAML/JSON spec file (docs/onnx-head-spec.md)")

    def model_files(self) -> list[str]:
        """The files the model is read from as given (a checkpoint, an ONNX file, a head spec file)."""
        model = str(self.model)
        files = [model[len("onnx:"):] if model.startswith("onnx:") else model if model.endswith(".pt") else None,
                 str(self.head) if self.head and str(self.head).lower().endswith((".yaml", ".yml", ".json")) else None]
        return [f for f in files if f]

    def load_kwargs(self) -> dict:
        """The model settings as :func:`edgeanchor.load`'s keywords (all but ``model``)."""
        return {name: getattr(self, name) for name in self._LOAD}


@dataclass(frozen=True)
class ModelSettings(ModelSource):
    """The model and the post-processing rule it is searched and evaluated with."""

    _LOAD: ClassVar[tuple[str, ...]] = ("num_classes", "weights", "image_size", "head", "score_thresh",
                                        "nms_thresh", "max_det")

    score_thresh: float | None = setting(None, "score (YOLO: confidence) threshold of the rule searched and "
                                         "evaluated with (default: the model's own; YOLO's val preset 0.001)",
                                         type=float)
    nms_thresh: float | None = setting(None, "NMS IoU threshold of that rule (default: the model's own; YOLO's "
                                       "val preset 0.6)", type=float)
    max_det: int | None = setting(None, "detections kept per image (default: the model's own; YOLO 300)", type=int)


@dataclass(frozen=True)
class ModelWithAnchors(ModelSettings):
    """The model flags of the commands that load a model to inspect, search, evaluate or train it."""

    _LOAD: ClassVar[tuple[str, ...]] = (*ModelSettings._LOAD, "anchors")

    anchors: str | None = setting(None, "anchor set: a JSON file (edgeanchor or reference form) or "
                                  "overanchorized[:SCALESxRATIOS]")


@dataclass(frozen=True)
class SearchSettings:
    """The search, as :func:`edgeanchor.search` runs it (shared by search and prune-and-export)."""

    method: str | None = setting(None, "greedy (paper's Pareto tree search), layerwise, or shared (heads shared "
                                 "across levels); default: shared for RetinaNet, else greedy",
                                 choices=("greedy", "layerwise", "shared"), group="search")
    cost: str = setting("head_macs", "what a subset costs: head_macs, boxes or latency (default head_macs)",
                        choices=("head_macs", "boxes", "latency"), group="search")
    metric: str = setting("coco", "what subsets are ranked by: coco (mAP@[.5:.95]), voc07 (Pascal VOC mAP@0.5, "
                          "11-point) or voc (VOC2010+ all-point); default coco", choices=("coco", "voc07", "voc"),
                          group="search")
    min_map: float | None = setting(None, "absolute accuracy floor (in --metric's mAP)", type=float, group="search",
                                    exclusive="floor")
    max_drop: float | None = setting(None, "floor relative to the unpruned mAP, in mAP units (default 0.005 = 0.5 "
                                     "points)", type=float, group="search", exclusive="floor")
    tol: float = setting(1e-4, "two mAPs within this are equal (default 1e-4)", group="search")
    max_per_level: int = setting(1, "layerwise: anchors left per level", group="search")
    max_evals: int = setting(3000, "evaluation budget", group="search")
    workers: int = setting(2, "scoring processes, or Ray actors with --executor ray", group="search")
    executor: str = setting("processes", "processes: this machine's worker processes; ray: actors sharding the "
                            "images, on a local Ray or a cluster (--ray-address)", choices=("processes", "ray"),
                            group="search")
    ray_address: str | None = setting(None, "the Ray cluster for --executor ray: HOST:PORT, ray://HOST:PORT or auto "
                                      "(default: start a local Ray)", metavar="ADDR", group="search")
    backend: str = setting("faster", "COCO evaluator of the front's full metrics; the search ranks subsets by the "
                           "exact incremental mAP (pycocotools' arithmetic) whatever this is",
                           choices=("faster", "pycocotools"), group="search")
    cache: str | None = setting(None, "candidate cache file (default: keyed file in the cache folder)",
                                group="search")
    latency_model: str | None = setting(None, "latency model JSON for --cost latency (default: calibrate one now "
                                        "on this machine)", group="search")

    def search_options(self):
        """The core search settings (``max_drop`` 0.005 when no floor is given)."""
        from ..subset_search.run import SearchOptions

        max_drop = 0.005 if self.max_drop is None and self.min_map is None else self.max_drop
        return SearchOptions(method=self.method, cost=self.cost, min_map=self.min_map, max_drop=max_drop, tol=self.tol,
                          max_per_level=self.max_per_level, max_evals=self.max_evals, workers=self.workers,
                          backend=self.backend, executor=self.executor, ray_address=self.ray_address,
                          metric=self.metric)


def _pseudo_thresh(value) -> str | None:
    from ..evaluation.pseudo import check_pseudo_thresh

    return check_pseudo_thresh(value)


@dataclass(frozen=True)
class LabelFreeSettings:
    """An unlabelled split (an image folder without annotations, or a video): its frames and its reference."""

    pseudo_thresh: float | None = setting(None, "label-free (--data without --ann, or a video): the unpruned "
                                          "model's detections with at least this score are the reference "
                                          "(default: its deploy threshold, YOLO 0.25, else 0.5)", type=float,
                                          group="label-free", check=_pseudo_thresh)
    frame_step: int | None = setting(None, "--data VIDEO: keep every N-th frame (default: about one a second)",
                                     type=int, metavar="N", group="label-free",
                                     check=positive("frame_step", optional=True))
    max_frames: int | None = setting(None, "--data VIDEO: keep at most this many frames (default: all)", type=int,
                                     group="label-free", check=positive("max_frames", optional=True))


@dataclass(frozen=True)
class _PruneAndExportOwn:
    """prune-and-export's own settings: data roles, the choice, fine-tuning and the export."""

    data: str | None = setting(None, DATA_HELP)
    ann: str | None = setting(None, "COCO annotations searched on (default: demo val split)")
    split: str | None = setting(None, SPLIT_HELP.format(default="val; reported on test if the data set has it, "
                                                        "fine-tuned on train"),
                                choices=("train", "val", "trainval", "test"))
    report_ann: str | None = setting(None, "split the results are reported on (default: --ann, or the demo's "
                                     "test split)")
    train_ann: str | None = setting(None, "training split for --finetune-epochs (default for the demo: its train "
                                    "split)")
    keep_anchors: str | None = setting(None, "skip the search and keep the anchors of this anchor file (also "
                                       "--anchors)", flags=("--keep-anchors", "--anchors"))
    target_head_macs: float | None = setting(None, "choose the most accurate front point with at most this many "
                                             "head MACs", type=float,
                                             check=positive("target_head_macs", optional=True))
    finetune_epochs: int = setting(0, "fine-tune the pruned model (default 0)",
                                   check=at_least(0, "finetune_epochs"))
    finetune_lr: float = setting(5e-4, "peak learning rate of the fine-tuning (default 5e-4)",
                                 check=positive("finetune_lr"))
    deploy_score_thresh: float | None = setting(None, "score threshold of the exported graphs (default: the "
                                                "searched rule's; YOLO's deploy preset 0.25)", type=float)
    deploy_nms_thresh: float | None = setting(None, "NMS IoU threshold of the exported graphs (default: the "
                                              "searched rule's; YOLO 0.45)", type=float)
    nonms_topk: int = setting(1000, "candidates kept by model_nonms.onnx, the graph without NMS (default 1000)")
    opset: int = setting(17, "ONNX opset (default 17)")
    matrix_iters: int = setting(20, "timed runs per graph in the report's runtime matrix (every installed "
                                "runtime: onnxruntime, openvino, opencv, tensorrt x every graph: loads, parity, "
                                "latency); 0 leaves it out")
    int8: bool = setting(False, "also write int8 graphs (backbone_int8, head_int8, model_int8: QDQ, calibrated on "
                         "64 images of the search split) for both variants, and report their mAP against "
                         "model.onnx's", action="store_true")
    tensorrt: str | None = setting(None, "also build a TensorRT engine (needs TensorRT and a CUDA GPU)",
                                   choices=("fp32", "fp16", "int8"))
    parity_images: int = setting(4, "report-split images the graphs are checked against PyTorch on (default 4)")
    out: str | None = setting(None, "output folder (default: exports/<model name>)")
    overwrite: bool = setting(False, "replace an existing output folder (only one edgeanchor wrote)",
                              action="store_true")
    progress: bool = setting(True, "show progress bars", flags=())


@dataclass(frozen=True)
class PruneAndExportSettings(LabelFreeSettings, SearchSettings, _PruneAndExportOwn, ModelSettings):
    """Every setting of ``edgeanchor prune-and-export`` / :func:`edgeanchor.prune_and_export`."""

    def validate(self) -> None:
        """Every check that needs no model or data, each once.

        Raises:
            EdgeAnchorError: the first setting that is wrong, named as the API spells it.
        """
        from ..subset_search.run import check_search_options
        from .workflow import check_cache_setting

        check_fields(self)
        self.export_options().validate()
        check_search_options(self.search_options())
        if not self.keep_anchors:  # the search's cache
            check_cache_setting(self.cache)

    def export_options(self):
        """The export step's settings."""
        from ..pipeline import ExportOptions

        return ExportOptions(opset=self.opset, parity_images=self.parity_images, int8=self.int8,
                              tensorrt=self.tensorrt, matrix_iters=self.matrix_iters, nonms_topk=self.nonms_topk,
                              deploy_score_thresh=self.deploy_score_thresh, deploy_nms_thresh=self.deploy_nms_thresh,
                              metric=self.metric)

    def inputs(self) -> list:
        """Every path the run reads as given (the output may be none of them)."""
        paths = [self.data, self.ann, self.report_ann, self.train_ann, self.keep_anchors, self.latency_model,
                 self.cache, self.weights, *self.model_files()]
        return [p for p in paths if p]


# ------------------------------------------------------------------------------------ the other commands


@dataclass(frozen=True)
class _SearchOwn:
    """search's own settings: the split searched on, the report split and the search folder."""

    data: str | None = setting(None, DATA_HELP)
    ann: str | None = setting(None, "COCO annotations searched on (default: demo val split)")
    report_ann: str | None = setting(None, "also report the front on this split (avoids selection bias; default "
                                     "for the demo: test)")
    split: str | None = setting(None, SPLIT_HELP.format(default="val"), choices=("train", "val", "trainval", "test"))
    out: str | None = setting(None, "search folder (resumed if it holds a search)", required=True)


@dataclass(frozen=True)
class SearchCommandSettings(LabelFreeSettings, SearchSettings, _SearchOwn, ModelWithAnchors):
    """Every setting of ``edgeanchor search``: the model (:func:`edgeanchor.load`), the split
    (:func:`edgeanchor.data`) and :func:`edgeanchor.search`'s own keywords."""

    def validate(self) -> None:
        """The search settings and the search folder, checked before the model is built or data is read
        (:func:`~edgeanchor.api.workflow.search_with_options` then runs :meth:`search_options` unchecked).

        Raises:
            EdgeAnchorError: the first setting that is wrong, named as the API spells it.
        """
        from .workflow import check_search_settings

        check_fields(LabelFreeSettings(self.pseudo_thresh, self.frame_step, self.max_frames))
        check_search_settings(out=self.out, cache=self.cache,
                              **{k: v for k, v in self.search_kwargs().items() if k != "pseudo_thresh"})

    def search_kwargs(self) -> dict:
        """:func:`edgeanchor.search`'s search keywords (``max_drop`` defaults there)."""
        names = ("method", "cost", "metric", "min_map", "max_drop", "tol", "max_per_level", "max_evals", "workers",
                 "executor", "ray_address", "backend", "pseudo_thresh")
        return {name: getattr(self, name) for name in names}

    def data_kwargs(self) -> dict:
        """:func:`edgeanchor.data`'s arguments of the searched split (the demo's: val)."""
        frames = {"frame_step": self.frame_step, "max_frames": self.max_frames}  # a video's (refused for others)
        if not self.data and not self.ann:
            return {"images": "demo", "ann": None, "split": "val", **frames}
        return {"images": self.data, "ann": self.ann, "split": None if self.ann else self.split, **frames}

    def report(self) -> str | None:
        """The report split: ``report_ann``, or for the demo its test split."""
        return self.report_ann or ("test" if not self.data and not self.ann else None)


@dataclass(frozen=True)
class PruneSettings(ModelSource):
    """Every setting of ``edgeanchor prune``: the model, the anchors kept (one of three ways), the checkpoint."""

    anchors: str | None = setting(None, "anchor file whose anchors are kept", exclusive="keep", required=True)
    keep: str | None = setting(None, "comma-separated global anchor ids to keep", exclusive="keep", required=True)
    remove: str | None = setting(None, "comma-separated global anchor ids to remove", exclusive="keep",
                                 required=True)
    out: str | None = setting(None, "output checkpoint (.pt); for --model onnx:PATH the pruned graph (.onnx), with "
                              "its head spec and priors beside it", required=True)
    overwrite: bool = setting(False, "replace an existing checkpoint and anchor file at --out (only ones edgeanchor "
                              "wrote)", action="store_true")

    def validate(self) -> None:
        """The checkpoint path (and its anchor file), refused before the model is built.

        Raises:
            EdgeAnchorError: an output that must not be written.
        """
        from ..errors import ONNX_OUT, EdgeAnchorError
        from .workflow import check_save_path

        onnx_model, onnx_out = str(self.model).startswith("onnx:"), str(self.out).endswith(".onnx")
        if onnx_model and not onnx_out:
            raise EdgeAnchorError(ONNX_OUT)
        if onnx_out and not onnx_model:
            raise EdgeAnchorError("an .onnx `out` is for a model given as onnx:PATH; give `out` as a .pt checkpoint")
        check_save_path(str(self.out), overwrite=self.overwrite,
                        inputs=[self.model, *self.model_files(), self.weights, self.anchors])

    def prune_args(self) -> tuple[tuple, dict]:
        """(args, kwargs) of :func:`edgeanchor.prune` after the detector: the anchor file, or the ids."""
        from ..pruning import parse_anchor_ids

        if self.anchors:
            return (self.anchors,), {}
        if self.keep is not None:
            return (parse_anchor_ids(self.keep),), {}
        return (), {"remove": parse_anchor_ids(self.remove or "")}


@dataclass(frozen=True)
class InspectSettings(ModelWithAnchors):
    """Every setting of ``edgeanchor inspect``: the model, as :func:`edgeanchor.load` builds it."""

    def validate(self) -> None:
        """Nothing to check before the model is built (:func:`edgeanchor.load` checks the model settings)."""


EXPORT_RUNTIMES = ("onnxruntime", "openvino", "tensorrt")
def _precision(text: str) -> str:
    """A precision flag's value in the one spelling (f32 and f16, the older ones, become fp32 and fp16)."""
    from ..runtimes import canonical_precision

    return canonical_precision(text)


def _iters(text: str) -> int | str:
    """``--iters``: auto or a whole number."""
    from ..benchmark.harness import parse_iters

    return parse_iters(text)


ITERS_HELP = ("rounds, each running both variants on the same image; auto (default): until every pruned/baseline "
              "ratio's 95-percent interval is within 3 percent of it, or --max-time is up")
MAX_TIME_HELP = "with --iters auto: the most seconds of timed rounds (default 60)"
CLOCK_HELP = ("what a timing counts: wall time, or cpu, this process's CPU time, which leaves out waiting for a CPU "
              "on a busy machine (TensorRT: GPU time either way)")

PRECISIONS = ("fp32", "bf16", "fp16", "int8")  # runtimes.PRECISIONS (kept here: this module imports nothing heavy)


@dataclass(frozen=True)
class _EvaluateOwn:
    """evaluate's own settings on a model: the split, the metric and the inference pass."""

    data: str | None = setting(None, "image folder, a YOLO DATA.yaml, or Pascal VOC (a VOCdevkit year folder, or "
                               "images with XML beside them) (default: the demo's synthetic test split)")
    ann: str | None = setting(None, "COCO annotation file")
    split: str | None = setting(None, SPLIT_HELP.format(default="val for a YOLO or VOC data set, test for the demo"),
                                choices=("train", "val", "trainval", "test"))
    metric: str = setting("coco", "coco (mAP@[.5:.95] and the other COCO metrics), voc07 (Pascal VOC mAP@0.5, "
                          "11-point) or voc (VOC2010+ all-point); default coco", choices=("coco", "voc07", "voc"))
    detections: str | None = setting(None, "write COCO results-format detections here")
    overwrite: bool = setting(False, "replace an existing detections file (only one edgeanchor wrote)",
                              action="store_true")
    backend: str = setting("faster", "COCO evaluator: faster (faster-coco-eval) or pycocotools",
                           choices=("faster", "pycocotools"))
    batch_size: int = setting(16, "images per PyTorch inference batch")
    device: str = setting("cpu", "where PyTorch runs: cpu, cuda or cuda:N")


@dataclass(frozen=True)
class _EvaluateExport:
    """evaluate's settings of an export folder's deployed graph (``--export``; no torch)."""

    export: str | None = setting(None, "evaluate an export folder's deployed graph (model.onnx, or model_int8.onnx at "
                                 "--precision int8) on its report split instead of a model; needs no torch")
    runtime: str = setting("onnxruntime", "with --export: the runtime the graph runs in (default onnxruntime; "
                           "tensorrt runs the engine of model.onnx, built on first use)", choices=EXPORT_RUNTIMES)
    precision: str = setting("fp32", "with --export: what the runtime computes in (default fp32; f32 and f16 are "
                             "read as fp32 and fp16)", choices=PRECISIONS, type=_precision)
    variant: str = setting("pruned", "with --export: which of the export's models (default pruned)",
                           choices=("pruned", "baseline"))


@dataclass(frozen=True)
class EvaluateSettings(LabelFreeSettings, _EvaluateExport, _EvaluateOwn, ModelWithAnchors):
    """Every setting of ``edgeanchor evaluate``: a model (:func:`edgeanchor.load`) on a split, or with ``export``
    an export folder's deployed graph; both through :func:`edgeanchor.evaluate`."""

    def validate(self) -> None:
        """A model's evaluation settings and its detections file, checked before the model is built.

        Raises:
            EdgeAnchorError: the first setting that is wrong, named as the API spells it.
        """
        from .workflow import check_evaluate_settings

        check_fields(LabelFreeSettings(self.pseudo_thresh, self.frame_step, self.max_frames))
        check_evaluate_settings(metric=self.metric, batch_size=self.batch_size, device=self.device,
                                detections=self.detections, overwrite=self.overwrite,
                                inputs=[self.data, self.ann, self.model, *self.model_files(), self.weights,
                                        self.anchors])

    def evaluate_kwargs(self) -> dict:
        """:func:`~edgeanchor.api.workflow.evaluate_checked`'s keywords for a model (``overwrite`` was
        :meth:`validate`'s to check)."""
        return {"metric": self.metric, "backend": self.backend, "batch_size": self.batch_size, "device": self.device,
                "detections": self.detections, "pseudo_thresh": self.pseudo_thresh}

    # what an export folder's evaluation reads: its own group's settings and these
    _EXPORT_USES: ClassVar[tuple[str, ...]] = ("data", "ann", "metric", "backend")

    def model_settings_given(self) -> list[str]:
        """The settings given (not at their defaults) that only evaluating a model reads: every field but the
        export group's, ``_EXPORT_USES`` and ``model`` (whose default cannot be told from a given demo)."""
        from dataclasses import fields

        export_group = {f.name for f in fields(_EvaluateExport)}
        return [f.name for f in fields(self) if f.name not in export_group | set(self._EXPORT_USES) | {"model"}
                and getattr(self, f.name) != f.default]

    def export_kwargs(self) -> dict:
        """:func:`edgeanchor.evaluate`'s keywords for an export folder."""
        return {"metric": self.metric, "runtime": self.runtime, "precision": self.precision,
                "variant": self.variant, "backend": self.backend}


@dataclass(frozen=True)
class _TrainOwn:
    """train's own settings: the data, the optimisation and the checkpoint."""

    init: str | None = setting(None, "start from this checkpoint (e.g. a pruned one), keeping its anchors")
    data: str = setting(None, "image folder, a YOLO DATA.yaml, or a Pascal VOC folder (VOCdevkit/VOC2007, or "
                               "images with XML beside them) (then its train split is trained on and its val split, "
                               "if any, evaluated after each epoch)", required=True)
    ann: str | None = setting(None, "COCO annotations of the training split (not with DATA.yaml)")
    val_ann: str | None = setting(None, "COCO annotations evaluated after each epoch")
    split: str | None = setting(None, SPLIT_HELP.format(default="train"), choices=("train", "val", "trainval", "test"))
    epochs: int = setting(None, "passes over the training split", type=int, required=True)
    batch_size: int = setting(32, "images per batch (default 32)")
    lr: float = setting(2e-3, "peak learning rate of AdamW (default 2e-3)")
    weight_decay: float = setting(5e-4, "AdamW weight decay (default 5e-4)")
    warmup_iters: int = setting(200, "linear warm-up iterations before the cosine decay (default 200)")
    device: str = setting("cpu", "cpu or cuda (default cuda where available)")
    workers: int = setting(1, "data loader processes")
    seed: int = setting(0, "fixes the initial weights, shuffling and augmentation (default 0)")
    max_iters_per_epoch: int | None = setting(None, "stop each epoch after this many batches", type=int, hidden=True)
    out: PathArg = setting(None, "checkpoint to write (rewritten after every epoch)", required=True)
    resume: bool = setting(False, "continue the interrupted run stored at --out", action="store_true")
    overwrite: bool = setting(False, "replace an existing checkpoint at --out (only one edgeanchor wrote)",
                              action="store_true")
    progress: bool = setting(True, "no progress bars", flags=("--no-progress",), action="store_false")


@dataclass(frozen=True)
class TrainSettings(_TrainOwn, ModelWithAnchors):
    """Every setting of ``edgeanchor train`` / :func:`~edgeanchor.api.training.train_checkpoint`."""

    model: str | None = setting(None, model_help(None))  # type: ignore[assignment]  # no default model here

    def validate(self) -> None:
        """Training settings that are wrong whatever the data.

        Raises:
            EdgeAnchorError: naming the setting and its value.
        """
        from .workflow import check_train_settings

        check_train_settings(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                             weight_decay=self.weight_decay, warmup_iters=self.warmup_iters, workers=self.workers,
                             seed=self.seed, device=self.device)


@dataclass(frozen=True)
class SynthSettings:
    """Every setting of ``edgeanchor data synth`` / :func:`edgeanchor.synth`."""

    out: PathArg = setting(None, "output folder (must not exist or be empty)", required=True)
    num_images: int = setting(None, "images over all splits (80/10/10)", type=int, required=True)
    seed: int = setting(None, "non-negative seed; same seed, same files", type=int, required=True)
    image_size: int = setting(320, "side of the square images in pixels")
    workers: int | None = setting(None, "processes (output is the same; default: the CPU count)", type=int)
    format: str = setting("coco", "coco (images/ + annotations/*.json) or voc (a VOCdevkit-style folder; default "
                          "coco)", choices=("coco", "voc"))
    overwrite: bool = setting(False, "replace an existing synthetic data set at --out", action="store_true")
    progress: bool = setting(True, "show a progress bar", flags=())

    def validate(self) -> None:
        """The sizes, seed and format, checked before anything is written.

        Raises:
            EdgeAnchorError: a bad setting, named as the API spells it.
        """
        from ..errors import EdgeAnchorError

        n, seed, size, workers = self.num_images, self.seed, self.image_size, self.workers
        if n is None or seed is None or n < 1 or seed < 0 or size < 64 or workers is None or workers < 1:
            raise EdgeAnchorError(
                f"`num_images` {n}, `seed` {seed}, `image_size` {size}, `workers` {workers}: need "
                "`num_images` >= 1, `seed` >= 0, `image_size` >= 64, `workers` >= 1")
        if self.format not in ("coco", "voc"):
            raise EdgeAnchorError(f"format {self.format!r} is not known; choose coco or voc")


@dataclass(frozen=True)
class BenchSettings:
    """Every setting of ``edgeanchor bench`` / :func:`edgeanchor.bench`."""

    folder: ExportFolder | PathArg | None = setting(None, "a prune-and-export folder (default: exports/demo)",
                                                    positional=True, nargs="?", metavar="export_dir")
    runtime: str = setting("onnxruntime", "openvino and opencv need the extras edgeanchor[openvino] / "
                           "edgeanchor[opencv]; opencv times backbone, head and model_nonms.onnx + "
                           "cv2.dnn.NMSBoxesBatched",
                           choices=("onnxruntime", "openvino", "opencv", "torch", "tensorrt"))
    precision: str = setting("fp32", "what the runtime computes in (default fp32, also on CPUs where OpenVINO would "
                             "pick bf16; f32 and f16 are read as fp32 and fp16); int8 runs the int8 graphs of an "
                             "export made with --int8", choices=PRECISIONS, type=_precision)
    end_to_end: str | None = setting(None, "the graph the end_to_end stage runs (default: model; opencv: model_nonms "
                                     "+ cv2.dnn.NMSBoxesBatched; model_trt is for TensorRT only)",
                                     choices=("model", "model_nonms", "model_trt"))
    threads: int = setting(0, "intra-op threads (0: the runtime's default)")
    opt_level: str = setting("all", "onnxruntime graph optimisation level",
                             choices=("disable", "basic", "extended", "all"))
    warmup: int = setting(10, "untimed iterations first (default 10)")
    iters: int | str = setting("auto", ITERS_HELP, type=_iters)
    max_time: float = setting(60.0, MAX_TIME_HELP)
    clock: str = setting("wall", CLOCK_HELP + " (default wall: the latency)", choices=("wall", "cpu"))
    images: PathArg | None = setting(None, "image folder (default: the export's report split)")
    json_path: PathArg | None = setting(None, "write the result JSON here (default: EXPORT_DIR/bench_<runtime>.json, "
                                    "bench_<runtime>_<precision>.json when not fp32)", flags=("--json-out",),
                                    metavar="JSON_OUT")
    plot_path: PathArg | None = setting(None, "PNG plot path (default: beside the JSON)", flags=("--plot",),
                                    metavar="PLOT")
    progress: bool = setting(True, "show a progress bar", flags=())
    write: bool = setting(False, "also write the result JSON and plot (the command always does)", flags=())

    def validate(self) -> None:
        """The timing, the runtime (installed here) and the precision, before the export is opened.

        Raises:
            EdgeAnchorError: a bad setting, or a runtime that is not installed.
        """
        from ..benchmark.harness import check_timing
        from ..runtimes import check_precision, require

        check_timing(self.iters, self.warmup, self.threads, self.max_time, self.clock)
        if self.runtime != "torch":
            require(self.runtime)
        check_precision(self.runtime, self.precision)


@dataclass(frozen=True)
class RegressSettings:
    """Every setting of ``edgeanchor regress`` / :func:`edgeanchor.regress`."""

    baseline: PathArg = setting(None, "baseline JSON (written by --update)", required=True)
    export: ExportFolder | PathArg | None = setting(None, "a prune-and-export folder (default: exports/demo)",
                                                    exclusive="source")
    model: PathArg | None = setting(None, "a pruned checkpoint; exported with --reference first", exclusive="source")
    reference: str | None = setting(None, "with --model: the unpruned reference model (default: the checkpoint's "
                                    "source)")
    data: PathArg | None = setting(None, "image folder (default: the export's report data)")
    ann: PathArg | None = setting(None, "COCO annotations (default: the export's report split)")
    runtime: str = setting("onnxruntime", "where the deployed graph is evaluated and timed (default onnxruntime)",
                           choices=EXPORT_RUNTIMES)
    precision: str = setting("fp32", "what the runtime computes in (default fp32; f32 and f16 are read as fp32 "
                             "and fp16; int8: the int8 graphs)", choices=PRECISIONS, type=_precision)
    map_tol: float = setting(0.005, "allowed mAP drop (default 0.005)")
    latency_tol: float = setting(0.10, "allowed relative rise of a latency ratio (default 0.10)")
    iters: int | str = setting("auto", ITERS_HELP + "; auto also measures on while a ratio's interval straddles "
                               "its bound", type=_iters)
    max_time: float = setting(60.0, MAX_TIME_HELP)
    clock: str = setting("cpu", CLOCK_HELP + " (default cpu: with one thread, the latency of a quiet machine, so a "
                         "busy runner cannot fake a regression)", choices=("wall", "cpu"))
    warmup: int = setting(10, "untimed iterations first (default 10)")
    threads: int = setting(1, "intra-op threads of the runtime (default 1)")
    strict: bool = setting(False, "an inconclusive latency row (its interval straddles the bound when the time is "
                           "up) fails the check (exit 1) instead of exiting 3", action="store_true")
    update: bool = setting(False, "rewrite the baseline from this measurement", action="store_true")
    json_path: PathArg | None = setting(None, "also write the measurement and verdict to this file",
                                        flags=("--json-out",), metavar="JSON_OUT")
    summary_path: PathArg | None = setting(None, "write the Markdown summary here", flags=("--summary",),
                                           metavar="SUMMARY")

    def validate(self) -> None:
        """Every setting and output path, before anything is opened or measured.

        Raises:
            EdgeAnchorError: bad settings, a missing runtime, outputs that are not regress's own.
        """
        from .gate import _check

        _check(export=self.export, baseline=self.baseline, model=self.model, data=self.data, ann=self.ann,
               runtime=self.runtime, precision=self.precision, map_tol=self.map_tol, latency_tol=self.latency_tol,
               iters=self.iters, max_time=self.max_time, clock=self.clock, warmup=self.warmup, threads=self.threads,
               strict=self.strict, update=self.update,
               json_path=self.json_path, summary_path=self.summary_path)
