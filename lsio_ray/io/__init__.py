"""The ground floor: the only code that talks to the C core.

* :mod:`lsio_ray.io._core` -- the binding (``RawEngine``, the request/completion/decode
  array layouts, error codes);
* :mod:`lsio_ray.io.ops` -- the user's vocabulary (byte ranges, operations, op groups);
* :mod:`lsio_ray.io.config` -- every setting and environment variable;
* :mod:`lsio_ray.io.service` -- the one IO service per process: one thread owns submit,
  reap and cancel of one engine; tasks plug into it; it runs the decode pool;
* :mod:`lsio_ray.io.ordered` -- ordered delivery of op groups, with the one deadlock
  breaker, used by :class:`lsio_ray.Engine` and the Ray IO actor.

Everything above (the ``Engine`` facade, the Zarr reader and writer, the IO actor, Ray
tasks, Ray Data read tasks, the conversion job) is an adapter over these.

The layers above import what they need of the C core's vocabulary from here, never from
:mod:`lsio_ray.io._core` (``tests/test_layers.py`` says so): the request, completion and
decode-job array layouts, the op and flag codes, the decoder's entry points,
:func:`address`, the one way to turn an array into a raw address for the C side, and
``HAVE_URING``: whether this build has the io_uring backend (a build without liburing's
headers runs on pread threads only).
Importing this package loads the binding and starts no thread (the service's threads
start with the first :class:`~lsio_ray.io.service.IOService`).
"""

from __future__ import annotations

from lsio_ray.io import config
from lsio_ray.io._core import (
    C_FILE_ERROR,
    DEC_OK,
    DEC_SKIPPED,
    DECODE_JOB_DTYPE,
    E_PAST_EOF,
    F_DIRECT,
    F_FSYNC,
    FILE_DTYPE,
    HAVE_URING,
    OP_READ,
    OP_WRITE_FILE,
    RANGE_DTYPE,
    DecodeSpec,
    RawEngine,
    blosc_supports,
    decode_chunks,
    decode_error,
    extent,
    make_error,
    plan_box,
    view,
)
from lsio_ray.io.cached import read_cached
from lsio_ray.io.request import address

__all__ = [
    "C_FILE_ERROR",
    "DECODE_JOB_DTYPE",
    "DEC_OK",
    "DEC_SKIPPED",
    "E_PAST_EOF",
    "FILE_DTYPE",
    "F_DIRECT",
    "F_FSYNC",
    "HAVE_URING",
    "OP_READ",
    "OP_WRITE_FILE",
    "RANGE_DTYPE",
    "DecodeSpec",
    "RawEngine",
    "address",
    "blosc_supports",
    "config",
    "decode_chunks",
    "decode_error",
    "extent",
    "make_error",
    "plan_box",
    "read_cached",
    "view",
]
