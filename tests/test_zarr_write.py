"""Arrays written by lsio_ray read back equal through zarr-python (and lsio_ray)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numcodecs
import numpy as np
import pytest
import zarr
from _zarr_helpers import check_equal, make_data
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, TransposeCodec, ZstdCodec

import lsio_ray.zarr as lz
from lsio_ray.zarr.loader import Loader

LAYOUTS: dict[str, dict[str, Any]] = {
    "v3": {"chunks": (4, 5, 6), "compressors": [ZstdCodec(level=1)]},
    "v3-big-crc": {
        "chunks": (4, 5, 6),
        "serializer": BytesCodec(endian="big"),
        "compressors": [ZstdCodec(), Crc32cCodec()],
    },
    "v3-transpose": {"chunks": (4, 5, 6), "filters": [TransposeCodec(order=(2, 0, 1))]},
    "v3-shards-end": {
        "chunks": (2, 5, 3),
        "shards": (4, 10, 6),
        "compressors": [BloscCodec(cname="lz4")],
    },
    "v3-shards-start": {
        "chunks": (2, 5, 3),
        "shards": {"shape": (4, 10, 6), "index_location": "start"},
    },
    "v3-key-v2": {"chunks": (4, 5, 6), "chunk_key_encoding": {"name": "v2", "separator": "."}},
    "v2-blosc": {
        "chunks": (4, 5, 6),
        "zarr_format": 2,
        "compressors": numcodecs.Blosc(cname="zstd", shuffle=2),
    },
    "v2-F-slash": {
        "chunks": (4, 5, 6),
        "zarr_format": 2,
        "order": "F",
        "compressors": numcodecs.Zstd(),
        "chunk_key_encoding": {"name": "v2", "separator": "/"},
    },
    "v2-gzip-delta": {
        "chunks": (4, 5, 6),
        "zarr_format": 2,
        "compressors": numcodecs.GZip(),
        "filters": [numcodecs.Delta(dtype="i4")],
    },
}


@pytest.fixture(scope="module")
def loader() -> Iterator[Loader]:
    ld = Loader(backend="uring")
    yield ld
    ld.close()


def no_temp_files(path: str) -> None:
    for _, _, names in os.walk(path):
        assert not [n for n in names if ".lsio-tmp." in n], names


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_save_reads_back_in_zarr(tmp_path, loader: Loader, name: str) -> None:
    kw = dict(LAYOUTS[name])
    dtype = "i4" if "delta" in name else "f8"
    data = make_data(dtype, (11, 13, 17), seed=3)
    path = str(tmp_path / "a.zarr")
    out = lz.save(path, data, fill_value=0, loader=loader, attributes={"k": "v"}, **kw)
    assert out.shape == data.shape
    ref = zarr.open_array(path, mode="r")
    check_equal(ref[...], data, f"{name}: zarr-python reads what lsio_ray wrote")
    assert dict(ref.attrs) == {"k": "v"}
    check_equal(lz.open(path, loader=loader)[...], data, f"{name}: lsio_ray reads it too")
    no_temp_files(path)


@pytest.mark.parametrize("name", ["v3", "v3-shards-end", "v3-shards-start", "v2-F-slash"])
def test_region_writes(tmp_path, loader: Loader, name: str) -> None:
    """Partial writes (read-modify-write of chunks and shards) against a numpy model."""
    kw = dict(LAYOUTS[name])
    path = str(tmp_path / "a.zarr")
    a = lz.create(path, shape=(11, 13, 17), dtype="f4", fill_value=np.nan, loader=loader, **kw)
    model = np.full((11, 13, 17), np.nan, dtype="f4")
    rng = np.random.default_rng(5)
    for _ in range(8):
        lo = [int(rng.integers(0, s)) for s in model.shape]
        hi = [int(rng.integers(a_ + 1, s + 1)) for a_, s in zip(lo, model.shape, strict=True)]
        key = tuple(slice(x, y) for x, y in zip(lo, hi, strict=True))
        value = rng.standard_normal(model[key].shape).astype("f4")
        a[key] = value
        model[key] = value
        check_equal(a[...], model, f"{name}: lsio_ray after writing {key}")
    a[3, 4] = 7.5  # integers and broadcasting
    model[3, 4] = 7.5
    a[..., 0] = 1
    model[..., 0] = 1
    check_equal(zarr.open_array(path, mode="r")[...], model, f"{name}: zarr-python")
    check_equal(a[...], model, f"{name}: same lsio_ray array (shard index cache dropped)")
    no_temp_files(path)


def test_create_metadata_and_overwrite(tmp_path, loader: Loader) -> None:
    path = str(tmp_path / "a.zarr")
    a = lz.create(path, shape=(5, 6), dtype="u2", chunks=(2, 3), fill_value=9, loader=loader)
    check_equal(a[...], np.full((5, 6), 9, "u2"), "fresh array is fill")
    check_equal(zarr.open_array(path, mode="r")[...], np.full((5, 6), 9, "u2"), "zarr")
    with pytest.raises(FileExistsError):
        lz.create(path, shape=(5, 6), dtype="u2", chunks=(2, 3), loader=loader)
    b = lz.create(
        path, shape=(3,), dtype="i1", chunks=(2,), overwrite=True, zarr_format=2, loader=loader
    )
    assert b.zarr_format == 2 and b.shape == (3,)
    assert sorted(os.listdir(path)) == [".zarray", ".zattrs"]


def test_save_failure_leaves_no_array(tmp_path, loader: Loader, monkeypatch) -> None:
    """Metadata is written last: an interrupted save leaves nothing that opens."""
    from lsio_ray.zarr import creation

    path = str(tmp_path / "a.zarr")

    def boom(*args: Any, **kw: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(creation, "write_units", boom)  # the chunks fail
    with pytest.raises(RuntimeError):
        lz.save(path, np.zeros((4, 4)), chunks=(2, 2), loader=loader)
    with pytest.raises(FileNotFoundError):
        lz.open(path)


def test_write_error_names_the_key(tmp_path, loader: Loader) -> None:
    path = str(tmp_path / "a.zarr")
    a = lz.create(path, shape=(4, 4), dtype="f4", chunks=(2, 2), loader=loader)
    os.makedirs(os.path.join(path, "c", "1", "1"))  # a directory where a chunk goes
    with pytest.raises(OSError, match="c/1/1") as exc:
        a[2:4, 2:4] = 1.0
    assert path in str(exc.value)


def test_write_big_array_in_batches(tmp_path, loader: Loader, monkeypatch) -> None:
    from lsio_ray.zarr import write

    monkeypatch.setattr(write, "_BATCH_BYTES", 1000)
    data = make_data("u1", (40, 30), seed=1)
    path = str(tmp_path / "a.zarr")
    lz.save(path, data, chunks=(7, 4), shards=(14, 8), loader=loader)
    check_equal(zarr.open_array(path, mode="r")[...], data, "batched shard writes")


# -- write_empty_chunks: what zarr-python stores, lsio_ray stores --------------------------


def _stored(path: str) -> dict[str, list[int] | None]:
    """Each stored unit's key, and for a shard which inner chunks it stores (1) or has
    an empty index entry for (0)."""
    from lsio_ray.zarr.shards import EMPTY, shard_index

    lay = lz.open(path).layout
    out: dict[str, list[int] | None] = {}
    for root, _, names in os.walk(path):
        for n in names:
            key = os.path.relpath(os.path.join(root, n), path)
            if n in (".zarray", ".zattrs", "zarr.json"):
                continue
            if lay.shards is None:
                out[key] = None
            else:
                raw = np.fromfile(os.path.join(root, n), np.uint8)
                out[key] = (shard_index(lay, raw, key)[:, 0] != EMPTY).astype(int).tolist()
    return out


def _fill_pattern(fill: float) -> np.ndarray:
    """(16, 20) float32: a whole (8, 10) shard of fill, one (4, 5) chunk of fill inside
    another shard, a chunk of -0.0, a chunk of NaN, the rest data."""
    data = make_data("f4", (16, 20), seed=9) + 1.5
    data[0:8, 0:10] = fill
    data[8:12, 0:5] = fill
    data[0:4, 10:15] = -0.0
    data[12:16, 15:20] = np.nan
    return data


EMPTY_LAYOUTS = {
    "v3": dict(chunks=(4, 5), zarr_format=3),
    "v3-sharded": dict(chunks=(4, 5), shards=(8, 10), zarr_format=3),
    "v3-sharded-start": dict(
        chunks=(4, 5), shards={"shape": (8, 10), "index_location": "start"}, zarr_format=3
    ),
    "v2": dict(chunks=(4, 5), zarr_format=2),
}


@pytest.mark.parametrize("empty_too", [False, True])
@pytest.mark.parametrize("fill", [0.0, np.nan])
@pytest.mark.parametrize("name", list(EMPTY_LAYOUTS))
def test_save_stores_what_zarr_python_stores(
    tmp_path, loader: Loader, name: str, fill: float, empty_too: bool
) -> None:
    """``write_empty_chunks`` as in ``zarr.create_array(config=...)``: with False (the
    default) chunks all fill value (NaN equal to NaN) are not stored, nor are empty
    inner chunks of a shard, nor a shard with none; a chunk of -0.0 under a fill value
    of 0.0 is stored, and reads back with its sign."""
    kw = EMPTY_LAYOUTS[name]
    data = _fill_pattern(fill)
    ref = str(tmp_path / "ref.zarr")
    z = zarr.create_array(
        ref,
        shape=data.shape,
        dtype=data.dtype,
        fill_value=fill,
        config={"write_empty_chunks": empty_too},
        **kw,
    )
    z[...] = data
    mine = str(tmp_path / "mine.zarr")
    lz.save(mine, data, fill_value=fill, loader=loader, write_empty_chunks=empty_too, **kw)
    assert _stored(mine) == _stored(ref)
    back = zarr.open_array(mine, mode="r")[...]
    np.testing.assert_array_equal(back.view("u4"), data.view("u4"))  # bits: -0.0, NaN


@pytest.mark.parametrize("name", ["v3", "v3-sharded", "v2"])
def test_writing_fill_removes_what_zarr_python_removes(tmp_path, loader: Loader, name: str) -> None:
    """A write leaving units all fill value removes the stored files (or empties the
    inner chunks' index entries), as zarr-python's writes do; with
    ``write_empty_chunks=True`` nothing is removed."""
    kw = EMPTY_LAYOUTS[name]
    data = make_data("f4", (16, 20), seed=4) + 1.5
    ref = str(tmp_path / "ref.zarr")
    z = zarr.create_array(ref, shape=data.shape, dtype=data.dtype, fill_value=0.0, **kw)
    mine = str(tmp_path / "mine.zarr")
    a = lz.save(mine, data, fill_value=0.0, loader=loader, **kw)
    z[...] = data
    for box in [(slice(0, 8), slice(0, 10)), (slice(8, 12), slice(10, 15)), (3, slice(None))]:
        a[box] = 0.0
        z[box] = 0.0
        assert _stored(mine) == _stored(ref), box
        check_equal(zarr.open_array(mine, mode="r")[...], z[...], f"{name}: after {box}")
        check_equal(a[...], z[...], f"{name}: lsio_ray after {box}")
    kept = str(tmp_path / "kept.zarr")
    b = lz.save(kept, data, fill_value=0.0, loader=loader, write_empty_chunks=True, **kw)
    before = _stored(kept)
    b[0:8, 0:10] = 0.0
    assert _stored(kept) == before
    assert lz.open(kept, write_empty_chunks=True).write_empty_chunks
    no_temp_files(mine)
