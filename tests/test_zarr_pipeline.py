"""LsioCodecPipeline: zarr-python reads through lsio_ray equal zarr's own pipeline."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest
import zarr
from _zarr_helpers import LAYOUTS, Spec, check_equal, default_fill, write_fixture
from zarr.codecs import BloscCodec, ZstdCodec

import lsio_ray.zarr as lz
import lsio_ray.zarr.pipeline as pl
from lsio_ray.zarr import ChunkCorruptError, Store
from lsio_ray.zarr.pipeline import LsioCodecPipeline, use_lsio_pipeline

pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.ZarrUserWarning")

# layouts the lsio path must take (C decoder codecs, unsharded) and must leave alone
TAKEN = {
    "v3-raw",
    "v3-blosc-lz4",
    "v3-blosc-zstd-bit",
    "v3-blosc-noshuffle",
    "v3-key-v2-dot",
    "v3-key-v2-slash",
    "v3-key-default-dot",
    "v2-blosc-lz4-shuffle",
    "v2-blosc-zstd-bitshuffle",
    "v2-blosc-blosclz",
    "v2-raw",
    "v2-F-raw",
    "v2-F-blosc-slash",
    "v2-slash",
    "v3-1d",
    "v3-2d-tiny-chunks",
    "v2-big-chunk",
    "v2-zstd-big",
    "v2-F-zstd-big",
}
FALLBACK = {
    "v3-bytes-big-zstd",
    "v3-gzip",
    "v3-zstd-crc32c",
    "v3-transpose",
    "v3-shard-end",
    "v3-shard-start",
    "v3-shard-raw-big",
    "v3-4d-sharded",
    "v2-gzip-big",
    "v2-zlib",
    "v2-lz4",
    "v2-delta-filter",
}


@pytest.fixture
def lsio_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the reads that took the lsio path (one entry per read, its chunk count)."""
    runs: list[int] = []
    real = pl._run

    async def counting(array: Any, out: np.ndarray, sel: Any) -> None:
        runs.append(len(sel))
        await real(array, out, sel)

    monkeypatch.setattr(pl, "_run", counting)
    return runs


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, np.ndarray]]:
    root = str(tmp_path_factory.mktemp("pipeline"))
    return {spec.name: write_fixture(root, spec) for spec in LAYOUTS}


def _keys(shape: tuple[int, ...]) -> list[Any]:
    """Selections zarr-python reads through ``__getitem__``: boxes aligned or not,
    integers (dropped axes), a scalar, steps (these fall back)."""
    nd = len(shape)
    keys: list[Any] = [Ellipsis, 0, -1, slice(1, None)]
    keys.append(tuple(slice(1, max(2, s - 1)) for s in shape))
    keys.append(tuple(slice(s // 3, s // 3 + max(1, s // 2)) for s in shape))
    keys.append(tuple(s - 1 for s in shape))  # one element
    keys.append(tuple(slice(None, None, 2) for _ in shape))
    if nd >= 2:
        keys += [(Ellipsis, shape[-1] - 1), (slice(None), 1), (-2, Ellipsis, slice(-3, None))]
    return keys


def _open(path: str, store_kind: str, *, lsio: bool) -> zarr.Array:
    src: Any = Store(path, read_only=True) if store_kind == "lsio" else path
    with use_lsio_pipeline(lsio):
        z = zarr.open_array(src, mode="r")
    want = LsioCodecPipeline if lsio else zarr.core.codec_pipeline.BatchedCodecPipeline
    assert type(z.async_array.codec_pipeline) is want
    return z


@pytest.mark.parametrize("store_kind", ["lsio", "local"])
@pytest.mark.parametrize("spec", LAYOUTS, ids=lambda s: s.name)
def test_reads_equal_zarr_default_pipeline(
    fixtures: dict[str, tuple[str, np.ndarray]], spec: Spec, store_kind: str, lsio_runs: list[int]
) -> None:
    path, data = fixtures[spec.name]
    ref = _open(path, store_kind, lsio=False)
    got = _open(path, store_kind, lsio=True)
    for key in _keys(spec.shape):
        want = np.asarray(ref[key])
        before = len(lsio_runs)
        check_equal(np.asarray(got[key]), want, f"{spec.name}[{key!r}]")
        stepped = isinstance(key, tuple) and any(
            isinstance(k, slice) and k.step not in (None, 1) for k in key
        )
        if spec.name in TAKEN and not stepped:
            assert len(lsio_runs) == before + 1, f"{spec.name}[{key!r}] did not take the lsio path"
        if spec.name in FALLBACK or stepped:
            assert len(lsio_runs) == before, f"{spec.name}[{key!r}] took the lsio path"
    # and against the data written, with the fill value where nothing was written
    whole = got[...]
    if spec.partial and spec.shape[0] > spec.chunks[0]:
        cut = spec.shape[0] - spec.chunks[0]
        check_equal(whole[:cut], data[:cut], spec.name)
        fill = np.full_like(whole[cut:], default_fill(spec.dtype))
        check_equal(whole[cut:], fill, f"{spec.name} missing chunks")
    else:
        check_equal(whole, data, spec.name)


@pytest.mark.parametrize("store_kind", ["lsio", "local"])
def test_fancy_selections_fall_back_or_match(
    fixtures: dict[str, tuple[str, np.ndarray]], store_kind: str, lsio_runs: list[int]
) -> None:
    path, _ = fixtures["v3-blosc-lz4"]
    ref = _open(path, store_kind, lsio=False)
    got = _open(path, store_kind, lsio=True)
    for sel in [
        (slice(1, 9), slice(None), slice(2, 15)),
        (1, slice(None), [0, 3, 16]),
        ([0, 5, 10], 2, slice(None)),
    ]:
        check_equal(got.oindex[sel], ref.oindex[sel], f"oindex[{sel!r}]")
    idx = (np.array([0, 3, 10]), np.array([1, 12, 4]), np.array([16, 0, 5]))
    check_equal(got.vindex[idx], ref.vindex[idx], "vindex")
    check_equal(got.get_block_selection((1, 2, 0)), ref.get_block_selection((1, 2, 0)), "block")
    assert lsio_runs, "no selection took the lsio path"


def test_missing_chunks_read_as_the_fill_value(tmp_path: Path, lsio_runs: list[int]) -> None:
    path = str(tmp_path / "a.zarr")
    a = zarr.create_array(path, shape=(10, 10), chunks=(3, 4), dtype="int32", fill_value=-5)
    a[0:3, 0:4] = 7
    a[6:10, 8:10] = np.arange(8).reshape(4, 2)
    for store_kind in ("lsio", "local"):
        got = _open(path, store_kind, lsio=True)[...]
        want = np.full((10, 10), -5, np.int32)
        want[0:3, 0:4] = 7
        want[6:10, 8:10] = np.arange(8).reshape(4, 2)
        check_equal(got, want, store_kind)
    assert len(lsio_runs) == 2 and lsio_runs[0] == 12  # all 4 x 3 chunks, 9 of them missing


def test_nested_array_in_a_group(tmp_path: Path, lsio_runs: list[int]) -> None:
    root = tmp_path / "g.zarr"
    g = zarr.open_group(str(root), mode="w")
    sub = g.create_group("sub")
    a = sub.create_array("x", shape=(9, 7), chunks=(4, 4), dtype="float64", compressors=None)
    data = np.arange(63.0).reshape(9, 7)
    a[...] = data
    with use_lsio_pipeline():
        z = zarr.open_array(store=Store(root), path="sub/x", mode="r")
        check_equal(z[2:9, 1:6], data[2:9, 1:6], "nested")
    assert lsio_runs == [6]


@pytest.mark.parametrize("store_kind", ["lsio", "local"])
@pytest.mark.parametrize("codec", ["zstd", "raw"])
def test_a_corrupt_chunk_raises(
    tmp_path: Path, store_kind: str, codec: str, lsio_runs: list[int]
) -> None:
    path = str(tmp_path / "c.zarr")
    comp = [ZstdCodec(level=1)] if codec == "zstd" else None
    a = zarr.create_array(path, shape=(8, 8), chunks=(4, 4), dtype="float32", compressors=comp)
    a[...] = np.arange(64, dtype="float32").reshape(8, 8)
    chunk = os.path.join(path, "c", "1", "0")
    with open(chunk, "r+b") as fh:
        fh.truncate(5) if codec == "raw" else fh.write(b"\x00garbage\xff" * 4)
    z = _open(path, store_kind, lsio=True)
    with pytest.raises(ChunkCorruptError, match="c/1/0"):
        z[...]
    assert len(lsio_runs) == 1
    check_equal(z[0:4, :], a[0:4, :], "the good chunks still read")  # the loader survived


def test_unreadable_metadata_falls_back(tmp_path: Path, lsio_runs: list[int]) -> None:
    """An array lsio cannot open (here: a string dtype) reads through zarr's pipeline."""
    path = str(tmp_path / "s.zarr")
    a = zarr.create_array(path, shape=(5,), chunks=(2,), dtype=str)
    a[...] = np.array(["a", "bb", "ccc", "d", "ee"])
    got = _open(path, "lsio", lsio=True)[...]
    assert list(got) == ["a", "bb", "ccc", "d", "ee"]
    assert lsio_runs == []


def test_rewritten_array_is_reopened(tmp_path: Path, lsio_runs: list[int]) -> None:
    path = str(tmp_path / "r.zarr")
    a = zarr.create_array(path, shape=(6, 6), chunks=(3, 3), dtype="int16")
    a[...] = 1
    check_equal(_open(path, "local", lsio=True)[...], np.ones((6, 6), np.int16), "first")
    b = zarr.create_array(
        path,
        shape=(6, 6),
        chunks=(2, 6),
        dtype="float64",
        overwrite=True,
        compressors=[BloscCodec(cname="lz4")],
    )
    b[...] = np.arange(36.0).reshape(6, 6)
    check_equal(_open(path, "local", lsio=True)[...], np.arange(36.0).reshape(6, 6), "second")
    assert lsio_runs == [4, 3]


def test_writes_go_through_zarr_and_read_back(tmp_path: Path, lsio_runs: list[int]) -> None:
    path = str(tmp_path / "w.zarr")
    with use_lsio_pipeline():
        z = zarr.create_array(
            store=Store(path), shape=(7, 9), chunks=(2, 4), dtype="uint8", compressors=None
        )
        data = (np.arange(63) % 251).astype(np.uint8).reshape(7, 9)
        z[...] = data
        z[1:3, 2:7] = 200
    data[1:3, 2:7] = 200
    check_equal(_open(path, "local", lsio=False)[...], data, "zarr default")
    check_equal(_open(path, "lsio", lsio=True)[...], data, "lsio")
    check_equal(lz.open(path)[...], data, "lsio_ray.zarr.open")
    assert len(lsio_runs) == 1


def test_concurrent_reads_from_threads(
    fixtures: dict[str, tuple[str, np.ndarray]], lsio_runs: list[int]
) -> None:
    path, _ = fixtures["v2-blosc-lz4-shuffle"]
    ref = _open(path, "local", lsio=False)[...]
    z = _open(path, "lsio", lsio=True)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for j in range(10):
                sl = slice((k + j) % 5, 11 - (j % 3))
                check_equal(z[sl, 1:], ref[sl, 1:], f"thread {k}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    assert len(lsio_runs) == 40


def test_use_lsio_pipeline_sets_and_restores() -> None:
    key = "codec_pipeline.path"
    before = zarr.config.get(key)
    with use_lsio_pipeline():
        assert zarr.config.get(key) == pl.PIPELINE_PATH
        with use_lsio_pipeline(False):
            assert zarr.config.get(key) == pl.DEFAULT_PIPELINE_PATH
        assert zarr.config.get(key) == pl.PIPELINE_PATH
    assert zarr.config.get(key) == before
    assert lz.use_lsio_pipeline is use_lsio_pipeline


@pytest.fixture
def v2_numcodecs_zstd(tmp_path: Path) -> Iterator[tuple[str, np.ndarray]]:
    path = str(tmp_path / "z2.zarr")
    a = zarr.create_array(
        path,
        shape=(20, 30),
        chunks=(6, 7),
        dtype="<f4",
        zarr_format=2,
        compressors=numcodecs.Zstd(level=3),
        fill_value=1.5,
    )
    data = np.random.default_rng(3).standard_normal((20, 30)).astype("<f4")
    a[:14] = data[:14]
    data[14:] = 1.5
    yield path, data


def test_v2_zstd_little_endian(
    v2_numcodecs_zstd: tuple[str, np.ndarray], lsio_runs: list[int]
) -> None:
    path, data = v2_numcodecs_zstd
    for store_kind in ("lsio", "local"):
        z = _open(path, store_kind, lsio=True)
        check_equal(z[...], data, store_kind)
        check_equal(z[3:17, 5:29], data[3:17, 5:29], store_kind)
    assert len(lsio_runs) == 4


def test_xarray_open_zarr(tmp_path: Path, lsio_runs: list[int]) -> None:
    xr = pytest.importorskip("xarray")
    rng = np.random.default_rng(1)
    ds = xr.Dataset(
        {
            "v": (("t", "y", "x"), rng.standard_normal((6, 20, 30)).astype("float32")),
            "w": (("t", "y"), rng.integers(0, 100, (6, 20)).astype("int64")),
        },
        coords={"t": np.arange(6), "y": np.arange(20), "x": np.arange(30)},
    )
    enc = {"v": {"chunks": (2, 8, 16)}, "w": {"chunks": (4, 7)}}
    path = tmp_path / "ds.zarr"
    ds.to_zarr(Store(path), zarr_format=3, consolidated=False, encoding=enc)
    for src in (Store(path, read_only=True), str(path)):
        with use_lsio_pipeline():
            back = xr.open_zarr(src, consolidated=False)
        n = len(lsio_runs)
        check_equal(back["v"].values, ds["v"].values, "v")
        assert lsio_runs[n:] == [3 * 3 * 2]  # one lsio read of all 18 chunks of v
        xr.testing.assert_equal(back.load(), ds)
        with use_lsio_pipeline():
            back = xr.open_zarr(src, consolidated=False)
        n = len(lsio_runs)
        part = back["v"].isel(t=slice(1, 5), y=3, x=slice(7, 29)).values
        check_equal(part, ds["v"].values[1:5, 3, 7:29], "isel")
        assert lsio_runs[n:] == [3 * 1 * 2]  # t chunks 0-2, y chunk 0, x chunks 0-1


def test_environment_variable_selects_the_pipeline(tmp_path: Path) -> None:
    """The package's `zarr.codec_pipeline` entry point: zarr finds the pipeline by name
    from ZARR_CODEC_PIPELINE__PATH alone, with no lsio_ray import in the program."""
    import subprocess
    import sys

    data = np.arange(4 * 6 * 8, dtype="f4").reshape(4, 6, 8)
    zarr.create_array(str(tmp_path / "a.zarr"), data=data, chunks=(2, 3, 4))
    code = (
        "import sys, zarr\n"
        "a = zarr.open_array(sys.argv[1], mode='r')\n"
        "print(type(a._async_array.codec_pipeline).__name__, float(a[1:3, 2:5, 1:7].sum()))\n"
    )
    env = dict(os.environ, ZARR_CODEC_PIPELINE__PATH="lsio_ray.zarr.pipeline.LsioCodecPipeline")
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "a.zarr")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["LsioCodecPipeline", str(float(data[1:3, 2:5, 1:7].sum()))]
