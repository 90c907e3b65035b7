"""lsio_ray.data: Ray Data datasources of Zarr crops and windows."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from _ray_helpers import local_ray

ray = pytest.importorskip("ray")

import lsio_ray.data as ld  # noqa: E402
import lsio_ray.zarr as lz  # noqa: E402

SHAPE = (20, 48, 40)
CROP = (4, 8, 8)


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One local Ray for the module (2 CPUs), always shut down."""
    with local_ray():
        yield


@pytest.fixture(scope="module")
def arrays(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, np.ndarray]]:
    """A v3 sharded, a v2 and a v3 gzip array (no C decoder: crop by crop) of the same
    data."""
    root = tmp_path_factory.mktemp("data")
    data = np.random.default_rng(1).integers(0, 1000, SHAPE).astype("uint16")
    out = {}
    z = zarr.create_array(
        str(root / "v3.zarr"),
        shape=SHAPE,
        chunks=(4, 16, 16),
        shards=(8, 16, 32),
        dtype=data.dtype,
        zarr_format=3,
    )
    z[...] = data
    out["v3"] = (str(root / "v3.zarr"), data)
    z = zarr.create_array(
        str(root / "v2.zarr"), shape=SHAPE, chunks=(5, 16, 16), dtype=data.dtype, zarr_format=2
    )
    z[...] = data
    out["v2"] = (str(root / "v2.zarr"), data)
    z = zarr.create_array(
        str(root / "gzip.zarr"),
        shape=SHAPE,
        chunks=(5, 16, 16),
        dtype=data.dtype,
        compressors=zarr.codecs.GzipCodec(),
    )
    z[...] = data
    out["gzip"] = (str(root / "gzip.zarr"), data)
    return out


def _rows(ds: Any) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    rows = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i, lo, crop in zip(batch["index"], batch["lo"], batch["crop"], strict=True):
            assert int(i) not in rows
            rows[int(i)] = (np.asarray(lo), np.asarray(crop))
    return rows


@pytest.mark.parametrize(
    ("fmt", "direct"), [("v3", None), ("v2", None), ("gzip", None), ("v3", True)]
)
def test_crops_equal_zarr_python(
    ray_local: None, arrays: Any, fmt: str, direct: bool | None
) -> None:
    path, _ = arrays[fmt]
    ds = ld.read_zarr_crops(
        path, CROP, 37, seed=3, override_num_blocks=3, block_bytes=4096, direct=direct
    )
    rows = _rows(ds)
    assert sorted(rows) == list(range(37))
    ref = zarr.open(path, mode="r")
    for lo, crop in rows.values():
        box = tuple(slice(int(s), int(s) + c) for s, c in zip(lo, CROP, strict=True))
        assert crop.shape == CROP
        np.testing.assert_array_equal(crop, ref[box])
    # the plan is Array.random_crops's, in index order
    expected = list(lz.open(path).random_crops(CROP, 37, seed=3))
    for i, exp in enumerate(expected):
        np.testing.assert_array_equal(rows[i][1], exp)


@pytest.mark.parametrize("direct", [None, True, False])
def test_read_tasks_open_the_array_with_direct(
    arrays: Any, monkeypatch: pytest.MonkeyPatch, direct: bool | None
) -> None:
    """A read task's body (run here, without Ray) opens the array with ``direct``, for
    crops and for windows."""
    path, _ = arrays["v3"]
    seen: list[bool | None] = []
    real = lz.open_array

    def recording(p: Any, **kw: Any) -> Any:
        seen.append(kw.get("direct"))
        return real(p, **kw)

    monkeypatch.setattr(lz, "open_array", recording)
    monkeypatch.setattr(ld, "read_dataset", lambda src, parallelism, args: src)  # no Ray Data
    for src in (
        ld.read_zarr_crops(path, CROP, 5, seed=1, direct=direct),
        ld.read_zarr_windows(path, CROP, direct=direct),
    ):
        seen.clear()
        task = src.get_read_tasks(1)[0]
        blocks = list(task.read_fn())
        assert blocks and seen == [direct]


def test_many_small_blocks_are_kept_as_they_are(ray_local: None, arrays: Any) -> None:
    """Blocks of 2 crops, 60 per read task: Ray Data does not merge them (the dataset's
    own target block size is set, the global one is not touched), and the buffers the
    read task recycles never show up as wrong rows."""
    path, data = arrays["v2"]
    before = ray.data.DataContext.get_current().target_max_block_size
    crop_bytes = int(np.prod(CROP)) * 2
    ds = ld.read_zarr_crops(
        path, CROP, 120, seed=4, override_num_blocks=1, block_bytes=2 * crop_bytes
    )
    assert ds.context.target_max_block_size == 2 * crop_bytes
    assert ray.data.DataContext.get_current().target_max_block_size == before
    mat = ds.materialize()
    assert mat.num_blocks() == 60
    rows = _rows(mat)
    assert sorted(rows) == list(range(120))
    for lo, crop in rows.values():
        box = tuple(slice(int(s), int(s) + c) for s, c in zip(lo, CROP, strict=True))
        np.testing.assert_array_equal(crop, data[box])


def test_block_pool_reuses_only_unreferenced_buffers() -> None:
    pool = ld._BlockPool(keep=2)
    a = pool.take((2, 3), np.float32)
    b = pool.take((2, 3), np.float32)
    assert a is not b  # a is still held
    view = b[1]
    del b
    c = pool.take((2, 3), np.float32)
    assert c is not pool.bufs[1]  # b lives on in a view
    del a
    assert pool.take((2, 3), np.float32) is pool.bufs[0]
    assert pool.take((4, 3), np.float32).shape == (4, 3)  # another shape: a new buffer
    assert len(pool.bufs) == 2 and view.base is pool.bufs[1] and c is not None


def test_same_seed_same_crops_whatever_the_parallelism(ray_local: None, arrays: Any) -> None:
    path, _ = arrays["v3"]
    one = _rows(ld.read_zarr_crops(path, CROP, 25, seed=9, override_num_blocks=1))
    four = _rows(ld.read_zarr_crops(path, CROP, 25, seed=9, override_num_blocks=4))
    assert one.keys() == four.keys()
    for i in one:
        np.testing.assert_array_equal(one[i][0], four[i][0])
        np.testing.assert_array_equal(one[i][1], four[i][1])
    other = _rows(ld.read_zarr_crops(path, CROP, 25, seed=10, override_num_blocks=4))
    assert any(not np.array_equal(one[i][0], other[i][0]) for i in one)


@pytest.mark.parametrize("fmt", ["v3", "v2"])
def test_decode_aware_rows_are_the_same_rows(ray_local: None, arrays: Any, fmt: str) -> None:
    path, _ = arrays[fmt]
    assert lz.open(path).layout.codec.c_codec is not None  # the decode-aware path runs
    plain = _rows(
        ld.read_zarr_crops(path, CROP, 41, seed=5, override_num_blocks=2, block_bytes=4096)
    )
    aware = _rows(
        ld.read_zarr_crops(
            path, CROP, 41, seed=5, override_num_blocks=2, block_bytes=4096, decode_block=9
        )
    )
    assert plain.keys() == aware.keys() == set(range(41))
    for i in plain:
        np.testing.assert_array_equal(plain[i][0], aware[i][0])
        np.testing.assert_array_equal(plain[i][1], aware[i][1])
    with pytest.raises(ValueError, match="decode_block"):
        ld.read_zarr_crops(path, CROP, 5, decode_block=-1)


@pytest.mark.parametrize("fmt", ["v3", "v2"])
def test_clustered_rows_are_the_arrays_clustered_crops(
    ray_local: None, arrays: Any, fmt: str
) -> None:
    """``per_cell``: the rows are ``Array.clustered_crops`` with the same seed, whatever
    the number of read tasks (cut at cell boundaries), and each is the array's box."""
    path, _ = arrays[fmt]
    arr = lz.open(path)
    want = list(arr.clustered_crops(CROP, 43, seed=6, per_cell=5))
    starts = arr.clustered_starts(CROP, 43, seed=6, per_cell=5)
    for par in (1, 3):
        ds = ld.read_zarr_crops(
            path, CROP, 43, seed=6, override_num_blocks=par, per_cell=5, block_bytes=3000
        )
        rows = _rows(ds)
        assert rows.keys() == set(range(43))
        for i in rows:
            np.testing.assert_array_equal(rows[i][0], starts[i])
            np.testing.assert_array_equal(rows[i][1], want[i])
    with pytest.raises(ValueError, match="two samplers"):
        ld.read_zarr_crops(path, CROP, 5, per_cell=2, decode_block=4)
    small = _rows(ld.read_zarr_crops(path, CROP, 3, seed=6, override_num_blocks=2, per_cell=5))
    assert small.keys() == {0, 1, 2}  # fewer crops than one cell: one read task, all rows


def test_streaming_split_covers_every_crop_once(ray_local: None, arrays: Any) -> None:
    path, _ = arrays["v3"]
    ds = ld.read_zarr_crops(path, CROP, 40, seed=5, override_num_blocks=4, block_bytes=2048)
    its = ds.streaming_split(2)
    seen: list[list[int]] = [[], []]

    def consume(k: int) -> None:
        for batch in its[k].iter_batches(batch_size=8):
            seen[k].extend(int(i) for i in batch["index"])

    threads = [threading.Thread(target=consume, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(seen[0] + seen[1]) == list(range(40))


def test_iter_batches_and_windows(ray_local: None, arrays: Any) -> None:
    path, data = arrays["v2"]
    win, stride = (10, 16, 20), (10, 16, 10)
    ds = ld.read_zarr_windows(path, win, stride=stride, override_num_blocks=2)
    starts = [np.arange(0, n - w + 1, s) for n, w, s in zip(SHAPE, win, stride, strict=True)]
    count = int(np.prod([len(s) for s in starts]))
    assert ds.count() == count
    total = 0
    for batch in ds.iter_batches(batch_size=5, batch_format="numpy"):
        assert batch["crop"].shape[1:] == win
        for lo, crop in zip(batch["lo"], batch["crop"], strict=True):
            box = tuple(slice(int(s), int(s) + w) for s, w in zip(lo, win, strict=True))
            np.testing.assert_array_equal(crop, data[box])
            total += 1
    assert total == count
    # non-overlapping tiles by default cover the array exactly
    tiles = _rows(ld.read_zarr_windows(path, (10, 16, 20)))
    assert len(tiles) == 2 * 3 * 2


def test_estimates_and_errors(arrays: Any) -> None:
    path, _ = arrays["v3"]
    arr = lz.open(path)
    src = ld.ZarrBoxesDatasource(
        path, CROP, 10, ld.random_box_starts(arr.shape, CROP, 10, 0).__getitem__, dtype=arr.dtype
    )
    assert src.estimate_inmemory_data_size() == 10 * 4 * 8 * 8 * 2
    with pytest.raises(ValueError, match="does not fit"):
        ld.random_box_starts(SHAPE, (30, 1, 1), 1, 0)
    with pytest.raises(ValueError, match="positive"):
        ld.window_starts(SHAPE, (1, 1, 1), (0, 1, 1))


def test_coordinator_places_reads_on_the_node_holding_the_data(
    ray_local: None, arrays: Any, tmp_path: Path
) -> None:
    from lsio_ray.ray import Coordinator

    path, _ = arrays["v3"]
    node = ray.get_runtime_context().get_node_id()
    coord = Coordinator(roots={node: [os.path.dirname(path)]})
    assert ld._node_of(path, coord) == node
    assert ld._node_of(path, None) is None
    ds = ld.read_zarr_crops(path, CROP, 6, seed=1, coordinator=coord, override_num_blocks=2)
    rows = _rows(ds)
    assert sorted(rows) == list(range(6))
