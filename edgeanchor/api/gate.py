"""The Python API's CI gate: :func:`regress`, accuracy and latency of an export against a stored baseline.

Torch-free on an export folder (format 2): numpy, pillow, onnx, the runtime and a COCO evaluator are
enough. Only ``model=`` (export a checkpoint first) needs torch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import EdgeAnchorError
from ..settings import typechecked

if TYPE_CHECKING:
    from ..exporting.folder import ExportFolder


@typechecked
def regress(export: ExportFolder | str | os.PathLike | None = None, *, baseline: str | os.PathLike,
            model: str | os.PathLike | None = None, reference: str | None = None,
            data: str | os.PathLike | None = None, ann: str | os.PathLike | None = None,
            runtime: str = "onnxruntime", precision: str = "fp32", map_tol: float = 0.005,
            latency_tol: float = 0.10, iters: int | Literal["auto"] = "auto", max_time: float = 60.0,
            clock: str = "cpu",
            warmup: int = 10, threads: int = 1, strict: bool = False, update: bool = False,
            json_path: str | os.PathLike | None = None, summary_path: str | os.PathLike | None = None
            ) -> dict[str, Any]:
    """Measure an export and hold it to a baseline: deployed mAP, pruned/baseline latency ratios, head channels.

    Args:
        export: an export folder or its path (default ``exports/demo``); not with ``model``.
        baseline: the baseline JSON (written when ``update`` is set).
        model: a pruned checkpoint to export (with ``reference``) and measure instead of ``export``.
        reference: with ``model``, the unpruned model (default: the model the checkpoint was pruned from).
        data, ann: image folder and COCO annotations (default: the export's report split).
        runtime, precision: where the deployed graph is evaluated and timed (fp32, bf16, fp16, int8; also f32, f16).
        map_tol: allowed mAP drop (mAP units); latency_tol: allowed relative rise of a latency ratio.
        iters, max_time, warmup, threads: the timing (ratios of medians of interleaved rounds, each with its
            95 % bootstrap interval); ``iters="auto"`` measures until every ratio's interval is within ±3 %
            and none straddles its bound, or ``max_time`` seconds have passed.
        clock: what a timing counts: ``cpu`` (default), this process's CPU time, which leaves out waiting for
            a CPU, so a busy runner cannot fake a regression (with one thread on a CPU it is the latency of a
            quiet machine), or ``wall`` time (TensorRT: GPU time either way).
        strict: an inconclusive latency row fails the check instead of passing.
        update: write ``baseline`` from this measurement instead of comparing with it.
        json_path: also write the verdict (measurement, rows, tolerances) here.
        summary_path: write the Markdown summary here (it is also appended to ``$GITHUB_STEP_SUMMARY``).

    The settings are :class:`~edgeanchor.api.settings.RegressSettings`' fields (``edgeanchor regress``'s flags).

    A latency row passes when the measured ratio's interval lies within its bound, fails when it lies
    entirely above it, and is inconclusive when it straddles the bound after the time budget; accuracy and
    channel rows are exact. The stderr line says whether the timing target was reached, and a warning
    names the cause and the fix when the timing is unstable.

    Returns:
        With ``update``: ``{"updated": True, "baseline": path, "measured": ...}``. Otherwise the verdict:
        ``result`` (pass, fail or inconclusive), ``passed`` (false on a fail, or on an inconclusive row with
        ``strict``), ``exit_code`` (0, 1, or 3 for inconclusive), ``rows`` (metric, value, interval,
        baseline, bound, result, passed), ``measured``, ``tolerances`` and ``markdown``.

    Raises:
        EdgeAnchorError: bad settings, a missing runtime, a malformed or mismatched baseline, outputs that
            are not regress's own; all found before anything is measured.
    """
    from .. import regression as core
    from ..benchmark.accuracy import graphs_use_reported_rule
    from ..benchmark.harness import report_timing
    from ..exporting.folder import ExportFolder, default_export_dir
    from ..io import write_json, write_text
    from ..runtimes import canonical_precision
    from .settings import RegressSettings

    precision = canonical_precision(precision)  # f32, f16: the older spellings
    RegressSettings(export=export, baseline=baseline, model=model, reference=reference, data=data,
                    ann=ann, runtime=runtime, precision=precision, map_tol=map_tol, latency_tol=latency_tol,
                    iters=iters, max_time=max_time, clock=clock, warmup=warmup, threads=threads, strict=strict,
                    update=update, json_path=json_path,
                    summary_path=summary_path).validate()  # once, before anything is opened
    stored = None if update else core.load_baseline(baseline)
    with tempfile.TemporaryDirectory() as tmp:
        if model:
            folder = _export_model(model, reference, data, ann, tmp)
        elif isinstance(export, ExportFolder):
            folder = export
        else:
            folder = ExportFolder.open(export or default_export_dir())
        if stored is not None:  # a baseline of another model, split or runtime: refused before measuring
            core.check_identity(stored, folder, ann, baseline)
            core.check_runtime(stored, runtime, precision, baseline)
            core.deployed_reference(stored, runtime=runtime, precision=precision,
                                    same_rule_as_pytorch=graphs_use_reported_rule(folder), path=baseline)
        limits = None if stored is None else core.latency_limits(stored, latency_tol)
        measured = core.measure(folder, data=data, ann=ann, iters=iters, max_time=max_time, clock=clock, warmup=warmup,
                                threads=threads, runtime=runtime, precision=precision, limits=limits)
    report_timing(measured, "regress")
    if update:
        core.save_baseline(baseline, measured, map_tol=map_tol, latency_tol=latency_tol)
        return {"updated": True, "baseline": str(baseline), "measured": measured}
    assert stored is not None  # read before measuring unless update
    rows = core.compare(measured, stored, map_tol=map_tol, latency_tol=latency_tol)
    md = core.markdown(rows, measured, strict=strict)
    result, passed, exit_code = core.verdict(rows, strict=strict)
    verdict = {"result": result, "passed": passed, "exit_code": exit_code, "strict": strict, "rows": rows,
               "measured": measured, "tolerances": {"map_tol": map_tol, "latency_tol": latency_tol}}
    if json_path:
        write_json(json_path, verdict)
    if summary_path:
        write_text(summary_path, md)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as fh:
            fh.write(md + "\n")
    return {**verdict, "markdown": md}


def _check(*, export, baseline, model, data, ann, runtime, precision, map_tol, latency_tol, iters, max_time,
           clock, warmup, threads, strict, update, json_path, summary_path) -> None:
    """Every setting and output path, before anything is opened or measured."""
    from .. import regression as core
    from ..benchmark.harness import check_timing
    from ..io import check_output_file
    from ..runtimes import check_precision, require

    if export is not None and model is not None:
        raise EdgeAnchorError("give export or model, not both")
    check_timing(iters, warmup, threads, max_time, clock)
    require(runtime)  # one line naming what to install
    check_precision(runtime, precision)
    if not (map_tol >= 0 and latency_tol >= 0):
        raise EdgeAnchorError(f"`map_tol` and `latency_tol` must be >= 0 (got {map_tol}, {latency_tol})")
    # Results of ours are rewritten on every run (as a CI step does); anything else is refused.
    inputs = [baseline, getattr(export, "root", export), model, data, ann]
    if update:  # update is the request to replace a baseline of ours, and only that
        check_output_file(baseline, overwrite=True, is_ours=core.is_baseline, what="regression baseline",
                          inputs=inputs[1:])
    if json_path:
        check_output_file(json_path, overwrite=True, is_ours=core.is_verdict, what="regress verdict", inputs=inputs)
    if summary_path:
        check_output_file(summary_path, overwrite=True, is_ours=core.is_summary, what="regress summary",
                          inputs=inputs)


def _export_model(model, reference, data, ann, tmp) -> ExportFolder:
    """Export ``model`` and its reference into an export folder under ``tmp`` (needs torch)."""
    from ..models import build_detector, load_checkpoint
    from ..models.registry import checkpoint_meta
    from ..pipeline import write_export

    if not (data and ann):
        raise EdgeAnchorError("a pruned `model` needs `data` and `ann` to evaluate on")
    pruned = load_checkpoint(model)
    reference = reference or checkpoint_meta(model).get("pruned_from")
    if not reference:
        raise EdgeAnchorError(f"{model} does not record the model it was pruned from; give its `reference` model")
    return write_export(build_detector(reference), pruned, Path(tmp) / "export", data=data, report_ann=ann,
                        model_name=str(reference))
