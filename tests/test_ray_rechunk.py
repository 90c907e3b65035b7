"""Cluster-wide re-chunking on a 2-node cluster: equal to zarr-python's own re-chunk,
resumable with identical bytes, refusing to overwrite, clear input errors, the CLI."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")
zarr = pytest.importorskip("zarr")
numcodecs = pytest.importorskip("numcodecs")

from _ray_helpers import LocalCluster, local_cluster  # noqa: E402

from lsio_ray.ray import Coordinator  # noqa: E402
from lsio_ray.ray.rechunk import RechunkError, parse_codec, rechunk  # noqa: E402


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("ray-rechunk"), workers=1) as c:
        yield c


@pytest.fixture(scope="module")
def coord(lc: LocalCluster) -> Coordinator:
    return Coordinator(batch_bytes=64 << 10)


def _data(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = (rng.normal(0, 1, shape) * 50).astype(dtype)
    a[tuple(slice(0, s // 3) for s in shape)] = 0  # some all-fill chunks
    return a


def _src(path: Path, data: np.ndarray, **kw: Any) -> Path:
    z = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, **kw)
    z[...] = data
    return path


def _reference(
    path: Path,
    data: np.ndarray,
    *,
    chunks: Any,
    shards: Any,
    fmt: int,
    codec: str | None,
    fill: Any,
) -> Any:
    """zarr-python's own re-chunk of the same input."""
    kw = parse_codec(codec, fmt)
    z = zarr.create_array(
        str(path),
        shape=data.shape,
        dtype=data.dtype,
        chunks=chunks,
        shards=shards,
        zarr_format=fmt,
        fill_value=fill,
        **kw,
    )
    z[...] = data
    return z


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


CASES = {
    "v2-to-v3-sharded": dict(
        src=dict(
            chunks=(7, 9, 5), zarr_format=2, compressors=numcodecs.Zstd(level=1), fill_value=0
        ),
        dst=dict(chunks=(10, 10, 5), shards=(20, 30, 10), zarr_format=3, codec="zstd:3"),
        shape=(45, 62, 10),
        dtype="int32",
    ),
    "v3-sharded-to-v2-blosc": dict(
        src=dict(chunks=(8, 8, 4), shards=(16, 32, 8), zarr_format=3, fill_value=0),
        dst=dict(chunks=(13, 17, 3), shards=None, zarr_format=2, codec="blosc:lz4:5:bitshuffle"),
        shape=(40, 50, 8),
        dtype="float32",
    ),
    "v2-F-order-to-v3-gzip": dict(
        src=dict(chunks=(11, 6), zarr_format=2, order="F", compressors=None, fill_value=-1),
        dst=dict(chunks=(64, 64), shards=None, zarr_format=3, codec="gzip:4"),
        shape=(70, 33),
        dtype="int16",
    ),
}


@pytest.mark.parametrize("io", ["auto", "actors"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_zarr_python(lc: LocalCluster, coord: Coordinator, case: str, io: str) -> None:
    spec = CASES[case]
    data = _data(spec["shape"], spec["dtype"])
    base = lc.shared / f"{case}-{io}"
    src = _src(base / "src.zarr", data, **spec["src"])
    chunk_files = [
        p
        for p in sorted((base / "src.zarr").rglob("*"))
        if p.is_file() and not p.name.startswith((".", "zarr.json"))
    ]
    chunk_files[len(chunk_files) // 2].unlink()  # a missing chunk reads as the fill value
    data = zarr.open_array(str(src), mode="r")[...]
    d = spec["dst"]
    res = rechunk(
        src,
        base / "dst.zarr",
        chunks=d["chunks"],
        shards=d["shards"],
        codec=d["codec"],
        zarr_format=d["zarr_format"],
        coordinator=coord,
        block_bytes=9_000,
        io=io,
    )
    assert res.blocks > 1 and res.blocks_skipped == 0
    # shared storage: with io="auto" every task reads its own block, none through actors
    assert res.blocks_in_task == (res.blocks if io == "auto" else 0)
    assert sum(res.bytes_read_by_node.values()) == res.bytes_read > 0
    ref = _reference(
        base / "ref.zarr",
        data,
        chunks=d["chunks"],
        shards=d["shards"],
        fmt=d["zarr_format"],
        codec=d["codec"],
        fill=spec["src"]["fill_value"],
    )
    out = zarr.open_array(str(base / "dst.zarr"), mode="r")
    assert out.metadata.zarr_format == d["zarr_format"]
    assert out.chunks == d["chunks"] and out.shards == d["shards"]
    assert out.dtype == ref.dtype and out.fill_value == ref.fill_value
    np.testing.assert_array_equal(out[...], ref[...])
    np.testing.assert_array_equal(out[...], data)
    assert not (base / "dst.zarr" / ".lsio-rechunk").exists()
    assert not any(".lsio-tmp." in p.name for p in (base / "dst.zarr").rglob("*"))


class _Stop(Exception):
    pass


def test_resume_is_byte_identical(lc: LocalCluster, coord: Coordinator) -> None:
    base = lc.shared / "resume"
    data = _data((60, 64, 12), "int32", seed=3)
    src = _src(base / "src.zarr", data, chunks=(6, 16, 12), zarr_format=3)
    kw = dict(
        chunks=(20, 8, 6),
        shards=(20, 32, 12),
        codec="zstd:2",
        coordinator=coord,
        block_bytes=40_000,
    )
    whole = rechunk(src, base / "whole.zarr", **kw)
    assert whole.blocks >= 6

    seen = []

    def stop_after_three(done: int, total: int) -> None:
        seen.append(done)
        if len(seen) == 3:
            raise _Stop

    with pytest.raises(_Stop):
        rechunk(src, base / "part.zarr", progress=stop_after_three, **kw)
    assert (base / "part.zarr" / ".lsio-rechunk" / "done").exists()
    assert not (base / "part.zarr" / "zarr.json").exists()  # metadata comes last
    # a crash mid-write leaves a temp file; the resumed run cleans it up
    (base / "part.zarr" / "c").mkdir(exist_ok=True)
    (base / "part.zarr" / "c" / "0.lsio-tmp.1.1").write_bytes(b"junk")
    res = rechunk(src, base / "part.zarr", **kw)
    assert res.blocks_skipped >= 3
    assert res.blocks_skipped + (res.blocks - res.blocks_skipped) == whole.blocks
    assert _files(base / "part.zarr") == _files(base / "whole.zarr")
    np.testing.assert_array_equal(zarr.open_array(str(base / "part.zarr"))[...], data)


@pytest.mark.parametrize("io", ["auto", "actors"])
def test_direct_reads_write_the_same_bytes(
    lc: LocalCluster, coord: Coordinator, io: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``direct=True`` reads every input file with O_DIRECT (in the tasks' own IO, and
    through the IO actors) and writes exactly the bytes of a buffered run; a source on
    a file system refusing O_DIRECT is read buffered."""
    from lsio_ray.ray.rechunk import driver

    base = lc.shared / f"direct-{io}"
    data = _data((37, 40, 9), "float32", seed=8)
    src = _src(base / "src.zarr", data, chunks=(5, 16, 4), shards=(10, 32, 8), zarr_format=3)
    kw = dict(chunks=(12, 8, 9), codec="zstd:1", coordinator=coord, block_bytes=20_000, io=io)
    flags: list[bool] = []
    real = driver.block_ops

    def recording(*args: Any) -> Any:
        ops = real(*args)
        flags.extend(op.direct for op in ops)
        return ops

    monkeypatch.setattr(driver, "block_ops", recording)
    buffered = rechunk(src, base / "buffered.zarr", **kw)
    assert flags and not any(flags)
    flags.clear()
    direct = rechunk(src, base / "direct.zarr", direct=True, **kw)
    assert direct.blocks == buffered.blocks > 1
    assert direct.bytes_read == buffered.bytes_read
    assert flags and all(flags)  # planned by the driver (the tasks plan theirs alike)
    assert _files(base / "direct.zarr") == _files(base / "buffered.zarr")
    np.testing.assert_array_equal(zarr.open_array(str(base / "direct.zarr"))[...], data)
    flags.clear()
    monkeypatch.setattr(driver, "supports_direct", lambda path: False)
    refused = rechunk(src, base / "refused.zarr", direct=True, **kw)
    assert flags and not any(flags)
    assert refused.blocks == buffered.blocks
    assert _files(base / "refused.zarr") == _files(base / "buffered.zarr")


_KILLED_DRIVER = """
import os, signal, sys, time
import ray
from lsio_ray.ray.rechunk import rechunk

ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
journal = os.path.join(sys.argv[3], ".lsio-rechunk", "done")

def crash_once_journalled(done, total):
    if os.path.exists(journal) and os.path.getsize(journal) >= 16:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup at all: a crash
    time.sleep(0.6)  # the journal is flushed every 0.5 s

rechunk(sys.argv[2], sys.argv[3], chunks=(20, 8, 6), shards=(20, 32, 12), codec="zstd:2",
        block_bytes=40_000, window=1, progress=crash_once_journalled)
"""


def test_resume_after_the_driver_is_killed(lc: LocalCluster, coord: Coordinator) -> None:
    import subprocess
    import sys

    base = lc.shared / "resume"  # made by test_resume_is_byte_identical
    out = base / "crashed.zarr"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILLED_DRIVER,
            lc.cluster.address,
            str(base / "src.zarr"),
            str(out),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert (out / ".lsio-rechunk" / "done").exists() and not (out / "zarr.json").exists()
    res = rechunk(
        base / "src.zarr",
        out,
        chunks=(20, 8, 6),
        shards=(20, 32, 12),
        codec="zstd:2",
        block_bytes=40_000,
        coordinator=coord,
    )
    assert res.blocks_skipped >= 1  # what the journal held when the driver died
    assert _files(out) == _files(base / "whole.zarr")


def test_refuses_to_overwrite(lc: LocalCluster, coord: Coordinator) -> None:
    base = lc.shared / "overwrite"
    data = _data((20, 20), "uint8")
    src = _src(base / "src.zarr", data, chunks=(5, 5), zarr_format=3)
    dst = base / "dst.zarr"
    rechunk(src, dst, chunks=(10, 10), coordinator=coord)
    with pytest.raises(FileExistsError, match="a Zarr array"):
        rechunk(src, dst, chunks=(4, 4), coordinator=coord)
    res = rechunk(src, dst, chunks=(4, 4), coordinator=coord, overwrite=True)
    assert res.blocks_skipped == 0
    assert zarr.open_array(str(dst)).chunks == (4, 4)
    other = base / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="non-empty"):
        rechunk(src, other, chunks=(4, 4), coordinator=coord)
    with pytest.raises(ValueError, match="inside the source"):
        rechunk(src, base / "src.zarr" / "inside", chunks=(4, 4), coordinator=coord)

    # an unfinished run with other settings is not resumed silently either
    def stop(done: int, total: int) -> None:
        raise _Stop

    with pytest.raises(_Stop):
        rechunk(src, base / "part.zarr", chunks=(5, 5), coordinator=coord, progress=stop)
    with pytest.raises(FileExistsError, match="other settings"):
        rechunk(src, base / "part.zarr", chunks=(10, 5), coordinator=coord)


def _stored_units(path: Path) -> dict[str, list[int] | None]:
    """Each stored unit's key and, for a shard, which inner chunks it stores (1)."""
    import lsio_ray.zarr as lz
    from lsio_ray.zarr.shards import EMPTY, shard_index

    lay = lz.open(str(path)).layout
    out: dict[str, list[int] | None] = {}
    for p in sorted(path.rglob("*")):
        if not p.is_file() or p.name in ("zarr.json", ".zarray", ".zattrs"):
            continue
        key = str(p.relative_to(path))
        raw = np.fromfile(p, np.uint8)
        out[key] = (
            None
            if lay.shards is None
            else ((shard_index(lay, raw, key)[:, 0] != EMPTY).astype(int).tolist())
        )
    return out


@pytest.mark.parametrize("fill", [0.0, float("nan")])
@pytest.mark.parametrize("sharded", [False, True])
def test_writer_and_conversion_agree_on_empty_chunks(
    lc: LocalCluster, coord: Coordinator, sharded: bool, fill: float
) -> None:
    """Chunks all fill value, as zarr-python's ``write_empty_chunks=False`` (its
    default): the conversion and ``lz.save`` of the same data store the same files,
    byte for byte, and the units (and empty inner chunks) zarr-python stores; a chunk of
    -0.0 under a fill value of 0.0 is stored, and zarr-python reads it back signed."""
    import lsio_ray.zarr as lz

    base = lc.shared / f"empty-{'sharded' if sharded else 'chunks'}-{fill}"
    data = _data((16, 20), "float32", seed=6) + 1.5
    data[0:8, 0:10] = fill  # a whole output shard (four output chunks) of fill
    data[8:12, 0:5] = fill  # one output (inner) chunk of fill
    data[0:4, 10:15] = -0.0
    data[12:16, 15:20] = np.nan
    src = _src(base / "src.zarr", data, chunks=(3, 7), zarr_format=3, fill_value=fill)
    out = dict(chunks=(4, 5), shards=(8, 10) if sharded else None, zarr_format=3)
    rechunk(src, base / "conv.zarr", codec="zstd:1", coordinator=coord, block_bytes=400, **out)
    lz.save(base / "saved.zarr", data, fill_value=fill, **out, **parse_codec("zstd:1", 3))
    ref = zarr.create_array(
        str(base / "ref.zarr"),
        shape=data.shape,
        dtype=data.dtype,
        fill_value=fill,
        config={"write_empty_chunks": False},
        **out,
        **parse_codec("zstd:1", 3),
    )
    ref[...] = data
    assert _files(base / "conv.zarr") == _files(base / "saved.zarr")
    stored = _stored_units(base / "conv.zarr")
    assert stored == _stored_units(base / "ref.zarr")
    # of 4 shards, 16 chunks: a shard, 4 + 1 chunks of fill (and the NaN one, NaN fill)
    assert len(stored) == (3 if sharded else 16 - 4 - 1 - int(np.isnan(fill)))
    for name in ("conv.zarr", "saved.zarr"):
        back = zarr.open_array(str(base / name), mode="r")[...]
        np.testing.assert_array_equal(back.view("u4"), data.view("u4"))  # bits: -0.0, NaN


def test_unreadable_input_names_file_and_node(lc: LocalCluster, coord: Coordinator) -> None:
    base = lc.shared / "unreadable"
    data = _data((20, 20), "int64")
    src = _src(base / "src.zarr", data, chunks=(5, 5), zarr_format=2)
    bad = base / "src.zarr" / "1.2"
    bad.unlink()
    bad.mkdir()  # reading a directory fails with EISDIR (root reads any mode bits)
    with pytest.raises(RechunkError) as ei:
        rechunk(src, base / "dst.zarr", chunks=(10, 10), coordinator=coord)
    msg = str(ei.value)
    assert str(bad) in msg and "node" in msg and "Is a directory" in msg
    assert any(n in msg for n in lc.nodes)


@pytest.mark.parametrize("io", ["auto", "actors"])
def test_reads_on_the_node_holding_the_source(lc: LocalCluster, io: str) -> None:
    holder = lc.nodes[1]
    src = _src(
        lc.disks[holder] / f"src-{io}.zarr", _data((24, 24), "int32"), chunks=(5, 7), zarr_format=3
    )
    c = Coordinator(roots=lc.roots, batch_bytes=16 << 10)
    c.reset_stats()
    dst = lc.shared / f"from-node1-{io}.zarr"
    res = rechunk(src, dst, chunks=(12, 12), coordinator=c, io=io)
    stats = c.stats()
    meta = (Path(src) / "zarr.json").stat().st_size
    stored = sum(p.stat().st_size for p in Path(src).rglob("*") if p.is_file())
    # every chunk read on the holder: by its IO actor, or by the tasks running there
    assert res.bytes_read_by_node == {holder: stored - meta}
    if io == "auto":
        assert res.blocks_in_task == res.blocks
        assert stats[holder]["bytes_read"] == meta  # the actor read the metadata only
    else:
        assert res.blocks_in_task == 0
        assert stats[holder]["bytes_read"] == stored  # the chunks and zarr.json, all there
    assert stats[lc.nodes[0]]["bytes_read"] == 0
    np.testing.assert_array_equal(zarr.open_array(str(dst))[...], zarr.open_array(str(src))[...])


def test_output_on_another_node_is_written_by_its_actor(lc: LocalCluster) -> None:
    """Inputs on one node, output on the other: the tasks read where the inputs are
    and hand the encoded units to the output node's IO actor."""
    reader, writer = lc.nodes[1], lc.nodes[0]
    data = _data((30, 20), "int16")
    src = _src(lc.disks[reader] / "xsrc.zarr", data, chunks=(4, 5), zarr_format=2)
    dst = lc.disks[writer] / "xdst.zarr"
    c = Coordinator(roots=lc.roots)
    c.reset_stats()
    res = rechunk(src, dst, chunks=(10, 10), codec="zstd:1", coordinator=c)
    assert res.blocks_in_task == res.blocks > 1
    assert set(res.bytes_read_by_node) == {reader}
    stats = c.stats()
    assert stats[writer]["bytes_written"] >= res.bytes_written > 0
    assert stats[reader]["bytes_written"] == 0
    np.testing.assert_array_equal(zarr.open_array(str(dst))[...], data)


def test_cli(lc: LocalCluster) -> None:
    from lsio_ray.cli import main

    base = lc.shared / "cli"
    data = _data((30, 30), "float64")
    src = _src(base / "src.zarr", data, chunks=(7, 7), zarr_format=3)
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(
            [
                "rechunk",
                str(src),
                str(base / "dst.zarr"),
                "--chunks",
                "10,15",
                "--zarr-format",
                "2",
                "--codec",
                "zstd:1",
                "--json",
                "--no-progress",
                "--io",
                "actors",
                "--address",
                lc.cluster.address,
            ]
        )
    assert rc == 0
    res = json.loads(out.getvalue())
    assert res["blocks"] >= 1 and res["blocks_in_task"] == 0
    z = zarr.open_array(str(base / "dst.zarr"))
    assert z.metadata.zarr_format == 2 and z.chunks == (10, 15)
    np.testing.assert_array_equal(z[...], data)
    with redirect_stdout(io.StringIO()):
        assert (
            main(["rechunk", str(src), str(base / "dst.zarr"), "--chunks", "5,5", "--no-progress"])
            == 2
        )  # exists already: refused by the CLI's checks, before the job
    shutil.rmtree(base)


def test_in_task_io_on_the_pread_backend(lc: LocalCluster) -> None:
    """The tasks' own IO follows the coordinator's engine settings: here the pread
    fallback (what runs where io_uring is refused), for reads and atomic writes."""
    import lsio_ray.zarr as lz
    from lsio_ray.ray.rechunk.plan import local_engine

    base = lc.shared / "pread"
    data = _data((40, 30), "float32", seed=5)
    src = _src(base / "src.zarr", data, chunks=(6, 7), zarr_format=3)
    c = Coordinator(engine={"backend": "pread"})
    settings = local_engine(c.engine_settings, lz.open(str(src)).layout)
    assert settings["backend"] == "pread" and settings["pool_bytes"] >= 32 << 20
    res = rechunk(
        src, base / "dst.zarr", chunks=(20, 15), codec="zstd:1", coordinator=c, block_bytes=1_000
    )
    assert res.blocks_in_task == res.blocks > 1
    np.testing.assert_array_equal(zarr.open_array(str(base / "dst.zarr"))[...], data)


def test_metadata_on_the_drivers_node_needs_no_io_actor(lc: LocalCluster) -> None:
    """Shared source and destination, every block read and written by its own task: the
    driver reads the metadata and keeps the journal itself, and no IO actor is started
    (the memory of a Python process with the engine, on every node)."""
    data = _data((26, 18), "float32", seed=4)
    src = _src(lc.shared / "noactor-src.zarr", data, chunks=(5, 6), zarr_format=3)
    dst = lc.shared / "noactor-dst.zarr"
    c = Coordinator(roots=lc.roots)
    res = rechunk(src, dst, chunks=(13, 9), codec="zstd:1", coordinator=c, block_bytes=1000)
    assert res.blocks_in_task == res.blocks > 1
    assert c._actors == {}
    np.testing.assert_array_equal(zarr.open_array(str(dst))[...], data)
    dst.joinpath("zarr.json").unlink()  # the metadata of an unfinished run: refused
    with pytest.raises(FileExistsError, match="non-empty directory"):
        rechunk(src, dst, chunks=(13, 9), codec="zstd:1", coordinator=c)
    assert c._actors == {}
