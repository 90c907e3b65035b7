#!/usr/bin/env python3
"""PyTorch DataLoader benchmark: lsio_ray.torch.CropDataset against the same map-style
Dataset over tensorstore and over zarr-python (needs torch: ``pip install torch``).

The array of ``scripts/bench-zarr.py`` (v3, (512,1024,1024) float32 in (1,256,256) zstd-3
chunks, made there once).  Every reader reads the same ``$LSIO_TORCH_BENCH_CROPS`` (200)
crops (8,256,256) at the same seeded random positions (``lsio_ray.zarr.random_box_starts``)
through ``DataLoader(ds, batch_size=$LSIO_TORCH_BENCH_BATCH (16), num_workers=W)`` with
W in ``$LSIO_TORCH_BENCH_WORKERS`` (0,2; workers spawned and persistent, started before
the clock -- tensorstore aborts in a forked child), default options everywhere:

* ``lsio``: ``CropDataset(path, crop, n, seed)`` (a batch is read as one task,
  ``__getitems__``);
* ``tensorstore``: ``__getitem__`` = ``arr[box].read().result()``;
* ``zarr-python``: ``__getitem__`` = ``arr[box]``;
* ``zarrs`` (when ``zarrs`` is installed, not by default): the same with zarr-python's
  codec pipeline set to ``zarrs.ZarrsCodecPipeline`` when the array is opened.

Each Dataset opens its array in the process that reads.  A run is one epoch over the
crops, timed after one batch was read (the workers are up); cold runs drop the page
cache after that batch.  CPU per crop: the parent's and the workers' (counted once the
persistent workers exit after the run), their startup and first batch included.  Runs are
interleaved, ``$LSIO_TORCH_BENCH_REPS`` (3) repetitions; ``$LSIO_TORCH_BENCH_CACHE``
(``warm,cold``: cold drops the page cache before the run, root only).  Prints crops/s
min/median/max, and the ratio of the medians to tensorstore's, with the load average.
"""

from __future__ import annotations

import abc
import os
import resource
import sys
import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import lsio_ray.zarr as lz
from lsio_ray.torch import CropDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc

CROP = (8, 256, 256)
N = int(os.environ.get("LSIO_TORCH_BENCH_CROPS", "200"))
BATCH = int(os.environ.get("LSIO_TORCH_BENCH_BATCH", "16"))
REPS = int(os.environ.get("LSIO_TORCH_BENCH_REPS", "3"))
WORKERS = [int(w) for w in os.environ.get("LSIO_TORCH_BENCH_WORKERS", "0,2").split(",")]
CACHES = os.environ.get("LSIO_TORCH_BENCH_CACHE", "warm,cold").split(",")
READERS = os.environ.get("LSIO_TORCH_BENCH_READERS", "lsio,tensorstore,zarr-python").split(",")


class _PerProcess(Dataset):
    """A map-style Dataset of crops at ``starts`` whose array is opened per process."""

    def __init__(self, path: str, starts: np.ndarray) -> None:
        self.path = path
        self.starts = starts
        self._pid = -1
        self._arr: Any = None

    def __len__(self) -> int:
        return len(self.starts)

    def _key(self, i: int) -> tuple[slice, ...]:
        return tuple(slice(a, a + c) for a, c in zip(self.starts[i].tolist(), CROP, strict=True))

    def array(self) -> Any:
        if self._pid != os.getpid():
            self._arr = self.open()
            self._pid = os.getpid()
        return self._arr

    @abc.abstractmethod
    def open(self) -> Any:
        """The array this reader's crops come from, opened in this process."""

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arr": None, "_pid": -1}


class TensorstoreDataset(_PerProcess):
    def open(self) -> Any:
        import tensorstore as ts

        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": self.path}}
        return ts.open(spec, open=True, read=True).result()

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.array()[self._key(i)].read().result())


class ZarrDataset(_PerProcess):
    def open(self) -> Any:
        import zarr

        return zarr.open_array(self.path, mode="r")

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.array()[self._key(i)])


class ZarrsDataset(ZarrDataset):
    """zarr-python with the zarrs codec pipeline (chosen when the array is opened)."""

    def open(self) -> Any:
        with bc.zarrs_pipeline():
            return super().open()


def make(reader: str, path: str, starts: np.ndarray, seed: int) -> Dataset:
    if reader == "lsio":
        ds = CropDataset(path, CROP, N, seed=seed)
        assert (ds.starts == starts).all()
        return ds
    if reader == "tensorstore":
        return TensorstoreDataset(path, starts)
    if reader == "zarr-python":
        return ZarrDataset(path, starts)
    if reader == "zarrs":
        return ZarrsDataset(path, starts)
    raise ValueError(reader)


def _cpu() -> float:
    """CPU seconds of this process and of its children that ended (the workers)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run(ds: Dataset, workers: int, cold: bool) -> tuple[float, int]:
    """One timed epoch.  Workers are spawned (tensorstore aborts in a forked child once
    its threads ran in the parent) and kept (``persistent_workers``); they are started,
    and have read one batch, before the page cache is dropped and the clock starts."""
    kw: dict[str, Any] = {}
    if workers:
        kw = {"multiprocessing_context": "spawn", "persistent_workers": True}
    loader = DataLoader(ds, batch_size=BATCH, num_workers=workers, **kw)
    next(iter(loader))  # workers up, arrays opened
    if cold:
        bc.drop_caches()
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        n += len(batch)
    wall = time.perf_counter() - t0
    del loader
    return wall, n


def main() -> int:
    path = bc.zarr_dataset("v3-chunks")
    shape = lz.open(path).shape
    torch.set_num_threads(1)
    if "cold" in CACHES and not bc.drop_caches():
        raise SystemExit("cold runs need to drop the page cache: run as root")
    rates: dict[tuple[str, int, str], list[float]] = {}
    loads = []
    cpu: dict[tuple[str, int, str], list[float]] = {}
    seed = 100
    starts = lz.random_box_starts(shape, CROP, N, seed)
    for rep in range(REPS):
        for cache in CACHES:
            if cache == "warm":  # the crops' chunks in the page cache (after cold runs too)
                run(make("lsio", path, starts, seed), 0, False)
            for workers in WORKERS:
                for reader in READERS:
                    ds = make(reader, path, starts, seed)
                    c0 = _cpu()
                    wall, n = run(ds, workers, cache == "cold")
                    cpu.setdefault((reader, workers, cache), []).append((_cpu() - c0) / n)
                    assert n == N
                    rates.setdefault((reader, workers, cache), []).append(n / wall)
                    loads.append(os.getloadavg()[0])
                    print(
                        f"# rep {rep} {cache} w={workers} {reader}: {n / wall:.1f} crops/s",
                        file=sys.stderr,
                    )
    print(
        f"{N} crops {CROP} float32, batch {BATCH}, {REPS} reps, {os.cpu_count()} cores, "
        f"load average (1 min) during the runs {min(loads):.1f}-{max(loads):.1f}"
    )
    rows = []
    for (reader, workers, cache), rs in rates.items():
        lo, med, hi = bc.summary(rs)
        ts_med = (
            bc.summary(rates[("tensorstore", workers, cache)])[1]
            if ("tensorstore", workers, cache) in rates
            else float("nan")
        )
        rows.append(
            [
                reader,
                str(workers),
                cache,
                f"{lo:.1f} / {med:.1f} / {hi:.1f}",
                f"{med / ts_med:.2f}x",
                f"{1000 * bc.summary(cpu[(reader, workers, cache)])[1]:.1f}",
            ]
        )
    print(
        bc.md_table(
            [
                "reader",
                "workers",
                "cache",
                "crops/s min / med / max",
                "vs tensorstore",
                "CPU ms/crop (all processes, with startup)",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
