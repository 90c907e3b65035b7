"""The batch-level binding of the C core: arrays in, arrays out.

``RawEngine`` is what the hot paths use (the benchmark, the Zarr planner, the Ray actors):
requests go in as numpy structured arrays, completions come back as one numpy structured
array per call, buffers go back with one ``release_many`` call per batch.  No Python
object is made per chunk here.  Every C call releases the GIL (cffi does so for all
API-mode calls), so a thread blocked in ``reap`` never holds up the rest of Python.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Any

import numpy as np

from lsio_ray._lsio import ffi, lib
from lsio_ray.errors import (
    BufferPoolTooSmallError,
    GroupCancelledError,
    RangePastEOFError,
    SpecialFileError,
)
from lsio_ray.io import config

__all__ = [
    "BACKENDS",
    "CODECS",
    "COMPLETION_DTYPE",
    "DECODE_JOB_DTYPE",
    "FILE_DTYPE",
    "HAVE_URING",
    "RANGE_DTYPE",
    "DecodeSpec",
    "RawEngine",
    "check",
    "decode_chunks",
    "decode_error",
    "extent",
    "make_error",
    "plan_box",
]

BACKENDS = {
    "auto": lib.LSIO_BACKEND_AUTO,
    "uring": lib.LSIO_BACKEND_URING,
    "pread": lib.LSIO_BACKEND_PREAD,
}
BACKEND_NAMES = {v: k for k, v in BACKENDS.items()}

#: True when this build of the C core has the io_uring backend.  False when it was built
#: without liburing (its headers were missing, or ``LSIO_NO_URING=1``: lsio_ray/_build.py):
#: then "auto" always runs on pread threads and ``backend="uring"`` raises ``OSError``
#: (``ENOSYS``).  True does not promise the kernel allows io_uring (see "auto").
HAVE_URING: bool = bool(lib.lsio_have_uring())

FEATURES = {
    "fixed_files": lib.LSIO_FEAT_FIXED_FILES,
    "linked_open": lib.LSIO_FEAT_LINKED_OPEN,
    "registered_buffers": lib.LSIO_FEAT_REG_BUFFERS,
    "statx": lib.LSIO_FEAT_STATX,
    "rename": lib.LSIO_FEAT_RENAME,
}

FILE_DTYPE = np.dtype(
    [("group", "<u8"), ("path_off", "<u4"), ("kind", "<u4"), ("flags", "<u4"), ("nranges", "<u4")]
)
RANGE_DTYPE = np.dtype([("offset", "<i8"), ("length", "<i8"), ("tag", "<u8"), ("data", "<u8")])
COMPLETION_DTYPE = np.dtype(
    [
        ("tag", "<u8"),
        ("group", "<u8"),
        ("buf_id", "<u8"),
        ("data", "<u8"),
        ("offset", "<i8"),
        ("length", "<i8"),
        ("file_size", "<i8"),
        ("error", "<i4"),
        ("flags", "<u4"),
    ]
)

#: one chunk for ``lsio_decode_batch`` (see csrc/decode.h): where its stored bytes are, where
#: its box goes, and the pool buffer to release after it
DECODE_JOB_DTYPE = np.dtype(
    [
        ("src", "<u8"),
        ("src_len", "<u8"),
        ("dst", "<u8"),
        ("dst_lo", "<u8"),
        ("dst_len", "<u8"),
        ("src_off", "<i8"),
        ("shape", "<i8", (8,)),
        ("buf_id", "<u8"),
        ("refcnt", "<u8"),
        ("tag", "<i8"),
        ("direct", "<i4"),
        ("status", "<i4"),
        ("detail", "<i8"),
    ]
)
# The C core's request kinds, flags and completion bits, as plain ints for the layers above.
OP_READ = int(lib.LSIO_OP_READ)
OP_WRITE_FILE = int(lib.LSIO_OP_WRITE_FILE)
OP_WRITE_RANGES = int(lib.LSIO_OP_WRITE_RANGES)
F_DIRECT = int(lib.LSIO_F_DIRECT)
F_FSYNC = int(lib.LSIO_F_FSYNC)
F_CREATE = int(lib.LSIO_F_CREATE)
C_FILE_ERROR = int(lib.LSIO_C_FILE_ERROR)
E_PAST_EOF = int(lib.LSIO_E_PAST_EOF)

MAX_DECODE_DIMS = int(lib.LSIO_DEC_MAXDIM)
CODECS = {"raw": lib.LSIO_CODEC_RAW, "zstd": lib.LSIO_CODEC_ZSTD, "blosc": lib.LSIO_CODEC_BLOSC}
DEC_OK = int(lib.LSIO_DEC_OK)
DEC_SKIPPED = int(lib.LSIO_DEC_E_SKIPPED)
DEC_SIZE = int(lib.LSIO_DEC_E_SIZE)
DEC_BOUNDS = int(lib.LSIO_DEC_E_BOUNDS)


def _check_layout() -> None:
    for dt, name in (
        (FILE_DTYPE, "lsio_file"),
        (RANGE_DTYPE, "lsio_range"),
        (COMPLETION_DTYPE, "lsio_completion"),
        (DECODE_JOB_DTYPE, "lsio_decode_job"),
    ):
        if dt.itemsize != ffi.sizeof(name):
            raise ImportError(f"{name}: numpy dtype {dt.itemsize} B != C {ffi.sizeof(name)} B")
        for field in dt.names:
            if dt.fields[field][1] != ffi.offsetof(name, field):
                raise ImportError(f"{name}.{field}: offset mismatch between numpy and C")


_check_layout()


class DecodeSpec:
    """How ``lsio_decode_batch`` decodes one array's chunks into one destination.

    ``codec`` is ``"raw"``, ``"zstd"`` or ``"blosc"``; ``nbytes`` the decoded size of a
    chunk; ``chunk_strides`` its byte strides (C or F order); ``dst_strides`` the
    destination array's byte strides (one entry per dimension, at most 8).
    """

    def __init__(
        self,
        codec: str,
        nbytes: int,
        itemsize: int,
        chunk_strides: tuple[int, ...],
        dst_strides: tuple[int, ...],
    ) -> None:
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {sorted(CODECS)}, not {codec!r}")
        ndim = len(chunk_strides)
        if ndim > MAX_DECODE_DIMS or len(dst_strides) != ndim:
            raise ValueError(f"strides {chunk_strides} / {dst_strides}: ndim <= 8, equal")
        self.codec = codec
        self.code = CODECS[codec]
        self.nbytes = int(nbytes)
        self.c = ffi.new("lsio_decode_spec *")
        self.c.codec = self.code
        self.c.ndim = ndim
        self.c.nbytes = self.nbytes
        self.c.itemsize = int(itemsize)
        for d in range(ndim):
            self.c.chunk_strides[d] = int(chunk_strides[d])
            self.c.dst_strides[d] = int(dst_strides[d])


def extent(arr: np.ndarray) -> tuple[int, int]:
    """``(lowest byte address, bytes spanned)`` of an array's memory, whatever its
    strides: what a decode job's ``dst_lo`` / ``dst_len`` say of the array it writes into
    (the C decoder fails a job whose box reaches outside it).  ``(0, 0)`` when empty."""
    if arr.size == 0:
        return 0, 0
    lo = hi = int(arr.ctypes.data)
    for n, st in zip(arr.shape, arr.strides, strict=True):
        reach = (n - 1) * st
        if reach < 0:
            lo += reach
        else:
            hi += reach
    return lo, hi + arr.itemsize - lo


def decode_error(spec: DecodeSpec, job: Any) -> str:
    """What went wrong with one failed row of a decode job array."""
    status, detail = int(job["status"]), int(job["detail"])
    if status == DEC_SIZE:
        return f"it decodes to {detail} bytes, expected {spec.nbytes}"
    return ffi.string(lib.lsio_decode_strerror(spec.code, status, detail)).decode()


def decode_chunks(spec: DecodeSpec, jobs: np.ndarray) -> int:
    """Decode chunks whose stored bytes are not in a pool buffer (every ``buf_id`` 0,
    e.g. bytes in a Ray object), without the GIL and without an engine.  ``jobs`` is a
    C-contiguous ``DECODE_JOB_DTYPE`` array; returns how many failed (see each row's
    ``status``; the first failure skips the rest; a box reaching outside its decoded
    chunk or its ``dst_lo``/``dst_len`` fails with ``DEC_BOUNDS``).  The caller keeps
    every job's source bytes and destination alive for the call."""
    if jobs.size == 0:
        return 0
    if not jobs.flags.c_contiguous or jobs.dtype != DECODE_JOB_DTYPE:
        raise ValueError("jobs must be a C-contiguous DECODE_JOB_DTYPE array")
    if jobs["buf_id"].any():
        raise ValueError("decode_chunks takes no pool buffers: use RawEngine.decode")
    jp = ffi.cast("lsio_decode_job *", ffi.from_buffer(jobs))
    return int(lib.lsio_decode_batch(ffi.NULL, spec.c, jp, jobs.size))


def plan_box(
    lo: tuple[int, ...],
    hi: tuple[int, ...],
    chunks: tuple[int, ...],
    n: int,
    jobs: np.ndarray | None = None,
    dst_strides: tuple[int, ...] = (),
    chunk_strides: tuple[int, ...] = (),
    dst_origin: int = 0,
    direct: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` chunks (of shape ``chunks``) that the non-empty box ``[lo, hi)`` touches,
    planned in C (``lsio_plan_box``, csrc/decode.h): returns ``(sel, full)``, ``sel`` a
    ``(5, n, ndim)`` int64 array (grid coordinates, ``src_lo``, ``src_hi``, ``dst_lo``,
    ``dst_hi``, one row per chunk in C order), ``full`` which chunks lie wholly inside the
    box.  With ``jobs`` (``n`` rows of ``DECODE_JOB_DTYPE``, C-contiguous) it also fills
    each job's ``dst`` (from ``dst_origin`` and ``dst_strides``), ``src_off`` (from
    ``chunk_strides``), ``shape``, ``tag`` (the row) and ``direct`` (a full chunk, and
    ``direct``).  ``ValueError`` when the box, the chunks or ``n`` do not agree."""
    ndim = len(lo)
    sel = np.empty((5, n, ndim), np.int64)
    full = np.empty(n, np.bool_)
    if jobs is None:
        jp, ds, cs = ffi.NULL, ffi.NULL, ffi.NULL
    else:
        if jobs.size != n or not jobs.flags.c_contiguous or jobs.dtype != DECODE_JOB_DTYPE:
            raise ValueError(f"jobs must be {n} C-contiguous DECODE_JOB_DTYPE rows")
        jp = ffi.cast("lsio_decode_job *", ffi.from_buffer(jobs))
        ds = ffi.new("int64_t[]", list(dst_strides))
        cs = ffi.new("int64_t[]", list(chunk_strides))
    got = lib.lsio_plan_box(
        ndim,
        ffi.new("int64_t[]", list(lo)),
        ffi.new("int64_t[]", list(hi)),
        ffi.new("int64_t[]", list(chunks)),
        n,
        ffi.cast("int64_t *", ffi.from_buffer(sel)),
        ffi.cast("uint8_t *", ffi.from_buffer(full)),
        jp,
        ds,
        cs,
        dst_origin & 0xFFFFFFFFFFFFFFFF,
        1 if direct else 0,
    )
    if got != n:
        raise ValueError(f"cannot plan the box {lo}..{hi} in chunks {chunks} as {n} chunks")
    return sel, full


def check(rc: int, what: str, path: str | None = None) -> int:
    """Turn a negative ``-errno`` return into ``OSError(errno, strerror, path)``."""
    if rc < 0:
        raise OSError(-rc, f"{os.strerror(-rc)} ({what})", path)
    return rc


class RawEngine:
    """One C engine: a ring (or pread threads) and a bounded buffer pool.

    Not a user-facing API: see :class:`lsio_ray.Engine`.  ``reap`` may be called by one
    thread at a time; ``submit``, ``release_many``, ``cancel_group`` and ``wake`` from any.

    ``ring_thread=False`` (io_uring): the thread inside ``reap`` drives the ring -- the
    fewest context switches, for loops that reap continuously.  ``ring_thread=True``: a C
    thread keeps the ring full and ``reap`` only collects, so IO goes on while the caller
    is busy in Python (the local :class:`~lsio_ray.Engine` uses this).
    """

    def __init__(
        self,
        *,
        backend: str | None = None,
        depth: int | None = None,
        pool_bytes: int | str | None = None,
        threads: int | None = None,
        max_open: int | None = None,
        register_buffers: bool | None = None,
        fixed_files: bool | None = None,
        link_open: bool | None = None,
        ring_thread: bool = False,
    ) -> None:
        def pick(name: str, value: Any) -> Any:
            # every value is checked (type and range) before the C engine allocates
            return config.get(name) if value is None else config.validate(name, value)

        backend = pick("backend", backend)
        if backend == "uring" and not HAVE_URING:
            raise OSError(
                errno.ENOSYS,
                "the uring backend is not in this build of lsio_ray: its C core was built "
                "without liburing (pread only).  Use backend='auto' or 'pread', or install "
                "liburing's headers (Debian/Ubuntu: apt-get install liburing-dev) and "
                "reinstall lsio_ray from source, or install a prebuilt lsio_ray wheel",
            )
        cfg = ffi.new("lsio_config *")
        lib.lsio_config_default(cfg)
        cfg.backend = BACKENDS[backend]
        # config validated type and range; the C core's own LSIO_MAX_* bounds again here,
        # so an error names the setting rather than coming back as a bare EINVAL
        cfg.depth = _bounded("depth", pick("depth", depth), lib.LSIO_MAX_DEPTH)
        cfg.threads = _bounded("threads", pick("threads", threads), lib.LSIO_MAX_THREADS)
        cfg.max_open = _bounded("max_open", pick("max_open", max_open), lib.LSIO_MAX_OPEN_FILES)
        cfg.pool_bytes = _bounded(
            "pool_bytes", pick("pool_bytes", pool_bytes), lib.LSIO_MAX_POOL_BYTES
        )
        cfg.register_buffers = int(pick("register_buffers", register_buffers))
        cfg.fixed_files = int(pick("fixed_files", fixed_files))
        cfg.link_open = int(pick("link_open", link_open))
        cfg.ring_thread = int(bool(ring_thread))
        err = ffi.new("int *")
        ptr = lib.lsio_engine_new(cfg, err)
        if ptr == ffi.NULL:
            if err[0] == -errno.EINVAL:  # the C bounds (lsio_engine_new) refused a setting
                raise ValueError(
                    f"engine settings refused: depth={cfg.depth}, threads={cfg.threads}, "
                    f"max_open={cfg.max_open}, pool_bytes={cfg.pool_bytes} (pool_bytes must "
                    f"not exceed the machine's memory, {_phys_mem()} bytes)"
                )
            raise OSError(-err[0], f"cannot start the {backend} backend: {os.strerror(-err[0])}")
        self._ptr = ptr
        self._lock = threading.Lock()
        self.backend: str = BACKEND_NAMES[lib.lsio_engine_backend(ptr)]
        bits = lib.lsio_engine_features(ptr)
        self.features: frozenset[str] = frozenset(k for k, v in FEATURES.items() if bits & v)
        self._out_cap = 0
        self._out: Any = None
        st = self.stats()
        self.pool_bytes: int = st["pool_bytes"]
        self.depth: int = cfg.depth

    # -- lifetime ------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._ptr is None

    def close(self) -> None:
        """Cancel everything, wait for the kernel, free the engine (idempotent).

        Buffers already handed out stay valid; their release after close is allowed.
        """
        with self._lock:
            ptr, self._ptr = self._ptr, None
        if ptr is not None:
            lib.lsio_engine_free(ptr)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _p(self) -> Any:
        ptr = self._ptr
        if ptr is None:
            raise ValueError("the engine is closed")
        return ptr

    @property
    def handle(self) -> Any:
        """The C engine pointer (for buffer release after close)."""
        return self._p()

    # -- batch API -----------------------------------------------------------------------
    def submit(self, files: np.ndarray, ranges: np.ndarray, paths: bytes) -> None:
        """Queue a batch. ``files``/``ranges`` use FILE_DTYPE/RANGE_DTYPE; ``paths`` holds
        NUL-terminated paths that ``files['path_off']`` index.  WRITE data pointers in
        ``ranges['data']`` must stay valid until their completions are reaped."""
        files = np.ascontiguousarray(files, dtype=FILE_DTYPE)
        ranges = np.ascontiguousarray(ranges, dtype=RANGE_DTYPE)
        rc = lib.lsio_submit(
            self._p(),
            ffi.cast("lsio_file *", ffi.from_buffer(files)),
            len(files),
            ffi.cast("lsio_range *", ffi.from_buffer(ranges)),
            len(ranges),
            ffi.from_buffer(paths),
            len(paths),
        )
        check(rc, "submit")

    def reap(self, max_n: int = 4096, min_n: int = 1, timeout_ms: int = -1) -> np.ndarray:
        """Drive IO until ``min_n`` completions are ready (or nothing is pending, or the
        timeout passes) and return up to ``max_n`` of them as a COMPLETION_DTYPE array."""
        if max_n > self._out_cap:
            self._out = ffi.new("lsio_completion[]", max_n)
            self._out_cap = max_n
        n = lib.lsio_reap(self._p(), self._out, max_n, min_n, timeout_ms)
        check(n, "reap")
        if n == 0:
            return np.empty(0, COMPLETION_DTYPE)
        buf = ffi.buffer(self._out, n * COMPLETION_DTYPE.itemsize)
        return np.frombuffer(buf, dtype=COMPLETION_DTYPE).copy()

    def release_many(self, buf_ids: np.ndarray) -> None:
        """Give pool buffers back (zeros are skipped)."""
        ids = np.ascontiguousarray(buf_ids, dtype=np.uint64)
        if ids.size == 0:
            return
        check(
            lib.lsio_release_many(
                self._p(), ffi.cast("uint64_t *", ffi.from_buffer(ids)), ids.size
            ),
            "release: unknown buffer id",
        )

    def release(self, buf_id: int) -> None:
        """Give one pool buffer back: one C call (~0.2 us), for paths that release as they
        decode, where building an array for ``release_many`` would cost 20x more."""
        if lib.lsio_release(self._p(), buf_id) < 0:
            raise ValueError(f"release: unknown buffer id {buf_id}")

    def decode(self, spec: DecodeSpec, jobs: np.ndarray) -> int:
        """Decode a batch of chunks (a C-contiguous ``DECODE_JOB_DTYPE`` array) without
        the GIL; every job's buffer is released, whatever happens.  Returns how many
        failed (see each row's ``status``; the first failure skips the rest; a box
        reaching outside its decoded chunk or its ``dst_lo``/``dst_len`` fails with
        ``DEC_BOUNDS``)."""
        if jobs.size == 0:
            return 0
        return int(
            lib.lsio_decode_batch(
                self._p(),
                spec.c,
                ffi.cast("lsio_decode_job *", ffi.from_buffer(jobs)),
                jobs.size,
            )
        )

    def decode_end(self, jobs: np.ndarray) -> None:
        """End decode jobs without decoding them: release their buffers."""
        if jobs.size:
            lib.lsio_decode_end(
                self._p(), ffi.cast("lsio_decode_job *", ffi.from_buffer(jobs)), jobs.size
            )

    def cancel_group(self, group: int) -> int:
        """Drop a group's queued ranges; returns how many were dropped."""
        return int(lib.lsio_cancel_group(self._p(), group))

    def group_pending(self, group: int) -> int:
        """File ops of ``group`` the engine still holds (queued, in flight, closing or
        removing a temp file -- cancelled ones included); 0 once it holds nothing of the
        group's, not even a pointer to its write data."""
        return int(lib.lsio_group_pending(self._p(), group))

    def wake(self) -> None:
        """Make a thread blocked in ``reap`` return."""
        if self._ptr is not None:
            lib.lsio_wake(self._ptr)

    def stats(self) -> dict[str, Any]:
        """Counters (``lsio_stats`` in csrc/lsio.h), all ints but one: pool use and peak,
        buffers out, ops and submit calls, pending work; and how full the ring is kept --
        ``inflight_max``, ``inflight_ns`` / ``clock_ns`` (the mean ops in flight between
        two calls is the ratio of their differences: :func:`mean_inflight`),
        ``completed`` and ``inflight_hist``, a list of ``LSIO_HIST_BUCKETS`` counts of
        completed ops by the ops in flight when each completed (``[i]``: 2**i to
        2**(i+1) - 1); io_uring's ``enter_ns`` (time in ``io_uring_enter``),
        ``wait_calls`` and ``cqes``."""
        st = ffi.new("lsio_stats *")
        lib.lsio_engine_stats(self._p(), st)
        out: dict[str, Any] = {}
        for name, field in ffi.typeof("lsio_stats").fields:
            v = getattr(st, name)
            out[name] = [int(x) for x in v] if field.type.kind == "array" else int(v)
        return out

    def busy(self) -> bool:
        """Whether ranges are pending or completions wait to be reaped: the two counters
        of :meth:`stats` a reap of several engines asks for, without building the dict."""
        st = ffi.new("lsio_stats *")
        lib.lsio_engine_stats(self._p(), st)
        return bool(st.ranges_pending or st.completions_ready)

    def owned_view(self, ptr: int, length: int, buf_id: int) -> np.ndarray:
        """A uint8 numpy view of pool buffer ``buf_id`` (``length`` bytes at ``ptr``) that
        owns the buffer: it goes back to the pool when the view, and every array derived
        from it, is gone -- never earlier, so a view can never show another read's bytes;
        and the C engine keeps its arena mapped until the last buffer is back, even after
        :meth:`close`."""
        cdata = ffi.gc(ffi.cast("char *", ptr), _Releaser(self._p(), buf_id), size=length)
        return np.frombuffer(ffi.buffer(cdata, length), dtype=np.uint8)

    def pool_in_use(self) -> int:
        """Pool bytes held now (``stats()["pool_in_use"]`` without building the dict:
        cheap enough to ask once per chunk)."""
        st = ffi.new("lsio_stats *")
        lib.lsio_engine_stats(self._p(), st)
        return int(st.pool_in_use)


class _Releaser:
    """ffi.gc destructor: gives one buffer back.  The C engine outlives its buffers."""

    __slots__ = ("buf_id", "ptr")

    def __init__(self, ptr: Any, buf_id: int) -> None:
        self.ptr, self.buf_id = ptr, buf_id

    def __call__(self, _cdata: Any) -> None:
        lib.lsio_release(self.ptr, self.buf_id)


def view(ptr: int, length: int) -> np.ndarray:
    """A uint8 numpy view of ``length`` bytes at address ``ptr`` (no copy, no ownership)."""
    if length == 0:
        return np.empty(0, np.uint8)
    return np.frombuffer(ffi.buffer(ffi.cast("char *", ptr), length), dtype=np.uint8)


def _bounded(name: str, value: int, limit: int) -> int:
    """``value`` as an int in 1..limit (the C core's LSIO_MAX_* bound), else ValueError
    naming the setting -- before the C side is asked to allocate anything for it."""
    value = int(value)
    if not 0 < value <= limit:
        raise ValueError(f"{name} must be in 1..{limit}, not {value}")
    return value


def _phys_mem() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGESIZE")
    except (ValueError, OSError):
        return -1


def make_error(
    err: int,
    path: str,
    start: int,
    length: int,
    file_size: int,
    *,
    op: str = "read",
    pool_bytes: int = 0,
    detail: str | None = None,
) -> BaseException:
    """Turn a completion's error code into the exception the user sees.

    ``start``/``length`` are the range as the completion reports it: for a range past
    the end of its file, the request as asked (negative ``start``: the last ``-start``
    bytes; ``length`` -1: to the end).  ``detail``: what an object store answered,
    added to the message."""
    end = start + length if length >= 0 else -1
    size = None if file_size < 0 else file_size
    if err == lib.LSIO_E_PAST_EOF:
        if start < 0:
            return RangePastEOFError(path, start, None, size, last=-start)
        return RangePastEOFError(path, start, None if length < 0 else end, size)
    if err == lib.LSIO_E_TOO_BIG:
        return BufferPoolTooSmallError(path, start, end, pool_bytes)
    if err == lib.LSIO_E_CANCELED:
        return GroupCancelledError(f"{path}: {op} of bytes {start}..{end} cancelled")
    where = "whole file" if length < 0 and start == 0 else f"bytes {start}..{end}"
    if err == lib.LSIO_E_NOT_REGULAR:
        why = "not a regular file (a FIFO, socket or device): refused"
        return SpecialFileError(errno.EINVAL, f"{why} ({op} {where})", path)
    if err == lib.LSIO_E_UNSIZED:
        why = (
            "the file reports size 0 but has data (a /proc or /sys file?): "
            "read it with an explicit byte range"
        )
        return SpecialFileError(errno.EINVAL, f"{why} ({op} {where})", path)
    code = -err
    msg = f"{os.strerror(code)} ({op} {where})"
    if code in (errno.ENOENT,):
        msg = f"{os.strerror(code)} ({op})"
    if detail:
        msg = f"{msg}: {detail}"
    if code == errno.ENOENT:
        return FileNotFoundError(code, msg, path)
    if code == errno.EACCES:
        return PermissionError(code, msg, path)
    return OSError(code, msg, path)


def blosc_supports(cname: str) -> bool:
    """True when the C core's blosc was built with compressor ``cname``."""
    return bool(lib.lsio_blosc_supports(cname.encode()))


def mean_inflight(before: dict[str, Any], after: dict[str, Any]) -> float:
    """The mean number of ops the engine had in flight between two :meth:`RawEngine.stats`
    snapshots (time-weighted, like iostat's ``aqu-sz`` for the device)."""
    dt = after["clock_ns"] - before["clock_ns"]
    return (after["inflight_ns"] - before["inflight_ns"]) / dt if dt > 0 else 0.0
