"""The settings of the commands built on the Python API, one frozen dataclass per command.

Each field is one setting: the API keyword (its name), the flag, the help text, the default and the check
(see :mod:`edgeanchor.settings`). ``edgeanchor prune-and-export``'s flags are generated from
:class:`PruneAndExportSettings`, and :func:`edgeanchor.prune_and_export` takes exactly its fields. The
model and search flags are shared groups (:class:`ModelSettings`, :class:`SearchSettings`), so ``search``,
``prune``, ``inspect``, ``evaluate`` and ``train`` take theirs from the same definitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from ..settings import at_least, check_fields, positive, setting

MODEL_NAMES = ("demo, demo-yolo, demo-over, torchvision:ssd300_vgg16, torchvision:ssdlite320_mobilenet_v3_large, "
               "torchvision:retinanet_resnet50_fpn[_v2], edgeanchor:demo_ssd, yolov5:n|s|m|l|x, yolov5:MODEL.yaml")
DATA_HELP = ("image folder, a YOLO DATA.yaml, or Pascal VOC (a VOCdevkit year folder, or images with XML beside "
             "them) (default: the demo's synthetic data)")
SPLIT_HELP = ("with --data DATA.yaml (a YOLO data set) or --data VOCdevkit/VOC2007 (Pascal VOC: "
              "ImageSets/Main/SPLIT.txt): the split to use (default {default})")


@dataclass(frozen=True)
class ModelSettings:
    """The model, as :func:`edgeanchor.load` builds it (shared by every command that loads one)."""

    model: str = setting("demo", f"model name ({MODEL_NAMES}) or a checkpoint path (default: demo)")
    num_classes: int | None = setting(None, "classes: SSD and RetinaNet count the background class; for yolov5 "
                                      "it is nc (YOLO has no background class)", type=int)
    weights: str | None = setting(None, "weights to load: a torchvision state dict, an edgeanchor checkpoint, or "
                                  "for yolov5 a train.py checkpoint (best.pt / last.pt) or state dict")
    image_size: Sequence[int] | None = setting(None, "model input size (yolov5: default 640 640, any multiple of "
                                               "the largest stride)", type=int, nargs=2, metavar=("H", "W"))
    score_thresh: float | None = setting(None, "score (YOLO: confidence) threshold of the rule searched and "
                                         "evaluated with (default: the model's own; YOLO's val preset 0.001)",
                                         type=float)
    nms_thresh: float | None = setting(None, "NMS IoU threshold of that rule (default: the model's own; YOLO's "
                                       "val preset 0.6)", type=float)
    max_det: int | None = setting(None, "detections kept per image (default: the model's own; YOLO 300)", type=int)

    def load_kwargs(self) -> dict:
        """The model settings as :func:`edgeanchor.load`'s keywords."""
        return {f.name: getattr(self, f.name) for f in fields(ModelSettings) if f.name != "model"}


@dataclass(frozen=True)
class ModelWithAnchors(ModelSettings):
    """The model flags of the commands that load a model to inspect, search, prune, evaluate or train it."""

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

    def search_spec(self):
        """The core search settings (``max_drop`` 0.005 when no floor is given)."""
        from ..subset_search.run import SearchSpec

        max_drop = 0.005 if self.max_drop is None and self.min_map is None else self.max_drop
        return SearchSpec(method=self.method, cost=self.cost, min_map=self.min_map, max_drop=max_drop, tol=self.tol,
                          max_per_level=self.max_per_level, max_evals=self.max_evals, workers=self.workers,
                          backend=self.backend, executor=self.executor, ray_address=self.ray_address,
                          metric=self.metric)


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
class PruneAndExportSettings(SearchSettings, _PruneAndExportOwn, ModelSettings):
    """Every setting of ``edgeanchor prune-and-export`` / :func:`edgeanchor.prune_and_export`."""

    def validate(self) -> None:
        """Every check that needs no model or data, each once.

        Raises:
            EdgeAnchorError: the first setting that is wrong, named as the API spells it.
        """
        from ..subset_search.run import check_search_spec

        check_fields(self)
        self.export_settings().validate()
        check_search_spec(self.search_spec())

    def export_settings(self):
        """The export step's settings."""
        from ..pipeline import ExportSettings

        return ExportSettings(opset=self.opset, parity_images=self.parity_images, int8=self.int8,
                              tensorrt=self.tensorrt, matrix_iters=self.matrix_iters, nonms_topk=self.nonms_topk,
                              deploy_score_thresh=self.deploy_score_thresh, deploy_nms_thresh=self.deploy_nms_thresh,
                              metric=self.metric)

    def inputs(self) -> list:
        """Every path the run reads as given (the output may be none of them)."""
        paths = [self.data, self.ann, self.report_ann, self.train_ann, self.keep_anchors, self.latency_model,
                 self.cache, self.weights, self.model if str(self.model).endswith(".pt") else None]
        return [p for p in paths if p]
