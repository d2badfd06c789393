"""Search scaling: evaluations per second with 1 and 2 local workers, worker processes against Ray actors.

Workload: the search_speed benchmark's COCO-scale SSD300 cache (5000 images, 8732 boxes, 30 anchors, 80
classes; built here with its code) and the batches a greedy search scores first: the root's children (one
per anchor), then the children of one of them, and so on (--batches). Each configuration runs the search's
own Evaluator (edgeanchor.subset_search.evaluator) and must give every child the same mAP as the others, bit for
bit (checked).

- processes x W: W spawned worker processes, each holding every image, scoring a contiguous share of the
  batch's children (W = 1: in the search process);
- ray x W: W Ray actors on a local ray.init(num_cpus=W), actor i holding image shard i of W; every actor
  scores every child on its shard and the driver merges the shards' per-class lists (exact).

It also times one shard's work per child at 1 and 2 shards in this process (the per-shard cost), the
driver's merge per child and the bytes a shard sends per child, and extrapolates, on paper, to a
100k-image validation set on N machines.

Run: python benchmarks/search_scaling.py [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_speed as S  # noqa: E402  (the benchmark's workload generator)

from edgeanchor.datasets.coco import make_label_map  # noqa: E402
from edgeanchor.evaluation.cache import CandidateCache  # noqa: E402
from edgeanchor.evaluation.incremental import ShardScorer, merge_map  # noqa: E402
from edgeanchor.evaluation.subset import SubsetScorer  # noqa: E402
from edgeanchor.io import write_json  # noqa: E402
from edgeanchor.subset_search.evaluator import Evaluator  # noqa: E402

NUM_ANCHORS = 30  # SSD300
WARM_PARENT = 2  # a warm-up batch (children of (2,)) that no measured batch scores


class _NoCost:
    """The scaling run measures scoring only; every node costs 0."""

    def head_macs(self, removed) -> int:
        return 0

    def boxes(self, removed) -> int:
        return 0


def build_cache(workdir: Path, num_images: int, seed: int) -> tuple[Path, Path]:
    S.write_layouts(workdir)
    ann = workdir / "ssd_ann.json"
    S.write_ann(ann, seed, num_images, S.SSD_SIZE)
    anchors, box_anchor, meta = S.load_layout(workdir, "ssd")
    parts = [S.ssd_candidates(*S.ssd_image(seed, i, anchors), meta["spec"]["score_thresh"]) for i in range(num_images)]
    cache = S.assemble_cache(parts, box_anchor, meta, make_label_map(S.COCO_CAT_IDS, 81), ann, num_images)
    path = workdir / "ssd_cache.npz"
    cache.save(path)
    return path, ann


def greedy_batches(num_batches: int) -> list[tuple[tuple, list]]:
    """(parent, children) of a greedy search's first batches: each parent adds the level-5 anchor 26 + i."""
    out, parent = [], ()
    for b in range(num_batches):
        children = [tuple(sorted(parent + (a,))) for a in range(NUM_ANCHORS) if a not in parent]
        out.append((parent, children))
        parent = tuple(sorted(parent + (26 + b % 4,)))
    return out


def run_config(executor: str, workers: int, cache_path: Path, ann: Path, batches) -> dict:
    t0 = time.perf_counter()
    scorer = SubsetScorer(CandidateCache.load(cache_path), ann)
    ev = Evaluator(scorer, _NoCost(), lambda r, m, b: 0.0, workers=workers, cache_path=cache_path, ann=ann,
                   max_evals=10**6, executor=executor)
    try:
        ev.evaluate([()])
        warm = [tuple(sorted((WARM_PARENT, a))) for a in range(NUM_ANCHORS) if a != WARM_PARENT]
        ev.evaluate(warm, (WARM_PARENT,))  # starts the pools (spawn, imports, compiled code), untimed
        startup = time.perf_counter() - t0
        times, maps = [], {}
        for parent, children in batches:
            if parent not in ev.memo:
                ev.evaluate([parent])
            t = time.perf_counter()
            nodes = ev.evaluate(children, parent)
            times.append(time.perf_counter() - t)
            maps.update({n.removed: n.map for n in nodes})
        pairs = getattr(ev, "pairs_recomputed", None)
    finally:
        ev.close()
    n = sum(len(c) for _, c in batches)
    return {"executor": executor, "workers": workers, "startup_s": startup, "batch_s": times, "children": n,
            "evals_per_s": n / sum(times), "s_per_eval": sum(times) / n, "pairs_recomputed": pairs,
            "maps": {",".join(map(str, k)): v for k, v in maps.items()}}


def shard_costs(cache_path: Path, ann: Path, batches, shard_counts=(1, 2)) -> list[dict]:
    """One shard's own work per child (pin once per batch, then partials), the driver's merge, the bytes sent."""
    cache = CandidateCache.load(cache_path)
    out = []
    for count in shard_counts:
        scorers = [ShardScorer(cache, ann, shard=(i, count)) for i in range(count)]
        per_shard = []
        merges, sizes = [], []
        for i, sc in enumerate(scorers):
            t_pin, t_child = 0.0, []
            for parent, children in batches:
                t = time.perf_counter()
                sc.pin(parent)
                t_pin += time.perf_counter() - t
                for k in children:
                    t = time.perf_counter()
                    sc.partials(k, parent)
                    t_child.append(time.perf_counter() - t)
            per_shard.append({"shard": i, "images": len(sc.images), "candidates": sc.cache.num_candidates,
                              "pin_s_per_batch": t_pin / len(batches), "child_s_median": float(np.median(t_child)),
                              "child_s_mean": float(np.mean(t_child))})
        for parent, children in batches[:1]:
            for k in children[:10]:
                parts = [sc.partials(k, parent) for sc in scorers]
                sizes.append(sum(p.nbytes for p in parts))
                t = time.perf_counter()
                merge_map(parts)
                merges.append(time.perf_counter() - t)
        out.append({"shards": count, "per_shard": per_shard, "merge_s_median": float(np.median(merges)),
                    "partials_bytes_per_child": float(np.mean(sizes))})
    return out


def on_paper(num_images: int, costs: list[dict], target_images: int = 100_000,
             machines=(1, 2, 4, 8, 16), cores_per_machine: int = 16, driver_threads: int = 16) -> dict:
    """Evaluations per second for ``target_images`` on N machines, from the measured per-shard costs.

    Every shard works on every child, so the shards give 1 / (one shard's child cost) evaluations per
    second; a shard's child cost is taken as linear in its images (fitted on the 1- and 2-shard points).
    The driver merges each child's shards; its merge is linear in the detections, i.e. in the images, and
    children merge in parallel on ``driver_threads`` threads (compiled code and NumPy sorts release the GIL).
    """
    pts = [(c["per_shard"][0]["images"], c["per_shard"][0]["child_s_median"]) for c in costs]
    (x1, y1), (x2, y2) = pts[0], pts[-1]
    slope = (y1 - y2) / (x1 - x2) if x1 != x2 else y1 / x1
    base = max(y1 - slope * x1, 0.0)
    merge = costs[-1]["merge_s_median"] * target_images / num_images
    rows = []
    for n in machines:
        shards = n * cores_per_machine
        shard_child = base + slope * target_images / shards
        shard_rate, merge_rate = 1.0 / shard_child, driver_threads / merge
        rows.append({"machines": n, "cores_per_machine": cores_per_machine, "shards": shards,
                     "images_per_shard": target_images // shards, "shard_child_s": shard_child,
                     "driver_merge_s": merge, "evals_per_s": min(shard_rate, merge_rate),
                     "bottleneck": "driver merge" if merge_rate < shard_rate else "shards"})
    return {"target_images": target_images, "child_cost_model_s": {"base": base, "per_image": slope},
            "merge_s_per_child": merge, "driver_threads": driver_threads, "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=5000)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--executors", nargs="+", default=["processes", "ray"], choices=["processes", "ray"])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--out", default="benchmarks/results/search_scaling.json")
    p.add_argument("--quick", action="store_true", help="smoke run: 300 images, 1 batch")
    args = p.parse_args(argv)
    if args.quick:
        args.num_images, args.batches = 300, 1
    started = time.perf_counter()
    load_start = list(os.getloadavg())
    batches = greedy_batches(args.batches)
    with tempfile.TemporaryDirectory(prefix="search_scaling_") as tmp:
        workdir = Path(tmp)
        cache_path, ann = build_cache(workdir, args.num_images, args.seed)
        costs = shard_costs(cache_path, ann, batches)
        configs = []
        for executor in args.executors:
            for w in args.workers:
                print(f"[{time.strftime('%H:%M:%S')}] {executor} x {w}", file=sys.stderr, flush=True)
                configs.append(run_config(executor, w, cache_path, ann, batches))
    reference = configs[0]["maps"]
    identical = all(c["maps"] == reference for c in configs)
    for c in configs:
        c["identical_to_first"] = c.pop("maps") == reference
    one = {c["executor"]: c["evals_per_s"] for c in configs if c["workers"] == 1}
    for c in configs:
        c["speedup_over_1_worker"] = c["evals_per_s"] / one[c["executor"]] if c["executor"] in one else None
    versions = {k: md.version(k) for k in ("numpy", "numba", "ray") if _installed(k)}
    res = {"benchmark": "search_scaling", "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
           "machine": {"cpu": S.machine()["cpu"], "cores": os.cpu_count(), "python": platform.python_version(),
                       **versions, "load_average_at_start": load_start, "load_average_at_end": list(os.getloadavg()),
                       "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
           "settings": {"num_images": args.num_images, "batches": [(list(pa), len(ch)) for pa, ch in batches],
                        "executors": args.executors, "workers": args.workers},
           "configs": configs, "identical_maps": identical, "shard_costs": costs,
           "on_paper_100k": on_paper(args.num_images, costs), "wall_s": time.perf_counter() - started}
    write_json(args.out, res)
    print(f"\nsearch scaling ({args.num_images} images, {sum(len(c) for _, c in batches)} children per config, "
          f"{res['machine']['cpu']}, load {load_start[0]:.2f})")
    for c in configs:
        print(f"  {c['executor']:9s} x{c['workers']}: {c['evals_per_s']:6.2f} evals/s ({c['s_per_eval']:.3f} s/eval, "
              f"start {c['startup_s']:.1f} s, x{c['speedup_over_1_worker'] or 0:.2f} over 1 worker)")
    print(f"  every config gave identical mAPs: {identical}")
    for c in costs:
        print(f"  {c['shards']} shard(s): child {c['per_shard'][0]['child_s_median']:.3f} s per shard, merge "
              f"{c['merge_s_median']:.3f} s, {c['partials_bytes_per_child'] / 1e6:.1f} MB sent per child")
    for r in res["on_paper_100k"]["rows"]:
        print(f"  100k images on {r['machines']:2d} x {r['cores_per_machine']} cores: {r['evals_per_s']:.2f} evals/s "
              f"(bottleneck: {r['bottleneck']})")
    print(f"wrote {args.out}")
    return 0 if identical else 1


def _installed(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


if __name__ == "__main__":
    sys.exit(main())
