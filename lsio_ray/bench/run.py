"""The read benchmark's threads (:class:`_Worker`, each driving its own
:class:`~lsio_ray.io.RawEngine`, the baseline the IO service is measured against) and
:func:`run_read`."""

from __future__ import annotations

import resource
import threading
import time
from typing import Any

import numpy as np

from lsio_ray.bench import files
from lsio_ray.bench.files import FileSet, _progress_bar
from lsio_ray.bench.plan import _REAP_TIMEOUT_MS, _alloc_unit, _auto_batch, _auto_pool, _Plan
from lsio_ray.bench.spec import ReadResult, ReadSpec
from lsio_ray.io import config
from lsio_ray.io._core import RawEngine, mean_inflight


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
        self.stats: dict[str, Any] = {}
        self.steady: tuple[dict[str, Any], dict[str, Any]] | None = None
        self.run_delay = 0.0  # s this thread was runnable but waited for a CPU (steady part)

    def run(self, deadline: float, stop: threading.Event) -> None:
        """The hot loop: keep two batches queued, reap one, release, resubmit."""
        eng, plan = self.engine, self.plan
        queued = 0
        more = True
        limit = self.queue
        first = eng.stats()
        delay0 = _run_delay()
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
                self.steady = (first, eng.stats())  # the drain that follows is left out
                self.run_delay = _run_delay() - delay0
        self.stats = eng.stats()
        if self.steady is None:  # a pass limit ended the run: all of it
            self.steady = (first, self.stats)
            self.run_delay = _run_delay() - delay0

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


def _run_delay() -> float:
    """Seconds the calling thread has waited on a run queue (runnable, no CPU free) since
    it started: /proc/thread-self/schedstat's second field; 0.0 where there is none."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _engine_stats(workers: list[_Worker]) -> dict[str, Any]:
    """The engines' counters summed over the threads, and how full their rings ran up to
    the deadline (the drain after it left out): ``mean_inflight`` (time-weighted, summed
    over the engines: compare with iostat's ``aqu-sz``), ``inflight_max``,
    ``inflight_hist`` (completed ops by the ops in flight then; ``[i]``: 2**i to
    2**(i+1) - 1), io_uring's ``enter_ns`` / ``wait_calls`` / ``cqes``, and
    ``run_delay_s``: how long the threads were runnable but waited for a CPU."""
    out: dict[str, Any] = {}
    for w in workers:
        for k in ("ops_submitted", "submit_calls", "starved", "pool_peak"):
            out[k] = out.get(k, 0) + w.stats.get(k, 0)
    mean = 0.0
    hist = [0] * len(workers[0].stats["inflight_hist"])
    for w in workers:
        assert w.steady is not None
        a, b = w.steady
        mean += mean_inflight(a, b)
        pairs = zip(hist, a["inflight_hist"], b["inflight_hist"], strict=True)
        hist = [h + (y - x) for h, x, y in pairs]
        for k in ("completed", "enter_ns", "wait_calls", "cqes"):
            out[k] = out.get(k, 0) + b[k] - a[k]
        out["steady_calls"] = out.get("steady_calls", 0) + b["submit_calls"] - a["submit_calls"]
        out["steady_s"] = max(out.get("steady_s", 0.0), (b["clock_ns"] - a["clock_ns"]) / 1e9)
        out["inflight_max"] = max(out.get("inflight_max", 0), b["inflight_max"])
    out["mean_inflight"] = mean
    out["run_delay_s"] = sum(w.run_delay for w in workers)
    out["inflight_hist"] = hist
    return out


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
    fs = files.list_files(spec.dir, spec.max_files)
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
    engine_stats = _engine_stats(workers)
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
