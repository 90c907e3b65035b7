"""Crafted metadata must never reach the C decoder with boxes it cannot hold.

The outside review's critical finding: a v3 ``chunk_shape`` of ``[2**57+1, 128, 1]``
made the chunk's element count wrap in int64 to a 512-byte chunk, a real 512-byte zstd
chunk passed the decoded-size check, and ``copy_box`` read far past it (heap bytes in
the output; SIGSEGV on a large array).  Two defences, each tested alone here:
- the layout refuses any shape whose element or byte count passes 2**62
  (``ArrayMetadataError`` naming the path), computed with Python ints;
- the C decoder checks every job's box against the decoded chunk and the destination
  (``DEC_BOUNDS``), whatever Python hands it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

import lsio_ray.zarr as lz
from lsio_ray.io._core import (
    DEC_BOUNDS,
    DEC_OK,
    DECODE_JOB_DTYPE,
    DecodeSpec,
    decode_chunks,
    extent,
)
from lsio_ray.zarr.errors import ArrayMetadataError

WRAP = [2**57 + 1, 128, 1]


def _crafted(root: Path, shape: tuple[int, ...], chunk_shape: list[int]) -> str:
    """A zstd float32 array whose first chunk holds 128 real values, its metadata then
    given ``chunk_shape`` (zarr-python accepts the document)."""
    path = str(root / "crafted.zarr")
    z = zarr.create_array(
        path,
        shape=shape,
        chunks=(1, 128, 1),
        dtype="float32",
        compressors=zarr.codecs.ZstdCodec(),
        fill_value=0,
    )
    z[0:1, 0:128, 0:1] = 1
    meta_path = os.path.join(path, "zarr.json")
    with open(meta_path) as fh:
        meta = json.load(fh)
    meta["chunk_grid"]["configuration"]["chunk_shape"] = chunk_shape
    with open(meta_path, "w") as fh:
        json.dump(meta, fh)
    return path


def test_wrapping_chunk_shape_is_refused_by_open(tmp_path: Path) -> None:
    """The exact metadata of the report: a clear error naming the path, no read."""
    path = _crafted(tmp_path, (4, 128, 4), WRAP)
    with pytest.raises(ArrayMetadataError, match="2\\*\\*62") as ei:
        lz.open(path)
    assert path in str(ei.value)
    assert "chunk shape" in str(ei.value)


def test_wrapping_chunk_shape_large_array_does_not_crash(tmp_path: Path) -> None:
    """The report's SIGSEGV case (array shape [2000000, 16, 16]), in a child process so
    that a crash fails the test instead of killing pytest."""
    path = _crafted(tmp_path, (2_000_000, 128, 16), WRAP)
    code = (
        "import sys, lsio_ray.zarr as lz\n"
        "from lsio_ray.zarr.errors import ArrayMetadataError\n"
        "try:\n"
        f"    lz.open({path!r})[0:4]\n"
        "except ArrayMetadataError as e:\n"
        "    print('refused:', e)\n"
        "    sys.exit(0)\n"
        "sys.exit(3)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "refused:" in r.stdout and path in r.stdout


def test_wrapping_chunk_shape_through_the_zarr_pipeline(tmp_path: Path) -> None:
    """zarr-python with lsio's pipeline raises as plain zarr-python does, and never
    returns heap bytes."""
    path = _crafted(tmp_path, (4, 128, 4), WRAP)
    with pytest.raises(ValueError):
        zarr.open_array(path, mode="r")[:]
    with lz.use_lsio_pipeline():
        try:
            got = zarr.open_array(path, mode="r")[:]
        except ValueError:
            return
    pytest.fail(f"read succeeded: {np.count_nonzero(got)} non-zero values")


@pytest.mark.parametrize(
    ("shape", "chunks", "what"),
    [
        ((2**40, 2**40), [2**20, 2**20], "array shape"),  # 2**80 elements
        ((4, 4), [2**61, 3], "chunk shape"),  # the chunk's bytes pass 2**62
        ((2**62, 2**62), [1, 1], "array shape"),
    ],
)
def test_oversized_shapes_are_refused(
    tmp_path: Path, shape: tuple[int, ...], chunks: list[int], what: str
) -> None:
    """Products are Python ints: anything past 2**62 elements or bytes is refused."""
    path = str(tmp_path / "big.zarr")
    os.makedirs(path)
    meta = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": list(shape),
        "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
    }
    with open(os.path.join(path, "zarr.json"), "w") as fh:
        json.dump(meta, fh)
    with pytest.raises(ArrayMetadataError, match=what) as ei:
        lz.open(path)
    assert path in str(ei.value)


def test_oversized_shard_index_is_refused(tmp_path: Path) -> None:
    """A shard of 2**60 one-element inner chunks: its index would take 2**64 bytes."""
    path = str(tmp_path / "shard.zarr")
    zarr.create_array(path, shape=(8,), chunks=(2,), shards=(4,), dtype="uint8")
    meta_path = os.path.join(path, "zarr.json")
    with open(meta_path) as fh:
        meta = json.load(fh)
    meta["shape"] = [2**60]
    meta["chunk_grid"]["configuration"]["chunk_shape"] = [2**60]
    meta["codecs"][0]["configuration"]["chunk_shape"] = [1]
    with open(meta_path, "w") as fh:
        json.dump(meta, fh)
    with pytest.raises(ArrayMetadataError, match="shard index") as ei:
        lz.open(path)
    assert path in str(ei.value)


def test_deeply_nested_metadata_is_a_metadata_error(tmp_path: Path) -> None:
    """JSON nested past the parser's recursion limit: ArrayMetadataError, not
    RecursionError."""
    path = str(tmp_path / "deep.zarr")
    os.makedirs(path)
    depth = 100_000
    with open(os.path.join(path, "zarr.json"), "w") as fh:
        fh.write('{"zarr_format": 3, "node_type": "array", "attributes": ')
        fh.write("[" * depth + "]" * depth + "}")
    with pytest.raises(ArrayMetadataError, match="nested too deeply") as ei:
        lz.open(path)
    assert path in str(ei.value)


def test_c_decoder_refuses_boxes_outside_the_chunk_or_destination() -> None:
    """Jobs the layout would never make, handed to the C decoder directly: each fails
    with DEC_BOUNDS and leaves the destination untouched; an exact fit decodes."""
    chunk = np.arange(128, dtype=np.float32)
    # the wrapped chunk: strides of shape (2**57+1, 128, 1), 512 decoded bytes
    spec = DecodeSpec("raw", 512, 4, (512, 4, 4), (512, 4, 4))
    dst = np.full((2, 128, 1), -1, np.float32)

    def run(src_off: int, shape: tuple[int, int, int], dst_addr: int, lo_len: tuple[int, int]):
        jobs = np.zeros(1, DECODE_JOB_DTYPE)
        jobs["src"], jobs["src_len"] = chunk.ctypes.data, chunk.nbytes
        jobs["dst"] = dst_addr
        jobs["dst_lo"], jobs["dst_len"] = lo_len
        jobs["src_off"] = src_off
        jobs["shape"][0, :3] = shape
        decode_chunks(spec, jobs)
        return int(jobs["status"][0]), int(jobs["detail"][0])

    base, span = extent(dst)
    assert span == dst.nbytes
    assert run(0, (3, 128, 1), base, (base, span)) == (DEC_BOUNDS, 1)  # past the chunk
    assert run(0, (1, 128, 1), base + span - 256, (base, span)) == (DEC_BOUNDS, 2)  # past dst
    assert run(0, (1, 128, 1), base - 4, (base, span)) == (DEC_BOUNDS, 2)  # below dst
    assert run(4, (1, 128, 1), base, (base, span)) == (DEC_BOUNDS, 1)  # offset past the chunk
    assert run(0, (1, -1, 1), base, (base, span)) == (DEC_BOUNDS, 3)
    assert (dst == -1).all()
    assert run(0, (1, 128, 1), base + 512, (base, span))[0] == DEC_OK  # the last row
    np.testing.assert_array_equal(dst[1, :, 0], chunk)
    assert (dst[0] == -1).all()


def test_extent_of_strided_views() -> None:
    """extent() spans exactly the bytes a view can touch, negative strides included."""
    a = np.zeros((6, 8), np.int32)
    assert extent(a) == (a.ctypes.data, a.nbytes)
    rev = a[::-1, ::2]
    lo, n = extent(rev)
    assert lo == a.ctypes.data and n == (5 * 32) + (3 * 8) + 4
    assert extent(a[:0]) == (0, 0)
