"""The Zarr layer's names for the process's IO service (:mod:`lsio_ray.io.service`).

:class:`Loader` is an :class:`~lsio_ray.io.service.IOService` of its own (tests and the
CLI use one to choose a backend); :func:`default_loader` is the process's service, the one every
array shares (``direct`` is a property of each array's reads, not of the service).
"""

from __future__ import annotations

import warnings
from typing import Any

from lsio_ray.io.service import IOService, default_service, set_default_service
from lsio_ray.io.task import Task, abandon

__all__ = ["Loader", "Task", "abandon", "default_loader", "set_default_loader"]


class Loader(IOService):
    """An IO service of its own: ``decode_threads`` (default: the ``decode_threads``
    setting), ``max_inflight`` ranges queued at most, the rest (``backend``,
    ``pool_bytes``, ``depth``, ``register_buffers``...) for its engine.  ``threads`` is
    the old name of ``decode_threads`` (deprecated: the engine's pread workers are
    ``threads`` everywhere else)."""

    def __init__(
        self, *, decode_threads: int | None = None, threads: int | None = None, **settings: Any
    ) -> None:
        if threads is not None:
            if decode_threads is not None:
                raise TypeError("Loader: give decode_threads, not both it and threads")
            warnings.warn(
                "Loader(threads=) is deprecated: it means decode threads; use decode_threads=",
                DeprecationWarning,
                stacklevel=2,
            )
            decode_threads = threads
        settings = {k: v for k, v in settings.items() if v is not None}
        super().__init__(decode_threads=decode_threads, **settings)


def default_loader(direct: bool = False) -> IOService:
    """The process's IO service (:func:`lsio_ray.io.service.default_service`); arrays
    that read O_DIRECT (``direct=True``, or chosen by ``"auto"``) read through it too.
    ``direct``: the caller reads O_DIRECT, so a service made by this call registers its
    pool with io_uring (fixed-buffer reads); there is one service whatever it says."""
    return default_service(register=bool(direct))


def set_default_loader(loader: IOService | None) -> IOService | None:
    """Replace the process's IO service; returns the previous one (not closed)."""
    return set_default_service(loader)
