"""The planning half of :mod:`lsio_ray.data`, done in the driver: the readers'
arguments, taken as Ray Data's own readers (``ray.data.read_parquet``, ``read_images``,
``read_binary_files``) take theirs, and the plan of boxes they turn into.

* One path or a list of paths; ``include_paths`` adds a ``path`` column.  A path may
  be an object-storage or HTTP URL (``s3://bucket/x.zarr``, ``https://host/x.zarr``),
  read by the read tasks through the IO service's remote backend; ``storage_options``
  (as for :func:`lsio_ray.zarr.open`) configure its store in the driver and travel with
  the read tasks (:func:`lsio_ray.io.stores.exported`).  URLs have no locality: read
  tasks go where Ray Data's default (``SPREAD``) puts them, over every node.
* ``filesystem``: the readers read local files (or a shared mount) through the io_uring
  engine and URLs through obstore, so only a local filesystem (or None) is accepted;
  any other is refused, never ignored (give the URL and ``storage_options`` instead).
* ``override_num_blocks`` (``parallelism`` is its deprecated old name, as in Ray Data
  since 2.10), ``concurrency``, ``compute``, ``num_cpus``, ``num_gpus``, ``memory``, the
  named remote parameters (``label_selector``, ``fallback_strategy``, ``max_calls``,
  ``resources``, ``accelerator_type``, ``runtime_env``) and ``ray_remote_args`` go to
  ``ray.data.read_datasource``.
* An unknown keyword argument is a ``TypeError`` naming it, as Python raises it, with the
  nearest known name as a suggestion.

The plans: random crops over one or several arrays (:func:`crop_plan`), and the window
grid of a full scan (:func:`window_starts`, with its ``partial`` policy for the windows
at the array's far edges), held as :class:`Slicer` / :class:`Grid` for the read tasks.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import itertools
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

import lsio_ray.zarr as lz
from lsio_ray.io import stores, url
from lsio_ray.zarr import random_box_starts
from lsio_ray.zarr.stream import PARTIAL, window_starts

if TYPE_CHECKING:
    from lsio_ray.ray.coordinator import Coordinator

__all__ = [
    "PARTIAL",
    "RAY_READ_ARGS",
    "BlockPool",
    "Grid",
    "Slicer",
    "array_paths",
    "arrays_in",
    "crop_plan",
    "node_of",
    "node_of_all",
    "open_all",
    "ray_read_args",
    "resolve_num_blocks",
    "restrict",
    "store_options",
    "strict_keywords",
    "task_ranges",
    "window_starts",
]

#: the keyword arguments of ``ray.data.read_datasource`` the readers take and pass on
RAY_READ_ARGS = (
    "num_cpus",
    "num_gpus",
    "memory",
    "concurrency",
    "compute",
    "override_num_blocks",
    "label_selector",
    "fallback_strategy",
    "max_calls",
    "resources",
    "accelerator_type",
    "runtime_env",
    "ray_remote_args",
)

#: options of a Ray task that older Ray versions' ``read_datasource`` takes only inside
#: ``ray_remote_args``
_REMOTE_OPTIONS = frozenset(
    {
        "num_cpus",
        "num_gpus",
        "memory",
        "label_selector",
        "fallback_strategy",
        "max_calls",
        "resources",
        "accelerator_type",
        "runtime_env",
    }
)

F = TypeVar("F", bound=Callable[..., Any])


def unexpected_keyword(func: str, key: str, known: Sequence[str]) -> str:
    """Python's message for an unknown keyword argument, with the nearest known name."""
    msg = f"{func}() got an unexpected keyword argument {key!r}"
    near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"{msg}. Did you mean {near[0]!r}?" if near else msg


def strict_keywords(fn: F) -> F:
    """``fn`` raising ``TypeError`` for a keyword argument it does not take, naming it
    (and the nearest name it does take) before anything runs."""
    known = tuple(
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        for key in kwargs:
            if key not in known:
                raise TypeError(unexpected_keyword(fn.__name__, key, known))
        return fn(*args, **kwargs)

    return checked  # type: ignore[return-value]


def _is_local_filesystem(fs: Any) -> bool:
    try:
        import pyarrow.fs as pafs  # pyarrow comes with ray[data]

        if isinstance(fs, pafs.LocalFileSystem):
            return True
    except ImportError:  # pragma: no cover - ray[data] depends on pyarrow
        pass
    protocol = getattr(fs, "protocol", None)  # fsspec
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol or ())
    return bool(protocols) and set(protocols) <= {"file", "local"}


def array_paths(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    filesystem: Any,
    func: str,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """``paths`` (one, or a list) as :func:`lsio_ray.io.url.resolve` keeps them: local
    paths absolute (``file://`` URIs accepted), object-storage and HTTP URLs as given;
    ``storage_options`` configure the stores of the URLs (in this process; the read
    tasks get them with :func:`lsio_ray.io.stores.exported`).

    Raises ``UnsupportedURLError`` for an unknown URI scheme, ``ValueError`` for an empty
    list, ``storage_options`` without a URL, or a ``filesystem`` that is not local."""
    if filesystem is not None and not _is_local_filesystem(filesystem):
        raise ValueError(
            f"{func}() reads local files through its io_uring engine and URLs through its "
            "object-store backend, and cannot read through "
            f"filesystem={type(filesystem).__name__}: "
            "give the URL (s3://, gs://, az://, http(s)://) and its storage_options, or "
            "leave filesystem unset"
        )
    if isinstance(paths, str | os.PathLike):
        given: list[Any] = [paths]
    else:
        given = list(paths)
        if not given:
            raise ValueError(f"{func}() got an empty list of paths")
    out = []
    for p in given:
        if not isinstance(p, str | os.PathLike):
            raise TypeError(f"{func}() takes paths as str or os.PathLike, not {type(p).__name__}")
        out.append(url.resolve(p))
    if storage_options:
        remote = [p for p in out if url.is_remote(p)]
        if not remote:
            raise ValueError(
                f"{func}(): storage_options are for object-storage and HTTP URLs, and "
                f"{', '.join(out)} are local paths"
            )
        for p in remote:
            stores.configure_url(p, dict(storage_options))
    return out


def store_options(paths: Sequence[str]) -> dict[str, dict[str, Any]] | None:
    """The configured store options of the URLs among ``paths``, for the read tasks
    (None: no URL, or nothing configured)."""
    remote = [p for p in paths if url.is_remote(p)]
    return (stores.exported(remote) or None) if remote else None


def resolve_num_blocks(
    override_num_blocks: int | None, parallelism: int | None, func: str
) -> int | None:
    """``override_num_blocks``, or the deprecated ``parallelism`` (with a
    ``DeprecationWarning`` pointing at the caller of ``func``); giving both is a
    ``TypeError``."""
    if parallelism is None:
        return None if override_num_blocks is None else int(override_num_blocks)
    if override_num_blocks is not None:
        raise TypeError(
            f"{func}(): give override_num_blocks, not both it and parallelism (its old name)"
        )
    warnings.warn(
        f"{func}(parallelism=) is deprecated, as in Ray Data since 2.10: use override_num_blocks=",
        DeprecationWarning,
        stacklevel=4,  # this function, the reader, strict_keywords' wrapper, the caller
    )
    return int(parallelism)


def ray_read_args(read_datasource: Callable[..., Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments for ``read_datasource``: those of :data:`RAY_READ_ARGS` in
    ``params`` (a reader's arguments) that are not None, ``override_num_blocks`` aside
    (see :func:`resolve_num_blocks`); a remote option this Ray's ``read_datasource``
    does not name goes into ``ray_remote_args`` instead (older Ray versions)."""
    names = inspect.signature(read_datasource).parameters
    args: dict[str, Any] = {}
    remote = dict(params.get("ray_remote_args") or {})
    for key in RAY_READ_ARGS:
        value = params.get(key)
        if value is None or key in ("ray_remote_args", "override_num_blocks"):
            continue
        if key in names or key not in _REMOTE_OPTIONS:
            args[key] = value
        else:
            remote[key] = value
    if remote:
        args["ray_remote_args"] = remote
    return args


def node_of(path: str, coordinator: Coordinator | None) -> str | None:
    """The node whose local disk holds the array at ``path``, as ``coordinator``'s
    locality says (None: shared storage, unknown, or no coordinator)."""
    if coordinator is None or url.is_remote(path):
        return None
    v2 = os.path.join(path, ".zarray")
    meta = v2 if os.path.exists(v2) else os.path.join(path, "zarr.json")
    return coordinator.node_of(meta)


def node_of_all(paths: Sequence[str], coordinator: Coordinator | None) -> str | None:
    """The one node holding the arrays (None: shared storage, or no coordinator)."""
    found = {p: node_of(p, coordinator) for p in paths}
    nodes = sorted({n for n in found.values() if n is not None})
    if len(nodes) > 1:
        where = ", ".join(f"{p} on {n}" for p, n in found.items() if n is not None)
        raise ValueError(
            f"the arrays lie on several nodes' local disks ({where}): a Ray Data read "
            "cannot place its read tasks per array; read each node's arrays on their own"
        )
    return nodes[0] if nodes else None


def open_all(paths: Sequence[str]) -> list[Any]:
    """The arrays at ``paths``, checked to share one dtype (one ``crop`` column)."""
    arrays = [lz.open_array(p) for p in paths]
    for arr in arrays[1:]:
        if arr.dtype != arrays[0].dtype:
            raise ValueError(
                f"the arrays of one dataset share one dtype: {arrays[0].path} is "
                f"{arrays[0].dtype}, {arr.path} is {arr.dtype}"
            )
    return arrays


def crop_plan(
    arrays: Sequence[Any],
    crop: tuple[int, ...],
    count: int,
    seed: int | None,
    per_cell: int,
    cell: Iterable[int] | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The crops' start corners, and (several arrays) each crop's array number."""
    if len(arrays) == 1:
        arr = arrays[0]
        if per_cell:
            return arr.clustered_starts(crop, count, seed=seed, per_cell=per_cell, cell=cell), None
        return random_box_starts(arr.shape, crop, count, seed), None
    positions = []
    for arr in arrays:
        try:
            random_box_starts(arr.shape, crop, 0, None)  # checks that the crop fits
        except ValueError as exc:
            raise ValueError(f"{arr.path}: {exc}") from None
        positions.append(math.prod(n - c + 1 for n, c in zip(arr.shape, crop, strict=True)))
    seeds = np.random.SeedSequence(seed).spawn(len(arrays) + 1)
    unit = per_cell or 1  # a cell's crops come from one array
    weights = np.asarray(positions, dtype=np.float64) / float(sum(positions))
    picks = np.random.default_rng(seeds[-1]).choice(len(arrays), size=-(-count // unit), p=weights)
    which = np.repeat(picks, unit)[:count].astype(np.int32)
    plan = np.empty((count, len(crop)), dtype=np.int64)
    for k, arr in enumerate(arrays):
        rows = np.flatnonzero(which == k)
        if per_cell:
            plan[rows] = arr.clustered_starts(
                crop, len(rows), seed=seeds[k], per_cell=per_cell, cell=cell
            )
        else:
            plan[rows] = random_box_starts(arr.shape, crop, len(rows), seeds[k])
    return plan, which


def task_ranges(span: tuple[int, int], parallelism: int, unit: int = 0) -> list[tuple[int, int]]:
    """Rows ``span = (a, b)`` of a plan cut into at most ``parallelism`` contiguous read
    tasks' ranges, as equal as whole ``unit`` rows allow (cells or groups, counted from
    row 0 of the plan; 0: single rows)."""
    lo, hi = int(span[0]), int(span[1])
    n = max(1, min(int(parallelism), hi - lo)) if hi > lo else 0
    if not n:
        return []
    edges = np.linspace(lo, hi, n + 1).round().astype(np.int64)
    if unit:
        edges = edges // unit * unit
        edges[0], edges[-1] = lo, hi
        edges = np.unique(edges)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


def restrict(
    starts: Callable[[int, int], np.ndarray], a: int, b: int
) -> Callable[[int, int], np.ndarray]:
    """``starts`` cut down to boxes ``a:b`` where it can be (a read task's share)."""
    cut = getattr(starts, "restrict", None)
    return starts if cut is None else cut(a, b)


def arrays_in(sources: Callable[[int, int], np.ndarray] | None, a: int, b: int) -> list[int]:
    """The arrays (numbers) boxes ``a:b`` come from."""
    if sources is None:
        return [0]
    known = getattr(sources, "arrays_in", None)
    ids = known(a, b) if known is not None else np.unique(np.asarray(sources(a, b)))
    return [int(k) for k in ids]


class Slicer:
    """Rows of a plan held as one array (planned in the driver); ``restrict`` keeps a
    read task's share only, so each task carries its own boxes and no more."""

    def __init__(self, plan: np.ndarray, first: int = 0) -> None:
        self.plan, self.first = plan, first

    def restrict(self, a: int, b: int) -> Slicer:
        """The rows ``a:b`` only."""
        return Slicer(self.plan[a - self.first : b - self.first].copy(), a)

    def arrays_in(self, a: int, b: int) -> np.ndarray:
        """The distinct values of rows ``a:b`` (of a plan of array numbers)."""
        return np.unique(self(a, b))

    def __call__(self, a: int, b: int) -> np.ndarray:
        return self.plan[a - self.first : b - self.first]


class Grid:
    """Boxes ``a:b`` of the window grids of one or more arrays, one after the other,
    computed on demand (a full scan can be huge)."""

    def __init__(self, grids: Sequence[tuple[np.ndarray, ...]]) -> None:
        self.grids = list(grids)
        sizes = [math.prod(len(x) for x in axes) for axes in self.grids]
        #: the first box of each array, and the total
        self.offsets = np.cumsum([0, *sizes], dtype=np.int64)
        self.count = int(self.offsets[-1])

    def sources(self) -> GridSources:
        """The array of each box."""
        return GridSources(self.offsets)

    def __call__(self, a: int, b: int) -> np.ndarray:
        out = np.empty((b - a, len(self.grids[0])), dtype=np.int64)
        for k in GridSources(self.offsets).arrays_in(a, b):
            lo = max(a, int(self.offsets[k]))
            hi = min(b, int(self.offsets[k + 1]))
            axes = self.grids[k]
            local = np.arange(lo - self.offsets[k], hi - self.offsets[k], dtype=np.int64)
            idx = np.unravel_index(local, [len(x) for x in axes])
            out[lo - a : hi - a] = np.stack(
                [ax[i] for ax, i in zip(axes, idx, strict=True)], axis=1
            )
        return out


class GridSources:
    """The array number of boxes ``a:b`` of a :class:`Grid`."""

    def __init__(self, offsets: np.ndarray) -> None:
        self.offsets = offsets

    def arrays_in(self, a: int, b: int) -> range:
        """The arrays boxes ``a:b`` come from."""
        if b <= a:
            return range(0)
        first = int(np.searchsorted(self.offsets, a, side="right")) - 1
        last = int(np.searchsorted(self.offsets, b - 1, side="right")) - 1
        return range(first, last + 1)

    def __call__(self, a: int, b: int) -> np.ndarray:
        idx = np.arange(a, b, dtype=np.int64)
        return np.searchsorted(self.offsets, idx, side="right") - 1


class BlockPool:
    """Block buffers for a read task, reused once nothing else refers to them.

    A fresh block of tens of MiB costs a page fault per 4 KiB page (~4% of a read task's
    CPU).  Ray copies a yielded block into its object store, but Ray Data may keep the
    block (or an Arrow table built on its memory, zero-copy) for a while before that: a
    buffer is handed out again only when this pool holds the sole reference to it, so a
    block still in use is never overwritten."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self.bufs: list[np.ndarray] = []

    def take(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A C-contiguous array of ``shape`` and ``dtype`` that nobody else refers to."""
        dtype = np.dtype(dtype)
        for i in range(len(self.bufs)):
            # references: the list's, and getrefcount's argument
            if sys.getrefcount(self.bufs[i]) == 2:
                buf = self.bufs[i]
                if buf.shape == shape and buf.dtype == dtype:
                    return buf
        buf = np.empty(shape, dtype)
        if len(self.bufs) < self.keep:
            self.bufs.append(buf)
        return buf
