"""Turning a Zarr datasource into a Ray Data dataset, whole or as one consumer's shard,
and one shard per trainer node read on that node.

One trainer node pulling crops read on other nodes is capped by Ray's transfer between
nodes (0.8-1.1 GiB/s per node measured here, benchmarks/results/cluster.md).  With N
trainers, each trainer's crops are better read and decoded on its own node, from the
data that node sees (its local disk, a shared mount or object storage), so that only
control messages cross nodes:

>>> import lsio_ray.data as ld
>>> nodes = [t.node_id for t in trainers]              # where the trainers run
>>> shards = ld.node_shards(ld.read_zarr_crops, "train.zarr", (8, 256, 256), 100_000,
...                         seed=0, node_ids=nodes)
>>> # trainer i iterates shards[i] (iter_batches, iter_torch_batches) on its own node

Shard ``i`` of ``n`` (a reader's ``shard=(i, n)``) is a contiguous range of the plan's
rows -- whole cells with ``per_cell``, whole groups of aligned samples -- so the ``n``
shards together are exactly the rows of the same call without ``shard``, with the same
``index`` values.  :func:`node_shards` gives shard ``i`` read tasks that run on
``node_ids[i]`` only (a ``label_selector`` on the node id), one per CPU of that node.

Ray Data's own ``streaming_split(n, locality_hints=...)`` (what Ray Train does by
default) keeps one read and routes each finished block to a consumer on the block's
node when one is waiting for it; blocks read elsewhere still cross nodes
(``scripts/bench-node-shards.py`` measures both, benchmarks/results/node-shards.md).
:class:`lsio_ray.train.NodeShardsConfig` gives Ray Train the node shards instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ray
import ray.data

from lsio_ray.data_plan import ray_read_args

if TYPE_CHECKING:
    from ray.data import Dataset

__all__ = ["free_cpus", "node_cpus", "node_key", "node_shards", "read_dataset", "shard_span"]


def node_key() -> str:
    """The label every Ray node carries with its own node id (``label_selector`` key)."""
    return ray._raylet.RAY_NODE_ID_KEY


def node_cpus(node_id: str) -> int:
    """The CPUs of the live node ``node_id`` (``ValueError`` naming it if there is no
    such live node in the cluster)."""
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("Alive"):
            return max(1, int(node.get("Resources", {}).get("CPU", 1)))
    raise ValueError(f"no live Ray node has the id {node_id!r}")


def free_cpus(node_id: str) -> float | None:
    """CPUs free on node ``node_id`` now (None: not known here)."""
    try:
        from ray._private.state import available_resources_per_node

        return float(available_resources_per_node().get(node_id, {}).get("CPU", 0.0))
    except Exception:  # a private Ray API: absent or changed in this Ray
        return None


def shard_span(count: int, shard: tuple[int, int], unit: int = 0) -> tuple[int, int]:
    """Rows ``[a, b)`` of shard ``shard = (i, n)`` of a plan of ``count`` rows: the
    ``i``-th of ``n`` contiguous ranges as equal as whole ``unit`` rows allow (cells or
    groups; 0 or 1: single rows).  ``ValueError`` for a shard outside ``0 <= i < n``."""
    try:
        i, n = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard must be a pair (i, n), not {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard (i, n) needs n >= 1 and 0 <= i < n, not {shard!r}")
    u = max(1, int(unit))
    units = -(-int(count) // u)
    a = min(int(count), units * i // n * u)
    b = min(int(count), units * (i + 1) // n * u)
    return a, b


def _pinned_node(args: Mapping[str, Any]) -> str | None:
    """The node id a reader's Ray arguments pin its read tasks to (None: not pinned)."""
    for where in (args, args.get("ray_remote_args") or {}):
        selector = where.get("label_selector") or {}
        node = selector.get(node_key())
        if isinstance(node, str) and not node.startswith("!"):
            return node
    return None


def read_dataset(src: Any, parallelism: int | None, params: Mapping[str, Any]) -> ray.data.Dataset:
    """The dataset of datasource ``src`` (a :class:`~lsio_ray.data.ZarrBoxesDatasource`
    or :class:`~lsio_ray.data_aligned.AlignedDatasource`), with ``parallelism`` read
    tasks (None: one per CPU of the cluster, or of the node a shard is pinned to) and the
    Ray arguments among a reader's ``params``; ``params["shard"]`` keeps one shard's
    rows (:func:`shard_span`)."""
    args = ray_read_args(ray.data.read_datasource, params)
    remote = args.get("ray_remote_args") or {}
    if src.node is not None and "label_selector" not in args and "label_selector" not in remote:
        args["label_selector"] = {node_key(): src.node}
    shard = params.get("shard")
    if shard is not None:
        src.span = shard_span(src.count, shard, src.task_unit)
    if parallelism is None:
        # One read task per CPU (of the cluster, or of the node a shard is pinned to):
        # Ray's own default (many small tasks, each paying task and block costs and its
        # own array open) was 2.1x slower here (``scripts/bench-datasource.py``,
        # benchmarks/results/ray-data.md).
        node = _pinned_node(args)
        if node is not None:
            parallelism = node_cpus(node)
        else:
            parallelism = max(1, int(ray.cluster_resources().get("CPU", 1)))
            if shard is not None:
                parallelism = max(1, parallelism // int(shard[1]))
    args["override_num_blocks"] = int(parallelism)
    ds = ray.data.read_datasource(src, **args)
    # Ray Data merges a read task's blocks until they reach the dataset's
    # target_max_block_size (128 MiB by default): a copy of every crop into a fresh
    # block, and a read task's first rows held back until 128 MiB are decoded.  Our
    # blocks are already sized (block_bytes), so the dataset (its own copy of the
    # DataContext) takes them as they are.
    full = src.rows_per_block * src.crop_nbytes
    ctx = ds.context
    if ctx.target_max_block_size is None or ctx.target_max_block_size > full:
        ctx.target_max_block_size = full
    return ds


def node_shards(
    reader: Callable[..., Dataset], *args: Any, node_ids: Sequence[str], **kwargs: Any
) -> list[Dataset]:
    """One dataset per node of ``node_ids``: dataset ``i`` is shard ``(i, n)`` of
    ``reader(*args, **kwargs)`` (:func:`~lsio_ray.data.read_zarr_crops` or
    :func:`~lsio_ray.data.read_zarr_windows`, with any of their arguments), its read
    tasks placed on ``node_ids[i]`` only, one per CPU of that node unless
    ``override_num_blocks`` says otherwise.  Iterate dataset ``i`` in a process on
    ``node_ids[i]`` (the trainer there) and its crops never cross nodes.  A node id may
    appear several times (several trainers on one node: each gets its own shard).

    ``TypeError`` for ``shard``, ``label_selector`` or a ``coordinator`` among the
    arguments (the placement is this function's); ``ValueError`` for an empty
    ``node_ids`` or an id of no live node."""
    clash = sorted({"shard", "label_selector", "coordinator"} & set(kwargs))
    if clash or "label_selector" in (kwargs.get("ray_remote_args") or {}):
        given = clash or ["label_selector"]
        raise TypeError(f"node_shards() places every shard on its node: do not give {given}")
    nodes = [str(n) for n in node_ids]
    if not nodes:
        raise ValueError("node_shards() needs at least one node id")
    for node in set(nodes):
        node_cpus(node)  # a ValueError naming an unknown or dead node, before any read
    n = len(nodes)
    return [
        reader(*args, shard=(i, n), label_selector={node_key(): node}, **kwargs)
        for i, node in enumerate(nodes)
    ]
