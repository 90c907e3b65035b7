"""lsio_ray: light-speed IO on Ray.

Reads and writes millions of chunks of files as fast as each node's disks and CPUs allow:
a C core on io_uring (with a pread thread fallback) does the IO in batches, a bounded pool
of aligned buffers carries the bytes, and results come back per group, in order when
asked, as zero-copy numpy views.

The local engine needs no Ray::

    from lsio_ray import Engine, OpGroup, get_ranges
    with Engine() as eng:
        for chunk in eng.submit(OpGroup([get_ranges("data/0.0"), get_ranges("data/0.1")])):
            with chunk:
                use(chunk.data)

Zarr arrays open two ways.  ``lsio_ray.zarr.open(path)`` returns a
:class:`lsio_ray.zarr.Array`: reads, writes, crops, time series.  ``lsio_ray.open(path)``
returns a :class:`lsio_ray.interactive.InteractiveArray`, a read-only wrapper of one
for notebooks (a summary ``repr``, progress bars, ``quicklook``), whose ``.array`` is
the ``Array``.
"""

from lsio_ray.engine import Chunk, Engine, GroupResult
from lsio_ray.errors import (
    BufferPoolTooSmallError,
    GroupCancelledError,
    LsioError,
    RangePastEOFError,
)
from lsio_ray.io import config
from lsio_ray.io.ops import ByteRange, Operation, OpGroup, get_ranges, put_file, put_ranges

__version__ = "0.1.0"

__all__ = [
    "BufferPoolTooSmallError",
    "ByteRange",
    "Chunk",
    "Engine",
    "GroupCancelledError",
    "GroupResult",
    "LsioError",
    "OpGroup",
    "Operation",
    "RangePastEOFError",
    "__version__",
    "config",
    "get_ranges",
    "open",
    "put_file",
    "put_ranges",
    "rechunk",
]


def __getattr__(name: str) -> object:
    # lsio_ray.rechunk: the cluster-wide conversion, imported on first use (it needs Ray)
    if name == "rechunk":
        from lsio_ray.ray.rechunk import rechunk

        return rechunk
    # lsio_ray.open: arrays (and groups of them) for notebooks (progress bars, quick
    # looks), on first use; an InteractiveArray wrapping the lsio_ray.zarr.Array that
    # lsio_ray.zarr.open returns (a Group for a group)
    if name == "open":
        from lsio_ray.interactive import open

        return open
    raise AttributeError(f"module 'lsio_ray' has no attribute {name!r}")
