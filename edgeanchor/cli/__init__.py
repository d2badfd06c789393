"""Command-line entry point: ``edgeanchor SUBCOMMAND ...``.

Each subcommand lives in its own module under ``edgeanchor.cli``. The module
docstring is its ``--help`` text; it defines ``add_arguments(parser)`` and
``run(args) -> int``. Modules import heavy libraries inside ``run`` so that
``--help`` stays fast. Nothing below ``cli/`` parses flags.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from ..errors import CheckFailed, EdgeAnchorError

# subcommand name -> module (relative to this package)
SUBCOMMANDS = {
    "inspect": ".inspect",
    "data": ".data",
    "train": ".train",
    "evaluate": ".evaluate",
    "prune": ".prune",
    "search": ".search",
    "prune-and-export": ".prune_and_export",
    "bench": ".bench",
    "regress": ".regress",
}


def _available_subcommands() -> dict:
    modules = {}
    for name, mod_name in SUBCOMMANDS.items():
        try:
            modules[name] = importlib.import_module(mod_name, __name__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(__name__):
                continue  # subcommand not built yet
            raise
    return modules


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one ``error:`` line on stderr, exit code 2."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgeanchor",
        description="Anchor pruning, export and per-stage timing for one-stage detectors.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"edgeanchor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in _available_subcommands().items():
        doc = (module.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else name
        p = sub.add_parser(
            name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


# Core errors name parameters as the Python API spells them; on the command line they are flags.
_PARAM_FLAGS = {name: "--" + name.replace("_", "-") for name in (
    "min_map", "max_drop", "target_head_macs", "finetune_epochs", "finetune_lr", "train_ann", "report_ann",
    "parity_images", "latency_model", "image_size", "num_classes", "max_evals", "max_per_level", "batch_size",
    "keep_anchors", "opset", "tol", "workers", "iters", "warmup", "threads", "score_thresh", "nms_thresh", "max_det",
    "deploy_score_thresh", "deploy_nms_thresh", "nonms_topk", "matrix_iters", "ray_address", "epochs", "lr",
    "weight_decay", "warmup_iters", "seed", "val_ann", "max_iters_per_epoch", "num_images", "map_tol",
    "latency_tol")}
_PHRASES = {"use device cpu, cuda or cuda:N": "use --device cpu, cuda or cuda:N", "use device cpu": "use --device cpu",
            "lower lr": "lower --lr", "method 'shared'": "'--method shared'", "choose shared": "pass --method shared",
            "give train_ann": "pass --train-ann", "choose a writable output folder": "choose a writable --out",
            "choose another output folder":
            "choose another --out", "choose another search folder": "choose another --out",
            "leave num_classes unset": "drop --num-classes", "give it as weights": "pass it as --weights",
            "with update set": "with 'edgeanchor regress --update'", "check the weights path": "check --weights",
            "give the matching image_size": "pass the matching --image-size", "use num_classes": "use --num-classes",
            "set overwrite": "pass --overwrite", "drop weights": "drop --weights", "or resume to continue": "or --resume to continue",
            "with int8 on": "with --int8", "choose precision": "pass --precision", "choose runtime": "pass --runtime",
            "give image_dir,": "pass --images,", "give data,": "pass --data,",
            "needs executor ray": "needs --executor ray", "choose executor ray": "pass --executor ray",
            "with ray start": "with 'ray start --head'",
            # the Python API's data errors (edgeanchor.api.data / deploy), in the flags' words
            "give both data and ann (or data as a YOLO data.yaml, or data as a Pascal VOC folder:":
            "give both --data and --ann (or --data DATA.yaml for a YOLO data set, or --data DIR for Pascal VOC:",
            "the ann argument is not used": "--ann is not used", "choose one with split": "choose one with --split",
            "ann, report_ann and train_ann are not used": "--ann, --report-ann and --train-ann are not used",
            "choose the search split with split": "choose the search split with --split",
            # edgeanchor.api.training (the train command)
            "the init checkpoint keeps its anchors; drop anchors":
            "--init keeps the checkpoint's anchors; drop --anchors",
            "the init checkpoint ": "--init ", "checkpoint but model is": "checkpoint but --model is",
            "drop model or pass": "drop --model or pass",
            "give model (e.g. edgeanchor:demo_ssd) or an init checkpoint":
            "give --model (e.g. edgeanchor:demo_ssd) or --init CHECKPOINT",
            "the train output ": "--out ", "resume: no checkpoint at": "--resume: no checkpoint at",
            "leave resume off to start afresh": "drop --resume to start afresh",
            "resume: the checkpoint file ": "--resume: ",
            "resume: the training state in": "--resume: the training state in",
            "start afresh with overwrite": "start afresh with --overwrite",
            "resume: the run in": "--resume: the run in",
            "or overwrite to start afresh": "or --overwrite to start afresh",
            "give either resume (continue the run at out) or overwrite (start afresh)":
            "give either --resume (continue the run at --out) or --overwrite (start afresh)",
            "give the training annotations as ann (a COCO file of the training images), or data as a DATA.yaml":
            "give --ann (COCO annotations of the training images), or --data DATA.yaml",
            "ann and val_ann are not used": "--ann and --val-ann are not used",
            "choose the training split with split": "choose the training split with --split",
            # edgeanchor.api.gate (regress) and edgeanchor.api.synth (data synth)
            "a pruned model needs data and ann": "--model needs --data and --ann",
            "; give its reference model": "; pass --reference",
            "the synth output ": "--out ", "choose another synth folder": "choose another folder",
            "need num_images >= 1, seed >= 0, image_size >= 64, workers >= 1":
            "need num-images >= 1, seed >= 0, image-size >= 64, workers >= 1"}
_PARAM_RE = re.compile(r"(?<![\w-])(" + "|".join(sorted(_PARAM_FLAGS, key=len, reverse=True)) + r")(?![\w-])")


def flag_wording(message: str) -> str:
    """A core error message in the CLI's terms: parameter names become flags."""
    for phrase, flag in _PHRASES.items():
        message = message.replace(phrase, flag)
    return _PARAM_RE.sub(lambda m: _PARAM_FLAGS[m.group(1)], message)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for user errors, 1 for failed checks)."""
    from ..io import configure_logging

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a flag error already printed as one line (2)
        return int(exc.code or 0)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    configure_logging()
    try:
        return int(args._run(args) or 0)
    except EdgeAnchorError as exc:
        print(f"error: {flag_wording(str(exc))}", file=sys.stderr)
        return 2
    except CheckFailed as exc:
        print(f"error: {flag_wording(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
