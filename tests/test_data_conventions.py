"""lsio_ray.data takes its arguments as Ray Data's own readers do (issue 16).

``override_num_blocks`` (``parallelism`` deprecated), ``concurrency``, ``num_cpus``,
``memory``, ``ray_remote_args``, ``include_paths``, a list of paths, ``filesystem``,
unknown keyword arguments, and ``read_zarr_windows(partial=)`` at the array's edges.
Every Zarr result is compared with zarr-python's read of the same box.
"""

from __future__ import annotations

import copy
import functools
import inspect
import itertools
import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zarr
from _ray_helpers import local_ray

ray = pytest.importorskip("ray")

import lsio_ray.data as ld  # noqa: E402
import lsio_ray.data_plan as dp  # noqa: E402
import lsio_ray.zarr as lz  # noqa: E402

CROP = (4, 8, 8)
BIG = (32, 256, 256)  # the example: (8, 100, 100) windows leave 200:256 unread
WIN = (8, 100, 100)


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One local Ray for the module (2 CPUs), always shut down."""
    with local_ray():
        yield


@pytest.fixture(scope="module")
def arrays(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Arrays of one dtype and different shapes and formats (a sharded v3 the C decoder
    reads, a v2, a gzip v3 read in Python), the issue's (32, 256, 256) one with fill
    value 7, and a float32 one."""
    root = tmp_path_factory.mktemp("conv")
    rng = np.random.default_rng(16)
    out = {}

    def make(name: str, shape: tuple[int, ...], dtype: str = "uint16", **kw: Any) -> None:
        path = str(root / f"{name}.zarr")
        z = zarr.create_array(path, shape=shape, dtype=dtype, **kw)
        z[...] = rng.integers(0, 60_000, shape).astype(dtype)
        out[name] = path

    make("a", (20, 48, 40), chunks=(4, 16, 16), shards=(8, 16, 32))
    make("b", (12, 40, 56), chunks=(5, 16, 16), zarr_format=2)
    make("gz", (20, 48, 40), chunks=(5, 16, 16), compressors=zarr.codecs.GzipCodec())
    make("big", BIG, chunks=(8, 64, 64), fill_value=7)
    make("f32", (20, 48, 40), dtype="float32", chunks=(10, 16, 16))
    return out


def _rows(ds: Any) -> dict[int, dict[str, Any]]:
    """Rows by index (each index once)."""
    rows: dict[int, dict[str, Any]] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for j, i in enumerate(batch["index"]):
            assert int(i) not in rows
            rows[int(i)] = {k: v[j] for k, v in batch.items()}
    return rows


def _zarr_box(path: str, lo: Any, shape: tuple[int, ...]) -> np.ndarray:
    """zarr-python's read of the box at ``lo``, padded with the array's fill value
    where it runs past the array's end."""
    z = zarr.open_array(path, mode="r")
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.minimum(lo + shape, z.shape)
    out = np.full(shape, z.fill_value, dtype=z.dtype)
    out[tuple(slice(0, int(h - s)) for s, h in zip(lo, hi, strict=True))] = z[
        tuple(slice(int(s), int(h)) for s, h in zip(lo, hi, strict=True))
    ]
    return out


def _check_rows(rows: dict[int, dict[str, Any]], shape: tuple[int, ...], path: str | None) -> None:
    for row in rows.values():
        p = str(row["path"]) if path is None else path
        np.testing.assert_array_equal(row["crop"], _zarr_box(p, row["lo"], shape))


# -- override_num_blocks, parallelism -----------------------------------------------------


@pytest.mark.timeout(300)
def test_override_num_blocks_is_the_number_of_read_tasks(ray_local: None, arrays: Any) -> None:
    """Each read task emits one block here (crops far below ``block_bytes``): the
    number of blocks is ``override_num_blocks``, for crops and windows alike."""
    for n in (1, 3, 5):
        ds = ld.read_zarr_crops(arrays["a"], CROP, 40, seed=2, override_num_blocks=n)
        mat = ds.materialize()
        assert mat.num_blocks() == n
        rows = _rows(mat)
        assert sorted(rows) == list(range(40))
        _check_rows(rows, CROP, arrays["a"])
    ds = ld.read_zarr_windows(arrays["a"], (10, 16, 20), override_num_blocks=4)
    assert ds.materialize().num_blocks() == 4


@pytest.mark.timeout(300)
def test_parallelism_is_a_deprecated_alias(ray_local: None, arrays: Any) -> None:
    with pytest.warns(DeprecationWarning, match="override_num_blocks") as rec:
        ds = ld.read_zarr_crops(arrays["a"], CROP, 12, seed=1, parallelism=3)
    assert [os.path.basename(w.filename) for w in rec] == [os.path.basename(__file__)]
    assert ds.materialize().num_blocks() == 3
    with pytest.warns(DeprecationWarning, match=r"read_zarr_windows\(parallelism=\)"):
        ds = ld.read_zarr_windows(arrays["a"], (10, 16, 20), parallelism=2)
    assert ds.materialize().num_blocks() == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the new name does not warn
        ld.read_zarr_crops(arrays["a"], CROP, 12, seed=1, override_num_blocks=2)
    with pytest.raises(TypeError, match="not both"):
        ld.read_zarr_crops(arrays["a"], CROP, 4, parallelism=2, override_num_blocks=2)


# -- concurrency, num_cpus, memory, ray_remote_args -----------------------------------------


@pytest.mark.timeout(300)
def test_concurrency_and_resources_reach_the_read_operator(
    ray_local: None, arrays: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Ray arguments reach ``ray.data.read_datasource`` and the dataset's Read
    operator (its task pool size and the read tasks' remote options), and the dataset
    still reads the right crops."""
    seen: list[dict[str, Any]] = []
    real = ray.data.read_datasource

    @functools.wraps(real)  # its signature too
    def spy(src: Any, **kw: Any) -> Any:
        seen.append(copy.deepcopy(kw))  # Ray updates ray_remote_args in place
        return real(src, **kw)

    monkeypatch.setattr(ray.data, "read_datasource", spy)
    mine = {"max_retries": 5}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Ray 2.60 deprecates ray_remote_args itself
        ds = ld.read_zarr_crops(
            arrays["a"],
            CROP,
            20,
            seed=3,
            override_num_blocks=4,
            concurrency=1,
            num_cpus=0.5,
            memory=64 << 20,
            ray_remote_args=mine,
        )
    assert mine == {"max_retries": 5}  # the caller's dict is left alone
    assert seen[-1] == {
        "concurrency": 1,
        "num_cpus": 0.5,
        "memory": 64 << 20,
        "ray_remote_args": {"max_retries": 5},
        "override_num_blocks": 4,
    }
    read = ds._logical_plan.dag  # the Read operator
    assert type(read).__name__ == "Read"
    assert read.compute.size == 1
    assert read.ray_remote_args["num_cpus"] == 0.5
    assert read.ray_remote_args["memory"] == 64 << 20
    assert read.ray_remote_args["max_retries"] == 5
    rows = _rows(ds)
    assert sorted(rows) == list(range(20))
    _check_rows(rows, CROP, arrays["a"])
    # nothing given: nothing passed but the number of read tasks (one per CPU)
    ld.read_zarr_windows(arrays["a"], (10, 16, 20))
    assert seen[-1] == {"override_num_blocks": 2}


def test_remote_options_an_older_ray_does_not_name_go_into_ray_remote_args() -> None:
    def old_read_datasource(
        datasource: Any,
        *,
        parallelism: int = -1,
        concurrency: int | None = None,
        override_num_blocks: int | None = None,
        ray_remote_args: dict[str, Any] | None = None,
        **read_args: Any,
    ) -> None:
        raise AssertionError("not called")

    params = {"num_cpus": 2, "memory": 5, "concurrency": 3, "ray_remote_args": {"x": 1}}
    assert dp.ray_read_args(old_read_datasource, params) == {
        "concurrency": 3,
        "ray_remote_args": {"x": 1, "num_cpus": 2, "memory": 5},
    }
    params = {"num_cpus": 2, "override_num_blocks": 9, "resources": None}
    assert dp.ray_read_args(ray.data.read_datasource, params) == {"num_cpus": 2}


# -- unknown keyword arguments, filesystem, paths ----------------------------------------


@pytest.mark.parametrize("reader", ["read_zarr_crops", "read_zarr_windows"])
@pytest.mark.parametrize(
    ("bad", "near"),
    [
        ({"overide_num_blocks": 4, "seeed": 3}, "override_num_blocks"),
        ({"include_path": True}, "include_paths"),
        ({"num_cpu": 1}, "num_cpus"),
        ({"shuffle": "files"}, None),  # a read_images argument these readers do not take
        ({"zzz": 1}, None),
    ],
)
def test_unknown_keywords_are_type_errors(
    arrays: Any, monkeypatch: pytest.MonkeyPatch, reader: str, bad: dict[str, Any], near: Any
) -> None:
    """Python's message, naming the first unknown argument, with the nearest known name;
    raised before anything is opened or read."""
    monkeypatch.setattr(lz, "open", lambda *a, **k: pytest.fail("opened an array"))
    fn = getattr(ld, reader)
    first = next(iter(bad))
    msg = f"{reader}() got an unexpected keyword argument '{first}'"
    if near is not None:
        msg += f". Did you mean '{near}'?"
    args = (arrays["a"], CROP) if reader == "read_zarr_windows" else (arrays["a"], CROP, 5)
    with pytest.raises(TypeError) as exc:
        fn(*args, **bad)
    assert str(exc.value) == msg
    # the signature is the reader's own (the check is a wrapper)
    assert "override_num_blocks" in inspect.signature(fn).parameters


@pytest.mark.timeout(300)
def test_filesystem_local_only_and_file_uris(ray_local: None, arrays: Any) -> None:
    import fsspec
    import pyarrow.fs as pafs

    path = arrays["gz"]
    want = _rows(ld.read_zarr_crops(path, CROP, 6, seed=4, override_num_blocks=1))
    for fs in (pafs.LocalFileSystem(), fsspec.filesystem("file")):
        got = _rows(ld.read_zarr_crops(path, CROP, 6, seed=4, override_num_blocks=1, filesystem=fs))
        for i in want:
            np.testing.assert_array_equal(got[i]["crop"], want[i]["crop"])
    got = _rows(ld.read_zarr_windows("file://" + path, (10, 16, 20), override_num_blocks=1))
    _check_rows(got, (10, 16, 20), path)
    for fs in (fsspec.filesystem("memory"), pafs.SubTreeFileSystem("/", pafs.LocalFileSystem())):
        with pytest.raises(ValueError, match=rf"read_zarr_crops\(\).*{type(fs).__name__}"):
            ld.read_zarr_crops(path, CROP, 6, filesystem=fs)
        with pytest.raises(ValueError, match=r"read_zarr_windows\(\).*cannot read through"):
            ld.read_zarr_windows(path, (10, 16, 20), filesystem=fs)
    with pytest.raises(ValueError, match=r"ftp://bucket/x\.zarr: unknown URL scheme"):
        ld.read_zarr_crops("ftp://bucket/x.zarr", CROP, 6)  # URLs: tests/test_data_remote.py
    with pytest.raises(ValueError, match="empty list"):
        ld.read_zarr_crops([], CROP, 6)
    with pytest.raises(TypeError, match="not int"):
        ld.read_zarr_crops([path, 3], CROP, 6)


# -- include_paths, lists of paths ---------------------------------------------------------


@pytest.mark.timeout(300)
def test_include_paths_adds_the_path_column(ray_local: None, arrays: Any) -> None:
    path = arrays["a"]
    ds = ld.read_zarr_crops(path, CROP, 9, seed=5, include_paths=True, override_num_blocks=2)
    assert "path" in ds.schema().names
    rows = _rows(ds)
    assert {str(r["path"]) for r in rows.values()} == {os.path.abspath(path)}
    plain = ld.read_zarr_crops(path, CROP, 9, seed=5, override_num_blocks=2)
    assert "path" not in plain.schema().names
    wins = _rows(ld.read_zarr_windows(path, (10, 16, 20), include_paths=True))
    assert len(wins) == 2 * 3 * 2
    assert {str(r["path"]) for r in wins.values()} == {os.path.abspath(path)}
    assert ds.input_files() == [os.path.abspath(path)]


@pytest.mark.timeout(300)
def test_a_list_of_paths_reads_every_array(ray_local: None, arrays: Any) -> None:
    """Crops from three arrays of one dtype (C-decoded, v2, gzip), interleaved in the
    plan; each row is zarr-python's box of the array its ``path`` names; the same rows
    whatever the number of read tasks, and with the decode-aware sampler."""
    paths = [arrays["a"], arrays["b"], arrays["gz"]]
    ds = ld.read_zarr_crops(paths, CROP, 90, seed=6, include_paths=True, override_num_blocks=3)
    rows = _rows(ds)
    assert sorted(rows) == list(range(90))
    _check_rows(rows, CROP, None)
    by_path = [str(rows[i]["path"]) for i in range(90)]
    assert set(by_path) == {os.path.abspath(p) for p in paths}
    assert len({tuple(by_path[i : i + 10]) for i in range(0, 90, 10)}) > 1  # interleaved
    assert sorted(ds.input_files()) == sorted(os.path.abspath(p) for p in paths)
    for kw in ({"override_num_blocks": 1}, {"override_num_blocks": 2, "decode_block": 7}):
        other = _rows(ld.read_zarr_crops(paths, CROP, 90, seed=6, include_paths=True, **kw))
        for i in rows:
            assert str(other[i]["path"]) == by_path[i]
            np.testing.assert_array_equal(other[i]["lo"], rows[i]["lo"])
            np.testing.assert_array_equal(other[i]["crop"], rows[i]["crop"])
    # the decode-aware sampler over arrays the C decoder reads (the gzip one it does not)
    two = paths[:2]
    assert all(lz.open(p).decodes_in_c for p in two)
    plain = _rows(ld.read_zarr_crops(two, CROP, 50, seed=8, include_paths=True))
    aware = _rows(ld.read_zarr_crops(two, CROP, 50, seed=8, include_paths=True, decode_block=7))
    assert sorted(aware) == list(range(50))
    assert len({str(r["path"]) for r in aware.values()}) == 2
    for i in plain:
        assert str(aware[i]["path"]) == str(plain[i]["path"])
        np.testing.assert_array_equal(aware[i]["crop"], plain[i]["crop"])
    _check_rows(aware, CROP, None)
    # a list of one path is that path: Array.random_crops's crops
    one = _rows(ld.read_zarr_crops([arrays["a"]], CROP, 7, seed=6, override_num_blocks=2))
    for i, crop in enumerate(lz.open(arrays["a"]).random_crops(CROP, 7, seed=6)):
        np.testing.assert_array_equal(one[i]["crop"], crop)


def test_read_tasks_over_several_arrays_take_the_decode_aware_path(
    arrays: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read task bodies run here (no Ray): with ``decode_block`` over arrays the C
    decoder reads, the decode-aware path runs, once per task, opening each array of
    the task once; the rows are zarr-python's boxes."""
    two = [arrays["a"], arrays["b"]]
    monkeypatch.setattr(ld, "read_dataset", lambda src, n, args: src)
    src = ld.read_zarr_crops(two, CROP, 30, seed=9, decode_block=4, include_paths=True)
    calls: list[int] = []
    real = ld._ReadRange._decode_aware

    def counting(self: Any, opened: dict[int, Any]) -> Iterator[Any]:
        calls.append(len(opened))
        return real(self, opened)

    monkeypatch.setattr(ld._ReadRange, "_decode_aware", counting)
    rows = {}
    for task in src.get_read_tasks(3):
        for block in task.read_fn():
            batch = ld.BlockAccessor.for_block(block).to_batch_format("numpy")
            for j, i in enumerate(batch["index"]):
                rows[int(i)] = {k: v[j] for k, v in batch.items()}
    assert calls == [2, 2, 2]
    assert sorted(rows) == list(range(30))
    _check_rows(rows, CROP, None)


@pytest.mark.timeout(300)
def test_a_list_of_paths_with_the_clustered_sampler(ray_local: None, arrays: Any) -> None:
    """``per_cell`` over several arrays: each cell's crops come from one array, near one
    another; every row is zarr-python's box."""
    paths = [arrays["a"], arrays["b"]]
    ds = ld.read_zarr_crops(
        paths, CROP, 43, seed=7, per_cell=5, include_paths=True, override_num_blocks=3
    )
    rows = _rows(ds)
    assert sorted(rows) == list(range(43))
    _check_rows(rows, CROP, None)
    for first in range(0, 43, 5):
        cell = [rows[i] for i in range(first, min(43, first + 5))]
        (path,) = {str(r["path"]) for r in cell}
        los = np.stack([r["lo"] for r in cell])
        size = np.maximum(CROP, lz.open(path).chunks)  # the default cell
        assert (los.max(axis=0) - los.min(axis=0) < size).all()
    assert {str(r["path"]) for r in rows.values()} == {os.path.abspath(p) for p in paths}


@pytest.mark.timeout(300)
def test_a_list_of_paths_scans_array_after_array(ray_local: None, arrays: Any) -> None:
    paths = [arrays["a"], arrays["b"]]
    win = (10, 16, 20)
    counts = [
        int(np.prod([len(s) for s in ld.window_starts(lz.open(p).shape, win)])) for p in paths
    ]
    ds = ld.read_zarr_windows(paths, win, include_paths=True, override_num_blocks=3)
    rows = _rows(ds)
    assert sorted(rows) == list(range(sum(counts)))
    _check_rows(rows, win, None)
    for i, row in rows.items():
        assert str(row["path"]) == os.path.abspath(paths[0] if i < counts[0] else paths[1])
    for p in paths:  # every window of every array, once
        want = set(itertools.product(*ld.window_starts(lz.open(p).shape, win)))
        mine = [r for r in rows.values() if str(r["path"]) == os.path.abspath(p)]
        got = {tuple(r["lo"].tolist()) for r in mine}
        assert len(got) == len(mine)
        assert got == want


def test_lists_of_arrays_that_cannot_share_a_dataset(arrays: Any) -> None:
    with pytest.raises(ValueError, match=r"one dtype.*a\.zarr is uint16.*f32\.zarr is float32"):
        ld.read_zarr_crops([arrays["a"], arrays["f32"]], CROP, 5)
    with pytest.raises(ValueError, match=r"b\.zarr: crop shape \(4, 44, 8\) does not fit"):
        ld.read_zarr_crops([arrays["a"], arrays["b"]], (4, 44, 8), 5)
    with pytest.raises(ValueError, match=r"b\.zarr: window shape \(20, 8, 8\) does not fit"):
        ld.read_zarr_windows([arrays["a"], arrays["b"]], (20, 8, 8), partial="drop")

    class Locality:  # a coordinator's answer: each array on its own node's disk
        def node_of(self, meta: str) -> str:
            return "node-b" if "b.zarr" in meta else "node-a"

    with pytest.raises(ValueError, match="several nodes' local disks"):
        ld.read_zarr_crops([arrays["a"], arrays["b"]], CROP, 5, coordinator=Locality())


# -- read_zarr_windows at the edges --------------------------------------------------------


def _coverage(rows: dict[int, dict[str, Any]], shape: tuple[int, ...]) -> np.ndarray:
    seen = np.zeros(shape, dtype=np.int64)
    for row in rows.values():
        lo = row["lo"]
        seen[tuple(slice(int(s), int(s) + w) for s, w in zip(lo, WIN, strict=True))] += 1
    return seen


@pytest.mark.timeout(300)
def test_windows_pad_reads_every_element(ray_local: None, arrays: Any) -> None:
    """The default, ``partial="pad"``: the (32, 256, 256) array in (8, 100, 100) windows
    is 4 x 3 x 3 windows, each element in exactly one; the edge windows are zarr-python's
    reads of their part inside the array, the rest the fill value (7)."""
    path = arrays["big"]
    assert inspect.signature(ld.read_zarr_windows).parameters["partial"].default == "pad"
    rows = _rows(ld.read_zarr_windows(path, WIN, override_num_blocks=3))
    assert len(rows) == 36
    los = {tuple(r["lo"].tolist()) for r in rows.values()}
    assert los == set(itertools.product((0, 8, 16, 24), (0, 100, 200), (0, 100, 200)))
    assert (_coverage(rows, BIG) == 1).all()
    z = zarr.open_array(path, mode="r")
    for row in rows.values():
        lo = row["lo"]
        if lo[1] == 200 or lo[2] == 200:  # an edge window: compare by hand as well
            hi = np.minimum(lo + WIN, BIG)
            inside = tuple(slice(0, int(h - s)) for s, h in zip(lo, hi, strict=True))
            box = tuple(slice(int(s), int(h)) for s, h in zip(lo, hi, strict=True))
            np.testing.assert_array_equal(row["crop"][inside], z[box])
            pad = np.ones(WIN, dtype=bool)
            pad[inside] = False
            assert (row["crop"][pad] == 7).all() and pad.any()
        np.testing.assert_array_equal(row["crop"], _zarr_box(path, lo, WIN))


@pytest.mark.timeout(300)
def test_windows_drop_and_error(ray_local: None, arrays: Any) -> None:
    """``partial="drop"``: whole windows only, and the last 56 elements of the last two
    axes are never read; ``partial="error"`` refuses, naming them."""
    path = arrays["big"]
    rows = _rows(ld.read_zarr_windows(path, WIN, partial="drop", override_num_blocks=2))
    assert len(rows) == 16
    seen = _coverage(rows, BIG)
    assert (seen[:, :200, :200] == 1).all()
    assert not seen[:, 200:, :].any() and not seen[:, :, 200:].any()
    _check_rows(rows, WIN, path)
    with pytest.raises(ValueError, match=r"big\.zarr: .*elements 200:256 of axis 1"):
        ld.read_zarr_windows(path, WIN, partial="error")
    tiles = ld.read_zarr_windows(path, (8, 128, 64), partial="error")  # tiles exactly
    assert tiles.count() == 4 * 2 * 4
    with pytest.raises(ValueError, match="partial must be one of 'pad', 'drop', 'error'"):
        ld.read_zarr_windows(path, WIN, partial="clip")


@pytest.mark.timeout(300)
def test_windows_pad_with_overlap_through_the_python_decoder(ray_local: None, arrays: Any) -> None:
    """Overlapping windows over the gzip array (read in Python, crop by crop): padded on
    the last two axes, every row zarr-python's box padded with the fill value."""
    path = arrays["gz"]
    win, stride = (8, 20, 16), (6, 15, 16)
    rows = _rows(ld.read_zarr_windows(path, win, stride=stride, override_num_blocks=2))
    los = {tuple(r["lo"].tolist()) for r in rows.values()}
    assert los == set(itertools.product((0, 6, 12), (0, 15, 30), (0, 16, 32)))
    _check_rows(rows, win, path)


def test_window_starts_edges() -> None:
    # a gap between windows (stride > window) is skipped by request, not an edge
    assert [a.tolist() for a in ld.window_starts((11,), (2,), (4,), partial="error")] == [[0, 4, 8]]
    assert [a.tolist() for a in ld.window_starts((13,), (2,), (4,))] == [[0, 4, 8, 12]]
    # overlapping windows: one window past the end, not one per stride step
    assert [a.tolist() for a in ld.window_starts((10,), (4,), (2,))] == [[0, 2, 4, 6]]
    assert [a.tolist() for a in ld.window_starts((11,), (4,), (2,))] == [[0, 2, 4, 6, 8]]
    # a window larger than the array: one padded window, or an error
    assert [a.tolist() for a in ld.window_starts((5, 9), (8, 3))] == [[0], [0, 3, 6]]
    for partial in ("drop", "error"):
        with pytest.raises(ValueError, match="does not fit"):
            ld.window_starts((5, 9), (8, 3), partial=partial)
