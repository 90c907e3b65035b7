"""Decoding blocks: a box of an array from its stored files, read whole by someone else.

A *block* is a box ``[blo, bhi)`` of an array whose stored files (chunks, or shards)
have been read whole -- by the re-chunk job's task or the IO actors it streams from
(:mod:`lsio_ray.ray.rechunk`) -- and arrive as :class:`StoredFiles`: buffers holding
the files back to back, an index saying where each lies, and each file's grid
coordinates as its metadata.  Missing files (``ENOENT``) and empty inner chunks of a
shard are the fill value, as Zarr says; past the array's end a block holds the fill
value.  A corrupt chunk raises :class:`~lsio_ray.zarr.errors.ChunkCorruptError`, a
corrupt shard index :class:`~lsio_ray.zarr.errors.ShardIndexError`, naming it.

Two decoders:

* :class:`CBlock`: the C decoder (:func:`lsio_ray.io._core.decode_chunks`; raw, zstd and
  blosc chunks, 1-8 dimensions, :func:`c_decodable`), one call per *sub-block*, straight
  from the stored bytes into a buffer laid out unit by unit (the output's chunks or
  shards), so each unit is one contiguous array to encode where it lies.
* :func:`decode_block`: every codec, with its Python objects (numcodecs), into one
  buffer of the block's shape (:func:`decode_file` per stored file).

Buffers come from a ``buffers(shape, dtype, what)`` callable, :func:`new_buffer` by
default: a caller running many blocks one after the other may hand out the same buffers
again (the re-chunk task does: fresh 64 MiB buffers cost ~10% of a block in page
faults).  ``what`` names the use (``"units"``, ``"block"``, ``"scratch"``); a buffer
is written in full (or where the block lies) before it is read.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from lsio_ray.io import (
    DECODE_JOB_DTYPE,
    DecodeSpec,
    address,
    decode_chunks,
    extent,
)
from lsio_ray.zarr.codecs import CorruptData
from lsio_ray.zarr.errors import ChunkCorruptError, decode_failure
from lsio_ray.zarr.layout import ArrayLayout
from lsio_ray.zarr.plan import Selection, select_chunks
from lsio_ray.zarr.shards import EMPTY, shard_index

__all__ = [
    "Buffers",
    "CBlock",
    "StoredFiles",
    "c_decodable",
    "chunk_sources",
    "decode_block",
    "decode_file",
    "new_buffer",
    "paste",
    "unit_pieces",
]


class StoredFiles(Protocol):
    """Stored files read whole, back to back in one buffer (the Ray layer's
    :class:`~lsio_ray.ray.Batch` is one).

    ``index`` has one row per file with fields ``error`` (0, or ``-errno``: ``-ENOENT``
    is a missing file, the fill value), ``start`` and ``nbytes`` (where its bytes lie
    in ``data``); ``metadata[i]`` is file ``i``'s coordinates in the file grid."""

    index: np.ndarray
    data: np.ndarray
    metadata: Any

    def __len__(self) -> int: ...

    def error(self, i: int) -> BaseException | None:
        """File ``i``'s read error as an exception to raise."""
        ...

    def path(self, i: int) -> str:
        """File ``i``'s path."""
        ...


Buffers = Callable[[tuple[int, ...], Any, str], np.ndarray]
"""``buffers(shape, dtype, what)``: a buffer to decode into (see the module docstring)."""


def new_buffer(shape: tuple[int, ...], dtype: Any, what: str) -> np.ndarray:
    """A fresh buffer for every call (the default :data:`Buffers`)."""
    return np.empty(shape, dtype=dtype)


def _ceil_div(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    return tuple(-(-int(x) // int(y)) for x, y in zip(a, b, strict=True))


def paste(
    out: np.ndarray, lo: np.ndarray, hi: np.ndarray, arr: np.ndarray, arr_lo: np.ndarray
) -> None:
    """Copy the part of ``arr`` (whose origin is ``arr_lo``) inside ``[lo, hi)`` into
    ``out``, whose origin is ``lo``."""
    a = np.maximum(lo, arr_lo)
    b = np.minimum(hi, arr_lo + np.asarray(arr.shape, dtype=np.int64))
    if np.any(b <= a):
        return
    dst = tuple(slice(int(x), int(y)) for x, y in zip(a - lo, b - lo, strict=True))
    src = tuple(slice(int(x), int(y)) for x, y in zip(a - arr_lo, b - arr_lo, strict=True))
    out[dst] = arr[src]


def decode_file(
    src: ArrayLayout,
    view: np.ndarray,
    coords: np.ndarray,
    out: np.ndarray,
    blo: np.ndarray,
    bhi: np.ndarray,
    scratch: np.ndarray,
) -> None:
    """Decode the part inside the block ``[blo, bhi)`` (``out``) of one stored file of
    ``src`` (a chunk, or a shard) whose bytes are ``view`` and file-grid coordinates
    ``coords``, with the codecs' Python objects; ``scratch``: uint8, one decoded
    chunk's bytes at least."""
    file_shape = np.asarray(src.file_shape, dtype=np.int64)
    flo = coords * file_shape
    key = str(src.key(coords))
    try:
        if src.shards is None:
            arr = src.codec.decode(view, scratch)
            paste(out, blo, bhi, arr, flo)
            return
        table = shard_index(src, view, key)
        a = np.maximum(blo, flo) - flo
        b = np.minimum(bhi, np.minimum(flo + file_shape, np.asarray(src.shape))) - flo
        sel = select_chunks(a, b, src.chunks)
        inner = np.asarray(src.chunks, dtype=np.int64)
        cps = src.chunks_per_shard
        for c in sel.coords:
            k = int(np.ravel_multi_index(tuple(int(x) for x in c), cps)) if cps else 0
            off, nb = table[k]
            origin = flo + c * inner
            if off == EMPTY:
                fill = np.broadcast_to(src.fill_value, tuple(int(x) for x in inner))
                paste(out, blo, bhi, fill, origin)
                continue
            piece = view[int(off) : int(off) + int(nb)]
            arr = src.codec.decode(piece, scratch)
            paste(out, blo, bhi, arr, origin)
    except CorruptData as exc:
        raise ChunkCorruptError(src.path, key, str(exc)) from None


def decode_block(
    src: ArrayLayout,
    blo: np.ndarray,
    bhi: np.ndarray,
    files: Sequence[StoredFiles],
    dtype: Any,
    buffers: Buffers = new_buffer,
) -> tuple[int, np.ndarray]:
    """Decode the block ``[blo, bhi)`` of ``src`` from its stored ``files`` with the
    codecs' Python objects (every codec) into a ``"block"`` buffer of the block's shape;
    returns the stored bytes read and the buffer."""
    out = buffers(tuple(int(x) for x in bhi - blo), dtype, "block")
    scratch = buffers((src.codec.nbytes,), np.uint8, "scratch")
    nread = 0
    for batch in files:
        errs = batch.index["error"]
        starts = batch.index["start"].tolist()
        sizes = batch.index["nbytes"].tolist()
        meta = batch.metadata
        for i in range(len(batch)):
            coords = np.asarray(meta[i], dtype=np.int64)
            if errs[i]:
                if int(errs[i]) == -errno.ENOENT:  # a missing chunk is the fill value
                    fshape = np.asarray(src.file_shape, dtype=np.int64)
                    fill = np.broadcast_to(src.fill_value, tuple(int(x) for x in fshape))
                    paste(out, blo, bhi, fill, coords * fshape)
                    continue
                raise batch.error(i)  # type: ignore[misc]
            view = batch.data[starts[i] : starts[i] + sizes[i]]
            nread += sizes[i]
            decode_file(src, view, coords, out, blo, bhi, scratch)
    return nread, out


def unit_pieces(
    lo: np.ndarray, hi: np.ndarray, unit: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut boxes ``[lo[i], hi[i])`` (block coordinates, one row each) along the output
    unit grid: returns ``(row, uidx, plo, phi)`` -- for each piece the box it came from,
    its unit's grid index and its bounds (block coordinates).  Pieces of one box are
    consecutive."""
    n, ndim = lo.shape
    u0 = lo // unit
    counts = (hi - 1) // unit - u0 + 1
    per = counts.prod(axis=1) if ndim else np.ones(n, np.int64)
    row = np.repeat(np.arange(n, dtype=np.int64), per)
    local = np.arange(len(row), dtype=np.int64) - np.repeat(np.cumsum(per) - per, per)
    uidx = np.empty((len(row), ndim), np.int64)
    for d in range(ndim - 1, -1, -1):
        c = counts[row, d]
        uidx[:, d] = u0[row, d] + local % c
        local //= c
    plo = np.maximum(lo[row], uidx * unit)
    phi = np.minimum(hi[row], (uidx + 1) * unit)
    return row, uidx, plo, phi


def c_decodable(src: ArrayLayout) -> bool:
    """Whether the C decoder takes this array's chunks (raw, zstd, blosc; 1-8 dims)."""
    codec = src.codec
    return codec.c_codec is not None and 0 < len(codec.shape) <= 8 and src.ndim == len(codec.shape)


def chunk_sources(
    src: ArrayLayout,
    sel: Selection,
    blo: np.ndarray,
    bhi: np.ndarray,
    files: Sequence[StoredFiles],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Where each stored chunk ``sel`` selects in the block lies in ``files``: its
    address and length (unsharded: the file; sharded: the inner chunk, through the
    shard's index), whether it is the fill value (a missing file, an empty inner chunk),
    and the stored bytes read.  A file that failed otherwise raises its error; a chunk
    none of ``files`` holds raises :class:`ValueError`."""
    ndim = len(blo)
    n = len(sel)
    # per stored chunk: where its bytes are (0: a fill chunk), and that it was read
    src_addr = np.zeros(n, np.uint64)
    src_len = np.zeros(n, np.uint64)
    have = np.zeros(n, bool)
    is_fill = np.zeros(n, bool)
    c0 = sel.coords[0] if n else np.zeros(ndim, np.int64)
    counts = tuple(int(x) for x in (sel.coords.max(axis=0) - c0 + 1)) if n else ()

    def rows_of(coords: np.ndarray) -> np.ndarray:
        return np.ravel_multi_index(tuple((coords - c0).T), counts).astype(np.int64)

    nread = 0
    fshape = np.asarray(src.file_shape, dtype=np.int64)
    for batch in files:
        nb_items = len(batch)
        if not nb_items:
            continue
        errs = batch.index["error"]
        starts = batch.index["start"]
        sizes = batch.index["nbytes"]
        fcoords = np.asarray(batch.metadata, dtype=np.int64).reshape(nb_items, ndim)
        for i in np.flatnonzero(errs != 0).tolist():
            if int(errs[i]) != -errno.ENOENT:  # a missing file is the fill value
                raise batch.error(i)  # type: ignore[misc]
        base = address(batch.data)
        if src.shards is None:
            ok = errs == 0
            rows = rows_of(fcoords)
            src_addr[rows[ok]] = base + starts[ok]
            src_len[rows[ok]] = sizes[ok]
            have[rows] = True
            is_fill[rows[~ok]] = True
            nread += int(sizes[ok].sum())
            continue
        cps = np.asarray(src.chunks_per_shard, dtype=np.int64)
        for i in range(nb_items):
            # the inner chunks of this shard that lie in the block
            flo = fcoords[i] * fshape
            a = np.maximum(blo, flo)
            b = np.minimum(np.minimum(bhi, flo + fshape), np.asarray(src.shape))
            ssel = select_chunks(a, b, src.chunks)
            rows = rows_of(ssel.coords)
            have[rows] = True
            if errs[i]:
                is_fill[rows] = True
                continue
            nb = int(sizes[i])
            nread += nb
            view = batch.data[int(starts[i]) : int(starts[i]) + nb]
            table = shard_index(src, view, str(src.key(fcoords[i])))
            k = np.ravel_multi_index(tuple((ssel.coords - fcoords[i] * cps).T), tuple(cps))
            off = table[k, 0]
            empty = off == EMPTY
            src_addr[rows[~empty]] = base + int(starts[i]) + off[~empty].astype(np.int64)
            src_len[rows[~empty]] = table[k, 1][~empty]
            is_fill[rows[empty]] = True
    if not have.all():
        missing = src.chunk_key(sel.coords[int(np.flatnonzero(~have)[0])])
        raise ValueError(f"{src.path}: chunk {missing} of a block was not read")
    return src_addr, src_len, is_fill, nread


class CBlock:
    """A block's input chunks, resolved from its stored files, decoded sub-block by
    sub-block with the C decoder (:func:`lsio_ray.io._core.decode_chunks`: one call per
    sub-block, no GIL, a reused zstd context, no Python per chunk).

    The block is cut into *sub-blocks*: the smallest boxes of whole output units
    (``unit``: the output's chunk or shard shape) that no input chunk crosses (per
    axis, the least common multiple of the chunk and unit shapes, counted from the
    array's origin; the whole block when that is larger).  :meth:`subblocks` decodes one
    at a time into a ``"units"`` buffer laid out unit by unit (unit grid + unit shape, C
    order), so each unit is one contiguous array to encode where it lies, and a stored
    chunk that fits in a unit with the unit's own strides (e.g. (1,256,256) chunks into
    (16,256,256) units) is decoded straight into place (no scratch, no box copy).  A
    merge of chunks into bigger units decodes one unit at a time: the caller holds one
    unit, not the block, and the unit is still in cache when it is encoded.  Every chunk
    is decoded once (a chunk crossing the block's own edge is decoded by each block it
    touches).

    ``nread``: the stored bytes of the block's inputs.  Ownership: the jobs point into
    the files' buffers, which the caller keeps until the last sub-block is decoded;
    nothing is kept after :meth:`subblocks` returns.
    """

    def __init__(
        self,
        src: ArrayLayout,
        blo: np.ndarray,
        bhi: np.ndarray,
        files: Sequence[StoredFiles],
        unit: Sequence[int],
        buffers: Buffers = new_buffer,
    ) -> None:
        if not c_decodable(src):
            raise ValueError(f"{src.path}: the C decoder does not take this array's chunks")
        codec = src.codec
        self.src = src
        self.buffers = buffers
        ndim = len(blo)
        self.ushape = ushape = np.asarray(unit, dtype=np.int64)
        self.ext = ext = np.asarray(bhi, np.int64) - np.asarray(blo, np.int64)
        self.ugrid = ugrid = np.asarray(_ceil_div(ext, ushape), dtype=np.int64)
        inner = np.asarray(src.chunks, dtype=np.int64)
        sel = select_chunks(blo, bhi, src.chunks)
        self.sel = sel
        src_addr, src_len, is_fill, self.nread = chunk_sources(src, sel, blo, bhi, files)

        # the sub-block grid (units per sub-block, and where the block's first unit lies
        # in its sub-block: sub-blocks are counted from the array's origin)
        lcm = np.array([math.lcm(int(a), int(b)) for a, b in zip(inner, ushape, strict=True)])
        self.sg = sg = np.minimum(lcm // ushape, np.maximum(ugrid, 1))
        shift = (np.asarray(blo, np.int64) // ushape) % sg
        self.shift = shift
        self.sgrid = _ceil_div(ugrid + shift, sg)

        # the chunks cut along the unit grid: one job per piece, sorted by sub-block
        lo = sel.coords * inner - blo + sel.src_lo  # block coordinates of each chunk's part
        hi = sel.coords * inner - blo + sel.src_hi
        row, uidx, plo, phi = unit_pieces(lo, hi, ushape)
        sub = (uidx + shift) // sg
        sid = np.ravel_multi_index(tuple(sub.T), self.sgrid).astype(np.int64)
        order = np.argsort(sid, kind="stable")
        row, uidx, plo, phi, sid, sub = (x[order] for x in (row, uidx, plo, phi, sid, sub))
        nsub = int(np.prod(self.sgrid, dtype=np.int64))
        fill_p = is_fill[row]
        self.fill_sid = sid[fill_p]
        self.fill_uidx, self.fill_plo, self.fill_phi = uidx[fill_p], plo[fill_p], phi[fill_p]
        keep = ~fill_p
        row, uidx, plo, phi, sid, sub = (x[keep] for x in (row, uidx, plo, phi, sid, sub))
        self.bounds = np.searchsorted(sid, np.arange(nsub + 1))
        self.fill_bounds = np.searchsorted(self.fill_sid, np.arange(nsub + 1))
        # the buffer: one sub-block, unit by unit; a piece's place in it
        self.bshape = (*(int(x) for x in sg), *(int(x) for x in ushape))
        itemsize = codec.dtype.itemsize
        ustr = np.zeros(ndim, np.int64)
        gstr = np.zeros(ndim, np.int64)
        acc = itemsize
        for d in range(ndim - 1, -1, -1):
            ustr[d] = acc
            acc *= int(ushape[d])
        for d in range(ndim - 1, -1, -1):
            gstr[d] = acc
            acc *= int(sg[d])
        cstr = np.asarray(codec.chunk_strides, dtype=np.int64)
        self.spec = DecodeSpec(
            codec.c_codec, codec.nbytes, itemsize, codec.chunk_strides, tuple(int(x) for x in ustr)
        )
        # block-relative index of each piece's sub-block's first unit
        u0 = np.maximum(sub * sg - shift, 0)
        jobs = np.zeros(len(row), DECODE_JOB_DTYPE)
        jobs["src"] = src_addr[row]
        jobs["src_len"] = src_len[row]
        jobs["dst"] = ((uidx - u0) * gstr).sum(axis=1) + ((plo - uidx * ushape) * ustr).sum(
            axis=1
        )  # the buffer's address is added by subblocks()
        origin = sel.coords[row] * inner - blo  # block coordinates of each chunk's origin
        jobs["src_off"] = ((plo - origin) * cstr).sum(axis=1)
        jobs["shape"][:, :ndim] = phi - plo
        jobs["tag"] = row
        big = inner > 1
        whole = ((phi - plo) == inner).all(axis=1)
        jobs["direct"] = whole & bool((ustr[big] == cstr[big]).all())
        self.jobs = jobs

    def subblocks(self, dtype: Any, fill: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Decode the sub-blocks one after the other, each into the same ``"units"``
        buffer, and yield ``(first, units)``: the block grid index of its first unit,
        and its units (shape: the sub-block's unit grid + the unit shape).  ``units`` is
        valid until the next one is asked for."""
        src = self.src
        buf = self.buffers(self.bshape, dtype, "units")
        base = np.uint64(address(buf))
        bounds = extent(buf)  # the C decoder refuses a box reaching outside ``buf``
        for s in range(int(np.prod(self.sgrid, dtype=np.int64))):
            sc = np.asarray(np.unravel_index(s, self.sgrid), dtype=np.int64).reshape(-1)
            first = np.maximum(sc * self.sg - self.shift, 0)
            last = np.minimum((sc + 1) * self.sg - self.shift, self.ugrid)
            units = buf[tuple(slice(0, int(x)) for x in last - first)]
            for k in np.ndindex(*(int(x) for x in last - first)):
                if ((first + np.asarray(k, np.int64) + 1) * self.ushape > self.ext).any():
                    units[k] = fill  # an edge unit: past the array's end is fill
            f0, f1 = int(self.fill_bounds[s]), int(self.fill_bounds[s + 1])
            for p in range(f0, f1):
                u = self.fill_uidx[p]
                box = tuple(
                    slice(int(x), int(y))
                    for x, y in zip(
                        self.fill_plo[p] - u * self.ushape,
                        self.fill_phi[p] - u * self.ushape,
                        strict=True,
                    )
                )
                units[tuple(int(x) for x in u - first)][box] = fill
            j0, j1 = int(self.bounds[s]), int(self.bounds[s + 1])
            if j1 > j0:
                jobs = self.jobs[j0:j1].copy()
                jobs["dst"] += base
                jobs["dst_lo"], jobs["dst_len"] = bounds
                # Ownership: every src points into a file buffer the caller holds, every
                # dst into ``buf``, held here; the decoder keeps no pointer after it
                # returns.
                if decode_chunks(self.spec, jobs):
                    raise decode_failure(src, self.spec, jobs, self.sel.coords)
            yield first, units
