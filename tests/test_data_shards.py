"""Shards of the Ray Data readers (``shard=(i, n)``) and :func:`lsio_ray.data.node_shards`
on one local Ray: the shards together are exactly the rows of the unsharded read;
placement errors name what is wrong.  The multi-node check (crop bytes crossing nodes)
is ``tests/test_node_shards_cluster.py``."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from _ray_helpers import local_ray

ray = pytest.importorskip("ray")

import lsio_ray.data as ld  # noqa: E402
from lsio_ray.data_plan import task_ranges  # noqa: E402
from lsio_ray.data_shards import shard_span  # noqa: E402

SHAPE = (24, 40, 48)
CROP = (4, 8, 8)


@pytest.fixture(scope="module")
def ray_local() -> Iterator[str]:
    """One local Ray for the module (2 CPUs), always shut down; yields its node id."""
    with local_ray() as node:
        yield node


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A v3 group with an image (sharded, zstd) and its label (v3, chunked)."""
    root = tmp_path_factory.mktemp("shards") / "g.zarr"
    rng = np.random.default_rng(3)
    image = rng.integers(0, 60_000, SHAPE).astype("uint16")
    label = (image % 7).astype("uint8")
    g = zarr.open_group(str(root), mode="w", zarr_format=3)
    a = g.create_array("image", shape=SHAPE, chunks=(4, 8, 16), shards=(8, 16, 48), dtype="uint16")
    a[...] = image
    b = g.create_array("label", shape=SHAPE, chunks=(6, 20, 24), dtype="uint8")
    b[...] = label
    return root, image, label


def _rows(ds: Any, column: str = "crop") -> dict[int, tuple[tuple[int, ...], np.ndarray]]:
    rows: dict[int, tuple[tuple[int, ...], np.ndarray]] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i, lo, crop in zip(batch["index"], batch["lo"], batch[column], strict=True):
            assert int(i) not in rows, f"row {i} twice"
            rows[int(i)] = (tuple(int(v) for v in lo), crop)
    return rows


def _same(parts: list[dict[int, Any]], whole: dict[int, Any]) -> None:
    union: dict[int, Any] = {}
    for part in parts:
        assert not union.keys() & part.keys(), "two shards share rows"
        union.update(part)
    assert union.keys() == whole.keys()
    for i, (lo, crop) in whole.items():
        assert union[i][0] == lo
        np.testing.assert_array_equal(union[i][1], crop)


def test_shard_span_covers_the_plan_in_whole_units() -> None:
    for count, n, unit in [(10, 3, 0), (10, 4, 1), (100, 7, 5), (3, 5, 0), (17, 2, 4), (0, 2, 0)]:
        spans = [shard_span(count, (i, n), unit) for i in range(n)]
        assert spans[0][0] == 0 and spans[-1][1] == count
        for (a, b), (c, _) in itertools.pairwise(spans):
            assert b == c and a <= b
        for a, b in spans:
            assert not unit or a % unit == 0
            assert not unit or b % unit == 0 or b == count
    sizes = [b - a for a, b in (shard_span(100, (i, 3)) for i in range(3))]
    assert max(sizes) - min(sizes) <= 1
    for bad in [(3, 3), (-1, 2), (0, 0), ("x", 2), (1,)]:
        with pytest.raises(ValueError, match="shard"):
            shard_span(10, bad)  # type: ignore[arg-type]


def test_task_ranges_keep_units_within_a_span() -> None:
    assert task_ranges((0, 10), 3) == [(0, 3), (3, 7), (7, 10)]
    assert task_ranges((10, 30), 2, unit=5) == [(10, 20), (20, 30)]
    assert task_ranges((10, 32), 4, unit=5) == [(10, 15), (15, 20), (20, 25), (25, 32)]
    assert task_ranges((5, 5), 4) == []
    assert task_ranges((0, 2), 8) == [(0, 1), (1, 2)]


def test_crop_shards_are_the_whole_read(ray_local: str, group: Any) -> None:
    path = str(group[0] / "image")
    whole = _rows(ld.read_zarr_crops(path, CROP, 50, seed=11, override_num_blocks=2))
    parts = [
        _rows(ld.read_zarr_crops(path, CROP, 50, seed=11, shard=(i, 3), block_bytes=4096))
        for i in range(3)
    ]
    assert [len(p) for p in parts] == [16, 17, 17]
    _same(parts, whole)
    # the clustered sampler: shards cut at cell boundaries, the same rows
    whole = _rows(ld.read_zarr_crops(path, CROP, 40, seed=2, per_cell=6))
    parts = [
        _rows(ld.read_zarr_crops(path, CROP, 40, seed=2, per_cell=6, shard=(i, 2))) for i in (0, 1)
    ]
    assert sorted(parts[0])[-1] + 1 == 18  # 3 of the 7 cells
    _same(parts, whole)


def test_window_and_aligned_shards_are_the_whole_read(ray_local: str, group: Any) -> None:
    root, _image, label = group
    path = str(root / "label")
    whole = _rows(ld.read_zarr_windows(path, (8, 16, 16), partial="pad"))
    parts = [_rows(ld.read_zarr_windows(path, (8, 16, 16), shard=(i, 4))) for i in range(4)]
    _same(parts, whole)
    for i, (lo, crop) in whole.items():
        box = tuple(slice(s, s + w) for s, w in zip(lo, (8, 16, 16), strict=True))
        got = label[box]
        np.testing.assert_array_equal(crop[tuple(slice(0, n) for n in got.shape)], got, str(i))

    kw: dict[str, Any] = {"arrays": ["image", "label"], "seed": 4}
    whole_i = _rows(ld.read_zarr_crops(str(root), CROP, 30, **kw), "image")
    parts_i, parts_l = [], []
    for i in range(2):
        ds = ld.read_zarr_crops(str(root), CROP, 30, shard=(i, 2), **kw)
        parts_i.append(_rows(ds, "image"))
        parts_l.append(_rows(ds, "label"))
    _same(parts_i, whole_i)
    for part in parts_l:
        for lo, crop in part.values():
            box = tuple(slice(s, s + c) for s, c in zip(lo, CROP, strict=True))
            np.testing.assert_array_equal(crop, label[box])


def test_node_shards_on_one_node(ray_local: str, group: Any) -> None:
    path = str(group[0] / "image")
    node = ray_local
    shards = ld.node_shards(ld.read_zarr_crops, path, CROP, 30, seed=8, node_ids=[node, node])
    assert len(shards) == 2
    whole = _rows(ld.read_zarr_crops(path, CROP, 30, seed=8))
    _same([_rows(s) for s in shards], whole)
    windows = ld.node_shards(ld.read_zarr_windows, path, (8, 20, 24), node_ids=[node])
    assert windows[0].count() == 3 * 2 * 2


def test_node_shards_refuse_what_they_cannot_place(ray_local: str, group: Any) -> None:
    path = str(group[0] / "image")
    node = ray_local
    for bad in ({"shard": (0, 2)}, {"label_selector": {"a": "b"}}, {"coordinator": None}):
        with pytest.raises(TypeError, match="places every shard on its node"):
            ld.node_shards(ld.read_zarr_crops, path, CROP, 4, node_ids=[node], **bad)
    with pytest.raises(TypeError, match="label_selector"):
        ld.node_shards(
            ld.read_zarr_crops,
            path,
            CROP,
            4,
            node_ids=[node],
            ray_remote_args={"label_selector": {"x": "y"}},
        )
    with pytest.raises(ValueError, match="no live Ray node has the id 'f00d'"):
        ld.node_shards(ld.read_zarr_crops, path, CROP, 4, node_ids=[node, "f00d"])
    with pytest.raises(ValueError, match="at least one node"):
        ld.node_shards(ld.read_zarr_crops, path, CROP, 4, node_ids=[])
    with pytest.raises(ValueError, match="0 <= i < n"):
        ld.read_zarr_crops(path, CROP, 4, shard=(2, 2))


def test_train_config_warns_when_the_workers_leave_no_cpu(ray_local: str) -> None:
    """NodeShardsConfig names a node whose CPUs the Train workers hold (its shard's reads
    could not start there), and says nothing when CPUs are free."""
    pytest.importorskip("ray.train")
    import warnings

    from lsio_ray.train import _warn_if_no_cpu_left

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_no_cpu_left([ray_local])  # 2 CPUs free: nothing to say

    @ray.remote(num_cpus=2)
    class Hog:
        def ready(self) -> bool:
            return True

    hog = Hog.remote()
    try:
        ray.get(hog.ready.remote(), timeout=60)
        with pytest.warns(RuntimeWarning, match=f"node {ray_local} has 0 CPU free"):
            _warn_if_no_cpu_left([ray_local])
    finally:
        ray.kill(hog)
