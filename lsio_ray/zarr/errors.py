"""The errors of the Zarr layer.

Each names the array and, where one is involved, the chunk (or shard) key and what was
wrong with it.  Metadata problems are ``ValueError`` subclasses; a corrupt or truncated
chunk or shard index is an ``OSError`` (``EIO``) subclass, like the IO errors the engine
reports; regions out of bounds raise plain ``IndexError``.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from lsio_ray.errors import LsioError
from lsio_ray.io import DEC_OK, DEC_SKIPPED, decode_error

if TYPE_CHECKING:
    import numpy as np

    from lsio_ray.io import DecodeSpec
    from lsio_ray.zarr.layout import ArrayLayout

__all__ = [
    "ArrayMetadataError",
    "ChunkCorruptError",
    "GroupError",
    "ShardIndexError",
    "UnsupportedError",
    "ZarrError",
    "decode_failure",
]


class ZarrError(LsioError):
    """Base class of the Zarr layer's own errors."""


class ArrayMetadataError(ZarrError, ValueError):
    """An array's metadata is missing a document, unparseable or invalid."""

    def __init__(self, array: str, reason: str) -> None:
        self.array, self.reason = array, reason
        super().__init__(f"{array}: {reason}")

    def __reduce__(self) -> tuple[object, tuple[type, str, str]]:
        # pickled whole (Ray ships errors between processes), subclasses included
        return (_rebuild_metadata_error, (type(self), self.array, self.reason))


def _rebuild_metadata_error(cls: type, array: str, reason: str) -> ArrayMetadataError:
    err = cls.__new__(cls)
    ArrayMetadataError.__init__(err, array, reason)
    return err


class UnsupportedError(ArrayMetadataError):
    """Valid metadata lsio_ray cannot read: a codec, data type or layout it lacks."""

    def __init__(self, array: str, what: str) -> None:
        super().__init__(array, f"unsupported: {what}")


class GroupError(ZarrError, ValueError):
    """A group's metadata is invalid, or a member's name or path is refused (it would
    lead out of the group's directory)."""

    def __init__(self, group: str, reason: str) -> None:
        self.group, self.reason = group, reason
        super().__init__(f"{group}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.group, self.reason))


class ChunkCorruptError(ZarrError, OSError):
    """A chunk's stored bytes do not decode to the chunk they should hold."""

    def __init__(self, array: str, key: str, reason: str) -> None:
        self.array, self.key, self.reason = array, key, reason
        OSError.__init__(self, errno.EIO, f"{array}: chunk {key}: {reason}")

    def __str__(self) -> str:
        return f"{self.array}: chunk {self.key}: {self.reason}"

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (type(self), (self.array, self.key, self.reason))


def decode_failure(
    layout: ArrayLayout, spec: DecodeSpec, jobs: np.ndarray, coords: Any
) -> ChunkCorruptError:
    """The error of the first failed row of a C decoder's job array: its chunk (the job's
    ``tag`` is its row in ``coords``, the chunk-grid coordinates) and why."""
    status = jobs["status"]
    bad = jobs[(status != DEC_OK) & (status != DEC_SKIPPED)][0]
    key = layout.chunk_key(coords[int(bad["tag"])])
    return ChunkCorruptError(layout.path, key, f"cannot decode: {decode_error(spec, bad)}")


class ShardIndexError(ChunkCorruptError):
    """A shard's index is corrupt (bad checksum, entries outside the file)."""

    def __str__(self) -> str:
        return f"{self.array}: shard {self.key}: corrupt index: {self.reason}"
