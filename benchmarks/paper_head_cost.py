"""Head MACs and boxes of torchvision SSD300 and RetinaNet, default against pruned anchors.

Compares with the figures of Bonnaerens et al., "Anchor Pruning for Object
Detection" (CVIU 2022): SSD300 (81 classes) head 4231M for the baseline and
2476M for its configuration B; RetinaNet R50-FPN head 129B -> 31B FLOPs.
The paper's configurations are given in its reference form (base size and
per-level (scale, ratio h/w) pairs), as published with its code.

  python benchmarks/paper_head_cost.py [--out benchmarks/results/paper_head_cost.json]
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeanchor.anchors import from_reference  # noqa: E402
from edgeanchor.benchmark.machine import machine_info  # noqa: E402
from edgeanchor.cost import measure_cost  # noqa: E402
from edgeanchor.io import write_json  # noqa: E402
from edgeanchor.models import build_detector  # noqa: E402
from edgeanchor.pruning import prune  # noqa: E402

# The paper's SSD300 configuration B (17 of 30 anchors), reference form, ratio = h/w.
SSD_CONFIG_B = {
    "base_size": 300,
    "scale_ratios": [
        [[0.07, 1.0], [0.1024, 1.0]],
        [[0.15, 1.0], [0.15, 3.0], [0.15, 1 / 3], [0.224, 1.0]],
        [[0.33, 1.0], [0.33, 2.0], [0.33, 3.0], [0.33, 1 / 3], [0.4102, 1.0]],
        [[0.51, 3.0], [0.51, 1 / 3], [0.5932, 1.0]],
        [[0.69, 1.0], [0.69, 2.0]],
        [[0.9557, 1.0]],
    ],
}
PAPER = {"ssd300_baseline_head": 4231e6, "ssd300_config_b_head": 2476e6,
         "retinanet_baseline_head_flops": 129e9, "retinanet_pruned_head_flops": 31e9}


def cost_row(name: str, det) -> dict:
    c = measure_cost(det)
    return {"name": name, "arch": det.arch, "image_size": list(det.image_size),
            "num_anchors": det.anchor_set.num_anchors,
            "anchors_per_level": det.anchor_set.anchors_per_level(), "head_macs": c.head_macs,
            "head_macs_per_level": c.head_macs_per_level, "num_boxes": c.num_boxes, "total_macs": c.total_macs}


def ssd_rows() -> list[dict]:
    base = build_detector("torchvision:ssd300_vgg16", num_classes=81)
    config_b = build_detector("torchvision:ssd300_vgg16", num_classes=81,
                              anchors=from_reference(SSD_CONFIG_B, base.anchor_set))
    # the same counts as a keep set of torchvision's own anchors: per level, the first n anchors
    counts = config_b.anchor_set.anchors_per_level()
    keep = {a.id for lv, n in zip(base.anchor_set.levels, counts) for a in lv.anchors[:n]}
    return [cost_row("ssd300 baseline", base), cost_row("ssd300 configuration B (paper anchors)", config_b),
            cost_row("ssd300 pruned to configuration B counts (sliced)", prune(base, keep))]


def retinanet_rows(image_size) -> list[dict]:
    base = build_detector("torchvision:retinanet_resnet50_fpn", num_classes=91, image_size=image_size)
    # The paper's pruned RetinaNet drops P3 and, on every other level, the anchor of the
    # largest octave scale with ratio 1 (torchvision position 5: ratio-major, scale-minor).
    keep = {a.id for lv in base.anchor_set.levels[1:] for p, a in enumerate(lv.anchors) if p != 5}
    return [cost_row(f"retinanet baseline {image_size[0]}x{image_size[1]}", base),
            cost_row(f"retinanet pruned (paper) {image_size[0]}x{image_size[1]}", prune(base, keep))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/paper_head_cost.json")
    args = parser.parse_args(argv)
    rows = ssd_rows() + retinanet_rows((800, 800)) + retinanet_rows((800, 1344))
    by = {r["name"]: r for r in rows}
    ssd_b = by["ssd300 configuration B (paper anchors)"]["head_macs"]
    ssd_base = by["ssd300 baseline"]["head_macs"]
    checks = {
        "ssd300_baseline_boxes_is_8732": by["ssd300 baseline"]["num_boxes"] == 8732,
        "ssd300_baseline_head_vs_paper": ssd_base / PAPER["ssd300_baseline_head"],
        "ssd300_config_b_head_vs_paper": ssd_b / PAPER["ssd300_config_b_head"],
        "ssd300_config_b_ratio": ssd_b / ssd_base,
        "retinanet_pruned_ratio_800x800": by["retinanet pruned (paper) 800x800"]["head_macs"]
        / by["retinanet baseline 800x800"]["head_macs"],
        "retinanet_pruned_ratio_800x1344": by["retinanet pruned (paper) 800x1344"]["head_macs"]
        / by["retinanet baseline 800x1344"]["head_macs"],
        "paper_retinanet_ratio": PAPER["retinanet_pruned_head_flops"] / PAPER["retinanet_baseline_head_flops"],
    }
    result = {"benchmark": "paper_head_cost", "date": datetime.date.today().isoformat(), "machine": machine_info(),
              "note": "MACs count convolution multiply-accumulates (biases excluded), as torchprofile/fvcore do.",
              "paper": PAPER, "rows": rows, "checks": checks}
    write_json(args.out, result)
    for r in rows:
        print(f"{r['name']:<52} anchors {r['num_anchors']:>3}  boxes {r['num_boxes']:>7}  "
              f"head {r['head_macs'] / 1e6:>10.1f}M MACs")
    for k, v in checks.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
