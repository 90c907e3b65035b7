"""The re-chunk job's plan: the destination's metadata, the block grid, each block's reads.

:func:`plan_job` turns the arguments of :func:`~lsio_ray.ray.rechunk.rechunk` and the
source's metadata into a :class:`Plan`; :func:`block_shape` chooses the blocks (see the
package docstring), :func:`block_ops` lists a block's reads, :func:`parse_codec` reads
a codec spec (``--codec``).  Pure functions of their arguments: the driver and every
block's task plan the same blocks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numcodecs
import numpy as np
import zarr.codecs as zc

from lsio_ray.io.ops import Operation, get_ranges
from lsio_ray.zarr.codec_api import ArrayLayout, layout_from_docs, metadata_docs, select_chunks

__all__ = [
    "Plan",
    "block_box",
    "block_ops",
    "block_shape",
    "cached_layout",
    "ceil_div",
    "local_engine",
    "parse_codec",
    "plan_job",
]


# -- codecs ------------------------------------------------------------------------------

_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


def parse_codec(text: str | None, zarr_format: int) -> dict[str, Any]:
    """``create_array`` keyword arguments for a codec spec.

    ``zstd[:LEVEL]``, ``gzip[:LEVEL]``, ``blosc[:CNAME[:LEVEL[:SHUFFLE]]]`` (SHUFFLE one of
    noshuffle, shuffle, bitshuffle), ``lz4`` (v2 only), ``none``; None keeps zarr-python's
    default for the format."""
    if text is None:
        return {}
    parts = text.strip().lower().split(":")
    name, args = parts[0], parts[1:]

    def level(default: int) -> int:
        try:
            return int(args[0]) if args and args[0] else default
        except ValueError:
            raise ValueError(f"codec {text!r}: level {args[0]!r} is not an integer") from None

    if name == "none":
        return {"compressors": None}
    if zarr_format == 3:
        if name == "zstd":
            return {"compressors": [zc.ZstdCodec(level=level(3))]}
        if name == "gzip":
            return {"compressors": [zc.GzipCodec(level=level(5))]}
        if name == "blosc":
            cname = args[0] if args and args[0] else "zstd"
            clevel = int(args[1]) if len(args) > 1 else 5
            shuffle = args[2] if len(args) > 2 else "shuffle"
            if shuffle not in _SHUFFLES:
                raise ValueError(f"codec {text!r}: shuffle must be one of {sorted(_SHUFFLES)}")
            return {"compressors": [zc.BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle)]}
    else:
        if name == "zstd":
            return {"compressors": numcodecs.Zstd(level=level(3))}
        if name == "gzip":
            return {"compressors": numcodecs.GZip(level=level(5))}
        if name == "lz4":
            return {"compressors": numcodecs.LZ4(acceleration=level(1))}
        if name == "blosc":
            cname = args[0] if args and args[0] else "zstd"
            clevel = int(args[1]) if len(args) > 1 else 5
            shuffle = args[2] if len(args) > 2 else "shuffle"
            if shuffle not in _SHUFFLES:
                raise ValueError(f"codec {text!r}: shuffle must be one of {sorted(_SHUFFLES)}")
            return {
                "compressors": numcodecs.Blosc(
                    cname=cname, clevel=clevel, shuffle=_SHUFFLES[shuffle]
                )
            }
    raise ValueError(
        f"unknown codec {text!r} for Zarr v{zarr_format} "
        "(zstd[:L], gzip[:L], blosc[:CNAME[:L[:SHUFFLE]]], lz4 (v2), none)"
    )


# -- planning ----------------------------------------------------------------------------


def block_shape(
    shape: Sequence[int],
    src_file: Sequence[int],
    dst_unit: Sequence[int],
    itemsize: int,
    budget: int,
    min_blocks: int = 1,
) -> tuple[int, ...]:
    """The block shape: whole output units, aligned with the input files, as close to
    ``budget`` decoded bytes as the array allows while it still makes ``min_blocks``
    blocks (see the module's docstring)."""
    block = []
    caps = []
    for n, s, t in zip(shape, src_file, dst_unit, strict=True):
        b = math.lcm(int(s), int(t))
        cap = -(-max(int(n), 1) // int(t)) * int(t)  # the array's extent in whole units
        caps.append(cap)
        block.append(max(int(t), min(b, cap)))

    def nbytes(blk: list[int]) -> int:
        return int(np.prod(blk, dtype=np.int64)) * itemsize

    while nbytes(block) > budget:
        cands = [d for d in range(len(block)) if block[d] > dst_unit[d]]
        if not cands:
            break
        d = max(cands, key=lambda k: block[k] // dst_unit[k])
        units = block[d] // dst_unit[d]
        block[d] = int(dst_unit[d]) * max(1, units // 2)
    # grow small blocks (e.g. one output chunk of a few MiB): each block costs a Ray
    # task and an op group, several ms of CPU that big blocks amortise (BENCHMARKS.md)
    while True:
        cands = [
            d
            for d in range(len(block))
            if block[d] < caps[d]
            and nbytes(block) * 2 <= budget
            and math.prod(ceil_div(shape, [*block[:d], block[d] * 2, *block[d + 1 :]]))
            >= min_blocks
        ]
        if not cands:
            break
        d = max(cands, key=lambda k: (caps[k] / block[k], -k))
        block[d] = min(block[d] * 2, caps[d])
    return tuple(block)


def ceil_div(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """``ceil(a / b)`` per axis."""
    return tuple(-(-int(x) // int(y)) for x, y in zip(a, b, strict=True))


def block_box(
    bid: int, grid: Sequence[int], block: Sequence[int], shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Block ``bid``'s box ``[lo, hi)`` in the array (C order over the block grid),
    cut at the array's end."""
    coords = (
        np.array(np.unravel_index(bid, grid), dtype=np.int64).reshape(-1)
        if grid
        else (np.zeros(0, np.int64))
    )
    lo = coords * np.asarray(block, dtype=np.int64)
    hi = np.minimum(lo + np.asarray(block, dtype=np.int64), np.asarray(shape, dtype=np.int64))
    return lo, hi


def block_ops(
    src: ArrayLayout, grid: Sequence[int], block: Sequence[int], bid: int, direct: bool = False
) -> list[Operation]:
    """The reads of block ``bid``: every input file it touches, whole, each carrying its
    file-grid coordinates as metadata (``direct``: with O_DIRECT)."""
    lo, hi = block_box(bid, grid, block, src.shape)
    coords = select_chunks(lo, hi, tuple(int(x) for x in src.file_shape)).coords
    return [
        get_ranges(src.file_path(c), metadata=coords[i : i + 1], direct=direct)
        for i, c in enumerate(coords.tolist())
    ]


def local_engine(settings: dict[str, Any] | None, src: ArrayLayout) -> dict[str, Any]:
    """Engine settings for a worker's in-process IO: the IO actors' ``settings``
    (:attr:`~lsio_ray.ray.Coordinator.engine_settings`), with a pool of at least 32 MiB
    and four times the largest input file can be (each is read whole; a compressed
    chunk can be a little bigger than its decoded bytes)."""
    out = dict(settings or {})
    nbytes = int(np.prod(src.file_shape, dtype=np.int64)) * src.dtype.itemsize
    bound = nbytes + nbytes // 64 + (1 << 20)
    out["pool_bytes"] = max(32 << 20, 1 << (4 * bound - 1).bit_length())
    return out


# -- layouts (driver and workers) --------------------------------------------------------

_LAYOUTS: dict[str, ArrayLayout] = {}


def cached_layout(root: str, docs: dict[str, Any]) -> ArrayLayout:
    """The layout of the array at ``root`` from its metadata documents, made once per
    process (a worker runs many blocks of one job)."""
    key = root + "\0" + json.dumps(docs, sort_keys=True)
    lay = _LAYOUTS.get(key)
    if lay is None:
        lay = layout_from_docs(root, docs)
        _LAYOUTS[key] = lay
    return lay


# -- the job's plan ----------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What a conversion makes: the destination's metadata, and the blocks."""

    src: ArrayLayout
    dst: ArrayLayout
    src_docs: dict[str, Any]
    """The source's metadata documents (parsed JSON by file name)."""
    dst_docs: dict[str, Any]
    """The destination's, parsed."""
    dst_bytes: dict[str, bytes]
    """The destination's, as they are written (last, when every block is done)."""
    block: tuple[int, ...]
    grid: tuple[int, ...]
    nblocks: int


def plan_job(
    src_root: str,
    dst_root: str,
    src_docs: dict[str, Any],
    *,
    chunks: Sequence[int],
    shards: Sequence[int] | None,
    codec: str | None,
    zarr_format: int | None,
    block_bytes: int,
    cpus: int,
) -> Plan:
    """The plan of converting the array at ``src_root`` (metadata ``src_docs``) into a
    new one at ``dst_root``: its metadata as zarr-python writes it for the source's
    shape, dtype, fill value, attributes and dimension names with the new ``chunks``,
    ``shards``, ``codec`` and ``zarr_format`` (default: the source's), and blocks of
    about ``block_bytes``, four per CPU (``cpus``) at least where the array allows.
    Arguments that do not fit raise :class:`ValueError`."""
    src = cached_layout(src_root, src_docs)
    fmt = int(zarr_format or src.zarr_format)
    if fmt not in (2, 3):
        raise ValueError(f"zarr_format must be 2 or 3, not {fmt}")
    chunks_t = tuple(int(c) for c in chunks)
    if len(chunks_t) != src.ndim:
        raise ValueError(f"chunks {chunks_t} for an array of {src.ndim} dimensions")
    shards_t = None if shards is None else tuple(int(s) for s in shards)
    if shards_t is not None and fmt != 3:
        raise ValueError("shards need zarr_format 3")

    # the destination's metadata, as zarr-python would write it
    kwargs: dict[str, Any] = {
        "shape": src.shape,
        "dtype": src.dtype,
        "chunks": chunks_t,
        "zarr_format": fmt,
        "fill_value": src.fill_value[()],
        "attributes": dict(src.attrs),
    }
    if shards_t is not None:
        kwargs["shards"] = shards_t
    if fmt == 3 and src.meta.dimension_names is not None:
        kwargs["dimension_names"] = list(src.meta.dimension_names)
    kwargs.update(parse_codec(codec, fmt))
    dst_bytes = metadata_docs(**kwargs)
    dst_docs = {k: json.loads(v) for k, v in dst_bytes.items()}
    dst = cached_layout(dst_root, dst_docs)

    block = block_shape(
        src.shape,
        src.file_shape,
        dst.file_shape,
        src.dtype.itemsize,
        block_bytes,
        min_blocks=4 * max(1, cpus),
    )
    grid = ceil_div(src.shape, block) if src.ndim else ()
    nblocks = int(np.prod(grid, dtype=np.int64)) if all(s > 0 for s in src.shape) else 0
    return Plan(src, dst, src_docs, dst_docs, dst_bytes, block, grid, nblocks)
