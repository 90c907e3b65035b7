"""Whether an array is read with ``O_DIRECT`` when nobody said (the ``direct`` setting
``"auto"``, its default).

``O_DIRECT`` saves the page-cache copy and keeps a scan from filling the page cache (up
to ~20% faster here reading from the disk, benchmarks/results/zarr-reads.md), but data
read again comes from the device again, where the page cache would have served it from
memory.  So it pays when the page cache could not keep the data anyway.  The rule, in
order (:func:`choose_direct` returns the decision and the reason):

1. an object-storage or HTTP URL: not direct (no files);
2. a memory file system (tmpfs, ramfs...): not direct -- the data is in memory already;
3. a network or FUSE file system (nfs, cifs, ceph, fuse...): not direct -- ``O_DIRECT``
   there turns off the client's cache and read-ahead, each read is a round trip;
4. a file system refusing ``O_DIRECT`` (:func:`supports_direct`): not direct;
5. otherwise (a local disk's file system): direct when the array's stored bytes
   (estimated from the sizes of up to 16 of its files spread over the grid) exceed the
   memory the page cache may use -- ``MemAvailable`` of /proc/meminfo, or the
   cgroup's memory limit when that is smaller -- and not direct when they fit: then
   reads after the first one come from memory.

``direct=True`` / ``direct=False`` (``lsio_ray.zarr.open(..., direct=)``, or the
``direct`` setting, ``LSIO_DIRECT=1`` / ``0``) override the rule.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from lsio_ray.io.url import is_remote

if TYPE_CHECKING:
    from lsio_ray.zarr.layout import ArrayLayout

__all__ = ["choose_direct", "file_system", "page_cache_limit", "stored_bytes", "supports_direct"]

MEMORY_FS = {"tmpfs", "ramfs", "devtmpfs", "hugetlbfs", "shm"}
NETWORK_FS = {
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs",
    "beegfs", "afs", "virtiofs", "sshfs",
}  # fmt: skip
SAMPLE_FILES = 16


def supports_direct(path: str | os.PathLike[str]) -> bool:
    """Whether the file system holding the directory ``path`` opens files ``O_DIRECT``
    (tried on the array's metadata file)."""
    if not hasattr(os, "O_DIRECT") or is_remote(os.fspath(path)):
        return False
    for name in ("zarr.json", ".zarray"):
        try:
            fd = os.open(os.path.join(path, name), os.O_RDONLY | os.O_DIRECT)
        except FileNotFoundError:
            continue
        except OSError:
            return False
        os.close(fd)
        return True
    return False


def _unescape(field: str) -> str:
    """A /proc/self/mountinfo path (spaces and such written as ``\\040``)."""
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="replace")


def file_system(path: str | os.PathLike[str]) -> str:
    """The type of the file system holding ``path`` (``ext4``, ``tmpfs``, ``fuse.x``...),
    from /proc/self/mountinfo; ``""`` when unknown."""
    real = os.path.realpath(os.fspath(path))
    best, kind = -1, ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
    except OSError:
        return ""
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        mnt = _unescape(fields[4])
        inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= best:  # the last of equal mounts is the one on top
            best, kind = len(mnt), right.split()[0]
    return kind


def page_cache_limit() -> int:
    """Bytes the page cache may hold for this process: ``MemAvailable``, or the
    cgroup's (v2) memory limit when that is smaller."""
    avail = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as fh:
            limit = fh.read().strip()
        if limit.isdigit():
            avail = min(avail, int(limit)) if avail else int(limit)
    except OSError:
        pass
    return avail


def stored_bytes(layout: ArrayLayout) -> int:
    """The array's stored bytes, estimated: the mean size of up to
    :data:`SAMPLE_FILES` of its files (chunks, or shards) spread evenly over the grid,
    times the number of grid cells (files missing count as absent, not as empty)."""
    grid = tuple(int(g) for g in layout.file_grid)
    n = int(np.prod(grid, dtype=np.int64)) if grid else 1
    if n == 0:
        return 0
    picks = np.unique(np.linspace(0, n - 1, min(n, SAMPLE_FILES)).astype(np.int64))
    sizes = []
    for lin in picks.tolist():
        coords = np.unravel_index(lin, grid) if grid else ()
        try:
            sizes.append(os.stat(layout.file_path(np.asarray(coords, np.int64))).st_size)
        except OSError:
            continue
    return int(np.mean(sizes) * n) if sizes else 0


def choose_direct(layout: ArrayLayout, *, cache_bytes: int | None = None) -> tuple[bool, str]:
    """The rule of this module for ``layout``'s array: (direct or not, why).
    ``cache_bytes``: the page cache's room (default :func:`page_cache_limit`)."""
    path = layout.path
    if is_remote(os.fspath(path)):
        return False, "object storage"
    fs = file_system(path)
    if fs in MEMORY_FS:
        return False, f"{fs}: a memory file system"
    if fs in NETWORK_FS or fs.startswith("fuse"):
        return False, f"{fs}: a network or FUSE file system"
    if not supports_direct(path):
        return False, f"{fs or 'the file system'} refuses O_DIRECT"
    stored = stored_bytes(layout)
    room = page_cache_limit() if cache_bytes is None else int(cache_bytes)
    sizes = f"~{stored / 2**20:.1f} MiB stored, the page cache's room {room / 2**20:.0f} MiB"
    if stored > room:
        return True, f"{fs}: {sizes} (more than fits)"
    return False, f"{fs}: {sizes} (it fits)"
