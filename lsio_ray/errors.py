"""The public error family.

Every error names what failed where: the path, the byte range and, when it matters, the
file length.  OS errors are raised as the matching built-in ``OSError`` subclass
(``FileNotFoundError``, ``PermissionError``, ...) with ``filename`` set to the path and the
byte range in the message, so ``except FileNotFoundError`` works as users expect.
"""

from __future__ import annotations

__all__ = [
    "BufferPoolTooSmallError",
    "GroupCancelledError",
    "LsioError",
    "RangePastEOFError",
    "SpecialFileError",
]


class LsioError(Exception):
    """Base class of errors raised by lsio_ray itself (not by the OS)."""


class RangePastEOFError(LsioError, EOFError):
    """A byte range does not lie within its file.  Only that range fails.

    The rule (see :mod:`lsio_ray.ops`): a range must end at or before the end of the
    file.  One that starts exactly at the end is an empty read; one that starts past it
    fails, even when it is 0 bytes long; ``last(n)`` needs a file of at least ``n`` bytes.

    Attributes: ``path``; the request as asked -- ``start`` and ``end`` (``end`` None:
    to the end of the file), or ``last`` (``n`` for ``last(n)``, with ``start = -n``);
    ``file_size`` (None when unknown).  The message names all three.
    """

    def __init__(
        self,
        path: str,
        start: int,
        end: int | None,
        file_size: int | None,
        *,
        last: int | None = None,
    ) -> None:
        self.path, self.start, self.end, self.file_size = path, start, end, file_size
        self.last = last
        size = "unknown" if file_size is None else f"{file_size} bytes"
        if last is not None:
            what = f"last {last} bytes asked for, but the file is shorter"
        else:
            shown = f"{start}.. (to the end)" if end is None else f"{start}..{end}"
            past = file_size is not None and start > file_size
            what = f"byte range {shown} " + (
                "starts past the end of the file" if past else "reaches past the end of the file"
            )
        super().__init__(f"{path}: {what} (file length {size})")


class BufferPoolTooSmallError(LsioError, ValueError):
    """A single range is larger than the whole buffer pool."""

    def __init__(self, path: str, start: int, end: int, pool_bytes: int) -> None:
        self.path, self.start, self.end = path, start, end
        super().__init__(
            f"{path}: byte range {start}..{end} ({end - start} bytes) is larger than the "
            f"buffer pool ({pool_bytes} bytes); raise pool_bytes"
        )


class SpecialFileError(LsioError, OSError):
    """Not a file the engine reads: a FIFO, socket or device (refused before anything is
    read from it -- a FIFO read could wait for ever, a device never end), or a file that
    reports size 0 but has data (/proc, /sys) read whole.  An ``OSError`` with
    ``errno`` EINVAL and ``filename`` the path."""


class GroupCancelledError(LsioError):
    """The group was cancelled (or its engine closed) before this result arrived."""
