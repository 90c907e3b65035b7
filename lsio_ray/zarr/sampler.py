"""A decode-aware random-crop sampler: past the decoder's limit by decoding less.

On these machines random crops are bound by the decoder: an unaligned (8, 256, 256) crop
of (1, 256, 256) chunks decodes 36 chunks for 32 chunks' worth of output, and crops
drawn one at a time decode the same chunks again and again.  This sampler draws a
*block* of ``block`` crops at once -- each offset i.i.d. uniform over the array, exactly
the distribution (and, for a given seed, the very offsets) of ``Array.random_crops`` --
decodes every distinct chunk the block touches **once**, scatters it into every crop that
needs it, and yields the block's crops in a random order.

Statistical trade-off, stated plainly:

* Positions: none.  Every crop's offset is uniform and independent of every other, as
  with ``random_crops``; the same seed gives the same set of crops.
* Order: within a block the crops come in a seeded random permutation, not in draw
  order.  A permutation of i.i.d. draws is still i.i.d., so minibatches are unbiased.
* Cost: memory for ``1 + ahead`` blocks of crops (``block`` x crop bytes each: 512 x
  2 MiB = 1 GiB for float32 (8, 256, 256)) and the latency of one block before its
  first crop.

How: for codecs the C decoder handles (raw, zstd, blosc), a block is one
:class:`~lsio_ray.zarr.scatter.ScatterTask`: every distinct chunk is read once, and one
job per (chunk, crop) pair goes to ``lsio_decode_batch``, which decodes each chunk once
into its scratch buffer and copies the pieces into the crops -- no Python per chunk or
per crop.  Other codecs read runs of chunks and scatter them in Python.

The saving grows with the block: with ``c`` chunks per crop and ``N`` chunks in the array,
a block of ``B`` crops decodes about ``N (1 - exp(-B c / N))`` distinct chunks instead of
``B c``: for (512, 1024, 1024) float32 in (1, 256, 256) chunks (N = 8192, c ~ 36) that is
2.5x fewer decodes at B = 512 and 4.4x at B = 1000.

A stronger trade-off lives in :meth:`lsio_ray.zarr.Array.clustered_crops` (and
``read_zarr_crops(per_cell=...)``): crops drawn ``per_cell`` at a time from one small cell
of positions.  Each crop's position is still exactly uniform over the array, but the
crops of a cell are neighbours, so a minibatch holds fewer independent places; in
exchange a cell's chunks are decoded once for all its crops (4.9x tensorstore's crop
rate against this sampler's 1.7x; ``scripts/bench-sampler.py``,
benchmarks/results/sampler.md).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from lsio_ray.zarr import stream
from lsio_ray.zarr.loader import abandon
from lsio_ray.zarr.scatter import ScatterTask

if TYPE_CHECKING:
    from lsio_ray.zarr.array import Array

__all__ = ["decode_aware_crops", "expected_decode_saving"]


def expected_decode_saving(array_chunks: int, chunks_per_crop: float, block: int) -> float:
    """Chunk decodes saved by a block of ``block`` crops: (B c) / (N (1 - exp(-B c / N)))."""
    touches = block * chunks_per_crop
    distinct = array_chunks * (1.0 - np.exp(-touches / array_chunks))
    return float(touches / distinct) if distinct > 0 else 1.0


def decode_aware_crops(
    array: Array,
    shape: Iterable[int],
    count: int,
    *,
    seed: int | None = None,
    block: int = 512,
    prefetch: int = 16,
    ahead: int = 1,
    reuse: bool = False,
) -> Iterator[np.ndarray]:
    """Yield ``count`` crops of ``shape`` at i.i.d. uniform offsets (the offsets of
    ``array.random_crops(shape, count, seed=seed)``), decoding each chunk once per block
    of ``block`` crops; crops come in a seeded random order within each block.

    ``ahead``: blocks read and decoded ahead of the one being yielded (so decoding goes
    on while the consumer works).  Memory: ``1 + ahead`` blocks of crops, in buffers
    reused from block to block.  Each crop is yielded as a copy of its block's slot, or
    with ``reuse=True`` as a view into it, valid until the next crop is asked for (no
    copy: keep what you need with ``.copy()``).  ``prefetch``: chunk reads in flight,
    for codecs the C decoder does not handle (which scatter in Python, one block at a
    time)."""
    crop = tuple(int(x) for x in shape)
    if block < 1:
        raise ValueError(f"block must be >= 1, not {block}")
    if prefetch < 1:
        raise ValueError(f"prefetch must be >= 1, not {prefetch}")
    if ahead < 0:
        raise ValueError(f"ahead must be >= 0, not {ahead}")
    starts = stream.random_box_starts(array.shape, crop, count, seed)
    order_rng = np.random.default_rng(None if seed is None else [seed, 0x5A17])
    codec = array.layout.codec
    if codec.c_codec is None or array.ndim > 8 or array.ndim == 0:
        # codecs without the C decoder: the chunks are read in runs, scattered in Python
        size = np.asarray(crop, dtype=np.int64)
        for a in range(0, count, block):
            blk = [(lo, lo + size) for lo in starts[a : a + block]]
            out = np.empty((len(blk), *crop), dtype=array.dtype)
            _fill_block(array, blk, out, prefetch)
            for k in order_rng.permutation(len(blk)):
                yield out[k]
        return
    # the blocks are decoded into a ring of 1 + ahead buffers, allocated once: a fresh
    # 1 GiB block per block cost more in page faults than the decoding it saves
    ring: list[np.ndarray | None] = [None] * (1 + ahead)
    pending: collections.deque[ScatterTask] = collections.deque()
    firsts = iter(range(0, count, block))

    def start_next() -> None:
        a = next(firsts, None)
        if a is None:
            return
        los = starts[a : a + block]
        slot = (a // block) % len(ring)
        buf = ring[slot]
        if buf is None:
            buf = ring[slot] = np.empty((min(block, count), *crop), dtype=array.dtype)
        out = buf[: len(los)]
        pending.append(array.loader.start(ScatterTask(array, array.loader, out, los)))

    try:
        for _ in ring:
            start_next()
        while pending:
            task = pending[0]
            task.wait()
            for k in order_rng.permutation(len(task.out)):
                yield task.out[k] if reuse else task.out[k].copy()
            pending.popleft()
            start_next()  # into the buffer just yielded from
    finally:
        abandon(pending)


def _fill_block(
    array: Array, boxes: list[tuple[np.ndarray, np.ndarray]], out: np.ndarray, prefetch: int
) -> None:
    """Decode each distinct chunk under ``boxes`` once and copy it into every crop."""
    chunk = np.asarray(array.chunks, dtype=np.int64)
    full = np.asarray(array.shape, dtype=np.int64)
    users: dict[tuple[int, ...], list[int]] = collections.defaultdict(list)
    for k, (lo, hi) in enumerate(boxes):
        first, last = lo // chunk, (hi - 1) // chunk
        for idx in itertools.product(*(range(a, b + 1) for a, b in zip(first, last, strict=True))):
            users[idx].append(k)
    pending: collections.deque = collections.deque()

    def scatter(keys: list[tuple[int, ...]], run_lo: np.ndarray, task: object) -> None:
        task.wait()  # type: ignore[attr-defined]
        data = task.out  # type: ignore[attr-defined]
        run_hi = run_lo + data.shape
        for key in keys:
            c_lo = np.asarray(key, dtype=np.int64) * chunk
            c_hi = np.minimum(c_lo + chunk, run_hi)
            for k in users[key]:
                lo, hi = boxes[k]
                a = np.maximum(lo, c_lo)
                b = np.minimum(hi, c_hi)
                src = tuple(
                    slice(int(x), int(y)) for x, y in zip(a - run_lo, b - run_lo, strict=True)
                )
                dst = tuple(slice(int(x), int(y)) for x, y in zip(a - lo, b - lo, strict=True))
                out[k][dst] = data[src]

    # Runs of needed chunks that are neighbours along the last axis become one read (one
    # task, decoded straight into its box): fewer, larger tasks than one per chunk.
    for keys in _runs(sorted(users)):
        lo = np.asarray(keys[0], dtype=np.int64) * chunk
        hi = np.minimum(np.asarray(keys[-1], dtype=np.int64) * chunk + chunk, full)
        pending.append((keys, lo, array.start_read(lo, hi)))
        if len(pending) >= prefetch:
            scatter(*pending.popleft())
    while pending:
        scatter(*pending.popleft())


def _runs(keys: list[tuple[int, ...]]) -> Iterator[list[tuple[int, ...]]]:
    """Split sorted chunk keys into runs of consecutive last-axis indices."""
    run: list[tuple[int, ...]] = []
    for key in keys:
        if run and (key[:-1] != run[-1][:-1] or key[-1] != run[-1][-1] + 1):
            yield run
            run = []
        run.append(key)
    if run:
        yield run
