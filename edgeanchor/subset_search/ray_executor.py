"""Scoring search nodes on Ray: one actor per shard of the cache's images, on this machine or a cluster.

:class:`RayShardExecutor` starts ``workers`` actors. Actor ``i`` holds a
:class:`~edgeanchor.evaluation.incremental.ShardScorer` of shard ``i`` of
``workers`` (a contiguous range of the images in ascending id order). For a
batch (the children of one parent) every actor pins the parent once and
returns each child's per-category partial lists of its shard; the driver
merges the shards in shard order with
:func:`~edgeanchor.evaluation.incremental.merge_map`, which equals pycocotools'
mAP exactly, whatever the number of shards.

The candidate cache is read here, cut into the shards, and each actor is
sent only its shard's candidates through Ray's object store (the annotations
go to every actor), so the nodes of a cluster need edgeanchor's environment
but neither file. An actor that dies (a killed process, a lost node) is
restarted and its shard's share of the batch redone, up to ``retries`` times;
then the batch fails with one line and no result of it is returned: a child's
mAP is never merged from fewer than all shards.

Ray is optional (``pip install "edgeanchor[ray]"``) and imported only here,
when the executor is asked for.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import EdgeAnchorError
from ..io import log as default_log

RAY_EXTRA_HINT = 'pip install "edgeanchor[ray]"'
_ADDRESS_RE = re.compile(r"^(?:ray://)?(?:\[(?P<ip6>[^\]]+)\]|(?P<host>[^:/\[\]\s]+)):(?P<port>\d{1,5})$")
STARTUP_TIMEOUT_S = 600.0  # the actors load the cache and compile the scorer; a cluster may be slow to place them


def require_ray():
    """Import Ray, or raise a one-line error naming the extra to install (as ``export.runtimes.require`` words it)."""
    try:
        import ray
    except ImportError:
        raise EdgeAnchorError(f"Ray is not installed; {RAY_EXTRA_HINT}") from None
    return ray


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, in one line, when the Ray cluster at ``address`` cannot be reached.

    ``ray.init`` on an unreachable address waits a minute or more before it fails, so the
    address is tried first with a plain TCP connection (name lookup included) bounded by
    ``2 * timeout_s``. ``"auto"`` is the running cluster Ray finds on this machine; none is
    an error.

    Args:
        address: ``host:port``, ``ray://host:port`` (Ray Client) or ``"auto"``.
        timeout_s: seconds to wait for the connection.

    Raises:
        EdgeAnchorError: a malformed address, or nothing answering there.
    """
    if address == "auto":
        address = _auto_address()
    host, port = parse_ray_address(address)
    reason = _try_connect(host, port, timeout_s)
    if reason:
        raise EdgeAnchorError(f"cannot reach the Ray cluster at {address} ({reason}); start a head node there "
                              "with 'ray start --head', or give a reachable `ray_address`")


def parse_ray_address(address: str) -> tuple[str, int]:
    """(host, port) of a ``host:port`` or ``ray://host:port`` address (``[v6]:port`` too); needs no Ray.

    Raises:
        EdgeAnchorError: another form, or a port outside 1..65535.
    """
    match = _ADDRESS_RE.match(address.strip())
    if not match:
        raise EdgeAnchorError(f"`ray_address` must be host:port, ray://host:port or auto (got {address!r})")
    port = int(match.group("port"))
    if not 1 <= port <= 65535:
        raise EdgeAnchorError(f"`ray_address` {address!r} has port {port}; a port is 1 to 65535")
    return match.group("ip6") or match.group("host"), port


def _try_connect(host: str, port: int, timeout_s: float) -> str | None:
    """None if something accepts a TCP connection at (host, port), else why not (in a few words)."""
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome.append(None)
        except socket.gaierror:
            outcome.append("unknown host")
        except ConnectionRefusedError:
            outcome.append("connection refused")
        except TimeoutError:
            outcome.append(f"no answer within {timeout_s:g} s")
        except OSError as exc:
            outcome.append((exc.strerror or str(exc) or type(exc).__name__).lower())

    # create_connection's timeout does not bound the name lookup, so the whole attempt runs in a thread
    thread = threading.Thread(target=attempt, name="edgeanchor-ray-address-check", daemon=True)
    thread.start()
    thread.join(2 * timeout_s)
    return outcome[0] if outcome else f"no answer within {2 * timeout_s:g} s"


def _auto_address() -> str:
    """The address of the cluster Ray's ``auto`` finds, or a one-line error if it finds none."""
    require_ray()
    try:
        from ray._private.services import canonicalize_bootstrap_address_or_die
    except ImportError:  # a Ray without this helper: ray.init's own error is turned into one line later
        return "auto"
    try:
        return canonicalize_bootstrap_address_or_die("auto")
    except ConnectionError:
        raise EdgeAnchorError(_NO_AUTO_CLUSTER) from None


_NO_AUTO_CLUSTER = ("found no running Ray cluster on this machine for `ray_address` auto; start a head node with "
                    "'ray start --head', or give the cluster's `ray_address` (host:port)")


class ShardWorker:
    """The body of one Ray actor: the scorer of one image shard.

    Args:
        shard_cache: the candidate cache cut to this shard's images
            (``cache.take_images(shard_images(cache.image_ids, shard))``).
        ann: the annotation file's bytes, or its parsed dict.
        shard: (shard index, shard count), for messages.
        metric: what the partials score: "coco", "voc07" or "voc".
    """

    def __init__(self, shard_cache, ann, shard: tuple[int, int], metric: str = "coco"):
        import torch

        from ..evaluation.incremental import ShardScorer

        torch.set_num_threads(1)  # one CPU per actor
        if isinstance(ann, (bytes, bytearray)):
            ann = json.loads(ann)
        self.shard = tuple(shard)
        self.scorer = ShardScorer(shard_cache, ann, shard=(0, 1), metric=metric)  # the cache is this shard alone

    def ready(self) -> bool:
        return True

    def score(self, children: list, parent: tuple) -> tuple[list, int]:
        """(each child's partials on this shard, (image, class) pairs re-matched for the batch)."""
        before = self.scorer.pairs_recomputed
        self.scorer.pin(parent)
        parts = [self.scorer.partials(k, parent) for k in children]
        return parts, self.scorer.pairs_recomputed - before


class RayShardExecutor:
    """Scores batches of children on ``workers`` Ray actors, one image shard each.

    Args:
        cache_path: the candidate cache file.
        ann: the annotation file of the cached images (a path, or its parsed dict).
        workers: actors, i.e. image shards (each takes one CPU of the cluster).
        address: a Ray cluster (``host:port``, ``ray://host:port`` or ``auto``); None starts a
            local Ray with ``workers`` CPUs. As in ``ray.init``, a ``RAY_ADDRESS`` environment variable
            overrides it. If this process is already connected to a Ray, that one is used, and left
            running by :meth:`close`.
        retries: restarts of a dead actor per batch before the batch fails.
        log: where notices go.
        metric: what the actors score: "coco", "voc07" or "voc".

    Attributes:
        pairs_recomputed: (image, class) pairs re-matched over all shards so far.
        num_scored: children scored so far.
    """

    worker_class = ShardWorker  # the actor body (tests swap in one that dies)

    def __init__(self, cache_path, ann, workers: int, address: str | None = None, *, retries: int = 2,
                 log=default_log, metric: str = "coco"):
        if not (isinstance(workers, int) and workers >= 1):
            raise EdgeAnchorError(f"`workers` must be an integer >= 1 (got {workers})")
        self._ray = ray = require_ray()
        self._exceptions = ray.exceptions
        self.workers, self.retries, self._log, self.metric = workers, retries, log, metric
        self.pairs_recomputed = 0
        self.num_scored = 0
        self._started = False
        self._actors: list = []
        self._connect(address)
        try:
            self._check_cpus(address)
            self._ann = ray.put(_ann_payload(ann))
            self._shards = _put_shards(ray, cache_path, workers)
            self._remote = ray.remote(num_cpus=1, max_restarts=0)(self.worker_class)
            self._actors = [self._new_actor(i) for i in range(workers)]
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _connect(self, address: str | None) -> None:
        ray = self._ray
        if ray.is_initialized():
            return  # the caller's Ray (e.g. a notebook's, or the tests'): used as it is, and left running
        address = os.environ.get("RAY_ADDRESS") or address  # ray.init's own rule: the variable wins
        if address is not None:
            check_ray_address(address)
        kwargs = {"num_cpus": self.workers} if address is None else {}
        try:
            ray.init(address=address, include_dashboard=False, **kwargs)
        except ConnectionError as exc:
            if address == "auto":
                raise EdgeAnchorError(_NO_AUTO_CLUSTER) from None
            # Recent Rays turn token authentication on for an address found by "auto", never for a given one
            raise EdgeAnchorError(f"cannot connect to the Ray cluster at {address} ({_first_line(exc)}); if it "
                                  "uses token authentication, set RAY_AUTH_MODE=token here and give it the cluster's "
                                  "token (ray get-auth-token); else check that it runs this machine's Ray and "
                                  "Python, or give another `ray_address`") from None
        self._started = True

    def _check_cpus(self, address: str | None) -> None:
        cpus = self._ray.cluster_resources().get("CPU", 0)
        if cpus < self.workers:
            where = f"at {address}" if address else "this process is connected to"
            raise EdgeAnchorError(f"the Ray cluster {where} has {cpus:g} CPUs, fewer than `workers` {self.workers} "
                                  "(one actor per image shard, one CPU each); lower `workers` or add nodes")

    def _new_actor(self, i: int):
        return self._remote.remote(self._shards[i], self._ann, (i, self.workers), self.metric)

    def _wait_ready(self) -> None:
        refs = [a.ready.remote() for a in self._actors]
        done, pending = self._ray.wait(refs, num_returns=len(refs), timeout=STARTUP_TIMEOUT_S)
        if pending:
            raise EdgeAnchorError(f"{len(pending)} of {self.workers} Ray actors did not start within "
                                  f"{STARTUP_TIMEOUT_S:g} s (too few free CPUs in the cluster?); lower `workers` "
                                  "or free the cluster")
        self._ray.get(done)  # an actor whose start failed raises here

    @property
    def _died(self) -> tuple:
        e = self._exceptions
        return (e.RayActorError, e.WorkerCrashedError)  # RayActorError covers ActorDiedError / ActorUnavailable

    def score(self, children: list, parent: tuple = ()) -> list[dict]:
        """``[{"mAP": ...}]`` of each child, merged from every shard's partials in shard order.

        Args:
            children: removed sets (tuples of anchor ids), each a superset of ``parent``.
            parent: the removed set every actor pins for this batch.

        Raises:
            EdgeAnchorError: an actor died more than ``retries`` times in this batch.
        """
        from ..evaluation.incremental import merge_map

        children = [tuple(int(r) for r in k) for k in children]
        parent = tuple(int(r) for r in parent)
        refs = [a.score.remote(children, parent) for a in self._actors]
        shards = [self._shard_result(i, ref, children, parent) for i, ref in enumerate(refs)]
        # children merge in parallel threads: the merge's sorts and compiled code release the GIL
        with ThreadPoolExecutor(max(1, min(len(children), os.cpu_count() or 1))) as pool:
            maps = list(pool.map(lambda j: merge_map([parts[j] for parts, _ in shards]), range(len(children))))
        self.pairs_recomputed += sum(pairs for _, pairs in shards)
        self.num_scored += len(children)
        return [{"mAP": m} for m in maps]

    def _shard_result(self, i: int, ref, children: list, parent: tuple):
        """Shard ``i``'s result for the batch, restarting its actor (and redoing its share) if it died."""
        for attempt in range(self.retries + 1):
            try:
                return self._ray.get(ref)
            except self._died as exc:
                reason = type(exc).__name__
                if attempt == self.retries:
                    break
                self._log(f"the Ray actor of image shard {i + 1} of {self.workers} died ({reason}); restarting it "
                          "and redoing its share of the batch")
                self._restart(i)
                ref = self._actors[i].score.remote(children, parent)
        raise EdgeAnchorError(
            f"the Ray actor of image shard {i + 1} of {self.workers} died {self.retries + 1} times in one batch "
            f"(last: {reason}); no result of the batch was kept; check the Ray nodes' memory and logs (ray status), "
            "then run the search again to resume it")

    def _restart(self, i: int) -> None:
        try:
            self._ray.kill(self._actors[i], no_restart=True)
        except Exception:  # already gone
            pass
        self._actors[i] = self._new_actor(i)

    def close(self) -> None:
        """Kill the actors; shut Ray down if this executor started (or connected) it."""
        ray = self._ray
        for actor in self._actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self._actors = []
        if self._started:
            ray.shutdown()
            self._started = False


def _put_shards(ray, cache_path, count: int) -> list:
    """Object refs of the cache's ``count`` image shards (contiguous, ascending image ids), each cut to its images."""
    from ..evaluation.cache import CandidateCache
    from ..evaluation.incremental import shard_images

    cache = CandidateCache.load(cache_path)
    return [ray.put(cache.take_images(shard_images(cache.image_ids, (i, count)))) for i in range(count)]


def _ann_payload(ann):
    """What the actors get for ``ann``: a dict as it is, a file as its bytes (parsed by each actor)."""
    if isinstance(ann, dict):
        return ann
    if hasattr(ann, "dataset"):  # a COCO object
        return ann.dataset
    return Path(ann).read_bytes()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
