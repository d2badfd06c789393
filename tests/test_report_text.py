"""report.md and prune-and-export's summary say which split each mAP is on, the budget and the floor;
the Pareto plot marks the chosen point. On constructed reports: no export is run."""

from __future__ import annotations

import copy

import pytest

from edgeanchor.cli.prune_and_export import summary_line, summary_table
from edgeanchor.exporting.report_md import render_markdown

CHANNELS = [{"level": 0, "cls_channels": 24, "box_channels": 16}, {"level": 1, "cls_channels": 12, "box_channels": 8}]
COST = {"head_macs": 1_000_000, "total_macs": 9_000_000, "num_boxes": 2000, "num_anchors": 10,
        "anchors_per_level": [6, 4], "head_macs_per_level": [600_000, 400_000], "boxes_per_level": [1500, 500]}
PARITY = {"head": {"max_abs_diff": 1e-6, "allclose": True},
          "model": {"matched_fraction": 1.0, "counts_torch": [3], "counts_onnx": [3]}, "passed": True}


def searched_report() -> dict:
    """A prune-and-export report of a search on val with the default budget, reported on test: the figures of
    the demo run in issue 27 (test 0.7222 -> 0.7116; val floor 0.7242, chosen 0.7243)."""
    pruned_cost = {**COST, "head_macs": 473_000, "num_boxes": 950, "num_anchors": 5}
    return {
        "model": "demo", "arch": "demo_ssd", "data": "/d/images", "image_size": [96, 96], "resize": "stretch",
        "search_ann": "/d/val.json", "report_ann": "/d/test.json", "search_split": "val", "report_split": "test",
        "metric": "coco", "mAP": {"baseline": 0.7222, "pruned": 0.7116},
        "chosen": {"source": "search", "search_dir": "/c/s", "removed": [1, 2], "search_mAP": 0.7243,
                   "search_baseline_mAP": 0.7292, "floor": 0.7242, "budget": {"max_drop": 0.005},
                   "target_head_macs": None, "plot": "pareto.png", "method": "greedy", "cost": "head_macs",
                   "num_front_points": 7, "num_evals": 664,
                   "scoring": {"executor": "processes", "workers": 2, "nodes_scored": 664, "evals_per_s": 30.0,
                               "pairs_recomputed_per_node": 12.5}},
        "cost": {"baseline": COST, "pruned": pruned_cost},
        "export": {v: {"head_channels": CHANNELS, "parity": PARITY} for v in ("baseline", "pruned")},
        "graphs": {"pruned": {"model_trt": {"file": "model_trt.onnx"}}},
        "trtexec": {"pruned": "trtexec --onnx=model_trt.onnx", "baseline": "trtexec --onnx=baseline/model_trt.onnx"},
        "seconds": {"search": 21.0, "total": 180.0}, "out": "exports/demo",
    }


def test_report_md_names_the_splits_the_budget_and_the_floor():
    text = render_markdown(searched_report())
    assert ("The anchors were searched on the val split (`/d/val.json`); every mAP below is on the test split "
            "(`/d/test.json`) unless it says otherwise.") in text
    # 100 x 0.005 = 0.50 points; 0.7116 - 0.7222 = -0.0106 -> -1.06 points
    assert ("Budget: `max_drop` 0.005 (`--max-drop`): at most 0.50 points below the unpruned model's val mAP. "
            "The floor on the val split is 0.7242 (unpruned: 0.7292). The cheapest front point at or above the "
            "floor was chosen: val mAP 0.7243, test mAP 0.7116 (unpruned: 0.7222 on test, -1.06 points).") in text
    assert "| test COCO mAP@[.5:.95] | 0.7222 | 0.7116 |  |" in text
    assert "](pareto.png)" in text and "on the val split against head MACs" in text
    assert "on 2 worker processes at 30.0 evaluations/s" in text and "(s)" not in text


def test_report_md_with_min_map_a_head_mac_target_and_fine_tuning():
    report = searched_report()
    report["chosen"].update(budget={"min_map": 0.7}, floor=0.7, target_head_macs=500_000)
    report["mAP"]["finetuned"] = 0.7301
    text = render_markdown(report)
    assert "Budget: `min_map` 0.7 (`--min-map`): the floor is that mAP. The floor on the val split is 0.7000" in text
    assert "Of the front points with at most 500,000 head MACs (`--target-head-macs`), the most accurate was chosen" in text
    assert "| test mAP after fine-tuning | 0.7222 | 0.7301 |  |" in text
    assert "test mAP 0.7222 -> 0.7116 -> 0.7301 fine-tuned (val: floor 0.7000, chosen 0.7243)" in summary_line(report)
    assert "test mAP fine-tuned" in summary_table(report)


def test_an_export_of_given_anchors_names_its_one_split():
    report = searched_report()
    report.update(search_ann=None, search_split=None, chosen={"source": "given"})
    text = render_markdown(report)
    assert "Every mAP below is on the test split (`/d/test.json`)." in text
    assert "Budget" not in text and "pareto.png" not in text
    assert summary_line(report).endswith("test mAP 0.7222 -> 0.7116, parity passed")


def test_a_report_without_split_names_falls_back_to_the_annotation_files():
    report = searched_report()
    del report["search_split"], report["report_split"]  # a format-2 report written before they existed
    text = render_markdown(report)
    assert "searched on the val split (`/d/val.json`); every mAP below is on the test split" in text


def test_summary_names_the_split_of_every_map():
    report = searched_report()
    line = summary_line(report)
    assert line == ("wrote exports/demo in 180s: head MACs x0.473, test mAP 0.7222 -> 0.7116 "
                    "(val: floor 0.7242, chosen 0.7243), parity passed")
    table = summary_table(report)
    assert "test mAP" in table and "val mAP (searched)" in table
    rows = {ln.split("  ")[0].strip(): ln.split() for ln in table.splitlines()}
    assert rows["val mAP (searched)"][-2:] == ["0.7292", "0.7243"]
    assert all(ln.split()[0] in ("test", "val") for ln in table.splitlines() if " mAP" in ln)


def test_pareto_figure_marks_the_chosen_point_and_names_the_split():
    from edgeanchor.subset_search.plot import pareto_figure

    nodes = [{"head_macs": m, "mAP": a} for m, a in ((1e6, 0.73), (6e5, 0.725), (4e5, 0.70), (5e5, 0.7243))]
    front = copy.deepcopy(nodes[:2]) + [{"head_macs": 5e5, "mAP": 0.7243}]
    fig = pareto_figure(nodes, front, {"head_macs": 1e6, "mAP": 0.73}, floor=0.7242, split="val",
                        chosen={"head_macs": 5e5, "mAP": 0.7243, "num_anchors": 5})
    ax = fig.axes[0]
    assert ax.get_ylabel() == "COCO mAP@[.5:.95] on the val split"
    marks = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
    assert marks["chosen: 5 anchors, mAP 0.7243"] == [[0.5, pytest.approx(0.7243)]]  # head MACs in millions
    plain = pareto_figure(nodes, front, {"head_macs": 1e6, "mAP": 0.73}, metric="voc07")
    assert plain.axes[0].get_ylabel() == "VOC2007 mAP@0.5 (11-point)"
    assert not any(c.get_label().startswith("chosen") for c in plain.axes[0].collections)


def test_a_label_free_search_names_fidelity_on_the_search_split_and_mAP_on_a_labelled_report_split():
    """Searched label-free (pseudo-labels on val), reported on a labelled test split: the search split's figures
    are fidelity, the report split's are mAP, in report.md's budget line and in the summary."""
    report = searched_report()
    report["reference"] = "labels"  # the report split has labels ...
    report["fidelity"] = {"baseline": 1.0, "pruned": 0.981}  # ... and the search was label-free
    text = render_markdown(report)
    assert ("at most 0.50 points below the unpruned model's val fidelity mAP. The floor on the val split is "
            "0.7242 (unpruned: 0.7292). The cheapest front point at or above the floor was chosen: val fidelity mAP "
            "0.7243, test mAP 0.7116") in text
    assert "(val fidelity: floor 0.7242, chosen 0.7243)" in summary_line(report)
    assert "val fidelity mAP (searched)" in summary_table(report)
    both = copy.deepcopy(report)  # an unlabelled report split: its figures are fidelity too
    both["reference"] = "pseudo-labels"
    del both["fidelity"]
    assert "val fidelity mAP 0.7243, test fidelity mAP 0.7116" in render_markdown(both)
    assert "test fidelity mAP 0.7222 -> 0.7116 (val: floor" in summary_line(both)
