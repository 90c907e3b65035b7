#!/usr/bin/env python3
"""CPU per MiB of Zarr reads over HTTP (0 ms round trip by default): two lsio_ray checkouts and
tensorstore, interleaved in one run (issue 15).

Usage: ``bench-remote-cpu.py BEFORE_DIR [AFTER_DIR]`` (``AFTER_DIR`` defaults to this
checkout).  nginx (as the tests start it) serves bench-zarr's arrays
(``LSIO_ZARR_BENCH_SHAPE`` / ``LSIO_ZARR_BENCH_DIR``, made by ``scripts/bench-zarr.py``'s
code if missing); each reader runs in a worker process of its own that stays up for the
whole run (``before`` and ``after`` import ``lsio_ray`` from their checkout), and reads
one workload per command.  The worker measures its own CPU time (``getrusage`` of the
process: all its threads) and wall time around the read.  ``$LSIO_REMOTE_BENCH_REPS``
(5) rounds, the readers in turn, every other round reversed; layouts, workloads and
readers as in ``bench-remote.py`` (``LSIO_REMOTE_BENCH_LAYOUTS``,
``LSIO_REMOTE_BENCH_WORKLOADS``, ``LSIO_REMOTE_BENCH_READERS``: ``before,after,tensorstore``;
``after@VAR=value`` runs ``after`` with an environment variable set;
``$LSIO_REMOTE_BENCH_ROOTS``, ``name=/path,...``, names more checkouts).  Prints CPU ms
per MiB of output and MiB/s, min / median / max.  ``$LSIO_REMOTE_BENCH_RTT_MS`` (0) puts
bench-remote's latency proxy before nginx.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

MIB = 1 << 20

WORKER = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
kind = sys.argv[2]

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def regions(bxs):
    return [tuple(slice(a, b) for a, b in zip(lo, hi)) for lo, hi in bxs]

def run_lsio(url, bxs, pf):
    import lsio_ray.zarr as lz
    arr = lz.open(url)
    n = 0
    for crop in arr.crops(regions(bxs), prefetch=pf):
        n += crop.nbytes
    return n

def run_ts(url, bxs, pf):
    import tensorstore as ts
    base, name = url.rsplit("/", 1)
    arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "http", "base_url": base,
                   "path": name + "/"}}, open=True, read=True).result()
    n = 0
    window = []
    for r in regions(bxs):
        window.append(arr[r].read())
        if len(window) >= pf:
            n += window.pop(0).result().nbytes
    for fut in window:
        n += fut.result().nbytes
    return n

run = run_ts if kind == "tensorstore" else run_lsio
if kind != "tensorstore":
    import lsio_ray
    print(json.dumps({"file": lsio_ray.__file__}), flush=True)
else:
    print(json.dumps({"file": "tensorstore"}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    c0, t0 = cpu(), time.perf_counter()
    n = run(cmd["url"], cmd["boxes"], cmd["prefetch"])
    dt, dc = time.perf_counter() - t0, cpu() - c0
    print(json.dumps({"bytes": n, "wall": dt, "cpu": dc}), flush=True)
"""


class Worker:
    """One reader in a process of its own, reading on command."""

    def __init__(self, kind: str, root: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, root, kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": root, **env},
        )
        self.file = self._answer()["file"]

    def _answer(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a bench worker died")
        return json.loads(line)

    def read(self, url: str, boxes: list, prefetch: int) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"url": url, "boxes": boxes, "prefetch": prefetch}))
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _proxy(base: str, rtt_ms: float) -> Any:
    """bench-remote's latency proxy (a process of its own) before nginx, or None at 0 ms."""
    if not rtt_ms:
        return None
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_remote", HERE / "bench-remote.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ProxyProcess(int(base.rsplit(":", 1)[1]), rtt_ms / 1000)


def _list(env: str, default: str) -> list[str]:
    return [x for x in os.environ.get(env, default).split(",") if x]


def main() -> int:
    import bench_common as bc
    from _servers import nginx_server

    before = os.path.abspath(sys.argv[1])
    after = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else str(HERE.parent)
    reps = int(os.environ.get("LSIO_REMOTE_BENCH_REPS", "5"))
    layouts = _list("LSIO_REMOTE_BENCH_LAYOUTS", "v3-chunks,v3-shards")
    workloads = _list("LSIO_REMOTE_BENCH_WORKLOADS", "crops,slabs")
    readers = _list("LSIO_REMOTE_BENCH_READERS", "before,after,tensorstore")
    rtt_ms = float(os.environ.get("LSIO_REMOTE_BENCH_RTT_MS", "0"))
    bz = bc.bench_zarr()
    paths = {layout: bz.dataset(layout) for layout in layouts}
    roots = {os.path.dirname(p) for p in paths.values()}
    assert len(roots) == 1, roots
    roots_of = {"before": before, "after": after, "tensorstore": after}
    for spec in _list("LSIO_REMOTE_BENCH_ROOTS", ""):  # more checkouts: "name=/path"
        name, _, root = spec.partition("=")
        roots_of[name] = os.path.abspath(root)
    workers = {}
    for r in readers:  # "after@LSIO_REMOTE_LOOP=asyncio": a setting of its own
        kind, _, extra = r.partition("@")
        env = dict([extra.split("=", 1)]) if extra else {}
        workers[r] = Worker(kind, roots_of[kind], env)
    for r, w in workers.items():
        print(f"# {r}: {w.file}")
    print(f"started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()}")
    loads: list[float] = []
    rows = []
    work = tempfile.mkdtemp(prefix="lsio-remote-cpu-")
    try:
        with nginx_server(roots.pop(), access_log=os.path.join(work, "access.log")) as ngx:
            proxy = _proxy(ngx, rtt_ms)
            base = proxy.endpoint if proxy else ngx
            try:
                for layout, path in paths.items():
                    url = f"{base}/{os.path.basename(path)}"
                    for wl in workloads:
                        bxs = [[list(lo), list(hi)] for lo, hi in bz.boxes(wl)]
                        pf = bz.prefetch_for(wl)
                        for w in workers.values():  # warm-up: imports, page cache
                            w.read(url, bxs[:4], pf)
                        got: dict[str, list[tuple[float, float]]] = {r: [] for r in readers}
                        for rep in range(reps):
                            for r in readers if rep % 2 == 0 else readers[::-1]:
                                time.sleep(0.2)
                                loads.append(os.getloadavg()[0])
                                a = workers[r].read(url, bxs, pf)
                                mib = a["bytes"] / MIB
                                got[r].append((a["cpu"] * 1000 / mib, mib / a["wall"]))
                                print(
                                    f"{layout} {wl:6s} {r:12s} {got[r][-1][0]:6.2f} ms CPU/MiB "
                                    f"{got[r][-1][1]:7.1f} MiB/s load {loads[-1]:.2f}",
                                    flush=True,
                                )
                        for r in readers:
                            c = bc.summary([x[0] for x in got[r]])
                            s = bc.summary([x[1] for x in got[r]])
                            rows.append(
                                [
                                    layout,
                                    wl,
                                    r,
                                    " / ".join(f"{v:.2f}" for v in c),
                                    " / ".join(f"{v:.1f}" for v in s),
                                ]
                            )
            finally:
                if proxy:
                    proxy.close()
    finally:
        for w in workers.values():
            w.close()
    print()
    print(
        f"ended {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {reps} reps, load average "
        f"(1 min) before the measurements: min {min(loads):.2f}, median "
        f"{statistics.median(loads):.2f}, max {max(loads):.2f}"
    )
    print(
        bc.md_table(
            ["layout", "workload", "reader", "CPU ms / MiB min / median / max", "MiB/s"],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
