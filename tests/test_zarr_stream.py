"""Crops, random crops and time series: in order, with reads in flight, cancellable."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
import zarr
from _zarr_helpers import BACKENDS, check_equal, make_data

import lsio_ray.zarr as lz
from lsio_ray.zarr import stream
from lsio_ray.zarr.loader import Loader
from lsio_ray.zarr.stream import random_boxes


@pytest.fixture(scope="module", params=BACKENDS)
def loader(request: pytest.FixtureRequest) -> Iterator[Loader]:
    ld = Loader(backend=request.param)
    yield ld
    ld.close()


@pytest.fixture(scope="module", params=["chunks", "shards"])
def array(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, np.ndarray]:
    path = str(tmp_path_factory.mktemp("stream") / "a.zarr")
    data = make_data("f4", (24, 40, 36), seed=9)
    shards = (8, 20, 18) if request.param == "shards" else None
    zarr.create_array(path, data=data, chunks=(2, 10, 9), shards=shards)
    return path, data


def drained(loader: Loader) -> None:
    for _ in range(200):
        if loader.engine.stats()["buffers_out"] == 0:
            return
        time.sleep(0.01)
    raise AssertionError(loader.engine.stats())


@pytest.mark.parametrize("prefetch", [1, 3, 32])
def test_crops_in_order(array, loader: Loader, prefetch: int) -> None:
    path, data = array
    a = lz.open(path, loader=loader)
    rng = np.random.default_rng(prefetch)
    keys = []
    for _ in range(20):
        z = int(rng.integers(0, 20))
        y = int(rng.integers(0, 30))
        keys.append((slice(z, z + 4), slice(y, y + 10), int(rng.integers(0, 36))))
    got = list(a.crops(keys, prefetch=prefetch))
    assert len(got) == len(keys)
    for key, g in zip(keys, got, strict=True):
        check_equal(g, data[key], f"crop {key}")
    drained(loader)


def test_random_crops(array, loader: Loader) -> None:
    path, data = array
    a = lz.open(path, loader=loader)
    first = list(a.random_crops((3, 11, 7), 15, seed=42, prefetch=4))
    again = list(a.random_crops((3, 11, 7), 15, seed=42, prefetch=9))
    boxes = list(random_boxes(data.shape, (3, 11, 7), 15, 42))
    assert len(first) == 15
    for (lo, hi), c1, c2 in zip(boxes, first, again, strict=True):
        want = data[tuple(slice(x, y) for x, y in zip(lo, hi, strict=True))]
        check_equal(c1, want, f"crop at {lo}")
        check_equal(c2, want, f"crop at {lo} (second run)")
    other = next(a.random_crops((3, 11, 7), 1, seed=43))
    assert other.shape == (3, 11, 7)
    assert list(a.random_crops((3, 11, 7), 0, seed=1)) == []


def test_early_close_cancels(array, loader: Loader) -> None:
    path, data = array
    a = lz.open(path, loader=loader)
    it = a.random_crops((8, 40, 36), 100, seed=1, prefetch=16)
    first = next(it)
    assert first.shape == (8, 40, 36)
    it.close()  # 15 reads in flight are cancelled
    drained(loader)
    check_equal(a[...], data, "the loader still reads after a cancel")


@pytest.mark.parametrize("rows", [1, 3])
def test_time_series(array, loader: Loader, rows: int) -> None:
    path, data = array
    a = lz.open(path, loader=loader)
    key = (slice(3, 23), slice(5, 31), slice(4, 30))
    starts, blocks = [], []
    for t0, block in a.time_series(key, rows=rows, prefetch=4):
        starts.append(t0)
        blocks.append(block)
    check_equal(np.concatenate(blocks), data[key], "time series concatenated")
    step = 2 * rows
    assert starts[0] == 3 and all(s % step == 0 for s in starts[1:])
    assert all(b.shape[0] <= step for b in blocks)
    with pytest.raises(ValueError, match="plain slices"):
        a.time_series((slice(None), 7, slice(None)))


def test_time_series_other_axis(array, loader: Loader) -> None:
    path, data = array
    a = lz.open(path, loader=loader)
    blocks = [b for _, b in a.time_series(..., axis=-1, prefetch=2)]
    check_equal(np.concatenate(blocks, axis=-1), data, "along the last axis")
    with pytest.raises(ValueError):
        next(a.time_series(..., axis=3))
    with pytest.raises(ValueError):
        next(a.time_series((slice(None, None, 2),)))


def test_concurrent_readers(array, loader: Loader) -> None:
    """Several threads reading through one loader at once."""
    from concurrent.futures import ThreadPoolExecutor

    path, data = array
    a = lz.open(path, loader=loader)

    def work(seed: int) -> None:
        for crop, (lo, hi) in zip(
            a.random_crops((4, 9, 9), 10, seed=seed, prefetch=3),
            random_boxes(data.shape, (4, 9, 9), 10, seed),
            strict=True,
        ):
            check_equal(crop, data[tuple(map(slice, lo, hi))], "threaded crop")

    with ThreadPoolExecutor(4) as ex:
        list(ex.map(work, range(8)))
    drained(loader)


def test_reuse_ring(array, loader: Loader) -> None:
    """reuse=True recycles prefetch + 1 buffers and still yields the right data."""
    path, data = array
    a = lz.open(path, loader=loader)
    seen = set()
    boxes = list(random_boxes(data.shape, (3, 11, 7), 12, 7))
    for (lo, hi), crop in zip(
        boxes, a.random_crops((3, 11, 7), 12, seed=7, prefetch=3, reuse=True), strict=True
    ):
        check_equal(crop, data[tuple(map(slice, lo, hi))], "reused crop")
        seen.add(crop.__array_interface__["data"][0])
    assert len(seen) <= 4
    blocks = [b.copy() for _, b in a.time_series(..., prefetch=2, reuse=True)]
    check_equal(np.concatenate(blocks), data, "reused time series")
    drained(loader)


@pytest.mark.parametrize("reuse", [False, True])
def test_window_bytes_caps_big_regions(
    array, loader: Loader, monkeypatch: pytest.MonkeyPatch, reuse: bool
) -> None:
    """Outputs in flight stay under WINDOW_BYTES whatever prefetch says, with two reads
    at least; small regions after big ones fill the window up to prefetch again."""
    path, data = array
    a = lz.open(path, loader=loader)
    key = {
        "big": (slice(0, 12), slice(None), slice(None)),  # 12 * 40 * 36 * 4 = 69,120 bytes
        "small": (slice(0, 1), slice(0, 5), slice(0, 5)),  # 100 bytes
    }
    size = {"big": 69_120, "small": 100}
    started = 0
    real = a.start_read

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal started
        started += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(a, "start_read", counting)

    def windows(keys: list[str], budget: int) -> list[list[str]]:
        """Read keys with prefetch 8; the regions started and not yet yielded, at each
        yield (the one yielded is the consumer's, not the window's)."""
        nonlocal started
        monkeypatch.setattr(stream, "WINDOW_BYTES", budget)
        started = 0
        seen = []
        regions = (key[k] for k in keys)
        for done, g in enumerate(a.crops(regions, prefetch=8, reuse=reuse)):
            check_equal(g, data[key[keys[done]]], f"region {done}")
            seen.append(keys[done + 1 : started])
        return seen

    for w in windows(["big"] * 6 + ["small"] * 10, 150_000):  # two big ones, not three
        assert len(w) <= 2 or sum(size[k] for k in w) <= 150_000, w
    assert max(map(len, windows(["big"] * 6 + ["small"] * 10, 150_000))) == 8
    assert [len(w) for w in windows(["big"] * 5, 1)] == [2, 2, 2, 1, 0]  # two at least
    assert [len(w) for w in windows(["big"] * 5, 1 << 30)] == [4, 3, 2, 1, 0]
    drained(loader)


@pytest.mark.parametrize("reuse", [False, True])
def test_same_shape_boxes_in_groups(array, loader: Loader, reuse: bool) -> None:
    """Boxes read a group at a time (prefetch 16: groups of 8) come back in order and
    equal; without reuse each box is an array of its own, not a view of a group."""
    path, data = array
    a = lz.open(path, loader=loader)
    starts = stream.random_box_starts(data.shape, (5, 13, 11), 45, 3)
    starts[7] = starts[3]  # two boxes of one group over the same chunks
    got = []
    for crop in stream.same_shape_boxes(a, starts, (5, 13, 11), 16, reuse):
        got.append(crop.copy() if reuse else crop)
        if not reuse:
            assert crop.base is None and crop.flags.c_contiguous
    assert len(got) == len(starts)
    for lo, crop in zip(starts, got, strict=True):
        box = tuple(slice(x, x + n) for x, n in zip(lo, (5, 13, 11), strict=True))
        check_equal(crop, data[box], f"at {lo}")
    drained(loader)


def test_same_shape_boxes_fill_and_other_codecs(tmp_path, loader: Loader) -> None:
    """Missing chunks read as the fill value in the grouped path; a codec without the C
    decoder (gzip) reads box by box, equally."""
    data = make_data("i2", (12, 30, 30), seed=4)
    for name, kw in [("zstd", {}), ("gzip", {"compressors": zarr.codecs.GzipCodec()})]:
        path = tmp_path / f"{name}.zarr"
        z = zarr.create_array(str(path), data=data, chunks=(3, 10, 10), fill_value=-7, **kw)
        (path / "c" / "1" / "1" / "1").unlink()  # chunk (1,1,1): now the fill value
        want = z[...]
        assert (want[3:6, 10:20, 10:20] == -7).all()
        a = lz.open(str(path), loader=loader)
        starts = stream.random_box_starts(data.shape, (4, 12, 12), 30, 8)
        got = list(stream.same_shape_boxes(a, starts, (4, 12, 12), 16))
        for lo, crop in zip(starts, got, strict=True):
            box = tuple(slice(x, x + n) for x, n in zip(lo, (4, 12, 12), strict=True))
            check_equal(crop, want[box], name)
    drained(loader)


def test_same_shape_boxes_bounds(array, loader: Loader) -> None:
    path, _ = array
    a = lz.open(path, loader=loader)
    starts = np.zeros((20, 3), np.int64)
    starts[13] = (0, 35, 0)  # reaches row 35 + 6 > 40
    with pytest.raises(IndexError, match="axis 1 with size 40"):
        next(stream.same_shape_boxes(a, starts, (2, 6, 6), 16))
    with pytest.raises(ValueError, match="dimensions"):
        next(stream.same_shape_boxes(a, np.zeros((2, 3), np.int64), (2, 6), 16))
    with pytest.raises(ValueError, match="prefetch"):
        next(stream.same_shape_boxes(a, starts[:1], (2, 6, 6), 0))


def test_group_size() -> None:
    """Small boxes are grouped (at most GROUP, two groups in flight); big ones are not."""
    assert stream.group_size(16, 2 << 20) == stream.GROUP == 8
    assert stream.group_size(16, 4 << 20) == 4  # GROUP_BYTES
    assert stream.group_size(16, 128 << 20) == 1  # a time series or a slab: box by box
    assert stream.group_size(3, 100) == 1 and stream.group_size(8, 100) == 4
