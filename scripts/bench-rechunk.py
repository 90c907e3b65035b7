#!/usr/bin/env python3
"""Re-chunk benchmark: lsio_ray.rechunk against its peers and the codec limit
(benchmarks/results/rechunk.md).

Re-chunks the bench-zarr array (``scripts/bench-zarr.py``, v3, float32, chunks
(1,256,256), zstd 3; default shape (512,1024,1024) = 2 GiB decoded, reused if it exists)
into chunks (16,256,256), zstd 3, unsharded v3, side by side in one run, interleaved,
``$LSIO_RECHUNK_BENCH_REPS`` (3) repetitions:

* ``lsio_ray.rechunk`` on a local Ray cluster started by this process
  (``ray.init(address="local", num_cpus=2, include_dashboard=False)``); with
  ``lsio-actors`` (not in the default set) also ``io="actors"``, every block through
  the IO actors' streams; with ``lsio-direct`` (not in the default set either)
  ``direct=True``, the input files read with O_DIRECT;
* ``ray tasks + zarr-python``: what a Ray user writes today -- one task (num_cpus=1) per
  output chunk-row (16 planes), reading the source and writing the destination with
  zarr-python;
* ``tensorstore``: one process, source and a new destination opened with ``ts.open``
  specs, copied slab by slab (32 planes, two slabs in flight);
* ``zarr-python``: one process, slab-wise copy (32 planes);
* ``codec limit``: every source chunk decoded and every output chunk encoded with
  numcodecs Zstd(level=3) on 2 threads, compressed source already in memory, nothing else.

Memory: peak over the run of the summed PSS (and RSS) of the whole process tree, sampled
every 0.1 s from /proc, in one extra run of each method after the timed ones (sampling
the ~15 processes of a Ray tree costs ~12% of a core, which would slow only the Ray
methods: the timed runs are not sampled).  The single-process methods run in a child
process each (their tree: that child); the Ray methods run in this driver, whose tree
holds the whole local Ray cluster (GCS, raylet with the object store, workers), so their
figure includes the idle cluster, given as "idle" next to it.  For its memory run each
Ray method gets a fresh cluster of its own, measured idle 2 s after ``ray.init``; the
run starts its workers (and IO actor) cold, and all of that counts as its memory, but
no other method's leftovers do.  PSS splits shared pages
(the object store's shared memory) between the processes mapping them, RSS counts them
once per process.

The page cache holds the compressed source (about 700 MiB) after the first run: on 2 cores
the job is bound by the codec (zstd-3 encode ~160-195 MiB/s per core), not the disk.
Outputs are not fsynced (by no method); ``sync`` runs before each measurement.  Every
output is checked against the source on 8 sampled boxes.

Results: printed and written to ``$LSIO_RECHUNK_BENCH_OUT``
(/tmp/lsio-rechunk-bench/results.md).  ``LSIO_RECHUNK_BENCH_METHODS`` picks methods;
``LSIO_RECHUNK_BENCH_BLOCK_BYTES`` sets lsio's ``block_bytes`` (default: rechunk's);
``LSIO_RECHUNK_BENCH_COLD=1`` drops the page cache before every timed run (root only),
so each reads its source from the disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc

WORK = os.environ.get("LSIO_RECHUNK_BENCH_DIR", "/tmp/lsio-rechunk-bench")
REPS = int(os.environ.get("LSIO_RECHUNK_BENCH_REPS", "3"))
COLD = os.environ.get("LSIO_RECHUNK_BENCH_COLD", "0") == "1"
OUT = os.environ.get("LSIO_RECHUNK_BENCH_OUT", os.path.join(WORK, "results.md"))
NEW_CHUNKS = (16, 256, 256)
BLOCK_BYTES = int(os.environ.get("LSIO_RECHUNK_BENCH_BLOCK_BYTES", "0"))  # 0: the default
SLAB = 32
METHODS = [
    m.strip()
    for m in os.environ.get(
        "LSIO_RECHUNK_BENCH_METHODS", "lsio,ray+zarr-python,tensorstore,zarr-python,limit"
    ).split(",")
    if m.strip()
]
SUBPROCESS = {"tensorstore", "zarr-python", "limit"}


# -- single-process methods (run in a child: `--one METHOD SRC DST`) ------------------------


def one_tensorstore(src: str, dst: str) -> None:
    import tensorstore as ts

    a = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": src}}).result()
    meta = {
        "shape": list(a.shape),
        "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(NEW_CHUNKS)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "codecs": [
            {"name": "bytes", "configuration": {"endian": "little"}},
            {"name": "zstd", "configuration": {"level": 3, "checksum": False}},
        ],
        "fill_value": 0.0,
    }
    b = ts.open(
        {"driver": "zarr3", "kvstore": {"driver": "file", "path": dst}, "metadata": meta},
        create=True,
        delete_existing=True,
    ).result()
    z = a.shape[0]
    pending: list[Any] = []
    for z0 in range(0, z, SLAB):
        z1 = min(z, z0 + SLAB)
        pending.append(b[z0:z1].write(a[z0:z1]))
        if len(pending) >= 2:
            pending.pop(0).result()
    for f in pending:
        f.result()


def _zarr_dest(src: str, dst: str) -> Any:
    import zarr
    from zarr.codecs import ZstdCodec

    a = zarr.open_array(src, mode="r")
    return zarr.create_array(
        dst,
        shape=a.shape,
        dtype=a.dtype,
        chunks=NEW_CHUNKS,
        compressors=[ZstdCodec(level=3)],
        fill_value=0.0,
        overwrite=True,
    )


def one_zarr(src: str, dst: str) -> None:
    import zarr

    a = zarr.open_array(src, mode="r")
    b = _zarr_dest(src, dst)
    for z0 in range(0, a.shape[0], SLAB):
        z1 = min(a.shape[0], z0 + SLAB)
        b[z0:z1] = a[z0:z1]


class CodecLimit:
    """Decode every source chunk into its output chunk, encode every output chunk."""

    def __init__(self, src: str) -> None:
        import numcodecs

        meta = json.load(open(os.path.join(src, "zarr.json")))
        self.shape = tuple(meta["shape"])
        cshape = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        assert cshape[0] == 1 and tuple(cshape[1:]) == NEW_CHUNKS[1:], cshape
        z, y, x = self.shape
        ny, nx = y // cshape[1], x // cshape[2]
        self.blobs = {}
        for k in range(z):
            for j in range(ny):
                for i in range(nx):
                    with open(os.path.join(src, "c", str(k), str(j), str(i)), "rb") as fh:
                        self.blobs[k, j, i] = fh.read()
        self.units = [
            (k0, j, i) for k0 in range(0, z, NEW_CHUNKS[0]) for j in range(ny) for i in range(nx)
        ]
        self.dec = numcodecs.Zstd()
        self.enc = numcodecs.Zstd(level=3)

    def run(self, workers: int = 2) -> int:
        def work(units: list[tuple[int, int, int]]) -> int:
            buf = np.empty(NEW_CHUNKS, np.float32)
            n = 0
            for k0, j, i in units:
                kz = min(NEW_CHUNKS[0], self.shape[0] - k0)
                for d in range(kz):
                    self.dec.decode(self.blobs[k0 + d, j, i], out=buf[d])
                n += len(self.enc.encode(buf[:kz]))
            return n

        parts = [self.units[w::workers] for w in range(workers)]
        with ThreadPoolExecutor(workers) as ex:
            return sum(ex.map(work, parts))


def child_main(method: str, src: str, dst: str) -> int:
    if method == "limit":
        lim = CodecLimit(src)
        t0 = time.perf_counter()
        nout = lim.run()
        wall = time.perf_counter() - t0
        print(json.dumps({"wall_s": wall, "encoded_bytes": nout}))
        return 0
    fn = {"tensorstore": one_tensorstore, "zarr-python": one_zarr}[method]
    t0 = time.perf_counter()
    fn(src, dst)
    print(json.dumps({"wall_s": time.perf_counter() - t0}))
    return 0


# -- Ray methods (in this driver) -----------------------------------------------------------


def _zarr_slab_task(src: str, dst: str, z0: int, z1: int) -> int:
    import zarr

    a = zarr.open_array(src, mode="r")
    b = zarr.open_array(dst, mode="r+")
    b[z0:z1] = a[z0:z1]
    return z1 - z0


def run_ray_zarr(task: Any, src: str, dst: str, nz: int) -> None:
    import ray

    _zarr_dest(src, dst)
    refs = [
        task.remote(src, dst, z0, min(nz, z0 + NEW_CHUNKS[0])) for z0 in range(0, nz, NEW_CHUNKS[0])
    ]
    assert sum(ray.get(refs)) == nz


def run_lsio(src: str, dst: str, io: str = "auto", direct: bool = False) -> None:
    import lsio_ray

    kw = {"block_bytes": BLOCK_BYTES} if BLOCK_BYTES else {}
    lsio_ray.rechunk(
        src, dst, chunks=NEW_CHUNKS, codec="zstd:3", overwrite=True, io=io, direct=direct, **kw
    )


# -- checking -------------------------------------------------------------------------------


def verify(src: str, dst: str, shape: tuple[int, ...], seed: int) -> None:
    """The destination has the new chunking and equals the source on 8 sampled boxes."""
    import zarr

    a = zarr.open_array(src, mode="r")
    b = zarr.open_array(dst, mode="r")
    assert tuple(b.chunks) == NEW_CHUNKS, (dst, b.chunks)
    assert tuple(b.shape) == tuple(shape)
    rng = np.random.default_rng(seed)
    for _ in range(8):
        box = []
        for n, c in zip(shape, (20, 300, 300), strict=True):
            c = min(c, n)
            lo = int(rng.integers(0, n - c + 1))
            box.append(slice(lo, lo + c))
        if not np.array_equal(a[tuple(box)], b[tuple(box)]):
            raise AssertionError(f"{dst}: differs from the source at {box}")


# -- driver ---------------------------------------------------------------------------------


def measure_child(method: str, src: str, dst: str, sample: bool) -> dict[str, float]:
    mem = bc.TreeMemory()
    if sample:
        mem.start()
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--one", method, src, dst],
        stdout=subprocess.PIPE,
        text=True,
    )
    mem.root = proc.pid
    out, _ = proc.communicate()
    if sample:
        mem.stop()
    if proc.returncode:
        raise RuntimeError(f"{method} failed (exit {proc.returncode})")
    res = json.loads(out.strip().splitlines()[-1])
    return {"wall_s": res["wall_s"], "pss": mem.peak_pss, "rss": mem.peak_rss, "idle_pss": 0}


def measure_here(fn: Any, sample: bool, idle: tuple[int, int]) -> dict[str, float]:
    idle_rss, idle_pss = idle if sample else (0, 0)
    mem = bc.TreeMemory(os.getpid())
    if sample:
        mem.start()
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    if sample:
        mem.stop()
    return {
        "wall_s": wall,
        "pss": mem.peak_pss,
        "rss": mem.peak_rss,
        "idle_pss": idle_pss,
        "idle_rss": idle_rss,
    }


def main() -> int:
    import ray

    src = bc.zarr_dataset("v3-chunks")
    meta = json.load(open(os.path.join(src, "zarr.json")))
    shape = tuple(meta["shape"])
    nbytes = int(np.prod(shape)) * 4
    os.makedirs(WORK, exist_ok=True)

    def start_cluster() -> tuple[int, int]:
        """A fresh local cluster; returns its idle (RSS, PSS) 2 s after start-up."""
        bc.init_local_ray()
        time.sleep(2)
        return bc.tree_memory(os.getpid())

    start_cluster()
    task = ray.remote(num_cpus=1)(_zarr_slab_task)
    here = {
        "lsio": lambda d: run_lsio(src, d),
        "lsio-actors": lambda d: run_lsio(src, d, io="actors"),
        "lsio-direct": lambda d: run_lsio(src, d, direct=True),
        "ray+zarr-python": lambda d: run_ray_zarr(task, src, d, shape[0]),
    }
    label = {
        "lsio": "lsio_ray.rechunk (Ray, 2 CPUs)",
        "lsio-actors": "lsio_ray.rechunk io=actors (Ray, 2 CPUs)",
        "lsio-direct": "lsio_ray.rechunk direct=True (Ray, 2 CPUs)",
        "ray+zarr-python": "Ray tasks + zarr-python (2 CPUs)",
        "tensorstore": "tensorstore, one process",
        "zarr-python": "zarr-python, one process",
        "limit": "codec limit: numcodecs zstd-3 dec+enc, 2 threads",
    }
    results: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    memory: dict[str, dict[str, float]] = {}
    # warm-up: Ray workers, imports, page cache of the source (not timed)
    for m in METHODS:
        if m in here:
            d = os.path.join(WORK, f"warm-{m}.zarr")
            shutil.rmtree(d, ignore_errors=True)
            here[m](d)
            shutil.rmtree(d, ignore_errors=True)
    # REPS timed reps, then one memory rep (sampled, not timed); in the memory rep each
    # Ray method runs on a cluster of its own, started for it, so that no other method's
    # leftovers (object store pages, an IO actor, warm workers) count as its memory
    for rep in range(REPS + 1):
        sample = rep == REPS
        for m in METHODS:
            dst = os.path.join(WORK, f"{m}.zarr")
            shutil.rmtree(dst, ignore_errors=True)
            os.sync()
            if COLD and not sample and not bc.drop_caches():
                raise SystemExit("LSIO_RECHUNK_BENCH_COLD=1 needs to drop the page cache: root")
            if m in SUBPROCESS:
                r = measure_child(m, src, dst, sample)
            elif sample:
                ray.shutdown()
                idle = start_cluster()
                r = measure_here(lambda m=m, dst=dst: here[m](dst), sample, idle)
            else:
                r = measure_here(lambda m=m, dst=dst: here[m](dst), sample, (0, 0))
            if m != "limit":
                verify(src, dst, shape, seed=rep)
            if sample:
                memory[m] = r
            else:
                results[m].append(r)
            print(
                f"# {'memory run' if sample else f'rep {rep}'} {m}: {r['wall_s']:.2f} s, "
                f"peak PSS {r['pss'] / 2**20:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
    for m in METHODS:
        shutil.rmtree(os.path.join(WORK, f"{m}.zarr"), ignore_errors=True)
    ray.shutdown()

    mib = nbytes / 2**20
    med = {m: bc.summary([r["wall_s"] for r in rs])[1] for m, rs in results.items()}
    rows = []
    for m, rs in results.items():
        lo, md, hi = bc.summary([r["wall_s"] for r in rs])
        pss = memory[m]["pss"] / 2**20
        rss = memory[m]["rss"] / 2**20
        idle = memory[m]["idle_pss"] / 2**20
        mem = "-" if m == "limit" else f"{pss:,.0f} / {rss:,.0f}"
        if idle:
            mem += f" (idle {idle:,.0f})"
        lim = f"{100 * med['limit'] / md:.0f}%" if "limit" in med and m != "limit" else "-"
        ts = f"{med['tensorstore'] / md:.2f}x" if "tensorstore" in med else "-"
        rows.append(
            [
                label[m],
                f"{lo:.2f} / {md:.2f} / {hi:.2f}",
                f"{mib / hi:,.0f} / {mib / md:,.0f} / {mib / lo:,.0f}",
                mem,
                lim,
                ts,
            ]
        )
    head = (
        f"Re-chunk {shape} float32 ({mib:,.0f} MiB decoded), chunks (1,256,256) zstd-3 -> "
        f"{NEW_CHUNKS} zstd-3, {os.cpu_count()} cores, {REPS} interleaved reps, "
        f"{'cold' if COLD else 'warm'} page cache, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    table = bc.md_table(
        [
            "method",
            "wall s min / med / max",
            "MiB/s min / med / max",
            "peak PSS / RSS MiB (tree)",
            "% codec limit",
            "vs tensorstore",
        ],
        rows,
    )
    text = f"{head}\n\n{table}\n"
    print(text)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        fh.write(text)
        fh.write("\n<!-- raw -->\n" + json.dumps({"timed": results, "memory": memory}) + "\n")
    print(f"# written to {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--one":
        sys.exit(child_main(sys.argv[2], sys.argv[3], sys.argv[4]))
    sys.exit(main())
