"""The C decode path (``lsio_decode_batch``) against the Python one and zarr-python.

Raw, zstd and blosc chunks are decoded in C (decode, box copy, buffer release); every
other codec chain goes through numcodecs in Python.  These tests pin which chains take
which path, and check that both paths give zarr-python's values on the same regions --
unaligned boxes, sharded arrays with coalesced reads (several chunks per pool buffer),
F order, strided caller buffers -- and that a chunk decoding to the wrong size is an
error naming it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numcodecs
import numpy as np
import pytest
import zarr
from _zarr_helpers import BACKENDS
from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

import lsio_ray.zarr as lz
from lsio_ray.zarr.loader import Loader


@pytest.fixture(scope="module", params=BACKENDS)
def loader(request: pytest.FixtureRequest) -> Iterator[Loader]:
    ld = Loader(backend=request.param, decode_threads=2)
    yield ld
    ld.close()


def _data(shape: tuple[int, ...], dtype: str = "f4") -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.standard_normal(shape).cumsum(axis=-1) * 10).astype(dtype)


@pytest.mark.parametrize(
    ("kw", "path"),
    [
        (dict(compressors=None), "raw"),
        (dict(compressors=ZstdCodec(level=1)), "zstd"),
        (dict(compressors=BloscCodec(cname="lz4")), "blosc"),
        (dict(compressors=[ZstdCodec(), Crc32cCodec()]), None),
        (dict(compressors=GzipCodec()), None),
        (dict(compressors=ZstdCodec(), filters=[TransposeCodec(order=(2, 1, 0))]), None),
        (dict(zarr_format=2, compressors=numcodecs.Blosc(cname="zstd")), "blosc"),
        (dict(zarr_format=2, compressors=numcodecs.Zstd(level=1), order="F"), "zstd"),
        (dict(zarr_format=2, compressors=numcodecs.LZ4()), None),
        (dict(zarr_format=2, compressors=None, dtype=">i4"), "raw"),
    ],
)
def test_which_chains_decode_in_c(tmp_path, kw: dict, path: str | None) -> None:
    dtype = kw.pop("dtype", "f4")
    p = str(tmp_path / "a.zarr")
    zarr.create_array(p, shape=(4, 6, 8), chunks=(2, 3, 4), dtype=dtype, **kw)
    assert lz.open(p).layout.codec.c_codec == path


LAYOUTS = {
    "v3-zstd": dict(compressors=ZstdCodec(level=1)),
    "v3-raw": dict(compressors=None),
    "v3-blosc": dict(compressors=BloscCodec(cname="zstd", shuffle="bitshuffle")),
    "v3-sharded": dict(shards=(6, 12, 16), compressors=ZstdCodec(level=1)),
    "v2-blosc": dict(zarr_format=2, compressors=numcodecs.Blosc(cname="lz4", shuffle=2)),
    "v2-zstd-F": dict(zarr_format=2, compressors=numcodecs.Zstd(level=1), order="F"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_c_path_equals_python_path_and_zarr(tmp_path, loader: Loader, layout: str) -> None:
    data = _data((12, 24, 33))
    p = str(tmp_path / "a.zarr")
    zarr.create_array(p, data=data, chunks=(3, 6, 8), **LAYOUTS[layout])
    fast = lz.open(p, loader=loader)
    slow = lz.open(p, loader=loader)
    assert fast.layout.codec.c_codec is not None
    slow.layout = type(slow.layout).__new__(type(slow.layout))
    slow.layout.__dict__.update(fast.layout.__dict__)
    slow.layout.codec = type(fast.layout.codec).__new__(type(fast.layout.codec))
    slow.layout.codec.__dict__.update(fast.layout.codec.__dict__)
    slow.layout.codec.c_codec = None  # the same array through numcodecs in Python
    ref = zarr.open_array(p, mode="r")
    rng = np.random.default_rng(1)
    boxes = [(slice(None),) * 3, (slice(1, 11), slice(5, 19), slice(3, 31))]
    for _ in range(12):
        lo = rng.integers(0, data.shape)
        hi = lo + rng.integers(1, np.asarray(data.shape) - lo + 1)
        boxes.append(tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)))
    for box in boxes:
        want = ref[box]
        np.testing.assert_array_equal(fast[box], want)
        np.testing.assert_array_equal(slow[box], want)
    # a caller's buffer with strides of its own (a transposed view, a strided slice)
    box = (slice(2, 10), slice(3, 21), slice(0, 33))
    out = np.zeros((33, 18, 8), "f4").transpose(2, 1, 0)
    fast.read(box, out=out)
    np.testing.assert_array_equal(out, ref[box])
    base = np.zeros((16, 18, 66), "f4")
    out = base[::2, :, ::2]
    fast.read(box, out=out)
    np.testing.assert_array_equal(out, ref[box])
    assert base[1::2].sum() == 0 and base[:, :, 1::2].sum() == 0  # nothing outside the box
    assert loader.engine.stats()["buffers_out"] == 0


def test_frame_of_the_wrong_size_is_an_error(tmp_path, loader: Loader) -> None:
    data = _data((4, 8, 8))
    p = str(tmp_path / "a.zarr")
    zarr.create_array(p, data=data, chunks=(2, 4, 4), compressors=ZstdCodec())
    chunk = os.path.join(p, "c", "1", "0", "1")
    with open(chunk, "wb") as fh:  # a valid zstd frame of half a chunk
        fh.write(numcodecs.Zstd().encode(np.zeros(16, "f4")))
    a = lz.open(p, loader=loader)
    with pytest.raises(lz.ChunkCorruptError, match="c/1/0/1") as exc:
        a[...]
    assert "decodes to 64 bytes, expected 128" in str(exc.value)
    np.testing.assert_array_equal(a[0:2], data[0:2])  # the other chunks still read
    assert loader.engine.stats()["buffers_out"] == 0


def test_garbage_blosc_is_an_error(tmp_path, loader: Loader) -> None:
    p = str(tmp_path / "a.zarr")
    zarr.create_array(
        p, data=_data((4, 8, 8)), chunks=(2, 4, 4), zarr_format=2, compressors=numcodecs.Blosc()
    )
    with open(os.path.join(p, "0.1.0"), "r+b") as fh:
        fh.seek(12)
        fh.write(b"\xff\xff\x00\x00")  # cbytes no longer the file's size
    a = lz.open(p, loader=loader)
    with pytest.raises(lz.ChunkCorruptError, match=r"0\.1\.0.*blosc: invalid header"):
        a[...]
    assert loader.engine.stats()["buffers_out"] == 0


def test_first_rows_of_a_zstd_chunk_decode_only_the_blocks_they_need(
    tmp_path, loader: Loader
) -> None:
    """A box in the first rows of a (1, 512, 128) float32 chunk (256 KiB: two 128 KiB
    zstd blocks) is decoded from the first block only: with a byte of the second block
    corrupted (the frame's checksum no longer matches) the first rows still read, the
    last rows and the whole chunk are an error naming it; a chunk truncated by a byte
    is an error even for its first rows (its block headers no longer span the file)."""
    data = _data((2, 512, 128))
    p = str(tmp_path / "a.zarr")
    zarr.create_array(
        p, data=data, chunks=(1, 512, 128), compressors=ZstdCodec(level=3, checksum=True)
    )
    first, second = os.path.join(p, "c", "0", "0", "0"), os.path.join(p, "c", "1", "0", "0")
    with open(first, "r+b") as fh:
        fh.seek(-40, os.SEEK_END)  # inside the last block, before the 4-byte checksum
        b = fh.read(1)
        fh.seek(-40, os.SEEK_END)
        fh.write(bytes([b[0] ^ 0x5A]))
    with open(second, "r+b") as fh:
        fh.truncate(os.path.getsize(second) - 1)
    a = lz.open(p, loader=loader)
    np.testing.assert_array_equal(a[0, 3:100], data[0, 3:100])
    for key in [(0, slice(400, 512)), (0, slice(None))]:
        with pytest.raises(lz.ChunkCorruptError, match="c/0/0/0"):
            a[key]
    with pytest.raises(lz.ChunkCorruptError, match="c/1/0/0"):
        a[1, 3:100]
    assert loader.engine.stats()["buffers_out"] == 0
