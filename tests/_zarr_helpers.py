"""Fixtures for the Zarr tests: arrays written by zarr-python, loaders on both backends.

Every fixture array is small (a few hundred chunks at most), has edge chunks (its shape
is not a multiple of the chunk shape) and missing chunks (only part of it is written,
the rest reads as the fill value).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.codecs import (
    BloscCodec,
    BytesCodec,
    Crc32cCodec,
    GzipCodec,
    TransposeCodec,
    ZstdCodec,
)

BACKENDS = ["uring", "pread"]

SHAPE = (11, 13, 17)
CHUNKS = (4, 5, 6)
SHARDS = (8, 10, 12)

DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
]


@dataclass
class Spec:
    """One fixture array: an id and zarr-python ``create_array`` arguments."""

    name: str
    dtype: str = "float32"
    kwargs: dict[str, Any] = field(default_factory=dict)
    shape: tuple[int, ...] = SHAPE
    chunks: tuple[int, ...] = CHUNKS
    fill: Any = None
    partial: bool = True  # leave the last planes unwritten (missing chunks)


def make_data(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Deterministic data of ``dtype`` using its whole range (NaNs in floats)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random(shape) > 0.5
    if dt.kind in "iu":
        info = np.iinfo(dt)
        native = dt.newbyteorder("=")
        return rng.integers(info.min, info.max, size=shape, dtype=native, endpoint=True).astype(dt)
    if dt.kind == "f":
        out = (rng.standard_normal(shape) * 100).astype(dt)
        out.flat[::7] = np.nan
        return out
    if dt.kind == "c":
        out = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
        out.flat[::11] = complex(np.nan, 1)
        return out
    raise ValueError(dtype)


def default_fill(dtype: str) -> Any:
    dt = np.dtype(dtype)
    return {"b": True, "i": -7, "u": 7, "f": np.nan, "c": complex(1, -2)}[dt.kind]


def write_fixture(root: str, spec: Spec) -> tuple[str, np.ndarray]:
    """Write ``spec`` with zarr-python under ``root``; returns (path, data written)."""
    path = os.path.join(root, spec.name + ".zarr")
    fill = spec.fill if spec.fill is not None else default_fill(spec.dtype)
    arr = zarr.create_array(
        path,
        shape=spec.shape,
        chunks=spec.chunks,
        dtype=spec.dtype,
        fill_value=fill,
        overwrite=True,
        **spec.kwargs,
    )
    data = make_data(spec.dtype, spec.shape, seed=zlib.crc32(spec.name.encode()))
    if spec.partial:
        cut = spec.shape[0] - spec.chunks[0] if spec.shape[0] > spec.chunks[0] else spec.shape[0]
        arr[:cut] = data[:cut]
    else:
        arr[...] = data
    return path, data


def v3(**kw: Any) -> dict[str, Any]:
    return {"zarr_format": 3, **kw}


def v2(**kw: Any) -> dict[str, Any]:
    return {"zarr_format": 2, **kw}


def _blosc2(cname: str, shuffle: int) -> numcodecs.Blosc:
    return numcodecs.Blosc(cname=cname, clevel=3, shuffle=shuffle)


LAYOUTS: list[Spec] = [
    # Zarr v3: every codec, both endians, transpose, sharding with the index at either end
    Spec("v3-raw", "float32", v3(compressors=None)),
    Spec(
        "v3-bytes-big-zstd",
        "int32",
        v3(serializer=BytesCodec(endian="big"), compressors=[ZstdCodec(level=1)]),
    ),
    Spec(
        "v3-bytes-big-raw-f8", "float64", v3(serializer=BytesCodec(endian="big"), compressors=None)
    ),
    Spec("v3-gzip", "uint16", v3(compressors=[GzipCodec(level=5)])),
    Spec("v3-blosc-lz4", "float64", v3(compressors=[BloscCodec(cname="lz4", shuffle="shuffle")])),
    Spec(
        "v3-blosc-zstd-bit",
        "int8",
        v3(compressors=[BloscCodec(cname="zstd", shuffle="bitshuffle")]),
    ),
    Spec(
        "v3-blosc-noshuffle",
        "uint32",
        v3(compressors=[BloscCodec(cname="blosclz", shuffle="noshuffle")]),
    ),
    Spec("v3-zstd-crc32c", "float32", v3(compressors=[ZstdCodec(level=3), Crc32cCodec()])),
    Spec("v3-crc32c-only", "int16", v3(compressors=[Crc32cCodec()])),
    Spec(
        "v3-transpose",
        "float32",
        v3(filters=[TransposeCodec(order=(2, 0, 1))], compressors=[ZstdCodec(level=1)]),
    ),
    Spec(
        "v3-transpose-big",
        "int64",
        v3(filters=[TransposeCodec(order=(1, 2, 0))], serializer=BytesCodec(endian="big")),
    ),
    Spec(
        "v3-shard-end", "int64", v3(shards=SHARDS, compressors=[ZstdCodec(level=1), Crc32cCodec()])
    ),
    Spec(
        "v3-shard-start",
        "uint32",
        v3(
            shards={"shape": SHARDS, "index_location": "start"},
            compressors=[BloscCodec(cname="lz4")],
        ),
    ),
    Spec(
        "v3-shard-transpose",
        "float16",
        v3(shards=SHARDS, filters=[TransposeCodec(order=(2, 1, 0))]),
    ),
    Spec(
        "v3-shard-raw-big",
        "float64",
        v3(shards=SHARDS, compressors=None, serializer=BytesCodec(endian="big")),
    ),
    Spec("v3-key-v2-dot", "complex64", v3(chunk_key_encoding={"name": "v2", "separator": "."})),
    Spec("v3-key-v2-slash", "bool", v3(chunk_key_encoding={"name": "v2", "separator": "/"})),
    Spec(
        "v3-key-default-dot", "uint64", v3(chunk_key_encoding={"name": "default", "separator": "."})
    ),
    Spec("v3-shard-key-v2", "int16", v3(shards=SHARDS, chunk_key_encoding={"name": "v2"})),
    # Zarr v2: blosc with its inner compressors and shuffles, zstd, gzip, zlib, lz4, C and F
    Spec("v2-blosc-lz4-shuffle", "float32", v2(compressors=_blosc2("lz4", 1))),
    Spec("v2-blosc-zstd-bitshuffle", "int16", v2(compressors=_blosc2("zstd", 2))),
    Spec("v2-blosc-zlib-noshuffle", "uint8", v2(compressors=_blosc2("zlib", 0))),
    Spec("v2-blosc-blosclz", "complex128", v2(compressors=_blosc2("blosclz", 1))),
    Spec("v2-blosc-lz4hc", "float64", v2(compressors=_blosc2("lz4hc", 1))),
    Spec("v2-zstd-big", ">f8", v2(compressors=numcodecs.Zstd(level=2))),
    Spec("v2-gzip-big", ">i4", v2(compressors=numcodecs.GZip(level=4))),
    Spec("v2-zlib", "bool", v2(compressors=numcodecs.Zlib(level=3))),
    Spec("v2-lz4", "int64", v2(compressors=numcodecs.LZ4())),
    Spec("v2-raw", "uint16", v2(compressors=None)),
    Spec("v2-F-raw", "float32", v2(compressors=None, order="F")),
    Spec(
        "v2-F-blosc-slash",
        "uint16",
        v2(
            compressors=_blosc2("lz4", 1),
            order="F",
            chunk_key_encoding={"name": "v2", "separator": "/"},
        ),
    ),
    Spec("v2-F-zstd-big", ">i8", v2(compressors=numcodecs.Zstd(), order="F")),
    Spec(
        "v2-delta-filter",
        "int32",
        v2(filters=[numcodecs.Delta(dtype="int32")], compressors=numcodecs.Zstd()),
    ),
    Spec("v2-slash", "float32", v2(chunk_key_encoding={"name": "v2", "separator": "/"})),
    # shapes: 1-d, 2-d with one-element chunks, 4-d, chunks larger than the array
    Spec("v3-1d", "float64", v3(compressors=[ZstdCodec()]), shape=(1000,), chunks=(64,)),
    Spec("v3-2d-tiny-chunks", "int32", v3(), shape=(7, 9), chunks=(1, 2)),
    Spec(
        "v3-4d-sharded", "uint8", v3(shards=(4, 4, 4, 4)), shape=(5, 6, 7, 9), chunks=(2, 2, 2, 2)
    ),
    Spec("v2-big-chunk", "int16", v2(), shape=(5, 6), chunks=(8, 8), partial=False),
]

DTYPE_SPECS: list[Spec] = [
    *(Spec(f"v3-dtype-{d}", d, v3(compressors=[ZstdCodec(level=1)])) for d in DTYPES),
    *(
        Spec(f"v3-shard-dtype-{d}", d, v3(shards=SHARDS, compressors=[BloscCodec()]))
        for d in DTYPES
    ),
    *(Spec(f"v2-dtype-{d}", d, v2(compressors=_blosc2("lz4", 1))) for d in DTYPES),
]


def regions(shape: tuple[int, ...]) -> list[Any]:
    """numpy-style keys exercising boxes, integers, steps, ``...`` and empty regions."""
    nd = len(shape)
    out: list[Any] = [(), Ellipsis, 0, -1, slice(1, None)]
    if nd >= 2:
        out += [
            tuple(slice(1, max(2, s - 1)) for s in shape),
            tuple(slice(s // 3, s // 3 + max(1, s // 2)) for s in shape),
            (Ellipsis, shape[-1] - 1),
            (slice(None), 1),
            tuple(slice(None, None, 2 + i) for i in range(nd)),
            tuple(slice(None, None, -1 - i) for i in range(nd)),
            (slice(2, 2),),
            (-2, Ellipsis, slice(-3, None)),
        ]
    else:
        out += [slice(3, 70), slice(None, None, 3), slice(None, None, -5), slice(5, 5)]
    return out


def check_equal(got: np.ndarray, want: np.ndarray, where: str) -> None:
    """Element-for-element equality (NaN equal to NaN), same shape and dtype."""
    assert isinstance(got, np.ndarray), f"{where}: got {type(got)}"
    assert got.shape == want.shape, f"{where}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{where}: dtype {got.dtype} != {want.dtype}"
    kind = want.dtype.kind
    ok = np.array_equal(got, want, equal_nan=kind in "fc")
    assert ok, f"{where}: values differ at {np.argwhere(got != want)[:5].tolist()}"


Maker = Callable[[Spec], tuple[str, np.ndarray]]
