"""lsio_ray.torch: CropDataset and ClusteredSampler, under DataLoader with 0 and 2 worker
processes (fork and spawn).  Needs torch: run by scripts/test-torch, skipped otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402

import lsio_ray.zarr as lz  # noqa: E402
from lsio_ray.io import service  # noqa: E402
from lsio_ray.torch import ClusteredSampler, CropDataset  # noqa: E402

SHAPE = (16, 64, 64)
CROP = (3, 20, 20)


def _write(path: str, codec: str, seed: int) -> np.ndarray:
    comp = zarr.codecs.GzipCodec() if codec == "gzip" else zarr.codecs.ZstdCodec(level=3)
    z = zarr.create_array(
        path,
        shape=SHAPE,
        chunks=(2, 16, 16),
        dtype="float32",
        fill_value=-1.0,
        compressors=comp,
    )
    data = np.random.default_rng(seed).standard_normal(SHAPE).astype("float32")
    z[:14] = data[:14]
    data[14:] = -1.0  # the last planes are never written: fill value
    return data


@pytest.fixture(params=["zstd", "gzip"])  # the C decoder's path, and numcodecs'
def stored(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, np.ndarray]:
    path = str(tmp_path / "a.zarr")
    return path, _write(path, request.param, 3)


def _want(data: np.ndarray, ds: CropDataset, i: int) -> np.ndarray:
    lo = ds.starts[i]
    return data[tuple(slice(a, a + c) for a, c in zip(lo.tolist(), CROP, strict=True))]


def test_items_are_the_seeded_random_crops(stored: tuple[str, np.ndarray]) -> None:
    path, data = stored
    ds = CropDataset(path, CROP, 30, seed=7)
    assert len(ds) == 30
    np.testing.assert_array_equal(ds.starts, lz.random_box_starts(SHAPE, CROP, 30, 7))
    got = [ds[i] for i in range(30)]  # in order: read ahead with Array.prefetch
    assert ds.arrays[""]._prefetched is not None and ds.arrays[""]._prefetched.taken > 0
    for i, crop in enumerate(got):
        assert isinstance(crop, torch.Tensor) and crop.dtype == torch.float32
        np.testing.assert_array_equal(crop.numpy(), _want(data, ds, i))
    np.testing.assert_array_equal(ds[-1].numpy(), _want(data, ds, 29))
    batch = ds.__getitems__([5, 2, 5, 29])  # one task; a crop twice is fine
    for crop, i in zip(batch, [5, 2, 5, 29], strict=True):
        np.testing.assert_array_equal(crop.numpy(), _want(data, ds, i))
    plain = CropDataset(lz.open(path), CROP, 30, seed=7, as_tensor=False)
    assert isinstance(plain[3], np.ndarray)
    np.testing.assert_array_equal(plain[3], _want(data, ds, 3))
    with pytest.raises(IndexError, match="crop 30 out of range"):
        ds[30]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers(stored: tuple[str, np.ndarray], workers: int, context: str) -> None:
    path, data = stored
    ds = CropDataset(path, CROP, 40, seed=1)
    ds[0]  # the parent reads first: its IO service exists when the workers fork
    kw = {"multiprocessing_context": context} if workers else {}
    loader = DataLoader(ds, batch_size=6, num_workers=workers, **kw)
    got = torch.cat(list(loader)).numpy()
    want = np.stack([_want(data, ds, i) for i in range(40)])
    np.testing.assert_array_equal(got, want)
    # one at a time (batch_size=None: __getitem__), shuffled
    loader = DataLoader(ds, batch_size=None, shuffle=True, num_workers=workers, **kw)
    seen = sorted(c.numpy().tobytes() for c in loader)
    assert seen == sorted(w.tobytes() for w in want)


def _whoami(crop: torch.Tensor) -> torch.Tensor:
    """Which process read the crop, and whose IO service it went through."""
    svc = service.default_service()
    alive = svc._thread.is_alive()
    return torch.tensor([os.getpid(), service._default_pid, int(alive), float(crop.sum())])


def test_forked_workers_have_their_own_io_service(stored: tuple[str, np.ndarray]) -> None:
    path, data = stored
    ds = CropDataset(path, CROP, 24, seed=2, transform=_whoami)
    parent = ds[0]
    assert int(parent[0]) == os.getpid() == int(parent[1])
    loader = DataLoader(
        ds, batch_size=4, num_workers=2, multiprocessing_context="fork", persistent_workers=False
    )
    rows = torch.cat(list(loader))
    pids = set(rows[:, 0].long().tolist())
    assert len(pids) == 2 and os.getpid() not in pids
    assert (rows[:, 0] == rows[:, 1]).all()  # each worker reads through a service of its own
    assert (rows[:, 2] == 1).all()  # whose IO thread runs (made in the child)
    want = [float(_want(data, ds, i).sum()) for i in range(24)]
    np.testing.assert_allclose(rows[:, 3].numpy(), want, rtol=1e-5)


def test_aligned_crops_of_several_arrays(tmp_path: Path) -> None:
    a = _write(str(tmp_path / "a.zarr"), "zstd", 1)
    b = _write(str(tmp_path / "b.zarr"), "gzip", 2)
    ds = CropDataset(
        {"image": str(tmp_path / "a.zarr"), "label": str(tmp_path / "b.zarr")}, CROP, 12, seed=4
    )
    for batch in DataLoader(ds, batch_size=5, num_workers=2, multiprocessing_context="fork"):
        assert set(batch) == {"image", "label"} and batch["image"].shape[1:] == CROP
    item = ds[7]
    np.testing.assert_array_equal(item["image"].numpy(), _want(a, ds, 7))
    np.testing.assert_array_equal(item["label"].numpy(), _want(b, ds, 7))


def test_clustered_sampler(stored: tuple[str, np.ndarray]) -> None:
    path, data = stored
    ds = CropDataset(path, CROP, 64, seed=3, per_cell=8)
    np.testing.assert_array_equal(
        ds.starts, lz.open(path).clustered_starts(CROP, 64, seed=3, per_cell=8)
    )
    s = ClusteredSampler(ds, seed=5)
    order = list(s)
    assert sorted(order) == list(range(64)) and order != list(range(64))
    for k in range(0, 64, 8):  # a cell's crops together
        assert len({i // 8 for i in order[k : k + 8]}) == 1
    assert list(ClusteredSampler(ds, seed=5)) == order  # reproducible
    s.set_epoch(1)
    assert list(s) != order and sorted(s) == list(range(64))
    got = torch.cat(list(DataLoader(ds, batch_size=16, sampler=s, num_workers=2)))
    np.testing.assert_array_equal(got.numpy(), np.stack([_want(data, ds, i) for i in list(s)]))
    with pytest.raises(ValueError, match="per_cell"):
        ClusteredSampler(CropDataset(path, CROP, 4))


def test_bad_inputs_are_named(stored: tuple[str, np.ndarray]) -> None:
    path, _ = stored
    with pytest.raises(ValueError, match=r"a\.zarr: a 2-d crop"):
        CropDataset(path, (20, 20), 3)
    with pytest.raises(IndexError, match=r"a\.zarr: crop 1 at \[0, 0, 60\]"):
        CropDataset(path, CROP, starts=[[0, 0, 0], [0, 0, 60]])
    with pytest.raises(ValueError, match="give n"):
        CropDataset(path, CROP)
    with pytest.raises(FileNotFoundError):
        CropDataset(str(Path(path).parent / "missing.zarr"), CROP, 3)
