"""Aligned multi-array samples: an image and its label cropped (or scanned in windows) at
the same places, through :func:`lsio_ray.zarr.aligned` (streaming) and the Ray Data
readers (``arrays=``, or a dict of paths) on a 3-node local Ray cluster.

The fixtures are real Zarr files written by zarr-python: a v3 group (image (C, Z, Y, X)
uint16 sharded, label (Z, Y, X) int32 in other chunks, partly unwritten) and a v2 group
(image float32 blosc, label uint8 gzip -- not the C decoder: box by box), each array
with its own fill value.  Every sample is compared with numpy slicing of the sources at
the location the sample reports.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest
import zarr

import lsio_ray
import lsio_ray.zarr as lz
from lsio_ray.io.service import IOService

GRID = (21, 50, 44)
C = 3
CROP = (4, 9, 8)


def _write(group: Any, name: str, data: np.ndarray, written: Any = ..., **kw: Any) -> None:
    arr = group.create_array(name, shape=data.shape, dtype=data.dtype, **kw)
    arr[written] = data[written]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two groups holding an image and a label each, and their numpy sources (with the
    unwritten parts as the fill value)."""
    root = tmp_path_factory.mktemp("aligned")
    rng = np.random.default_rng(5)
    image = rng.integers(0, 60000, (C, *GRID)).astype("uint16")
    label = rng.integers(-5, 9, GRID).astype("int32")
    g3 = zarr.open_group(str(root / "v3.zarr"), mode="w", zarr_format=3)
    _write(g3, "image", image, chunks=(1, 5, 16, 16), shards=(1, 10, 32, 32), fill_value=7)
    label3 = label.copy()
    label3[15:] = -1  # never written: the fill value
    _write(g3, "label", label, np.s_[:15], chunks=(4, 12, 10), fill_value=-1)
    g2 = zarr.open_group(str(root / "v2.zarr"), mode="w", zarr_format=2)
    image2 = (image / 7).astype("float32")
    blosc = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=1)
    _write(g2, "image", image2, chunks=(C, 8, 20, 20), compressors=blosc, fill_value=0.5)
    label2 = (label + 10).astype("uint8")
    _write(g2, "label", label2, chunks=(7, 25, 11), compressors=numcodecs.GZip(1), fill_value=3)
    _write(g2.create_group("masks"), "cells", label2, chunks=(21, 10, 44))  # nested, raw
    return {
        "root": root,
        "v3": (str(root / "v3.zarr"), image, label3),
        "v2": (str(root / "v2.zarr"), image2, label2),
    }


def _box(lo: Any, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(int(s), int(s) + c) for s, c in zip(lo, shape, strict=True))


def _check_sample(s: dict[str, Any], image: np.ndarray, label: np.ndarray, shape: Any) -> None:
    box = _box(s["lo"], shape)
    assert s["image"].shape == (C, *shape) and s["image"].dtype == image.dtype
    assert s["label"].shape == tuple(shape) and s["label"].dtype == label.dtype
    np.testing.assert_array_equal(s["image"], image[(slice(None), *box)])
    np.testing.assert_array_equal(s["label"], label[box])


# -- streaming (lsio_ray.zarr) ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["v3", "v2"])
@pytest.mark.parametrize("reuse", [False, True])
def test_random_crops_equal_numpy_at_the_reported_place(pair: Any, fmt: str, reuse: bool) -> None:
    path, image, label = pair[fmt]
    al = lz.aligned(path, ["image", "label"])
    assert al.names == ("image", "label") and al.root == os.path.realpath(path)
    seen = []
    for s in al.random_crops(CROP, 40, seed=3, prefetch=6, reuse=reuse):
        _check_sample(s, image, label, CROP)
        seen.append((s["index"], tuple(s["lo"].tolist())))
    assert [i for i, _ in seen] == list(range(40))
    # the same crops as zarr-python reads from each array
    ref = zarr.open_group(path, mode="r")
    for s in itertools.islice(al.random_crops(CROP, 40, seed=3), 0, 40, 7):
        box = _box(s["lo"], CROP)
        np.testing.assert_array_equal(s["image"], ref["image"][(slice(None), *box)])
        np.testing.assert_array_equal(s["label"], ref["label"][box])
    # the corners are Array.random_crops's on an array of the grid's shape (the label)
    want = lz.random_box_starts(GRID, CROP, 40, 3)
    assert [lo for _, lo in seen] == [tuple(r) for r in want.tolist()]
    lab = lz.open(os.path.join(path, "label"))
    pairs = zip(al.random_crops(CROP, 40, seed=3), lab.random_crops(CROP, 40, seed=3), strict=True)
    for s, crop in pairs:
        np.testing.assert_array_equal(s["label"], crop)


def test_same_seed_same_samples_other_seed_other_places(pair: Any) -> None:
    path, _, _ = pair["v3"]
    al = lz.aligned(path, ["image", "label"])
    one = list(al.random_crops(CROP, 25, seed=11))
    two = list(al.random_crops(CROP, 25, seed=11, prefetch=1))
    assert len(one) == len(two) == 25
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a["lo"], b["lo"])
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    other = list(al.random_crops(CROP, 25, seed=12))
    assert any(not np.array_equal(a["lo"], b["lo"]) for a, b in zip(one, other, strict=True))


def test_arrays_from_paths_a_dict_a_list_and_renamed_members(pair: Any) -> None:
    path, image, label = pair["v3"]
    img, lab = os.path.join(path, "image"), os.path.join(path, "label")
    forms = [
        lz.aligned({"image": img, "label": lz.open(lab)}),
        lz.aligned([img, lab]),  # named by the last part of each path
        lz.aligned(lz.open(path), {"image": "image", "label": "label"}),
        lz.aligned(lsio_ray.open(path), ["image", "label"]),  # the notebook wrappers
        lz.aligned({"image": lsio_ray.open(img), "label": lab}),
    ]
    for al in forms:
        assert al.names == ("image", "label")
        for s in al.random_crops(CROP, 6, seed=1):
            _check_sample(s, image, label, CROP)


def test_every_read_of_a_group_is_handed_over_at_once(
    pair: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image's and the label's reads of a group of samples go to the IO service in
    one ``start_all``, never one array after the other through ``start``."""
    path, image, label = pair["v3"]
    calls: list[list[str]] = []
    real_all, real_start = IOService.start_all, IOService.start

    def start_all(self: IOService, tasks: Any) -> Any:
        tasks = list(tasks)
        calls.append(sorted({os.path.basename(t.array.path) for t in tasks}))
        return real_all(self, tasks)

    def start(self: IOService, task: Any) -> Any:
        calls.append(["start"])
        return real_start(self, task)

    monkeypatch.setattr(IOService, "start_all", start_all)
    monkeypatch.setattr(IOService, "start", start)
    al = lz.aligned(path, ["image", "label"])
    samples = list(al.random_crops(CROP, 24, seed=2, prefetch=8))
    for s in samples:
        _check_sample(s, image, label, CROP)
    assert calls and all(c == ["image", "label"] for c in calls), calls


def test_mismatched_grids_are_refused_naming_both_arrays(pair: Any, tmp_path: Path) -> None:
    path, _, _ = pair["v3"]
    bad = zarr.create_array(str(tmp_path / "short.zarr"), shape=(21, 50, 43), dtype="uint8")
    bad[...] = 1
    al = lz.aligned({"image": os.path.join(path, "image"), "mask": str(tmp_path / "short.zarr")})
    with pytest.raises(ValueError) as err:
        next(al.random_crops(CROP, 3, seed=0))
    msg = str(err.value)
    assert "'image'" in msg and "(3, 21, 50, 44)" in msg
    assert "'mask'" in msg and "(21, 50, 43)" in msg and "short.zarr" in msg
    with pytest.raises(ValueError, match="fewer dimensions"):
        next(lz.aligned(path, ["image", "label"]).random_crops((2, 4, 9, 8, 8), 1))
    with pytest.raises(ValueError, match="clash"):
        lz.aligned({"lo": os.path.join(path, "image")})
    with pytest.raises(KeyError, match="labl"):
        lz.aligned(path, ["image", "labl"])
    with pytest.raises(ValueError, match="several arrays"):
        lz.aligned(os.path.join(path, "image"))
    with pytest.raises(ValueError, match="not the string 'image'"):
        lz.aligned(path, "image")
    with pytest.raises(ValueError, match="two arrays named 'image'"):
        lz.aligned([os.path.join(path, "image"), os.path.join(path, "image")])
    with pytest.raises(ValueError, match="does not fit"):
        next(lz.aligned(path, ["image", "label"]).random_crops((22, 4, 4), 1))


def _coverage(samples: Iterator[dict[str, Any]], win: tuple[int, ...]) -> np.ndarray:
    hits = np.zeros(GRID, dtype=np.int64)
    for s in samples:
        hits[_box(s["lo"], win)] += 1
    return hits


@pytest.mark.parametrize("fmt", ["v3", "v2"])
def test_windows_pad_cover_every_element_with_each_fill_value(pair: Any, fmt: str) -> None:
    path, image, label = pair[fmt]
    al = lz.aligned(path, ["image", "label"])
    win = (8, 20, 16)  # 21, 50, 44 leave 5, 10 and 12 past the whole windows
    fills = {n: al[n].fill_value for n in al.names}
    hits = np.zeros(GRID, dtype=np.int64)
    count = 0
    for s in al.windows(win, partial="pad"):
        count += 1
        lo = np.asarray(s["lo"])
        stop = np.minimum(lo + win, GRID)
        inner = _box(lo, tuple((stop - lo).tolist()))
        hits[inner] += 1
        part = tuple(slice(0, int(n)) for n in stop - lo)
        np.testing.assert_array_equal(
            s["image"][(slice(None), *part)], image[(slice(None), *inner)]
        )
        np.testing.assert_array_equal(s["label"][part], label[inner])
        pad_img = np.ones(s["image"].shape, bool)
        pad_img[(slice(None), *part)] = False
        assert (s["image"][pad_img] == fills["image"]).all()
        pad_lab = np.ones(win, bool)
        pad_lab[part] = False
        assert (s["label"][pad_lab] == fills["label"]).all()
    assert count == 3 * 3 * 3
    assert (hits == 1).all()  # every element once


def test_windows_drop_error_and_stride(pair: Any) -> None:
    path, image, label = pair["v3"]
    al = lz.aligned(path, ["image", "label"])
    win = (8, 20, 16)
    dropped = list(al.windows(win, partial="drop"))
    assert len(dropped) == 2 * 2 * 2
    for s in dropped:
        _check_sample(s, image, label, win)
    hits = _coverage(iter(dropped), win)
    assert (hits[:16, :40, :32] == 1).all() and hits[16:].sum() == hits[:, 40:].sum() == 0
    with pytest.raises(ValueError, match="partial='pad'"):
        next(al.windows(win, partial="error"))
    # a window larger than the grid: one window, each array whole and padded
    (big,) = al.windows((30, 60, 50))
    assert big["lo"].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(big["image"][:, :21, :50, :44], image)
    np.testing.assert_array_equal(big["label"][:21, :50, :44], label)
    assert (big["label"][21:] == -1).all() and (big["image"][:, :, 50:] == 7).all()
    with pytest.raises(ValueError, match="does not fit"):
        next(al.windows((30, 60, 50), partial="drop"))
    # overlapping windows (stride < window), padded at the ends: everything, some twice
    over = list(al.windows((8, 20, 16), stride=(6, 15, 14), partial="pad"))
    want = [len(x) for x in lz.window_starts(GRID, (8, 20, 16), (6, 15, 14))]
    assert len(over) == int(np.prod(want))
    assert (_coverage(iter(over), (8, 20, 16)) >= 1).all()
    assert [s["index"] for s in over] == list(range(len(over)))
    corners = [tuple(s["lo"].tolist()) for s in over]
    assert corners == list(
        itertools.product(*(x.tolist() for x in lz.window_starts(GRID, (8, 20, 16), (6, 15, 14))))
    )


# -- Ray Data (lsio_ray.data) on a 3-node local cluster -----------------------------------

ray = pytest.importorskip("ray")

from _ray_helpers import local_cluster  # noqa: E402

import lsio_ray.data as ld  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Head and two worker raylets (one CPU each), always shut down."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with local_cluster(tmp_path_factory.mktemp("cluster"), workers=2) as lc:
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield lc


def _rows(ds: Any, names: tuple[str, ...] = ("image", "label")) -> dict[int, dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for j, i in enumerate(batch["index"].tolist()):
            assert i not in rows
            rows[i] = {k: np.asarray(batch[k][j]) for k in batch}
    return rows


@pytest.mark.timeout(600)
@pytest.mark.parametrize("fmt", ["v3", "v2"])
def test_ray_data_crops_one_column_per_array(cluster: Any, pair: Any, fmt: str) -> None:
    path, image, label = pair[fmt]
    ds = ld.read_zarr_crops(
        path,
        CROP,
        45,
        arrays=["image", "label"],
        seed=4,
        override_num_blocks=3,
        block_bytes=10_000,
        include_paths=True,
    )
    rows = _rows(ds)
    assert sorted(rows) == list(range(45))
    assert set(rows[0]) == {"image", "label", "index", "lo", "path"}
    for r in rows.values():
        _check_sample(r, image, label, CROP)
        assert r["path"] == os.path.realpath(path)
    # the same samples as the streaming reader with the same seed
    al = lz.aligned(path, ["image", "label"])
    for s in al.random_crops(CROP, 45, seed=4):
        np.testing.assert_array_equal(rows[s["index"]]["lo"], s["lo"])
        np.testing.assert_array_equal(rows[s["index"]]["image"], s["image"])


@pytest.mark.timeout(600)
def test_ray_data_same_seed_whatever_the_tasks_and_samplers(cluster: Any, pair: Any) -> None:
    path, image, label = pair["v3"]
    args = {"arrays": ["image", "label"], "seed": 8}
    one = _rows(ld.read_zarr_crops(path, CROP, 30, override_num_blocks=1, **args))
    three = _rows(ld.read_zarr_crops(path, CROP, 30, override_num_blocks=3, **args))
    grouped = _rows(ld.read_zarr_crops(path, CROP, 30, decode_block=7, **args))
    for rows in (three, grouped):
        assert rows.keys() == one.keys() == set(range(30))
        for i in one:
            for k in ("lo", "image", "label"):
                np.testing.assert_array_equal(rows[i][k], one[i][k])
    clustered = _rows(ld.read_zarr_crops(path, CROP, 30, per_cell=5, **args))
    want = lz.aligned(path, ["image", "label"]).clustered_starts(CROP, 30, seed=8, per_cell=5)
    for i, r in clustered.items():
        _check_sample(r, image, label, CROP)
        np.testing.assert_array_equal(r["lo"], want[i])


@pytest.mark.timeout(600)
def test_ray_data_several_datasets_of_one_pair(cluster: Any, pair: Any) -> None:
    """A list of dicts: two datasets (v3 and v2, other dtypes: refused as one column
    first, then the v2 image and label paired with themselves)."""
    p3, image3, label3 = pair["v3"]
    p2 = pair["v2"][0]
    with pytest.raises(ValueError, match="one sample shape and dtype"):
        ld.read_zarr_crops([p3, p2], CROP, 5, arrays=["image", "label"])
    sets = [
        {"image": f"{p3}/image", "label": f"{p3}/label"},
        {"image": f"{p3}/image", "label": lz.open(f"{p3}/label")},
    ]
    rows = _rows(ld.read_zarr_crops(sets, CROP, 20, seed=1, include_paths=True))
    assert sorted(rows) == list(range(20))
    for r in rows.values():
        _check_sample(r, image3, label3, CROP)
        assert r["path"] == os.path.realpath(f"{p3}/image")


@pytest.mark.timeout(600)
def test_ray_data_nested_members_renamed(cluster: Any, pair: Any) -> None:
    """``arrays={column: member}``: a member of a nested group, under a column name of
    the caller's choosing (and one named with its path)."""
    path, image, label = pair["v2"]
    arrays = {"img": "image", "masks/cells": "masks/cells"}
    rows = _rows(ld.read_zarr_crops(path, CROP, 16, arrays=arrays, seed=6, override_num_blocks=2))
    assert sorted(rows) == list(range(16))
    assert set(rows[0]) == {"img", "masks/cells", "index", "lo"}
    for r in rows.values():
        _check_sample(
            {"image": r["img"], "label": r["masks/cells"], "lo": r["lo"]}, image, label, CROP
        )


@pytest.mark.timeout(600)
@pytest.mark.parametrize("partial", ["pad", "drop"])
def test_ray_data_windows_cover_the_grid(cluster: Any, pair: Any, partial: str) -> None:
    path, image, label = pair["v2"]
    win = (8, 20, 16)
    ds = ld.read_zarr_windows(
        {"img": f"{path}/image", "lab": f"{path}/label"},
        win,
        partial=partial,
        override_num_blocks=2,
        block_bytes=30_000,
    )
    rows = _rows(ds, ("img", "lab"))
    n = 27 if partial == "pad" else 8
    assert sorted(rows) == list(range(n))
    hits = np.zeros(GRID, dtype=np.int64)
    for r in rows.values():
        lo = np.asarray(r["lo"])
        stop = np.minimum(lo + win, GRID)
        inner = _box(lo, tuple((stop - lo).tolist()))
        part = tuple(slice(0, int(k)) for k in stop - lo)
        hits[inner] += 1
        np.testing.assert_array_equal(r["img"][(slice(None), *part)], image[(slice(None), *inner)])
        np.testing.assert_array_equal(r["lab"][part], label[inner])
        assert r["img"].shape == (C, *win) and r["lab"].shape == win
    if partial == "pad":
        assert (hits == 1).all()
    else:
        assert (hits[:16, :40, :32] == 1).all() and hits.sum() == 8 * int(np.prod(win))
    with pytest.raises(ValueError, match="partial='pad'"):
        ld.read_zarr_windows({"img": f"{path}/image", "lab": f"{path}/label"}, win, partial="error")


def test_ray_data_refusals(pair: Any, tmp_path: Path) -> None:
    """Refused in the driver, before any read: no cluster needed."""
    path, _, _ = pair["v3"]
    bad = zarr.create_array(str(tmp_path / "m.zarr"), shape=(21, 49, 44), dtype="uint8")
    with pytest.raises(ValueError) as err:
        ld.read_zarr_crops({"image": f"{path}/image", "mask": str(tmp_path / "m.zarr")}, CROP, 4)
    assert "(3, 21, 50, 44)" in str(err.value) and "(21, 49, 44)" in str(err.value)
    assert bad.shape == (21, 49, 44)
    with pytest.raises(TypeError, match="arays"):
        ld.read_zarr_crops(path, CROP, 4, arays=["image"])
    with pytest.raises(ValueError, match="list of array names"):
        ld.read_zarr_crops(path, CROP, 4, arrays="image")
    with pytest.raises(ValueError, match="not both"):
        ld.read_zarr_crops([{"image": f"{path}/image"}], CROP, 4, arrays=["image"])
    with pytest.raises(ValueError, match="two samplers"):
        ld.read_zarr_crops(path, CROP, 4, arrays=["image"], per_cell=2, decode_block=4)
    with pytest.raises(ValueError, match=re.escape("ftp://host/x.zarr")):
        ld.read_zarr_crops({"image": "ftp://host/x.zarr"}, CROP, 4)
