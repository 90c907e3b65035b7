#!/usr/bin/env python3
"""Zarr reads over HTTP: lsio_ray against zarr-python (its obstore-backed ObjectStore)
and tensorstore (its HTTP kvstore), the same server, the same array, one run.

The array is bench-zarr's (``scripts/bench-zarr.py``: v3, (512,1024,1024) float32,
chunks (1,256,256), zstd 3; ``LSIO_ZARR_BENCH_SHAPE`` / ``LSIO_ZARR_BENCH_DIR``), served
by nginx (from Debian, as the tests start it) on 127.0.0.1.  Each round trip time in
``$LSIO_REMOTE_BENCH_RTT_MS`` (default ``0,20``) puts a latency proxy (``tests/_servers``
``FaultProxy``, in a process of its own: half the round trip before each request is
forwarded, half before its answer's first byte) between the readers and nginx; 0 reads
nginx directly.

Layouts (``$LSIO_REMOTE_BENCH_LAYOUTS``, bench-zarr's): ``v3-chunks`` (a chunk an
object) and ``v3-shards`` ((32,1024,1024) shards of the same chunks: many chunks an
object, where coalescing ranges shows in the requests per MiB).

Workloads (bench-zarr's boxes): ``crops`` (``$LSIO_ZARR_BENCH_CROPS``, 200, of
(8,256,256)), ``slabs`` (the whole array, 32 planes a read), ``series`` (16 time series
``[:, y:y+256, x:x+256]``); ``$LSIO_REMOTE_BENCH_WORKLOADS`` chooses.  Readers
(``$LSIO_REMOTE_BENCH_READERS``): ``lsio`` (``Array.crops`` kept ``prefetch`` deep),
``zarr-python`` (``zarr.storage.ObjectStore`` over obstore's ``HTTPStore``, one read at a
time: it is concurrent inside a read), ``tensorstore`` (reads kept ``prefetch`` deep);
for crops also through Ray Data on a local Ray of this machine's cores: ``ray-lsio``
(``lsio_ray.data.read_zarr_crops`` on the URL) and ``ray-zarr`` (the same crop corners
as a dataset, ``map_batches`` with an actor per core reading them with zarr-python's
ObjectStore, the usual way to read Zarr in Ray Data).  The Ray readers read the crops
``read_zarr_crops`` plans for the seed (``random_box_starts``), the others bench-zarr's
boxes: compare Ray with Ray.  ``$LSIO_REMOTE_BENCH_REPS`` (3) interleaved repetitions
(each round the readers in turn, every other round in reverse order); the load average
is recorded before each measurement.

Printed per workload, RTT and reader: MiB/s of output (min / median / max), requests per
MiB of output and bytes transferred per byte used (both counted from nginx's access log
for one repetition, identical across repetitions).  The server here is nginx on the same
2 cores: with 0 ms the readers compete with it for CPU; with 20 ms latency binds.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import bench_common as bc
import numpy as np
from _servers import nginx_server

import lsio_ray.zarr as lz


def _list(env: str, default: str) -> list[str]:
    return [x for x in os.environ.get(env, default).split(",") if x]


RTTS = [float(x) for x in _list("LSIO_REMOTE_BENCH_RTT_MS", "0,20")]
WORKLOADS = _list("LSIO_REMOTE_BENCH_WORKLOADS", "crops,slabs,series")
READERS = _list("LSIO_REMOTE_BENCH_READERS", "lsio,zarr-python,tensorstore,ray-lsio,ray-zarr")
LAYOUTS = _list("LSIO_REMOTE_BENCH_LAYOUTS", "v3-chunks,v3-shards")
RAY_READERS = ("ray-lsio", "ray-zarr")
CORES = os.cpu_count() or 1
REPS = int(os.environ.get("LSIO_REMOTE_BENCH_REPS", "3"))
PREFETCH = int(os.environ.get("LSIO_REMOTE_BENCH_PREFETCH", "16"))
MIB = 1 << 20


def _regions(bxs: list) -> list[tuple[slice, ...]]:
    return [tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)) for lo, hi in bxs]


def run_lsio(url: str, bxs: list, prefetch: int) -> int:
    arr = lz.open(url)
    n = 0
    for crop in arr.crops(_regions(bxs), prefetch=prefetch):
        n += crop.nbytes
    return n


def run_zarr(url: str, bxs: list, prefetch: int) -> int:
    import zarr
    from obstore.store import HTTPStore
    from zarr.storage import ObjectStore

    base, name = url.rsplit("/", 1)
    store = ObjectStore(
        HTTPStore.from_url(base, client_options={"allow_http": True}), read_only=True
    )
    arr = zarr.open_array(store=store, path=name, mode="r")
    n = 0
    for r in _regions(bxs):
        n += arr[r].nbytes
    return n


def run_tensorstore(url: str, bxs: list, prefetch: int) -> int:
    import tensorstore as ts

    base, name = url.rsplit("/", 1)
    arr = ts.open(
        {"driver": "zarr3", "kvstore": {"driver": "http", "base_url": base, "path": name + "/"}},
        open=True,
        read=True,
    ).result()
    n = 0
    window: list[Any] = []
    for r in _regions(bxs):
        window.append(arr[r].read())
        if len(window) >= prefetch:
            n += window.pop(0).result().nbytes
    for fut in window:
        n += fut.result().nbytes
    return n


def _ray() -> None:
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(  # a Ray of its own, even where another cluster runs on this machine
            address="local",
            num_cpus=CORES,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False


def _ray_starts(shape: tuple[int, ...], count: int) -> np.ndarray:
    from lsio_ray.data import random_box_starts

    return random_box_starts(shape, CROP, count, SEED)


CROP = (8, 256, 256)
SEED = 7


def run_ray_lsio(url: str, bxs: list, prefetch: int) -> int:
    import lsio_ray.data as ld

    _ray()
    ds = ld.read_zarr_crops(url, CROP, len(bxs), seed=SEED, prefetch=prefetch)
    n = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        n += batch["crop"].nbytes
    return n


class ZarrCrops:
    """A Ray Data actor reading crops with zarr-python's ObjectStore over HTTP."""

    def __init__(self, url: str) -> None:
        import zarr
        from obstore.store import HTTPStore
        from zarr.storage import ObjectStore

        base, name = url.rsplit("/", 1)
        store = ObjectStore(
            HTTPStore.from_url(base, client_options={"allow_http": True}), read_only=True
        )
        self.arr = zarr.open_array(store=store, path=name, mode="r")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        crops = [
            self.arr[tuple(slice(int(a), int(a) + c) for a, c in zip(lo, CROP, strict=True))]
            for lo in batch["lo"]
        ]
        return {"crop": np.stack(crops), "lo": batch["lo"]}


def run_ray_zarr(url: str, bxs: list, prefetch: int) -> int:
    import ray.data

    _ray()
    shape = tuple(lz.open(url).shape)
    starts = _ray_starts(shape, len(bxs))
    ds = ray.data.from_items([{"lo": lo} for lo in starts], override_num_blocks=CORES * 2)
    ds = ds.map_batches(
        ZarrCrops,
        fn_constructor_args=(url,),
        batch_size=8,
        compute=ray.data.ActorPoolStrategy(size=CORES),
        num_cpus=1,
    )
    n = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        n += batch["crop"].nbytes
    return n


RUN = {
    "lsio": run_lsio,
    "zarr-python": run_zarr,
    "tensorstore": run_tensorstore,
    "ray-lsio": run_ray_lsio,
    "ray-zarr": run_ray_zarr,
}


def _log_counts(log: str, start: int) -> tuple[int, int]:
    """Requests and body bytes logged after byte ``start`` of nginx's access log."""
    with open(log) as f:
        f.seek(start)
        lines = f.read().split("\n")
    n = total = 0
    for line in lines:
        parts = line.split()
        if len(parts) == 2:
            n += 1
            total += int(parts[1])
    return n, total


class ProxyProcess:
    """``FaultProxy`` (latency only) in a process of its own, so that its threads do not
    share the readers' interpreter (and GIL); stopped by :meth:`close`."""

    def __init__(self, port: int, rtt_s: float) -> None:
        tests = str(Path(__file__).resolve().parent.parent / "tests")
        code = (
            f"import sys, time; sys.path.insert(0, {tests!r}); from _servers import FaultProxy; "
            f"p = FaultProxy(('127.0.0.1', {port}), rtt_s={rtt_s!r}); "
            "print(p.endpoint, flush=True); time.sleep(1e9)"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.endpoint = self.proc.stdout.readline().strip()
        if not self.endpoint:
            raise RuntimeError("the latency proxy did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def main() -> int:
    bz = bc.bench_zarr()
    work = tempfile.mkdtemp(prefix="lsio-remote-bench-")
    log = os.path.join(work, "access.log")
    rows = []
    loads: list[float] = []
    print(f"started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()}")
    paths = {layout: bz.dataset(layout) for layout in LAYOUTS}
    if "crops" in WORKLOADS and set(READERS) & set(RAY_READERS):
        _ray()  # started before any measurement
    roots = {os.path.dirname(p) for p in paths.values()}
    assert len(roots) == 1, roots
    with nginx_server(roots.pop(), access_log=log) as base:
        port = int(base.rsplit(":", 1)[1])
        for rtt in RTTS:
            proxy = ProxyProcess(port, rtt / 1000) if rtt else None
            ep = proxy.endpoint if proxy else base
            try:
                for layout, path in paths.items():
                    url = f"{ep}/{os.path.basename(path)}"
                    for reader in (r for r in RAY_READERS if r in READERS and "crops" in WORKLOADS):
                        RUN[reader](url, bz.boxes("crops")[: 2 * CORES], PREFETCH)  # warm-up
                    for wl in WORKLOADS:
                        rows += _workload(bz, url, layout, wl, rtt, log, loads)
            finally:
                if proxy:
                    proxy.close()
    print()
    print(
        f"ended {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {REPS} reps, "
        f"load average (1 min) before the measurements: min {min(loads):.2f}, "
        f"median {statistics.median(loads):.2f}, max {max(loads):.2f}"
    )
    print(
        bc.md_table(
            [
                "layout",
                "workload",
                "RTT ms",
                "reader",
                "MiB/s min / median / max",
                "requests / MiB",
                "sent / used",
            ],
            rows,
        )
    )
    return 0


def _workload(
    bz: Any, url: str, layout: str, wl: str, rtt: float, log: str, loads: list[float]
) -> list[list[str]]:
    """Every reader on one workload, ``REPS`` interleaved rounds; the table's rows."""
    bxs = bz.boxes(wl)
    pf = bz.prefetch_for(wl) if wl != "crops" else PREFETCH
    readers = [r for r in READERS if wl == "crops" or r not in RAY_READERS]
    got: dict[str, list[float]] = {r: [] for r in readers}
    counts: dict[str, tuple[int, int, int]] = {}
    for rep in range(REPS):
        order = readers if rep % 2 == 0 else readers[::-1]
        for reader in order:
            time.sleep(0.2)
            loads.append(os.getloadavg()[0])
            start = os.path.getsize(log) if os.path.exists(log) else 0
            t = time.perf_counter()
            out = RUN[reader](url, bxs, pf)
            dt = time.perf_counter() - t
            time.sleep(0.3)  # nginx writes its log lines
            got[reader].append(out / MIB / dt)
            reqs, sent = _log_counts(log, start)
            counts[reader] = (reqs, sent, out)
            print(
                f"{layout} rtt {rtt:g} ms {wl:7s} {reader:12s} {out / MIB / dt:9.1f} MiB/s "
                f"{reqs} requests {sent / MIB:.1f} MiB sent, load {loads[-1]:.2f}",
                flush=True,
            )
    rows = []
    for reader in readers:
        lo, med, hi = bc.summary(got[reader])
        reqs, sent, out = counts[reader]
        rows.append(
            [
                layout,
                wl,
                f"{rtt:g}",
                reader,
                f"{lo:.1f} / {med:.1f} / {hi:.1f}",
                f"{reqs / (out / MIB):.2f}",
                f"{sent / out:.2f}",
            ]
        )
    best = {r: statistics.median(got[r]) for r in readers}
    for mine, peers in (("lsio", ("zarr-python", "tensorstore")), ("ray-lsio", ("ray-zarr",))):
        for peer in peers:
            if mine in best and peer in best:
                print(f"  {mine} / {peer}: {best[mine] / best[peer]:.2f}x", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
