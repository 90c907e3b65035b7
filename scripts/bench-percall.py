#!/usr/bin/env python3
"""One crop per call, lsio ``a[key]`` against tensorstore ``t[key].read().result()``, in
one process, interleaved rounds on the same keys (benchmarks/results/zarr-percall.md).

``python scripts/bench-percall.py N [seed]``: N random (8,256,256) crops per round of the
bench-zarr array (``/tmp/lsio-zarr-bench/v3-chunks-512x1024x1024.zarr``, made by
``scripts/bench-zarr.py``), ``$ROUNDS`` (5) rounds, the order flipped each round; prints
crops/s min / median / max and the process CPU time per crop (median) of each reader and
the median per-round ratio.  ``$ALIGNED=1``: crops on chunk boundaries (8 whole chunks a
call instead of 32 parts of chunks).  ``$IO_THREAD=1`` adds ``lsio-io``: the same calls
with the service's ``call_files`` at 0, so every call goes through the IO thread (the
default reads calls of few cached chunk files on the calling thread: lsio_ray.zarr.quick),
and ``$CALL_FILES`` sets ``call_files`` for ``lsio``.
"""

import os
import resource
import sys
import time

import numpy as np
import tensorstore as ts

import lsio_ray.zarr as lz

P = os.environ.get("LSIO_PERCALL_ARRAY", "/tmp/lsio-zarr-bench/v3-chunks-512x1024x1024.zarr")
a = lz.open(P)
t = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": P}}).result()
rng = np.random.default_rng(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
N = int(sys.argv[1])
ALIGNED = os.environ.get("ALIGNED", "0") == "1"


def keys():
    out = []
    for _ in range(N):
        z = rng.integers(0, 512 - 8)
        y = rng.integers(0, 1024 - 256)
        x = rng.integers(0, 1024 - 256)
        if ALIGNED:
            y, x = y - y % 256, x - x % 256
        out.append((slice(z, z + 8), slice(y, y + 256), slice(x, x + 256)))
    return out


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(name, f, ks):
    c0 = cpu()
    t0 = time.perf_counter()
    for k in ks:
        f(k)
    dt = time.perf_counter() - t0
    dc = cpu() - c0
    return N / dt, 1000 * dc / N


svc = a.loader
CALL_FILES = int(os.environ.get("CALL_FILES", svc.call_files))


def lsio(k, files=CALL_FILES):
    svc.call_files = files
    return a[k]


readers = {"lsio": lsio, "ts": lambda k: t[k].read().result()}
if os.environ.get("IO_THREAD", "0") == "1":
    readers["lsio-io"] = lambda k: lsio(k, 0)
for f in readers.values():
    for k in keys()[:10]:
        f(k)
res = {n: [] for n in readers}
for r in range(int(os.environ.get("ROUNDS", "5"))):
    ks = keys()
    order = list(readers) if r % 2 == 0 else list(readers)[::-1]
    for n in order:
        res[n].append(run(n, readers[n], ks))
for n, v in res.items():
    rates = sorted(x[0] for x in v)
    cp = np.median([x[1] for x in v])
    print(
        f"{n}: {rates[0]:.1f} / {np.median(rates):.1f} / {rates[-1]:.1f} crops/s, "
        f"CPU {cp:.2f} ms/crop"
    )
for n in res:
    if n != "ts":
        print(
            f"{n}/ts ratio med",
            np.median([x[0] / y[0] for x, y in zip(res[n], res["ts"], strict=True)]),
        )
print({k: v for k, v in svc.stats().items() if k.startswith("call")})
