"""Arrays for notebooks: a readable summary, reads with a progress bar, quick looks.

>>> import lsio_ray
>>> a = lsio_ray.open("data.zarr")
>>> a                                   # shape, dtype, chunks, shards, codecs, size, where
>>> block = a[0:64]                     # a progress bar (tqdm.auto) for long reads
>>> a.quicklook(10)                     # imshow of a[10] (a 2-D slice) with matplotlib

The reads are :class:`lsio_ray.zarr.Array` reads (the engine, decoding on threads);
this module only adds what a person at a notebook wants around them.  A long read is
cut into slabs along the first axis at chunk boundaries, read ``prefetch`` slabs deep
straight into the result, and the bar advances as each slab lands.
"""

from __future__ import annotations

import builtins
import itertools
import os
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from lsio_ray.io.url import is_remote, scheme_of
from lsio_ray.zarr.array import Array
from lsio_ray.zarr.group import Group, open_node
from lsio_ray.zarr.info import _size, codec_label, count_stored
from lsio_ray.zarr.plan import normalize

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from lsio_ray.ray.coordinator import Coordinator

__all__ = ["PROGRESS_BYTES", "InteractiveArray", "open"]

PROGRESS_BYTES = 64 << 20  # reads at least this large show a progress bar by default
_MAX_WALK = 200_000  # files counted for the stored size before giving up


def _mount_of(path: str) -> tuple[str, str, str]:
    """(device, mount point, file system type) holding ``path`` (from /proc/mounts)."""
    best = ("?", "/", "?")
    try:
        with builtins.open("/proc/mounts") as f:  # this module defines its own open()
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                dev, mnt, fstype = parts[0], parts[1].replace("\\040", " "), parts[2]
                inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best[1]):
                    best = (dev, mnt, fstype)
    except OSError:
        pass
    return best


def _stored(path: str) -> tuple[int | None, int | None, bool]:
    """(bytes, files, complete) under ``path``; stops counting after ``_MAX_WALK`` files.
    A URL: its objects listed (None, None, False over HTTP, which lists nothing)."""
    if is_remote(path):
        return count_stored(path, _MAX_WALK)
    total = files = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
            files += 1
            if files >= _MAX_WALK:
                return total, files, False
    return total, files, True


class InteractiveArray:
    """A read-only, notebook-friendly wrapper of a :class:`lsio_ray.zarr.Array`
    (what :func:`lsio_ray.open` returns).

    Indexing (``a[...]``) and :meth:`read` return numpy arrays like the underlying
    array, with a progress bar for reads of at least ``progress_bytes`` bytes;
    :meth:`quicklook` plots a 2-D slice; ``repr`` is a summary (codecs, stored size,
    where the data lives).  It is not an ``Array`` (no subclass) and has no writes,
    crops, time series or close: those are the wrapped array's, :attr:`array`.
    """

    def __init__(
        self,
        array: Array,
        *,
        progress_bytes: int = PROGRESS_BYTES,
        coordinator: Coordinator | None = None,
    ) -> None:
        self.array = array
        self.progress_bytes = int(progress_bytes)
        self._coordinator = coordinator
        self._stored: tuple[int | None, int | None, bool] | None = None

    # -- metadata ------------------------------------------------------------------------
    @property
    def path(self) -> str:
        """The array's directory."""
        return self.array.path

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape."""
        return self.array.shape

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return self.array.ndim

    @property
    def dtype(self) -> np.dtype:
        """The element type."""
        return self.array.dtype

    @property
    def chunks(self) -> tuple[int, ...]:
        """The chunk shape (the inner chunk of a sharded array)."""
        return self.array.chunks

    @property
    def shards(self) -> tuple[int, ...] | None:
        """The shard shape, or None."""
        return self.array.shards

    @property
    def nbytes(self) -> int:
        """Decoded size in bytes."""
        return self.array.nbytes

    @property
    def codecs(self) -> list[dict[str, Any]]:
        """The codec chain as JSON."""
        return self.array.layout.describe_codecs()

    def stored(self) -> tuple[int | None, int | None, bool]:
        """``(bytes, files, complete)`` stored on disk (counted once, then cached;
        ``complete`` is False when counting stopped early on a huge array)."""
        if self._stored is None:
            self._stored = _stored(self.path)
        return self._stored

    def location(self) -> str:
        """Where the data lives: host, device, mount and file system, and the Ray node
        that holds it when a coordinator was given and knows."""
        if is_remote(self.path):
            http = scheme_of(self.path) in ("http", "https")
            where = f"{self.path} ({'an HTTP server' if http else 'object storage'})"
            return where + ("; any Ray node (no locality)" if self._coordinator else "")
        dev, mnt, fstype = _mount_of(self.path)
        where = f"{socket.gethostname()}:{self.path} on {dev} ({fstype}, mounted at {mnt})"
        if self._coordinator is not None:
            meta = os.path.join(self.path, "zarr.json")
            if not os.path.exists(meta):
                meta = os.path.join(self.path, ".zarray")
            node = self._coordinator.node_of(meta)
            where += f"; Ray node {node}" if node else "; any Ray node (shared storage)"
        return where

    def summary(self) -> dict[str, Any]:
        """Everything :meth:`__repr__` shows, as a dict."""
        stored, files, complete = self.stored()
        return {
            "path": self.path,
            "zarr_format": self.array.zarr_format,
            "shape": self.shape,
            "dtype": str(self.dtype),
            "chunks": self.chunks,
            "shards": self.shards,
            "codecs": self.codecs,
            "nbytes": self.nbytes,
            "stored_bytes": stored,
            "stored_files": files,
            "stored_complete": complete,
            "location": self.location(),
        }

    def __repr__(self) -> str:
        s = self.summary()
        codecs = ", ".join(codec_label(c) for c in s["codecs"]) or "none"
        more = "" if s["stored_complete"] else "at least "
        ratio = f", ratio {s['nbytes'] / s['stored_bytes']:.2f}" if s["stored_bytes"] else ""
        if s["stored_bytes"] is None:
            stored = "stored size unknown (an HTTP server lists no objects)"
        else:
            kind = "objects" if is_remote(s["path"]) else "files"
            stored = f"{more}{_size(s['stored_bytes'])} stored in {more}{s['stored_files']} {kind}"
        rows = [
            ("shape", s["shape"]),
            ("dtype", s["dtype"]),
            ("chunks", s["chunks"]),
            ("shards", s["shards"] or "none"),
            ("codecs", codecs),
            ("size", f"{_size(s['nbytes'])} decoded, {stored}{ratio}"),
            ("location", s["location"]),
        ]
        width = max(len(k) for k, _ in rows)
        body = "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
        return f"<lsio_ray array, Zarr v{s['zarr_format']}>\n{body}"

    def __len__(self) -> int:
        return len(self.array)

    # -- reading -------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> np.ndarray:
        return self.read(key)

    def read(
        self, region: Any = ..., *, progress: bool | None = None, prefetch: int = 4
    ) -> np.ndarray:
        """Read a region (any numpy-style key).  ``progress``: show a bar (default: when
        the region is at least ``progress_bytes`` bytes); ``prefetch``: slabs in flight."""
        reg = normalize(region, self.shape)
        nbytes = reg.size * self.dtype.itemsize
        show = nbytes >= self.progress_bytes if progress is None else progress
        if not show or self.ndim == 0 or reg.size == 0:
            return self.array.read(region)
        box = np.empty(reg.box_shape, dtype=self.dtype)
        self._read_box(reg.lo, reg.hi, box, prefetch)
        return Array._finish_region(reg, box)

    def _read_box(
        self, lo: tuple[int, ...], hi: tuple[int, ...], out: np.ndarray, prefetch: int
    ) -> None:
        from tqdm.auto import tqdm

        step = self.chunks[0]
        edges = [lo[0], *range((lo[0] // step + 1) * step, hi[0], step), hi[0]]
        row_bytes = out[0:1].nbytes
        window: deque[tuple[Any, int]] = deque()
        slabs = itertools.pairwise(edges)

        def push() -> None:
            nxt = next(slabs, None)
            if nxt is None:
                return
            a, b = nxt
            view = out[a - lo[0] : b - lo[0]]
            task = self.array.start_read((a, *lo[1:]), (b, *hi[1:]), view)
            window.append((task, (b - a) * row_bytes))

        bar = tqdm(total=out.nbytes, unit="B", unit_scale=True, desc=os.path.basename(self.path))
        try:
            for _ in range(max(1, int(prefetch))):
                push()
            while window:
                task, n = window.popleft()
                task.wait()
                push()
                bar.update(n)
        finally:
            for task, _ in window:
                task.cancel()
            bar.close()

    # -- plotting ------------------------------------------------------------------------
    def quicklook(self, index: Any = None, ax: Axes | None = None, **imshow: Any) -> Axes:
        """Plot a 2-D slice with matplotlib and return its Axes.

        ``index`` selects the slice (e.g. ``10`` or ``(3, slice(None), slice(0, 100))``);
        by default the middle of every axis but the last two.  ``ax``: draw there (default:
        a new figure).  Other keyword arguments go to ``imshow``."""
        if index is None:
            index = tuple(n // 2 for n in self.shape[:-2])
        img = self.read(index, progress=False)
        if img.ndim != 2:
            raise ValueError(
                f"quicklook needs a 2-D slice; index {index!r} gives shape {img.shape}"
            )
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots()
        opts = {"cmap": "gray", "interpolation": "nearest", **imshow}
        image = ax.imshow(img, **opts)
        ax.figure.colorbar(image, ax=ax)
        ax.set_title(f"{os.path.basename(self.path)}[{_key_text(index)}]")
        return ax


def _key_text(index: Any) -> str:
    items = index if isinstance(index, tuple) else (index,)
    out = []
    for k in items:
        if isinstance(k, slice):
            a = "" if k.start is None else k.start
            b = "" if k.stop is None else k.stop
            out.append(f"{a}:{b}" + ("" if k.step in (None, 1) else f":{k.step}"))
        elif k is Ellipsis:
            out.append("...")
        else:
            out.append(str(k))
    return ", ".join(out)


def open(
    path: str | os.PathLike[str],
    *,
    progress_bytes: int = PROGRESS_BYTES,
    coordinator: Coordinator | None = None,
    **options: Any,
) -> InteractiveArray | Group:
    """Open the Zarr array at ``path`` for interactive use: ``lsio_ray.open``; a group
    opens as a :class:`lsio_ray.zarr.Group` whose arrays come out as
    :class:`InteractiveArray`.

    Returns an :class:`InteractiveArray`, not the :class:`lsio_ray.zarr.Array` that
    :func:`lsio_ray.zarr.open` returns: a read-only wrapper of one, adding a summary
    ``repr``, progress bars on long reads and :meth:`~InteractiveArray.quicklook`.  The
    wrapped ``Array`` (writes, ``random_crops``, ``time_series``, ...) is its ``array``.

    ``progress_bytes``: reads at least this large show a progress bar; ``coordinator``: a
    :class:`~lsio_ray.ray.Coordinator` whose locality tells which node holds the data
    (shown in the summary).  Other options go to :func:`lsio_ray.zarr.open`."""

    def wrap(array: Array) -> InteractiveArray:
        return InteractiveArray(array, progress_bytes=progress_bytes, coordinator=coordinator)

    return open_node(path, wrap_array=wrap, **options)
