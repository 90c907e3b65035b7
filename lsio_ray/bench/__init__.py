"""fio-like read benchmarks on top of :class:`lsio_ray.io._core.RawEngine` (library part).

Nothing here prints: :mod:`lsio_ray.cli` formats the results.  The only output is the
optional tqdm progress bar, written to stderr.

Two pieces:

* :func:`make_files` writes ``count`` files of random (incompressible) bytes named
  ``DIR/f000000``, ``DIR/f000001``, ... and skips those already of the right size.
* :func:`run_read` reads them back with ``threads`` Python threads, each driving its own
  engine, in one of three patterns (``random``, ``sequential``, ``whole-file``).

The hot loop works on batches: per batch of ranges (16 MiB worth, at most 4096) it makes
one ``submit``, one ``reap`` and one ``release_many`` call plus a dozen numpy calls, and
never a Python object per range.  Requests are built vectorised (numpy RNG, ranges
grouped per file: each ``lsio_file`` entry owns one run of ranges, and its ``group`` is
the file's index so an error names its path).  About two batches (at least one batch
plus ``depth``) are kept queued in the engine: after each reap of at least one batch
worth of completions the next batch is submitted, so the engine always has work while
Python processes the previous one (the engine's ``depth`` bounds what is in the kernel).

CPU time is ``resource.getrusage(RUSAGE_SELF)`` over the measured interval: every thread
of the process, i.e. the Python threads, the pread backend's worker threads and the
kernel's io_uring io-wq workers (they belong to the process's thread group), plus
system time spent inline in ``io_uring_enter`` (page-cache copies, block-layer
submission).  Not included: interrupt and softirq time spent on completions (accounted
to whatever runs when the interrupt fires) and work of other processes.
"""

from __future__ import annotations

from lsio_ray.bench.files import (
    FileSet,
    MakeFilesResult,
    drop_caches,
    file_name,
    list_files,
    make_files,
)
from lsio_ray.bench.plan import _Plan as _Plan
from lsio_ray.bench.run import run_read
from lsio_ray.bench.spec import PATTERNS, ReadResult, ReadSpec
from lsio_ray.io.config import parse_duration

__all__ = [
    "PATTERNS",
    "FileSet",
    "MakeFilesResult",
    "ReadResult",
    "ReadSpec",
    "drop_caches",
    "file_name",
    "list_files",
    "make_files",
    "parse_duration",
    "run_read",
]
