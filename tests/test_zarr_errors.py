"""Errors name the array, the chunk key and what was wrong; never silently wrong data."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator

import numpy as np
import pytest
import zarr
from _zarr_helpers import BACKENDS
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

import lsio_ray.zarr as lz
from lsio_ray.zarr.errors import ArrayMetadataError, UnsupportedError
from lsio_ray.zarr.loader import Loader


@pytest.fixture(scope="module", params=BACKENDS)
def loader(request: pytest.FixtureRequest) -> Iterator[Loader]:
    ld = Loader(backend=request.param)
    yield ld
    ld.close()


def healthy(loader: Loader) -> None:
    """After an error the loader still reads and holds no pool buffer."""
    st = loader.engine.stats()
    assert st["buffers_out"] == 0, st


def make(tmp_path, name: str, **kw) -> tuple[str, np.ndarray]:
    path = str(tmp_path / name)
    data = np.arange(6 * 8 * 10, dtype="f4").reshape(6, 8, 10)
    kw.setdefault("chunks", (2, 4, 5))
    zarr.create_array(path, data=data, **kw)
    return path, data


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x5A]))


def truncate(path: str, keep: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(keep)


# -- metadata ----------------------------------------------------------------------------


def test_no_array(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no Zarr array"):
        lz.open(tmp_path / "nothing")


def test_invalid_json(tmp_path) -> None:
    p = tmp_path / "bad.zarr"
    p.mkdir()
    (p / "zarr.json").write_text("{not json")
    with pytest.raises(lz.ArrayMetadataError, match="not valid JSON") as exc:
        lz.open(p)
    assert isinstance(exc.value, ValueError)
    assert str(p) in str(exc.value)


def test_invalid_metadata(tmp_path) -> None:
    path, _ = make(tmp_path, "a.zarr")
    doc = json.loads(open(os.path.join(path, "zarr.json")).read())
    doc["shape"] = "eleven"
    with open(os.path.join(path, "zarr.json"), "w") as fh:
        json.dump(doc, fh)
    with pytest.raises(lz.ArrayMetadataError, match=r"invalid zarr\.json"):
        lz.open(path)


def test_group_is_not_an_array(tmp_path) -> None:
    # open_array refuses a group; lz.open opens it as one (tests/test_zarr_group.py)
    zarr.create_group(str(tmp_path / "g.zarr"))
    with pytest.raises(lz.ArrayMetadataError, match="not an array"):
        lz.open_array(tmp_path / "g.zarr")
    assert isinstance(lz.open(tmp_path / "g.zarr"), lz.Group)
    zarr.create_group(str(tmp_path / "g2.zarr"), zarr_format=2)
    with pytest.raises(lz.ArrayMetadataError, match="group"):
        lz.open_array(tmp_path / "g2.zarr")
    assert isinstance(lz.open(tmp_path / "g2.zarr"), lz.Group)


def test_unknown_codec(tmp_path) -> None:
    path, _ = make(tmp_path, "a.zarr")
    doc = json.loads(open(os.path.join(path, "zarr.json")).read())
    doc["codecs"].append({"name": "no-such-codec", "configuration": {}})
    with open(os.path.join(path, "zarr.json"), "w") as fh:
        json.dump(doc, fh)
    with pytest.raises(lz.ArrayMetadataError, match="no-such-codec"):
        lz.open(path)


def test_unsupported_dtype(tmp_path) -> None:
    path = str(tmp_path / "s.zarr")
    zarr.create_array(path, shape=(4,), chunks=(2,), dtype=str)
    with pytest.raises(lz.UnsupportedError, match="data type"):
        lz.open(path)


def test_unsupported_nested_codec_order(tmp_path) -> None:
    path, _ = make(tmp_path, "a.zarr", shards=(2, 8, 10))
    doc = json.loads(open(os.path.join(path, "zarr.json")).read())
    doc["codecs"] = [{"name": "transpose", "configuration": {"order": [0, 1, 2]}}, *doc["codecs"]]
    with open(os.path.join(path, "zarr.json"), "w") as fh:
        json.dump(doc, fh)
    with pytest.raises(lz.UnsupportedError, match="sharding"):
        lz.open(path)


# -- bad arguments -----------------------------------------------------------------------


def test_bounds_and_arguments(tmp_path, loader: Loader) -> None:
    path, _ = make(tmp_path, "a.zarr")
    a = lz.open(path, loader=loader)
    with pytest.raises(IndexError, match="out of bounds for axis 0"):
        a[6]
    with pytest.raises(IndexError, match="out of bounds for axis 1"):
        a[:, 0:9]
    with pytest.raises(IndexError, match="out of bounds"):
        a[-7]
    with pytest.raises(IndexError, match="too many indices"):
        a[0, 0, 0, 0]
    with pytest.raises(IndexError, match="unsupported index"):
        a[1.5]
    with pytest.raises(IndexError, match="unsupported index"):
        a["x"]
    with pytest.raises(ValueError, match="out has shape"):
        a.read(np.s_[0:2], out=np.empty((3, 8, 10), "f4"))
    with pytest.raises(ValueError, match="out has shape"):
        a.read(np.s_[0:2], out=np.empty((2, 8, 10), "f8"))
    with pytest.raises(ValueError, match="does not fit"):
        next(a.random_crops((7, 1, 1), 1))
    with pytest.raises(ValueError, match="dimensions"):
        next(a.random_crops((1, 1), 1))
    with pytest.raises(ValueError, match="prefetch"):
        next(a.crops([np.s_[0]], prefetch=0))
    with pytest.raises(ValueError, match="broadcast"):
        a[0:2] = np.zeros((3, 3))
    with pytest.raises(IndexError):
        a.start_read((0, 0, 0), (7, 1, 1))
    healthy(loader)


# -- corrupt data ------------------------------------------------------------------------


def test_crc32c_mismatch(tmp_path, loader: Loader) -> None:
    path, data = make(tmp_path, "a.zarr", compressors=[ZstdCodec(), Crc32cCodec()])
    chunk = os.path.join(path, "c", "1", "0", "1")
    flip(chunk, os.path.getsize(chunk) // 2)
    a = lz.open(path, loader=loader)
    with pytest.raises(lz.ChunkCorruptError, match="crc32c checksum mismatch") as exc:
        a[...]
    msg = str(exc.value)
    assert path in msg and "c/1/0/1" in msg
    assert isinstance(exc.value, OSError)
    np.testing.assert_array_equal(a[0:2], data[0:2])  # other chunks still read
    healthy(loader)


def test_truncated_chunks(tmp_path, loader: Loader) -> None:
    for name, comp in [("zstd", ZstdCodec()), ("blosc", BloscCodec()), ("raw", None)]:
        path, _ = make(tmp_path, f"{name}.zarr", compressors=comp)
        chunk = os.path.join(path, "c", "0", "1", "0")
        truncate(chunk, os.path.getsize(chunk) - 3)
        a = lz.open(path, loader=loader)
        with pytest.raises(lz.ChunkCorruptError, match="c/0/1/0") as exc:
            a[0:2, 4:8, 0:5]
        assert "cannot decode" in str(exc.value)
    healthy(loader)


def test_blosc_v2_truncated_by_one(tmp_path, loader: Loader) -> None:
    import numcodecs

    path, _ = make(
        tmp_path, "v2.zarr", zarr_format=2, compressors=numcodecs.Blosc(cname="lz4", shuffle=1)
    )
    chunk = os.path.join(path, "0.0.0")
    truncate(chunk, os.path.getsize(chunk) - 1)
    a = lz.open(path, loader=loader)
    with pytest.raises(lz.ChunkCorruptError, match=r"0\.0\.0.*blosc"):
        a[0]
    healthy(loader)


def test_corrupt_shard_index(tmp_path, loader: Loader) -> None:
    path, data = make(tmp_path, "s.zarr", shards=(2, 8, 10), compressors=[ZstdCodec()])
    shard = os.path.join(path, "c", "1", "0", "0")
    flip(shard, os.path.getsize(shard) - 6)  # inside the index (crc32c protected)
    a = lz.open(path, loader=loader)
    with pytest.raises(lz.ShardIndexError, match="c/1/0/0: corrupt index: crc32c") as exc:
        a[2:4]
    assert isinstance(exc.value, OSError)
    np.testing.assert_array_equal(a[0:2], data[0:2])
    healthy(loader)


def test_shard_index_out_of_file(tmp_path, loader: Loader) -> None:
    path, _ = make(tmp_path, "s.zarr", shards=(2, 8, 10), compressors=[ZstdCodec()])
    doc = json.loads(open(os.path.join(path, "zarr.json")).read())
    doc["codecs"][0]["configuration"]["index_codecs"] = [
        {"name": "bytes", "configuration": {"endian": "little"}}
    ]
    with open(os.path.join(path, "zarr.json"), "w") as fh:
        json.dump(doc, fh)
    # rewrite shard 0 without a checksum and with an entry pointing past the end
    zarr.open_array(path, mode="r+")[0:2] = 1.0
    shard = os.path.join(path, "c", "0", "0", "0")
    raw = bytearray(open(shard, "rb").read())
    index = np.frombuffer(raw[-4 * 16 :], "<u8").copy().reshape(-1, 2)  # 1x2x2 chunks
    index[0, 0] = len(raw) * 2
    raw[-4 * 16 :] = index.tobytes()
    open(shard, "wb").write(bytes(raw))
    a = lz.open(path, loader=loader)
    with pytest.raises(lz.ShardIndexError, match="past the data region"):
        a[0:2]
    healthy(loader)


def test_truncated_shard_index_at_start(tmp_path, loader: Loader) -> None:
    path, _ = make(
        tmp_path,
        "s.zarr",
        shards={"shape": (2, 8, 10), "index_location": "start"},
        compressors=[ZstdCodec()],
    )
    shard = os.path.join(path, "c", "0", "0", "0")
    truncate(shard, os.path.getsize(shard) - 10)
    a = lz.open(path, loader=loader)
    with pytest.raises(lz.ChunkCorruptError, match="truncated file") as exc:
        a[0:2]
    assert "c/0/0/0" in str(exc.value)
    truncate(shard, 20)  # shorter than the index itself
    a = lz.open(path, loader=loader)
    with pytest.raises(lz.ShardIndexError, match="shorter than its"):
        a[0:2]
    healthy(loader)


def test_io_error_names_chunk(tmp_path, loader: Loader) -> None:
    path, _ = make(tmp_path, "a.zarr")
    chunk = os.path.join(path, "c", "2", "1", "1")
    os.remove(chunk)
    os.mkdir(chunk)  # a directory where the chunk file should be: EISDIR on read
    a = lz.open(path, loader=loader)
    with pytest.raises(OSError) as exc:
        a[...]
    assert exc.value.errno is not None
    assert "c/2/1/1" in str(exc.value) and path in str(exc.value)
    healthy(loader)


def test_error_in_crop_stream_cancels_the_rest(tmp_path, loader: Loader) -> None:
    path, data = make(tmp_path, "a.zarr", compressors=[ZstdCodec(), Crc32cCodec()])
    flip(os.path.join(path, "c", "2", "0", "0"), 20)
    a = lz.open(path, loader=loader)
    regions = [np.s_[i : i + 1] for i in range(6)]
    got = []
    with pytest.raises(lz.ChunkCorruptError):
        for crop in a.crops(regions, prefetch=4):
            got.append(crop)
    assert len(got) == 4
    np.testing.assert_array_equal(np.concatenate(got), data[:4])
    healthy(loader)


@pytest.mark.parametrize(
    "err",
    [
        ArrayMetadataError("/data/a.zarr", "zarr.json: not JSON"),
        UnsupportedError("/data/a.zarr", "codec 'lz5'"),
    ],
)
def test_metadata_errors_pickle_whole(err: ArrayMetadataError) -> None:
    """Ray sends a read task's error to the driver pickled: type, path and reason survive."""
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert (back.array, back.reason, str(back)) == (err.array, err.reason, str(err))
