"""Helpers of :class:`lsio_ray.zarr.Store` shared by its directory and object-storage
sides: the engine stores share, zarr byte requests as engine ranges, plain reads and
removals of local files."""

from __future__ import annotations

import os
import shutil
import stat
import threading

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest

from lsio_ray.engine import Engine
from lsio_ray.io.ops import ByteRange

__all__ = ["read_plain", "remove", "shared_engine", "to_range"]

_ENGINE: Engine | None = None
_ENGINE_LOCK = threading.Lock()
_ENGINE_PID = -1


def shared_engine() -> Engine:
    """The engine facade stores use unless given one (made on first use, again after a
    fork): it submits to the process's IO service, like every other ``Engine()``."""
    global _ENGINE, _ENGINE_PID
    with _ENGINE_LOCK:
        if _ENGINE is None or _ENGINE_PID != os.getpid():
            _ENGINE = Engine()
            _ENGINE_PID = os.getpid()
        return _ENGINE


def to_range(req: ByteRequest | None) -> ByteRange:
    if req is None:
        return ByteRange()
    if isinstance(req, RangeByteRequest):
        return ByteRange(req.start, max(req.start, req.end))
    if isinstance(req, OffsetByteRequest):
        return ByteRange(req.offset)
    if isinstance(req, SuffixByteRequest):
        return ByteRange.last(req.suffix) if req.suffix > 0 else ByteRange(0, 0)
    raise TypeError(f"Unexpected byte_range, got {req}.")


def read_plain(path: str, req: ByteRequest | None) -> bytes:
    """A plain-Python read with LocalStore's clamping rules (ranges past the end are cut)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if req is None:
            f.seek(0)
            return f.read()
        if isinstance(req, RangeByteRequest):
            f.seek(min(req.start, size))
            return f.read(max(0, req.end - req.start))
        if isinstance(req, OffsetByteRequest):
            f.seek(min(req.offset, size))
            return f.read()
        if isinstance(req, SuffixByteRequest):
            f.seek(max(0, size - req.suffix))
            return f.read()
    raise TypeError(f"Unexpected byte_range, got {req}.")


def remove(path: str) -> None:
    """Remove ``path``: a directory with everything under it, else the file or the
    symbolic link itself (links are never followed); missing is fine."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
