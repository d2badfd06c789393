"""``edgeanchor evaluate --export EXPORT``: the deployed graph's COCO mAP in a runtime (no torch needed).

Not a subcommand of its own: :mod:`.evaluate` hands over to :func:`run_export` when ``--export`` is
given. Its flags are :class:`~edgeanchor.api.settings.EvaluateSettings`' export group.
"""

from __future__ import annotations


def run_export(s, as_json: bool = False) -> int:
    """Evaluate ``s.export`` (``s``: the :class:`~edgeanchor.api.settings.EvaluateSettings`); prints one summary
    line, or the result with --json."""
    from .. import api
    from ..errors import EdgeAnchorError
    from .common import print_json

    given = s.model_settings_given()
    if given:
        named = ", ".join(f"`{name}`" for name in given)
        raise EdgeAnchorError(f"{named} cannot be used with `export` (the export carries its model, rule and "
                              "preprocessing); drop them")
    if s.ann and not s.data:
        raise EdgeAnchorError("--ann needs --data, the folder of the images it lists")
    data = api.data(s.data, s.ann) if s.ann else s.data
    result = api.evaluate(s.export, data, **s.export_kwargs())
    if as_json:
        print_json(result)
        return 0
    from ..evaluation.pseudo import reference_info

    torch_map = result["pytorch_mAP"]
    reference = f"; PyTorch with the graph's rule (report.json) {torch_map:.4f}" if torch_map is not None else ""
    free = reference_info(result["ann"]) is not None  # pseudo-labels: fidelity to the unpruned model
    print(f"{result['graph']} ({s.variant}) in {result['runtime']} {result['settings'].get('version', '')} at "
          f"{result['precision']} on {result['ann']}: {'fidelity ' if free else ''}mAP {result['mAP']:.4f}, mAP50 "
          f"{result['mAP50']:.4f}{reference} ({result['num_images']} images, {result['num_detections']} detections)"
          f"{' (label-free: agreement with the unpruned model, not accuracy)' if free else ''}")
    return 0
