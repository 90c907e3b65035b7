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

import os
import re
import resource
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lsio_ray.io import config
from lsio_ray.io._core import FILE_DTYPE, RANGE_DTYPE, RawEngine
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

PATTERNS = ("random", "sequential", "whole-file")
"""The access patterns :func:`run_read` knows."""

LSIO_F_DIRECT = 1
"""``lsio_file.flags`` bit for O_DIRECT (``LSIO_F_DIRECT`` in csrc/lsio.h)."""

_NAME_RE = re.compile(r"^f(\d{6,})$")
_MIN_POOL = 64 << 20
_MAX_AUTO_POOL = 2 << 30
_BATCH_BYTES = 16 << 20  # aim for this many bytes per batch
_MAX_BATCH = 4096  # ranges per submit
_RUN_PER_DEPTH = 4  # random: ranges per file op (statx, open, reads, close) per depth...
_MIN_RUN = 1024  # ... and at least this many: each file op costs a statx and an open in
# io-wq plus a close, which take depth slots; with 128 reads per op W1 (depth 32) ran at
# ~65% of fio on a busy 2-CPU VM, with 1024-4096 at ~85%
_REAP_TIMEOUT_MS = 100  # reap wakes up at least this often to look at the clock


# ---------------------------------------------------------------------------------------
# helpers


def drop_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches`` for cold-cache runs (root only).

    Returns False, changing nothing, where that is not allowed."""
    import subprocess

    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


def file_name(index: int) -> str:
    """The benchmark's name for file number ``index``: ``f000042``."""
    return f"f{index:06d}"


def _pow2ceil(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def _progress_bar(enabled: bool, **kw: Any) -> Any:
    """A tqdm bar on stderr, or ``None`` when disabled."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(file=None, dynamic_ncols=True, leave=False, **kw)


# ---------------------------------------------------------------------------------------
# make-files


@dataclass
class MakeFilesResult:
    """What :func:`make_files` did."""

    dir: str
    count: int
    size: int
    written: int
    skipped: int
    bytes_written: int
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return asdict(self)


def make_files(
    directory: str | os.PathLike[str],
    count: int,
    size: int | str,
    *,
    seed: int = 0,
    progress: bool = False,
    fsync: bool = False,
) -> MakeFilesResult:
    """Write ``count`` files of ``size`` random bytes as ``directory/f000000`` ....

    Idempotent: a file that already exists with the right size is left alone (a partly
    written file has the wrong size and is rewritten).  The bytes come from a PCG64
    generator (incompressible, different in every file).  ``progress`` shows a tqdm bar
    on stderr (bytes).  ``fsync`` flushes each file before closing it.
    """
    size = config.parse_size(size)
    if count < 0:
        raise ValueError(f"count must not be negative, not {count}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    gen = np.random.PCG64(np.random.SeedSequence([seed, count, size]))
    words = (size + 7) // 8
    written = skipped = nbytes = 0
    bar = _progress_bar(
        progress,
        total=count * size,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="make-files",
    )
    # big files are written in pieces so memory stays bounded
    piece_words = min(words, (16 << 20) // 8) if words else 0
    try:
        for i in range(count):
            path = root / file_name(i)
            try:
                if path.stat().st_size == size:
                    skipped += 1
                    if bar is not None:
                        bar.update(size)
                    continue
            except FileNotFoundError:
                pass
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                left = size
                while left > 0:
                    n = min(left, piece_words * 8)
                    buf = gen.random_raw((n + 7) // 8).view(np.uint8)[:n]
                    mv = memoryview(buf)
                    while mv:
                        k = os.write(fd, mv)
                        mv = mv[k:]
                    left -= n
                    if bar is not None:
                        bar.update(n)
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            written += 1
            nbytes += size
    finally:
        if bar is not None:
            bar.close()
    return MakeFilesResult(
        str(root), count, size, written, skipped, nbytes, time.perf_counter() - t0
    )


# ---------------------------------------------------------------------------------------
# the file set


@dataclass
class FileSet:
    """The benchmark files of a directory, with a paths blob ready for ``submit``."""

    paths: list[str]
    sizes: np.ndarray  # int64, one per file
    blob: bytes  # NUL-terminated paths, back to back
    offs: np.ndarray  # uint32, each path's offset in ``blob``

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def total_bytes(self) -> int:
        """Sum of the file sizes."""
        return int(self.sizes.sum())


def list_files(directory: str | os.PathLike[str], limit: int | None = None) -> FileSet:
    """The ``f000000``-style files in ``directory`` (sorted by number; at most ``limit``)."""
    root = Path(directory)
    found: list[tuple[int, str]] = []
    with os.scandir(root) as it:
        for ent in it:
            m = _NAME_RE.match(ent.name)
            if m and ent.is_file():
                found.append((int(m.group(1)), ent.name))
    found.sort()
    if limit is not None:
        found = found[:limit]
    if not found:
        raise FileNotFoundError(
            f"no benchmark files (f000000, f000001, ...) in {root}; "
            "create them with `lsio-ray bench make-files`"
        )
    paths = [os.path.join(os.path.abspath(root), name) for _, name in found]
    sizes = np.fromiter((os.stat(p).st_size for p in paths), dtype=np.int64, count=len(paths))
    encoded = [p.encode() + b"\0" for p in paths]
    lens = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
    offs = np.concatenate(([0], np.cumsum(lens)[:-1])).astype(np.uint32)
    if lens.sum() >= 1 << 32:
        raise ValueError("too many paths for one batch")
    return FileSet(paths, sizes, b"".join(encoded), offs)


# ---------------------------------------------------------------------------------------
# read benchmark


@dataclass
class ReadSpec:
    """Parameters of one read benchmark run (see ``lsio-ray bench read --help``)."""

    dir: str
    pattern: str = "random"
    block_size: int = 4096
    direct: bool = False
    depth: int = 64
    threads: int = 1
    backend: str = "auto"
    duration_s: float = 10.0
    passes: int = 0  # stop after this many passes over the data (0: duration only)
    pool_bytes: int | None = None  # per engine; None: chosen from depth and block size
    io_threads: int | None = None  # pread backend workers per engine; None: config default
    batch: int | None = None  # ranges per submit; None: chosen from depth and block size
    run: int | None = None  # random: ranges per file op; None: max(1024, 4 x depth)
    known_size: bool = False  # whole-file: ask for the listed size instead of -1 (to EOF)
    ring_thread: bool = False  # io_uring: a C thread drives the ring (reap only collects)
    max_files: int | None = None  # use only the first N files
    seed: int | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` for impossible settings."""
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {PATTERNS}, not {self.pattern!r}")
        for name in ("block_size", "depth", "threads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if self.direct and self.pattern != "whole-file" and self.block_size % 512:
            raise ValueError("--direct needs a block size that is a multiple of 512")
        if self.duration_s <= 0 and self.passes <= 0:
            raise ValueError("give a positive duration or a number of passes")
        for name in ("batch", "run"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, not {value}")


@dataclass
class ReadResult:
    """What :func:`run_read` measured.  ``to_dict`` is the ``--json`` object."""

    backend: str
    pattern: str
    block_size: int
    depth: int
    threads: int
    direct: bool
    ops: int
    bytes: int
    files: int
    wall_s: float
    cpu_user_s: float
    cpu_sys_s: float
    features: list[str]
    nfiles: int
    dataset_bytes: int
    batch: int
    pool_bytes: int
    io_threads: int | None
    ring_thread: bool = False
    engine: dict[str, int] = field(default_factory=dict)

    @property
    def ops_per_s(self) -> float:
        """Completed reads per second of wall time."""
        return self.ops / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def mib_per_s(self) -> float:
        """MiB delivered per second of wall time."""
        return self.bytes / (1 << 20) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def files_per_s(self) -> float:
        """File ops (open, reads, close) completed per second of wall time."""
        return self.files / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the rates included."""
        d = asdict(self)
        d.update(ops_per_s=self.ops_per_s, mib_per_s=self.mib_per_s, files_per_s=self.files_per_s)
        return d


class _Plan:
    """Generates one thread's request batches (numpy only, nothing per range)."""

    def __init__(
        self, spec: ReadSpec, fs: FileSet, index: int, batch: int, rng: np.random.Generator
    ) -> None:
        self.spec, self.fs, self.batch, self.rng = spec, fs, batch, rng
        self.flags = LSIO_F_DIRECT if spec.direct else 0
        bs = spec.block_size
        n = len(fs)
        nthreads = spec.threads
        self.passes_done = 0  # full passes over this thread's share
        self.total = 0  # ranges per pass of this thread (0: nothing to do)
        if spec.pattern == "random":
            # uniform over all full blocks of the data set (with replacement)
            blocks = fs.sizes // bs
            self.sel = np.flatnonzero(blocks)
            if self.sel.size == 0:
                raise ValueError(f"no file holds a full block of {bs} bytes")
            self.blocks = blocks[self.sel]
            self.p = self.blocks / self.blocks.sum()
            self.all = np.arange(self.sel.size)
            self.run = spec.run or max(_MIN_RUN, _RUN_PER_DEPTH * spec.depth)
            # a "pass" reads as many blocks as the data set holds (shared by the threads)
            total = int(self.blocks.sum())
            self.total = total // nthreads + (index < total % nthreads)
        elif spec.pattern == "sequential":
            # this thread's contiguous slice of the concatenated (file, block) sequence
            blocks = (fs.sizes + bs - 1) // bs
            cum = np.concatenate(([0], np.cumsum(blocks)))
            total = int(cum[-1])
            lo, hi = total * index // nthreads, total * (index + 1) // nthreads
            self.cum = cum
            self.lo, self.total, self.pos = lo, hi - lo, 0
        else:  # whole-file: this thread's files, random order
            self.mine = np.arange(index, n, nthreads)
            self.total = int(self.mine.size)
            self.order = self.rng.permutation(self.mine)
            self.pos = 0
        self.issued = 0  # ranges handed out in this pass

    def next(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The next (files, ranges) batch, or None when the pass limit is reached."""
        if self.total == 0:
            return None
        passes = self.spec.passes
        if passes and self.passes_done >= passes:
            return None
        b = self.batch
        if passes:
            b = min(b, (passes - self.passes_done) * self.total - self.issued)
        pattern = self.spec.pattern
        if pattern == "random":
            files, ranges = self._random(b)
        elif pattern == "sequential":
            files, ranges = self._sequential(b)
        else:
            files, ranges = self._whole(b)
        self.issued += len(ranges)
        while self.issued >= self.total:
            self.issued -= self.total
            self.passes_done += 1
        return files, ranges

    def _files(self, idx: np.ndarray, counts: np.ndarray) -> np.ndarray:
        files = np.zeros(idx.size, FILE_DTYPE)
        files["group"] = idx
        files["path_off"] = self.fs.offs[idx]
        files["flags"] = self.flags
        files["nranges"] = counts
        return files

    def _random(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        # k files drawn by size, then the ranges spread over them by size
        k = max(1, b // self.run)
        if k < self.sel.size:
            pick = np.sort(self.rng.choice(self.sel.size, k, replace=False, p=self.p))
            blocks = self.blocks[pick]
            counts = self.rng.multinomial(b, blocks / blocks.sum())
        else:
            pick, blocks = self.all, self.blocks
            counts = self.rng.multinomial(b, self.p)
        nz = np.flatnonzero(counts)
        counts = counts[nz]
        bs = self.spec.block_size
        ranges = np.zeros(b, RANGE_DTYPE)
        ranges["offset"] = self.rng.integers(0, np.repeat(blocks[nz], counts)) * bs
        ranges["length"] = bs
        return self._files(self.sel[pick[nz]], counts), ranges

    def _sequential(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        # b consecutive blocks from the current position, wrapping around the slice
        g = self.lo + (self.pos + np.arange(b, dtype=np.int64)) % self.total
        self.pos = (self.pos + b) % self.total
        fidx = np.searchsorted(self.cum, g, side="right") - 1
        bs = self.spec.block_size
        off = (g - self.cum[fidx]) * bs
        ranges = np.zeros(b, RANGE_DTYPE)
        ranges["offset"] = off
        ranges["length"] = np.minimum(bs, self.fs.sizes[fidx] - off)
        # runs of the same file (a wrap-around starts a new run even for the same file)
        cut = np.flatnonzero((fidx[1:] != fidx[:-1]) | (g[1:] != g[:-1] + 1)) + 1
        starts = np.concatenate(([0], cut))
        counts = np.diff(np.concatenate((starts, [b])))
        return self._files(fidx[starts], counts), ranges

    def _whole(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        need = b
        while need > 0:
            if self.pos >= self.order.size:
                self.order = self.rng.permutation(self.mine)
                self.pos = 0
            take = self.order[self.pos : self.pos + need]
            self.pos += take.size
            need -= take.size
            parts.append(take)
        idx = np.concatenate(parts) if len(parts) > 1 else parts[0]
        ranges = np.zeros(idx.size, RANGE_DTYPE)
        if self.spec.known_size:
            ranges["length"] = self.fs.sizes[idx]  # no statx; open linked to the read
        else:
            ranges["length"] = -1  # offset 0, to the end of the file
        return self._files(idx, np.ones(idx.size, np.uint32)), ranges


def _auto_batch(spec: ReadSpec, unit: int) -> int:
    """Ranges per submit: 16 MiB worth, and for random/sequential at least 4 x depth
    (so that a file op carries many reads); between 1 and 4096."""
    n = _BATCH_BYTES // max(unit, 1)
    if spec.pattern != "whole-file":
        n = max(n, _RUN_PER_DEPTH * spec.depth)
    return int(max(1, min(_MAX_BATCH, n)))


def _alloc_unit(spec: ReadSpec, fs: FileSet) -> int:
    """Pool bytes one range takes (the buddy pool rounds up to a power of two)."""
    if spec.pattern == "whole-file":
        unit = int(fs.sizes.max())
    else:
        unit = spec.block_size
    if spec.direct:
        # the aligned superset read: a block not a multiple of 4 KiB may straddle one more
        unit = (unit + 4095) // 4096 * 4096 + (4096 if unit % 4096 else 0)
    return _pow2ceil(max(unit, 4096))


def _auto_pool(spec: ReadSpec, unit: int, batch: int) -> int:
    """Room for ``depth`` reads in flight plus two batches of completions (64 MiB to 2 GiB)."""
    need = max((spec.depth + 2 * batch) * unit, 4 * spec.depth * unit, _MIN_POOL)
    return _pow2ceil(min(need, max(_MAX_AUTO_POOL, 2 * unit)))


class _Worker:
    """One benchmark thread: its engine, its plan and its counters."""

    def __init__(
        self,
        spec: ReadSpec,
        fs: FileSet,
        index: int,
        batch: int,
        pool: int,
        rng: np.random.Generator,
    ) -> None:
        self.spec, self.fs = spec, fs
        self.plan = _Plan(spec, fs, index, batch, rng)
        self.engine = RawEngine(
            backend=spec.backend,
            depth=spec.depth,
            pool_bytes=pool,
            threads=spec.io_threads,
            ring_thread=spec.ring_thread,
        )
        self.batch = batch
        # queued ranges: two batches, and never less than a batch on top of the depth
        self.queue = max(2 * batch, batch + spec.depth)
        # reap when a batch worth is ready, but never wait for more than the pool holds
        units = self.engine.pool_bytes // _alloc_unit(spec, fs)
        self.min_n = int(max(1, min(batch, units - spec.depth, units // 2)))
        self.ops = 0
        self.bytes = 0
        self.files = 0
        self.error: BaseException | None = None
        self.stats: dict[str, int] = {}

    def run(self, deadline: float, stop: threading.Event) -> None:
        """The hot loop: keep two batches queued, reap one, release, resubmit."""
        eng, plan = self.engine, self.plan
        queued = 0
        more = True
        limit = self.queue
        while True:
            while more and queued + self.batch <= limit:
                nxt = plan.next()
                if nxt is None:
                    more = False
                    break
                files, ranges = nxt
                eng.submit(files, ranges, self.fs.blob)
                queued += len(ranges)
                self.files += len(files)
            if queued == 0:
                break
            out = eng.reap(limit, min(self.min_n, queued), _REAP_TIMEOUT_MS)
            n = len(out)
            if n:
                eng.release_many(out["buf_id"])
                err = out["error"]
                if err.any():
                    self._raise(out)
                queued -= n
                self.ops += n
                self.bytes += int(out["length"].sum())
            if more and (stop.is_set() or time.monotonic() >= deadline):
                more = False
        self.stats = eng.stats()

    def _raise(self, out: np.ndarray) -> None:
        from lsio_ray.io._core import make_error

        i = int(np.flatnonzero(out["error"])[0])
        c = out[i]
        path = self.fs.paths[int(c["group"])]
        raise make_error(
            int(c["error"]),
            path,
            int(c["offset"]),
            int(c["length"]),
            int(c["file_size"]),
            pool_bytes=self.engine.pool_bytes,
        )


def _progress_total(spec: ReadSpec, fs: FileSet) -> float | None:
    """MiB a run with a pass limit will read (None: bounded by time only)."""
    if not spec.passes:
        return None
    if spec.pattern == "random":
        per_pass = int((fs.sizes // spec.block_size).sum()) * spec.block_size
    else:
        per_pass = fs.total_bytes
    return spec.passes * per_pass / (1 << 20)


def _cpu() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def run_read(spec: ReadSpec, *, progress: bool = False) -> ReadResult:
    """Run one read benchmark and return its measurements.

    ``spec.threads`` Python threads each drive their own :class:`RawEngine` (the GIL is
    released inside every C call).  The run ends after ``spec.duration_s`` seconds or
    ``spec.passes`` passes over the data, whichever comes first (``0`` disables either);
    then every queued range is still reaped, and the wall time and counters include
    them.  Any failed read raises (``OSError`` with the path, or an ``LsioError``).
    ``progress`` shows a tqdm bar (MiB) on stderr.
    """
    spec.validate()
    fs = list_files(spec.dir, spec.max_files)
    unit = _alloc_unit(spec, fs)
    batch = spec.batch or _auto_batch(spec, unit)
    pool = config.parse_size(spec.pool_bytes) if spec.pool_bytes else _auto_pool(spec, unit, batch)
    seeds = np.random.SeedSequence(spec.seed).spawn(spec.threads)
    workers = [
        _Worker(spec, fs, i, batch, pool, np.random.default_rng(seeds[i]))
        for i in range(spec.threads)
    ]
    backend = workers[0].engine.backend
    features = sorted(workers[0].engine.features)
    stop = threading.Event()
    start = threading.Barrier(spec.threads + 1)
    box: dict[str, float] = {}

    def body(w: _Worker) -> None:
        try:
            start.wait()
            w.run(box["deadline"], stop)
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:
            w.error = exc
            stop.set()

    ths = [
        threading.Thread(target=body, args=(w,), name=f"lsio-bench-{i}", daemon=True)
        for i, w in enumerate(workers)
    ]
    for t in ths:
        t.start()
    bar = None
    try:
        duration = spec.duration_s if spec.duration_s > 0 else float("inf")
        u0, s0 = _cpu()
        t0 = time.monotonic()
        box["deadline"] = t0 + duration
        start.wait()
        bar = _progress_bar(
            progress, total=_progress_total(spec, fs), unit="MiB", desc=f"read {spec.pattern}"
        )
        done_bytes = 0
        while True:
            alive = [t for t in ths if t.is_alive()]
            if not alive:
                break
            alive[0].join(0.25)
            if bar is not None:
                now = sum(w.bytes for w in workers)
                bar.update((now - done_bytes) / (1 << 20))
                done_bytes = now
        for t in ths:
            t.join()
        t1 = time.monotonic()
        u1, s1 = _cpu()
    except BaseException:
        stop.set()
        start.abort()
        for t in ths:
            t.join()
        raise
    finally:
        if bar is not None:
            bar.close()
        for w in workers:
            w.engine.close()
    for w in workers:
        if w.error is not None:
            raise w.error
    engine_stats: dict[str, int] = {}
    for w in workers:
        for k in ("ops_submitted", "submit_calls", "starved", "pool_peak"):
            engine_stats[k] = engine_stats.get(k, 0) + w.stats.get(k, 0)
    return ReadResult(
        backend=backend,
        pattern=spec.pattern,
        block_size=spec.block_size,
        depth=spec.depth,
        threads=spec.threads,
        direct=spec.direct,
        ops=sum(w.ops for w in workers),
        bytes=sum(w.bytes for w in workers),
        files=sum(w.files for w in workers),
        wall_s=t1 - t0,
        cpu_user_s=u1 - u0,
        cpu_sys_s=s1 - s0,
        features=features,
        nfiles=len(fs),
        dataset_bytes=fs.total_bytes,
        batch=batch,
        pool_bytes=workers[0].engine.pool_bytes,
        io_threads=(spec.io_threads or int(config.get("threads"))) if backend == "pread" else None,
        ring_thread=spec.ring_thread and backend == "uring",
        engine=engine_stats,
    )
