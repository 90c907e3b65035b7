#!/usr/bin/env python3
"""Zarr reads over HTTP: lsio_ray against zarr-python (its obstore-backed ObjectStore)
and tensorstore (its HTTP kvstore), the same server, the same array, one run.

The array is bench-zarr's (``scripts/bench-zarr.py``: v3, (512,1024,1024) float32,
chunks (1,256,256), zstd 3; ``LSIO_ZARR_BENCH_SHAPE`` / ``LSIO_ZARR_BENCH_DIR``), served
by nginx (from Debian, as the tests start it) on 127.0.0.1.  Each round trip time in
``$LSIO_REMOTE_BENCH_RTT_MS`` (default ``0,20``) puts a latency proxy (``tests/_servers``
``FaultProxy``: half the round trip before each request is forwarded, half before its
answer's first byte) between the readers and nginx; 0 reads nginx directly.

Workloads (bench-zarr's boxes): ``crops`` (``$LSIO_ZARR_BENCH_CROPS``, 200, of
(8,256,256)), ``slabs`` (the whole array, 32 planes a read), ``series`` (16 time series
``[:, y:y+256, x:x+256]``); ``$LSIO_REMOTE_BENCH_WORKLOADS`` chooses.  Readers
(``$LSIO_REMOTE_BENCH_READERS``): ``lsio`` (``Array.crops`` kept ``prefetch`` deep),
``zarr-python`` (``zarr.storage.ObjectStore`` over obstore's ``HTTPStore``, one read at a
time: it is concurrent inside a read), ``tensorstore`` (reads kept ``prefetch`` deep).
``$LSIO_REMOTE_BENCH_REPS`` (3) interleaved repetitions.

Printed per workload, RTT and reader: MiB/s of output (min / median / max), requests per
MiB of output and bytes transferred per byte used (both counted from nginx's access log
for one repetition, identical across repetitions).  The server here is nginx on the same
2 cores: with 0 ms the readers compete with it for CPU; with 20 ms latency binds.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import bench_common as bc
from _servers import FaultProxy, nginx_server

import lsio_ray.zarr as lz


def _list(env: str, default: str) -> list[str]:
    return [x for x in os.environ.get(env, default).split(",") if x]


RTTS = [float(x) for x in _list("LSIO_REMOTE_BENCH_RTT_MS", "0,20")]
WORKLOADS = _list("LSIO_REMOTE_BENCH_WORKLOADS", "crops,slabs,series")
READERS = _list("LSIO_REMOTE_BENCH_READERS", "lsio,zarr-python,tensorstore")
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


RUN = {"lsio": run_lsio, "zarr-python": run_zarr, "tensorstore": run_tensorstore}


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


def main() -> int:
    bz = bc.bench_zarr()
    path = bz.dataset("v3-chunks")
    root, name = os.path.split(path)
    work = tempfile.mkdtemp(prefix="lsio-remote-bench-")
    log = os.path.join(work, "access.log")
    rows = []
    with nginx_server(root, access_log=log) as base:
        port = int(base.rsplit(":", 1)[1])
        for rtt in RTTS:
            proxy = FaultProxy(("127.0.0.1", port), rtt_s=rtt / 1000) if rtt else None
            ep = proxy.endpoint if proxy else base
            url = f"{ep}/{name}"
            try:
                for wl in WORKLOADS:
                    bxs = bz.boxes(wl)
                    pf = bz.prefetch_for(wl) if wl != "crops" else PREFETCH
                    got: dict[str, list[float]] = {r: [] for r in READERS}
                    counts: dict[str, tuple[int, int, int]] = {}
                    for rep in range(REPS):
                        order = READERS if rep % 2 == 0 else READERS[::-1]
                        for reader in order:
                            time.sleep(0.2)
                            start = os.path.getsize(log) if os.path.exists(log) else 0
                            t = time.perf_counter()
                            out = RUN[reader](url, bxs, pf)
                            dt = time.perf_counter() - t
                            time.sleep(0.3)  # nginx writes its log lines
                            got[reader].append(out / MIB / dt)
                            reqs, sent = _log_counts(log, start)
                            counts[reader] = (reqs, sent, out)
                            print(
                                f"rtt {rtt:g} ms {wl:7s} {reader:12s} {out / MIB / dt:9.1f} MiB/s "
                                f"{reqs} requests {sent / MIB:.1f} MiB sent",
                                flush=True,
                            )
                    for reader in READERS:
                        lo, med, hi = bc.summary(got[reader])
                        reqs, sent, out = counts[reader]
                        rows.append(
                            [
                                wl,
                                f"{rtt:g}",
                                reader,
                                f"{lo:.1f} / {med:.1f} / {hi:.1f}",
                                f"{reqs / (out / MIB):.2f}",
                                f"{sent / out:.2f}",
                            ]
                        )
                    best = {r: statistics.median(got[r]) for r in READERS}
                    if "lsio" in best:
                        peers = {r: v for r, v in best.items() if r != "lsio"}
                        if peers:
                            top = max(peers, key=lambda r: peers[r])
                            print(f"  lsio / {top}: {best['lsio'] / peers[top]:.2f}x", flush=True)
            finally:
                if proxy:
                    proxy.close()
    print()
    print(f"ended {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {REPS} reps")
    print(
        bc.md_table(
            [
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


if __name__ == "__main__":
    sys.exit(main())
