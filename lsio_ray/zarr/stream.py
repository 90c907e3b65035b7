"""Streams of reads delivered in order with a bounded number in flight.

:func:`ordered` keeps ``prefetch`` reads started ahead of the consumer and yields their
results in the order asked; underneath, the chunks of all of them are read and decoded
in whatever order they land.  Crops and time series are built on it.
:func:`same_shape_boxes` does the same for boxes of one shape (random crops, a list of
equal crops), a group of boxes per read task.
Closing the generator early cancels the reads still in flight.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from lsio_ray.zarr.loader import abandon
from lsio_ray.zarr.plan import Region, region_of_box
from lsio_ray.zarr.read import BoxRead
from lsio_ray.zarr.scatter import ScatterTask, scatterable

if TYPE_CHECKING:
    from lsio_ray.zarr.array import Array

__all__ = [
    "PARTIAL",
    "clustered_box_starts",
    "ordered",
    "random_boxes",
    "same_shape_boxes",
    "time_series",
    "window_starts",
]

#: what a full scan in windows (:func:`window_starts`, ``read_zarr_windows``) does with
#: the windows that run past the array's end:
#: ``"pad"`` reads them, the part outside the array filled with its fill value;
#: ``"drop"`` leaves them out (whole windows only: the elements past the last whole
#: window are never read); ``"error"`` raises ``ValueError`` if there are any
PARTIAL = ("pad", "drop", "error")

GROUP = 8
"""Most boxes per read task in :func:`same_shape_boxes`."""
GROUP_BYTES = 16 << 20
"""Most decoded bytes per group: big boxes (slabs, time series) gain nothing from
grouping -- their planning is small beside their decoding -- and lose the direct decode
into the output and the finer pipelining of one box per task."""
WINDOW_BYTES = 256 << 20
"""Most output bytes :func:`ordered` keeps in flight, whatever ``prefetch`` says (but
always two boxes, so one decodes while the other is consumed).  A big box decodes in
parallel chunk by chunk, so two in flight keep the cores busy; more only spread the
decoders over more outputs (16 time series of (512, 256, 256) float32 at the default
prefetch 8: 3-6% faster with this cap, peak RSS the same -- the engine's pool already
bounds how far the reads run ahead)."""


def group_size(prefetch: int, box_nbytes: int) -> int:
    """Boxes per read task for ``prefetch`` boxes in flight of ``box_nbytes`` each: at
    most :data:`GROUP` and :data:`GROUP_BYTES`, and at least two groups in flight."""
    return max(1, min(GROUP, int(prefetch) // 2, GROUP_BYTES // max(1, int(box_nbytes))))


def group_for(array: Array, box: Sequence[int], prefetch: int) -> int:
    """Boxes of shape ``box`` per read task of ``array`` (:func:`group_size`); 1 (box by
    box, :class:`~lsio_ray.zarr.read.BoxRead`) for codecs the C decoder does not handle,
    which :class:`~lsio_ray.zarr.scatter.ScatterTask` needs."""
    if not scatterable(array):
        return 1
    return group_size(prefetch, int(np.prod(box, dtype=np.int64)) * array.dtype.itemsize)


def _pairs(
    array: Array, regions: Iterator[Region], prefetch: int, reuse: bool = False
) -> Iterator[tuple[Region, np.ndarray]]:
    if int(prefetch) < 1:
        raise ValueError(f"prefetch must be at least 1, not {prefetch}")
    window: deque[tuple[Region, BoxRead, int]] = deque()  # (region, read, output bytes)
    free: dict[tuple[int, ...], list[np.ndarray]] = {}
    lent: np.ndarray | None = None  # the buffer the consumer holds (reuse=True)
    held = 0  # output bytes of the reads in the window
    waiting: list[Region] = []  # the next region, taken but not started (over budget)

    def fill() -> None:
        """Start regions until ``prefetch`` are in flight or the next is over budget."""
        nonlocal held
        while len(window) < prefetch:
            reg = waiting.pop() if waiting else next(regions, None)
            if reg is None:
                return
            nb = int(np.prod(reg.box_shape, dtype=np.int64)) * array.dtype.itemsize
            if len(window) >= 2 and held + nb > WINDOW_BYTES:
                waiting.append(reg)  # started once the window has room
                return
            held += nb
            out = None
            if reuse:
                spare = free.get(reg.box_shape)
                out = spare.pop() if spare else np.empty(reg.box_shape, dtype=array.dtype)
            window.append((reg, array.start_read(reg.lo, reg.hi, out), nb))

    prefetch = int(prefetch)
    try:
        fill()
        while window:
            if lent is not None:  # the consumer asked for the next one: take it back
                free.setdefault(lent.shape, []).append(lent)
                lent = None
            reg, task, nb = window.popleft()
            held -= nb
            task.wait()
            fill()
            if reuse:
                lent = task.out
            yield reg, array._finish_region(reg, task.out)
    finally:
        # cancel what is still in flight, then wait for its decode work to stop, so that
        # when the stream ends (an error, or the consumer closing it) no pool buffer is
        # still held and no thread writes into memory the caller may reuse
        abandon(task for _, task, _ in window)


def ordered(
    array: Array, regions: Iterator[Region], prefetch: int, reuse: bool = False
) -> Iterator[np.ndarray]:
    """Yield ``array[region]`` for each region in order, ``prefetch`` reads in flight
    (fewer for big regions: at most :data:`WINDOW_BYTES` of outputs, but two at least).

    With ``reuse`` the results live in a ring of ``prefetch + 1`` buffers per shape: a
    yielded array is overwritten once the next one is asked for (no page faults on fresh
    output memory, a bounded footprint); copy what must be kept."""
    for _, data in _pairs(array, regions, prefetch, reuse):
        yield data


def same_shape_boxes(
    array: Array,
    starts: np.ndarray,
    box: Sequence[int],
    prefetch: int,
    reuse: bool = False,
    group: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield the boxes of shape ``box`` at corners ``starts`` (``(n, ndim)``), in order,
    about ``prefetch`` boxes in flight (``reuse`` as for :func:`ordered`).

    For the C decoder's codecs small boxes are read a group at a time
    (:func:`group_size`, or ``group`` boxes when given: boxes ``k * group`` to
    ``(k + 1) * group``), one :class:`~lsio_ray.zarr.scatter.ScatterTask` per group: one
    plan and one set of decode calls per group instead of per box, and a chunk under
    several boxes of a group is read and decoded once (A/B, 400 (8, 256, 256) crops of
    (1, 256, 256) zstd chunks: 0.3-0.7 ms less CPU per crop).  Big boxes and other
    codecs are read box by box (:func:`ordered`)."""
    if int(prefetch) < 1:
        raise ValueError(f"prefetch must be at least 1, not {prefetch}")
    box = tuple(int(b) for b in box)
    starts = np.asarray(starts, dtype=np.int64).reshape(-1, array.ndim)
    size = np.asarray(box, dtype=np.int64)
    if len(box) != array.ndim:
        raise ValueError(f"a box of {len(box)} dimensions for a {array.ndim}-d array")
    bad = np.flatnonzero(
        ((starts < 0) | (size < 0) | (starts + size > np.asarray(array.shape))).any(axis=1)
    )
    if bad.size:  # the first one named, as box by box would
        lo = starts[bad[0]]
        array._check_box(tuple(lo.tolist()), tuple((lo + size).tolist()))
    if group is not None and int(group) < 1:
        raise ValueError(f"group must be at least 1, not {group}")
    if group is None or not scatterable(array):
        group = group_for(array, box, prefetch)
    group = int(group)
    if group == 1:
        regs = (region_of_box(lo, lo + size) for lo in starts)
        yield from ordered(array, regs, prefetch, reuse)
        return
    tasks = max(2, -(-int(prefetch) // group))  # one group decodes while one is consumed
    firsts = iter(range(0, len(starts), group))
    window: deque[tuple[ScatterTask, np.ndarray | None]] = deque()  # (task, its buffer)
    free: list[np.ndarray] = []  # reuse: group buffers not lent out

    def push() -> None:
        a = next(firsts, None)
        if a is None:
            return
        los = starts[a : a + group]
        buf = None
        if reuse:
            buf = free.pop() if free else np.empty((group, *box), dtype=array.dtype)
            task = ScatterTask(array, array.loader, buf[: len(los)], los)
        else:  # each box its own array, as the caller keeps it
            outs = [np.empty(box, dtype=array.dtype) for _ in range(len(los))]
            task = ScatterTask(array, array.loader, None, los, boxes=outs)
        window.append((array.loader.start(task), buf))

    try:
        for _ in range(tasks):
            push()
        while window:
            task, buf = window[0]
            task.wait()
            yield from task.boxes
            window.popleft()
            if buf is not None:  # the consumer asked past the group's last box: reuse it
                free.append(buf)
            push()
    finally:
        abandon(task for task, _ in window)


def random_box_starts(
    shape: Sequence[int], crop_shape: Sequence[int], count: int, seed: int | None
) -> np.ndarray:
    """``(count, ndim)`` start corners of crops at uniform random offsets, drawn from
    ``seed`` alone: the one definition of where seeded random crops lie (used by
    ``Array.random_crops``, the decode-aware sampler and the Ray Data reader)."""
    span = _crop_span(shape, crop_shape, count)
    rng = np.random.default_rng(seed)
    return rng.integers(0, span, size=(int(count), len(shape))).astype(np.int64)


def clustered_box_starts(
    shape: Sequence[int],
    crop_shape: Sequence[int],
    count: int,
    seed: int | None,
    per_cell: int,
    cell: Sequence[int],
) -> np.ndarray:
    """``(count, ndim)`` start corners of crops drawn ``per_cell`` at a time from one
    *cell*: the set of valid start corners is tiled from the origin by boxes of ``cell``
    (the last ones cut short by the array's end); a cell is picked with probability
    proportional to how many corners it holds, then ``per_cell`` corners uniformly inside
    it (crops ``k * per_cell`` to ``(k + 1) * per_cell`` share cell ``k``).

    Every crop's corner is exactly uniform over all valid corners, as with
    :func:`random_box_starts`: a corner ``s`` in a cell of ``m`` corners is drawn with
    probability ``m / total * 1 / m``.  What changes is independence: the crops of one
    cell lie within ``cell + crop - 1`` of each other, so a cell's region is decoded once
    for ``per_cell`` crops.  Per axis the cell index is drawn on its own (the weight of a
    cell is the product of its per-axis sizes), so huge grids cost nothing to sample."""
    spans = _crop_span(shape, crop_shape, count)
    cells = tuple(int(c) for c in cell)
    if len(cells) != len(spans):
        raise ValueError(f"cell {cells} must have the array's {len(spans)} dimensions")
    if any(c <= 0 for c in cells):
        raise ValueError(f"cell {cells} must be positive")
    if int(per_cell) < 1:
        raise ValueError(f"per_cell must be at least 1, not {per_cell}")
    k = int(per_cell)
    ncells = -(-int(count) // k)
    rng = np.random.default_rng(seed)
    out = np.empty((ncells, k, len(spans)), np.int64)
    for d, (span, g) in enumerate(zip(spans.tolist(), cells, strict=True)):
        g = min(g, span)
        sizes = np.full(-(-span // g), g, np.int64)
        sizes[-1] = span - g * (len(sizes) - 1)
        which = rng.choice(len(sizes), size=ncells, p=sizes / span)
        off = rng.integers(0, sizes[which][:, None], size=(ncells, k))
        out[:, :, d] = which[:, None] * g + off
    return out.reshape(-1, len(spans))[: int(count)]


def _crop_span(shape: Sequence[int], crop_shape: Sequence[int], count: int) -> np.ndarray:
    """Per axis, how many start corners a crop of ``crop_shape`` has in ``shape``
    (raises ``ValueError`` for a crop that does not fit, or a negative count)."""
    shape = tuple(int(s) for s in shape)
    crop = tuple(int(c) for c in crop_shape)
    if len(crop) != len(shape):
        raise ValueError(f"crop shape {crop} has {len(crop)} dimensions, the array {len(shape)}")
    if any(c <= 0 or c > s for c, s in zip(crop, shape, strict=True)):
        raise ValueError(f"crop shape {crop} does not fit in the array's shape {shape}")
    if count < 0:
        raise ValueError(f"count must not be negative, not {count}")
    return np.asarray(shape, dtype=np.int64) - np.asarray(crop, dtype=np.int64) + 1


def window_starts(
    shape: Sequence[int],
    window_shape: Sequence[int],
    stride: Sequence[int] | None = None,
    partial: str = "pad",
) -> tuple[np.ndarray, ...]:
    """Per axis, the start offsets of the windows of a full scan: ``0, s, 2s, ...`` for a
    stride ``s`` (default: the window, i.e. non-overlapping tiles).

    ``partial`` says what happens where the whole windows stop short of the array's end
    (a (256,) axis in windows of 100 leaves 200:256): ``"pad"`` (default) adds the one
    window that starts there and runs past the end (its outside part is padding), so
    every element is in a window unless it lies in a gap between windows (``s`` larger
    than the window); ``"drop"`` keeps whole windows only; ``"error"`` raises
    ``ValueError`` naming the axis and the elements left out.  A window larger than the
    array on an axis is one padded window with ``"pad"``, an error otherwise."""
    if partial not in PARTIAL:
        raise ValueError(f"partial must be one of {', '.join(map(repr, PARTIAL))}, not {partial!r}")
    shape = tuple(int(s) for s in shape)
    win = tuple(int(w) for w in window_shape)
    step = win if stride is None else tuple(int(s) for s in stride)
    if not len(win) == len(step) == len(shape):
        raise ValueError(
            f"window {win} and stride {step} must have the array's {len(shape)} dimensions"
        )
    if any(w <= 0 for w in win):
        raise ValueError(f"window shape {win} must be positive")
    if any(s <= 0 for s in step):
        raise ValueError(f"stride {step} must be positive")
    if partial != "pad" and any(w > s for w, s in zip(win, shape, strict=True)):
        raise ValueError(
            f"window shape {win} does not fit in the array's shape {shape} "
            "(partial='pad' reads it padded)"
        )
    axes = []
    for axis, (n, w, s) in enumerate(zip(shape, win, step, strict=True)):
        whole = np.arange(0, max(n - w + 1, 0), s, dtype=np.int64)
        end = int(whole[-1]) + w if len(whole) else 0
        nxt = int(whole[-1]) + s if len(whole) else 0
        if end < n and nxt < n:  # elements past the last whole window, not in a gap
            if partial == "error":
                raise ValueError(
                    f"windows {win} at stride {step} leave elements {max(end, nxt)}:{n} of "
                    f"axis {axis} of the array's shape {shape} unread: pass partial='pad' (the "
                    "edge windows padded with the fill value) or partial='drop' (whole windows "
                    "only)"
                )
            if partial == "pad":
                whole = np.append(whole, np.int64(nxt))
        axes.append(whole)
    return tuple(axes)


def random_boxes(
    shape: tuple[int, ...], crop: tuple[int, ...], count: int, seed: int | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``count`` boxes of shape ``crop`` at uniform random offsets inside ``shape``."""
    starts = random_box_starts(shape, crop, count, seed)
    size = np.asarray(crop, dtype=np.int64)
    return ((lo, lo + size) for lo in starts)


def time_series(
    array: Array, region: Region, axis: int, rows: int, prefetch: int, reuse: bool = False
) -> Iterator[tuple[int, np.ndarray]]:
    """Blocks of ``region`` along ``axis`` cut at every ``rows``-th chunk boundary,
    yielded in order as ``(start, block)`` (``reuse`` as for :func:`ordered`)."""
    if not -array.ndim <= axis < array.ndim:
        raise ValueError(f"axis {axis} out of range for a {array.ndim}-d array")
    axis %= array.ndim
    if rows < 1:
        raise ValueError(f"rows must be at least 1, not {rows}")
    step = array.chunks[axis] * rows
    lo, hi = region.lo[axis], region.hi[axis]
    edges = [lo, *range((lo // step + 1) * step, hi, step), hi] if hi > lo else []

    def boxes() -> Iterator[Region]:
        for a, b in itertools.pairwise(edges):
            blo = list(region.lo)
            bhi = list(region.hi)
            blo[axis], bhi[axis] = a, b
            yield region_of_box(blo, bhi)

    for reg, data in _pairs(array, boxes(), prefetch, reuse):
        yield reg.lo[axis], data
