"""PyTorch map-style datasets of Zarr crops (needs ``pip install torch``).

>>> from torch.utils.data import DataLoader
>>> from lsio_ray.torch import CropDataset, ClusteredSampler
>>> ds = CropDataset("train.zarr", (8, 256, 256), 100_000, seed=0)
>>> for batch in DataLoader(ds, batch_size=32, num_workers=2):   # (32, 8, 256, 256)
...     step(batch)

``ds[i]`` is crop ``i``: the box at ``ds.starts[i]`` (drawn from ``seed`` alone: the
crops of ``lsio_ray.zarr.open(path).random_crops(crop_shape, n, seed=seed)``, in the same
order) as a ``torch.Tensor`` (``as_tensor=False``: a numpy array).  The positions are
random already, so a plain ``DataLoader(ds, batch_size=B)`` (sequential order) gives
i.i.d. uniform crops; ``shuffle=True`` works too.

Fast paths, all with default options:

* a batch (``DataLoader`` with ``batch_size``) is fetched with ``__getitems__``: the
  batch's crops are read as one task (:meth:`lsio_ray.zarr.Array.start_boxes`), each
  chunk under several of them read and decoded once;
* ``ds[i]`` one at a time in order (``batch_size=None``, or a loop) starts the next
  ``prefetch`` crops' reads ahead (:meth:`lsio_ray.zarr.Array.prefetch`);
* ``per_cell=K`` draws the crops K at a time from one small cell of positions
  (:meth:`lsio_ray.zarr.Array.clustered_starts`), and :class:`ClusteredSampler` keeps
  a cell's crops together in a batch, so its chunks are decoded once for all of them.

Processes: the dataset holds the arrays' paths and options; each process opens them
for itself on first use (after a fork the child's arrays are opened anew, reading
through the child's own IO service -- :func:`lsio_ray.io.service.default_service`; a
pickled dataset, as ``spawn`` sends it, carries no open array).  Nothing is shared with
the parent but the paths and the crop plan.

Importing :mod:`lsio_ray` never imports torch; this module raises an ``ImportError``
saying ``pip install torch`` when torch is missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

try:
    import torch
    from torch.utils.data import Dataset, Sampler
except ImportError as exc:  # torch is optional: say how to get it
    raise ImportError(
        "lsio_ray.torch needs PyTorch, which lsio_ray does not install: pip install torch"
    ) from exc

import lsio_ray.zarr as lz

__all__ = ["ClusteredSampler", "CropDataset"]

ArrayLike = str | os.PathLike[str] | lz.Array


def _source(a: ArrayLike) -> tuple[str, dict[str, Any]]:
    """An array's path and the options to open it with again in another process."""
    if isinstance(a, lz.Array):
        return a.path, {"direct": a.direct}
    return os.fspath(a), {}


class CropDataset(Dataset):
    """``n`` crops of ``crop_shape`` from one Zarr array, or aligned crops (the same box)
    of several: ``arrays`` is a path, a :class:`lsio_ray.zarr.Array`, or a mapping of
    names to them (then ``ds[i]`` is a dict of crops, one per name; the arrays must
    hold every crop).

    ``seed``: the crops' positions (uniform, as ``Array.random_crops``); ``per_cell``:
    draw them ``per_cell`` at a time from one cell instead (``cell`` per axis, see
    :meth:`lsio_ray.zarr.Array.clustered_starts`; pair with :class:`ClusteredSampler`);
    ``starts``: give the ``(n, ndim)`` corners yourself instead.  ``as_tensor``:
    ``torch.Tensor`` crops (sharing the numpy array's memory) or numpy arrays;
    ``transform``: applied to each crop (or dict of crops) before it is returned;
    ``prefetch``: crops read ahead when ``ds[i]`` is called in order; ``options``: for
    :func:`lsio_ray.zarr.open` (``direct``, ``storage_options``...).
    """

    def __init__(
        self,
        arrays: ArrayLike | Mapping[str, ArrayLike],
        crop_shape: Sequence[int],
        n: int | None = None,
        *,
        seed: int | None = 0,
        per_cell: int | None = None,
        cell: Sequence[int] | None = None,
        starts: Any = None,
        as_tensor: bool = True,
        transform: Callable[[Any], Any] | None = None,
        prefetch: int = 4,
        **options: Any,
    ) -> None:
        self.named = isinstance(arrays, Mapping)
        items = dict(arrays) if isinstance(arrays, Mapping) else {"": arrays}
        if not items:
            raise ValueError("CropDataset: no arrays given")
        self._sources = {k: _source(a) for k, a in items.items()}
        self._options = options
        self.crop_shape = tuple(int(c) for c in crop_shape)
        self.as_tensor = bool(as_tensor)
        self.transform = transform
        self.prefetch = max(0, int(prefetch))
        self._pid = -1
        self._arrays: dict[str, lz.Array] = {}
        opened = self.arrays  # opened here once: shapes checked, errors raised now
        first = next(iter(opened.values()))
        for name, a in opened.items():
            if a.ndim != len(self.crop_shape):
                raise ValueError(
                    f"{a.path}: a {len(self.crop_shape)}-d crop {self.crop_shape} of a "
                    f"{a.ndim}-d array{f' ({name})' if name else ''}"
                )
        shape = tuple(min(s) for s in zip(*(a.shape for a in opened.values()), strict=True))
        if starts is not None:
            self.starts = np.asarray(starts, dtype=np.int64).reshape(-1, len(shape))
            if n is not None and n != len(self.starts):
                raise ValueError(f"n={n} but {len(self.starts)} starts given")
        elif n is None:
            raise ValueError("CropDataset: give n (the number of crops) or starts")
        elif per_cell is not None:
            self.starts = first.clustered_starts(
                self.crop_shape, n, seed=seed, per_cell=per_cell, cell=cell
            )
        else:
            self.starts = lz.random_box_starts(shape, self.crop_shape, n, seed)
        bad = np.flatnonzero(
            ((self.starts < 0) | (self.starts + self.crop_shape > np.asarray(shape))).any(axis=1)
        )
        if bad.size:
            lo = self.starts[bad[0]].tolist()
            raise IndexError(
                f"{first.path}: crop {int(bad[0])} at {lo} of shape {self.crop_shape} "
                f"reaches past the array's shape {shape}"
            )
        self.per_cell = int(per_cell) if per_cell is not None and starts is None else None
        self._next = -1  # the index ds[i] in order is expected at next

    # -- processes ------------------------------------------------------------------------
    @property
    def arrays(self) -> dict[str, lz.Array]:
        """The arrays, opened by this process (again after a fork)."""
        if self._pid != os.getpid():
            self._arrays = {
                k: lz.open(path, **{**opts, **self._options})
                for k, (path, opts) in self._sources.items()
            }
            self._pid = os.getpid()
            self._next = -1
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = {}
        state["_pid"] = -1
        return state

    # -- the Dataset protocol -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.starts)

    def _box(self, i: int) -> tuple[slice, ...]:
        lo = self.starts[i].tolist()
        return tuple(slice(a, a + c) for a, c in zip(lo, self.crop_shape, strict=True))

    def _index(self, i: Any) -> int:
        n = len(self.starts)
        j = int(i)
        if not -n <= j < n:
            raise IndexError(f"crop {j} out of range for a dataset of {n} crops")
        return j % n

    def __getitem__(self, i: int) -> Any:
        j = self._index(i)
        arrays = self.arrays
        if self.prefetch and j == self._next:
            ahead = range(j + 1, min(j + 1 + self.prefetch, len(self.starts)))
            keys = [self._box(k) for k in ahead]
            for a in arrays.values():
                a.prefetch(keys)
        self._next = j + 1
        key = self._box(j)
        return self._out({k: a[key] for k, a in arrays.items()})

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """A batch of crops, read together: each chunk under several of them is read
        and decoded once (what ``DataLoader`` calls for a batch)."""
        rows = [self._index(i) for i in indices]
        starts = self.starts[rows]
        per: dict[str, Any] = {}
        for name, a in self.arrays.items():
            out = np.empty((len(rows), *self.crop_shape), dtype=a.dtype)
            if a.decodes_in_c:
                a.start_boxes(starts, out).wait()
            else:
                for k, crop in enumerate(a.crops([self._box(r) for r in rows])):
                    out[k] = crop
            per[name] = out
        return [self._out({k: v[b] for k, v in per.items()}) for b in range(len(rows))]

    def _out(self, crops: dict[str, np.ndarray]) -> Any:
        if self.as_tensor:
            crops = {k: torch.from_numpy(v) for k, v in crops.items()}
        out: Any = crops if self.named else crops[""]
        return self.transform(out) if self.transform is not None else out


class ClusteredSampler(Sampler[int]):
    """The indices of a :class:`CropDataset` made with ``per_cell=K``, a cell's K crops
    together: cells in a random order (``seed``, changed by :meth:`set_epoch`), the
    crops of a cell in a random order among themselves.  With ``batch_size`` a multiple
    of K each batch holds whole cells, and a cell's chunks are decoded once for all its
    crops (``__getitems__``).  The trade-off (see
    :meth:`lsio_ray.zarr.Array.clustered_crops`): each crop's position is uniform over
    the array, but a batch of B crops holds about B / K independent places."""

    def __init__(self, dataset: CropDataset, *, seed: int = 0) -> None:
        if dataset.per_cell is None:
            raise ValueError("ClusteredSampler needs a CropDataset made with per_cell=K")
        self.n = len(dataset)
        self.per_cell = dataset.per_cell
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Another order for another epoch (as ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.seed, self.epoch))
        k = self.per_cell
        cells = rng.permutation(-(-self.n // k))
        for c in cells.tolist():
            members = np.arange(c * k, min((c + 1) * k, self.n))
            yield from rng.permutation(members).tolist()
