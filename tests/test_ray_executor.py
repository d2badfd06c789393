"""The Ray executor: image shards on actors give exactly the in-process mAPs; dead actors; unreachable clusters.

One local Ray (2 CPUs, no dashboard) per test process, started by the module fixture and used by every
executor here (an executor leaves a Ray it did not start running). Actor bodies that die are defined
inside the tests, so Ray ships them by value to its worker processes.
"""

from __future__ import annotations

import json
import os
import socket

import pytest

from edgeanchor.cli import flag_wording, main
from edgeanchor.errors import EdgeAnchorError
from edgeanchor.models import build_detector
from tests.helpers import shared_synth_split

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install "edgeanchor[ray]")')

from edgeanchor.subset_search import ray_executor  # noqa: E402  (after the skip: needs nothing of Ray at import)
from edgeanchor.subset_search.ray_executor import RayShardExecutor, ShardWorker, check_ray_address  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return shared_synth_split(tmp_path_factory, "ray_split", num_images=30, seed=11, splits=(0.2, 0.6, 0.2))


@pytest.fixture(scope="module")
def demo():
    return build_detector("demo")


@pytest.fixture(scope="module")
def cache_file(demo, split, tmp_path_factory):
    """(cache path, annotation file, the cache) of the demo model on the val split."""
    from edgeanchor.datasets.coco import CocoDetection
    from edgeanchor.evaluation.cache import build_cache

    images, anns = split
    data = CocoDetection(images, anns["val"], num_classes=demo.num_classes, image_size=demo.image_size)
    cache = build_cache(demo, data, progress=False)
    path = tmp_path_factory.mktemp("ray_cache") / "cache.npz"
    cache.save(path)
    return path, anns["val"], cache


def batches(det):
    """(children, parent) batches as the search makes them, a whole level removed among them."""
    levels = det.anchor_set.levels
    coarsest = tuple(a.id for a in levels[-1].anchors)
    return [
        ([()], ()),
        ([(0,), (1,), coarsest, (2, 5)], ()),
        ([(0, 1), (0, 3), tuple(sorted((0,) + coarsest)), (0,)], (0,)),
    ]


def expected(cache, ann, det) -> list[list[float]]:
    from edgeanchor.evaluation.subset import SubsetScorer

    scorer = SubsetScorer(cache, ann)
    return [[scorer.score(k, parent, full=False)["mAP"] for k in children] for children, parent in batches(det)]


def scored(executor, det) -> list[list[float]]:
    return [[r["mAP"] for r in executor.score(children, parent)] for children, parent in batches(det)]


@pytest.mark.slow
def test_shards_give_exactly_the_in_process_map(local_ray, cache_file, demo):
    path, ann, cache = cache_file
    want = expected(cache, ann, demo)
    ex = RayShardExecutor(path, ann, 2)
    try:
        assert scored(ex, demo) == want  # ==, not approx: the shards merge to pycocotools' mAP exactly
        assert ex.num_scored == sum(len(c) for c, _ in batches(demo))
        assert ex.pairs_recomputed > 0
        assert len({m for batch in want for m in batch}) >= 4  # the children really differ
        # an actor killed between batches is restarted, and the batch is the same
        ray.kill(ex._actors[1])
        assert scored(ex, demo) == want
    finally:
        ex.close()
    assert ray.is_initialized()  # the executor did not start this Ray, so it left it running


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["voc07", "voc"])
def test_shards_give_exactly_the_in_process_voc_map(local_ray, cache_file, demo, metric):
    """The actors score the search's metric: Pascal VOC mAP@0.5 merges over shards exactly too."""
    from edgeanchor.evaluation.subset import SubsetScorer

    path, ann, cache = cache_file
    scorer = SubsetScorer(cache, ann, metric=metric)
    want = [[scorer.score(k, parent, full=False)["mAP"] for k in children] for children, parent in batches(demo)]
    assert want != expected(cache, ann, demo)  # not COCO's numbers
    ex = RayShardExecutor(path, ann, 2, metric=metric)
    try:
        assert scored(ex, demo) == want
    finally:
        ex.close()


@pytest.mark.slow  # starts the local Ray
def test_more_workers_than_the_cluster_has_cpus_is_one_line(local_ray, cache_file):
    path, ann, _ = cache_file
    with pytest.raises(EdgeAnchorError, match="has 2 CPUs, fewer than `workers` 3"):
        RayShardExecutor(path, ann, 3)
    assert ray.is_initialized()


@pytest.mark.slow
def test_an_actor_that_dies_during_a_batch_is_restarted(local_ray, cache_file, demo, tmp_path):
    path, ann, cache = cache_file
    marker = str(tmp_path / "died")

    class DiesOnce(ShardWorker):  # defined here, so Ray ships it by value
        def score(self, children, parent):
            if self.shard[0] == 1 and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)  # the actor's process dies mid-batch
            return super().score(children, parent)

    notes = []
    ex = _executor(DiesOnce, path, ann, log=notes.append)
    try:
        assert scored(ex, demo) == expected(cache, ann, demo)
    finally:
        ex.close()
    assert os.path.exists(marker)
    assert len(notes) == 1 and "image shard 2 of 2 died" in notes[0]


def _executor(worker_class, path, ann, **kwargs):
    old = RayShardExecutor.worker_class
    RayShardExecutor.worker_class = worker_class
    try:
        return RayShardExecutor(path, ann, 2, **kwargs)
    finally:
        RayShardExecutor.worker_class = old


def dying_worker():
    class DiesAlways(ShardWorker):
        def score(self, children, parent):
            if self.shard[0] == 1:
                os._exit(1)
            return super().score(children, parent)

    return DiesAlways


@pytest.mark.slow
def test_an_actor_that_always_dies_fails_the_search_without_a_front(local_ray, split, tmp_path, monkeypatch,
                                                                    capsys):
    images, anns = split
    monkeypatch.setattr(RayShardExecutor, "worker_class", dying_worker())
    out = tmp_path / "s"
    code = main(["search", "--model", "demo", "--data", images, "--ann", anns["val"], "--out", str(out),
                 "--max-evals", "20", "--workers", "2", "--executor", "ray", "--cache", str(tmp_path / "c.npz")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and lines[-1].startswith("error: ") and "Traceback" not in err, err[-2000:]
    assert "image shard 2 of 2 died 3 times" in lines[-1]
    assert not (out / "search.json").exists() and not (out / "front").exists()  # no result from partial data


@pytest.mark.slow
def test_ray_search_front_equals_the_processes_front(local_ray, split, tmp_path, capsys):
    images, anns = split
    fronts = {}
    for executor, workers in (("processes", "1"), ("ray", "2")):
        out = tmp_path / executor
        assert main(["search", "--model", "demo", "--data", images, "--ann", anns["val"], "--out", str(out),
                     "--max-evals", "60", "--workers", workers, "--executor", executor,
                     "--json"]) == 0
        capsys.readouterr()
        result = json.loads((out / "search.json").read_text())
        fronts[executor] = ([(n["removed"], n["mAP"]) for n in result["front"]],
                            sorted((n["removed"], n["mAP"]) for n in result["nodes"]))
        assert result["num_evals"] == 60 and result["front"]
    assert fronts["ray"] == fronts["processes"]  # and every node's mAP, not only the front's


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def test_unreachable_address_fails_fast_in_one_line(monkeypatch):
    import ray

    def waits(*args, **kwargs):
        raise AssertionError("ray.init was called: it waits a minute or more on an unreachable address")

    # Fast without a clock (none holds on a busy machine): the address is tried with a plain TCP connection
    # (bounded by check_ray_address's timeout), never with ray.init, which would wait a minute or more
    monkeypatch.setattr(ray, "init", waits)
    address = f"127.0.0.1:{closed_port()}"
    with pytest.raises(EdgeAnchorError) as info:
        check_ray_address(address)
    message = str(info.value)
    assert "\n" not in message and f"cannot reach the Ray cluster at {address} (connection refused)" in message
    assert flag_wording(message).endswith("start a head node there with 'ray start --head', or give a reachable "
                                          "--ray-address")
    # the same through the client's form, and a form that is no address at all
    with pytest.raises(EdgeAnchorError, match="cannot reach the Ray cluster at ray://"):
        check_ray_address(f"ray://{address}")
    with pytest.raises(EdgeAnchorError, match="`ray_address` must be host:port"):
        check_ray_address("localhost")


def test_an_address_that_answers_passes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        check_ray_address(f"127.0.0.1:{s.getsockname()[1]}")


def test_missing_ray_is_one_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(EdgeAnchorError, match=r'Ray is not installed; pip install "edgeanchor\[ray\]"'):
        ray_executor.require_ray()
