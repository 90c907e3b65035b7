"""Compute stages as Ray tasks: decompress, reduce, compress, write back.

The user's pipeline -- decompress each chunk as it arrives, merge every N into one
output, compress it, write it -- as Ray tasks fed by a :class:`~lsio_ray.ray.Coordinator`:

>>> import numcodecs
>>> from lsio_ray.ray import Coordinator, tasks
>>> coord = Coordinator(roots=roots)
>>> zstd = numcodecs.Zstd(level=3)
>>> for res in tasks.run_pipeline(
...         coord, groups,                                # OpGroups of 10 input chunks
...         decode=zstd.decode,                           # bytes -> array, per chunk
...         reduce=lambda arrays, metas, gmeta: np.concatenate(arrays),
...         encode=zstd.encode,                           # array -> bytes
...         output=lambda gmeta: f"/out/{gmeta}"):        # where each group goes
...     print(res.path, res.nbytes)

Placement.  A task runs on the node whose IO actor read its bytes
(``NodeAffinitySchedulingStrategy(node, soft=True)``: there while that node lives, even
if it has to wait for a core; elsewhere only if it died), because a batch streams at
5.5-6.7 GiB/s on its own node and 0.6-0.9 GiB/s across nodes.  Each task takes one CPU
(numcodecs runs its own threads: more tasks than cores only oversubscribe them); the IO
actors take none.  Writes go through the IO actor of the node that owns the output
(its declared root, else the node that computed it).

The stage functions (:func:`decompress`, :func:`reduce_parts`, :func:`compress`,
:func:`write_back`) are plain functions, usable alone or as Ray tasks through
:func:`remote` -- so a user can plug in their own.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from lsio_ray.io.ops import OpGroup
from lsio_ray.ray.batches import Batch, BatchRef

__all__ = [
    "Decoded",
    "PipelineResult",
    "codec_functions",
    "compress",
    "decompress",
    "on_node",
    "reduce_parts",
    "remote",
    "run_pipeline",
    "write_back",
]

Decode = Callable[[np.ndarray], Any]
Reduce = Callable[[list[Any], list[Any], Any], Any]
Encode = Callable[[Any], Any]


def on_node(node_id: str, *, soft: bool = True) -> dict[str, Any]:
    """Ray ``.options(...)`` placing a task on ``node_id``.

    ``soft=True`` (default): on that node whenever it is alive, waiting for a free core
    if need be; elsewhere only if the node is gone (the task then pulls its inputs
    across the network, or fails if they were lost with the node)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=soft)}


@dataclass
class Decoded:
    """The decoded chunks of one batch, in the batch's order.

    ``ranges``: the group-wide range number of each; ``metadata``: the caller's metadata
    of each; ``arrays``: the decoded values (whatever ``decode`` returned)."""

    ranges: np.ndarray
    metadata: list[Any]
    arrays: list[Any]


def decompress(batch: Batch, decode: Decode) -> Decoded:
    """Decode every chunk of a batch with ``decode(bytes) -> array``.

    ``bytes`` is a read-only uint8 view of the batch (copy what you keep if ``decode``
    returns views).  A failed range raises its :class:`~lsio_ray.ray.InputError` (file,
    byte range, node)."""
    arrays: list[Any] = []
    metas: list[Any] = []
    for meta, view in batch:
        arrays.append(decode(view))
        metas.append(meta)
    return Decoded(np.asarray(batch.ranges, dtype=np.int64).copy(), metas, arrays)


def reduce_parts(parts: Iterable[Decoded], reduce: Reduce, group_metadata: Any) -> Any:
    """Merge a group's decoded chunks into one output.

    ``parts`` may come in any order: they are put back in range order, then
    ``reduce(arrays, metadata, group_metadata)`` merges them (e.g. N input chunks into
    one output chunk)."""
    ranges: list[np.ndarray] = []
    arrays: list[Any] = []
    metas: list[Any] = []
    for p in parts:
        ranges.append(p.ranges)
        arrays.extend(p.arrays)
        metas.extend(p.metadata)
    order = np.argsort(np.concatenate(ranges), kind="stable") if ranges else np.zeros(0, int)
    return reduce([arrays[i] for i in order], [metas[i] for i in order], group_metadata)


def compress(value: Any, encode: Encode) -> np.ndarray:
    """Encode a reduced output with ``encode(value) -> bytes-like``; returns uint8."""
    out = encode(value)
    return (
        np.frombuffer(out, dtype=np.uint8)
        if not isinstance(out, np.ndarray)
        else (out.reshape(-1).view(np.uint8))
    )


def write_back(path: str, data: Any, node_id: str | None = None, *, fsync: bool = False) -> int:
    """Write ``data`` to ``path`` atomically through the IO actor of ``node_id`` (default:
    this process's node); returns the bytes written.  Call it inside a Ray task."""
    import ray

    from lsio_ray.ray.actor import io_actor

    node = node_id or ray.get_runtime_context().get_node_id()
    actor = io_actor(node)
    return int(ray.get(actor.write_files.remote([path], [data], fsync=fsync)))


def _group_task(
    fns: dict[str, Any], group_metadata: Any, path: str | None, owner: str | None, *items: Any
) -> tuple[Any, str | None, int]:
    """decompress (or take decoded parts), reduce, compress, write: one group."""
    parts = [it if isinstance(it, Decoded) else decompress(it, fns["decode"]) for it in items]
    value = reduce_parts(parts, fns["reduce"], group_metadata)
    if fns["encode"] is not None:
        value = compress(value, fns["encode"])
    if path is None:
        return value, None, 0
    return None, path, write_back(path, value, owner)


def _decompress_task(batch: Batch, fns: dict[str, Any]) -> Decoded:
    return decompress(batch, fns["decode"])


_REMOTES: dict[str, Any] = {}


def remote(fn: Callable[..., Any], **options: Any) -> Any:
    """``ray.remote(fn)`` with one CPU per task (cached per function), plus ``options``.

    >>> tasks.remote(tasks.decompress).options(**tasks.on_node(bref.node_id)).remote(
    ...     bref.ref, zstd.decode)
    """
    import ray

    key = f"{fn.__module__}.{fn.__qualname__}"
    rf = _REMOTES.get(key) if not options else None
    if rf is None:
        rf = ray.remote(num_cpus=1, **options)(fn)
        if not options:
            _REMOTES[key] = rf
    return rf


@dataclass
class PipelineResult:
    """One group's outcome: its position among the groups given, its metadata, where it
    was written and how many bytes (``value`` holds the result instead when no
    ``output`` path was given)."""

    index: int
    metadata: Any
    path: str | None
    nbytes: int
    value: Any = None


def codec_functions(codec: Any) -> tuple[Decode, Encode]:
    """``(decode, encode)`` of a numcodecs codec, its config dict or id (``"zstd"``)."""
    import numcodecs

    if isinstance(codec, str):
        codec = numcodecs.get_codec({"id": codec})
    elif isinstance(codec, dict):
        codec = numcodecs.get_codec(codec)
    return codec.decode, codec.encode


def _majority(nodes: list[str]) -> str:
    return collections.Counter(nodes).most_common(1)[0][0]


def run_pipeline(
    coord: Any,
    groups: Iterable[OpGroup],
    *,
    decode: Decode,
    reduce: Reduce,
    encode: Encode | None = None,
    output: Callable[[Any], str] | None = None,
    window: int = 4,
    fuse: bool = True,
    max_tasks: int | None = None,
) -> Iterator[PipelineResult]:
    """Run decode -> reduce -> encode -> write over groups; yield results in order.

    ``fuse=True``: one task per group on the node that read most of its batches (the
    cheapest: a task costs several ms here).  ``fuse=False``: a decompress task per
    batch as soon as its ref arrives (on the batch's node), then one task per group to
    reduce, compress and write -- decoding overlaps the reading of the rest of the
    group.  ``output(group_metadata)`` names each group's output file; without it the
    encoded (or reduced) value comes back in :attr:`PipelineResult.value`.
    ``max_tasks``: group tasks in flight (default: twice the cluster's CPUs).
    """
    import ray

    fns = {"decode": decode, "reduce": reduce, "encode": encode}
    fns_ref = ray.put(fns)
    if max_tasks is None:
        max_tasks = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    group_fn = remote(_group_task)
    decode_fn = remote(_decompress_task)
    inflight: collections.deque[tuple[Any, Any, Any]] = collections.deque()

    def finish(item: tuple[Any, Any, Any]) -> PipelineResult:
        ref, index, meta = item
        value, path, nbytes = ray.get(ref)
        return PipelineResult(index, meta, path, nbytes, value)

    for position, stream in enumerate(coord.stream(groups, window=window)):
        items: list[Any] = []
        nodes: list[str] = []
        bref: BatchRef
        for bref in stream:
            nodes.append(bref.node_id)
            if fuse:
                items.append(bref.ref)
            else:
                items.append(decode_fn.options(**on_node(bref.node_id)).remote(bref.ref, fns_ref))
        where = _majority(nodes) if nodes else None
        path = output(stream.metadata) if output is not None else None
        owner = coord.node_of(path) if path is not None else None
        opts = on_node(where) if where else {}
        ref = group_fn.options(**opts).remote(fns_ref, stream.metadata, path, owner, *items)
        inflight.append((ref, position, stream.metadata))
        while len(inflight) >= max_tasks:
            yield finish(inflight.popleft())
    while inflight:
        yield finish(inflight.popleft())
