#!/usr/bin/env python3
"""Zarr read benchmark: lsio_ray.zarr against tensorstore and zarr-python, plus the limit.

Creates (once, then reuses) a float32 array of smooth data compressing about 3x with
zstd level 3, in three layouts, under ``$LSIO_ZARR_BENCH_DIR`` (default
/tmp/lsio-zarr-bench):

* ``v3-chunks``: Zarr v3, chunks (1,256,256), zstd 3;
* ``v3-shards``: Zarr v3, shards (32,1024,1024) of inner chunks (1,256,256), zstd 3;
* ``v2-blosc``: Zarr v2, chunks (1,256,256), blosc-zstd 3 with byte shuffle.

Then runs, interleaved, ``$LSIO_ZARR_BENCH_REPS`` (3) repetitions of each workload for
each reader and prints min/median/max:

* ``crops``: ``$LSIO_ZARR_BENCH_CROPS`` (200) random crops (8,256,256) at unaligned
  offsets;
* ``slabs``: the whole array in slabs of (32, Y, X);
* ``series``: 16 time series ``[:, y:y+256, x:x+256]`` at unaligned y, x;

``lsio-call`` / ``tensorstore-call`` (not run by default) read one box per call and
wait for it (``a[key]``, ``arr[key].read().result()``: a PyTorch ``Dataset``'s loop);
``lsio-call-prefetch`` the same with the next 4 boxes started ahead by
``Array.prefetch``; zarr-python always reads one box per call;

read by ``lsio`` (``Array.crops``, a fresh array per result), ``lsio-reuse`` (the same
with ``reuse=True``: a ring of output buffers), ``lsio-direct`` and
``lsio-reuse-direct`` (the same two with ``direct=True``: O_DIRECT reads, no page
cache; "warm" then means only that the device's own cache may hold the data),
tensorstore (reads kept ``prefetch`` deep), zarr-python (one read at a time: it is
concurrent inside a read) and ``zarrs`` (not run by default; the same with the zarrs codec
pipeline, ``pip install zarrs``);

and, in the same run, the decode limit: every chunk the workload touches (as often as it
touches it) decoded on all cores from bytes already in memory into one reused buffer,
nothing else, by the fastest decoder at hand -- lsio_ray's C one (libzstd / c-blosc with
a reused context) where the codec chain allows, else numcodecs.  A chunk the workload
uses only part of is decoded as a reader needs it (the C decoder stops a zstd chunk after
the block holding the part's last byte) and the part copied out.  ``limit-numcodecs`` (not
run by default) is the same through numcodecs, what zarr-python's pipeline calls.

Environment: ``LSIO_ZARR_BENCH_SHAPE`` (default 512,1024,1024),
``LSIO_ZARR_BENCH_LAYOUTS``, ``LSIO_ZARR_BENCH_WORKLOADS``, ``LSIO_ZARR_BENCH_READERS``
(comma lists), ``LSIO_ZARR_BENCH_PREFETCH`` (16), ``LSIO_ZARR_BENCH_JSON`` (a path to
write every measurement to), ``LSIO_ZARR_BENCH_CACHE`` (``warm``; ``warm,cold`` adds a
cold-cache run of every reader, the page cache dropped before it -- root only, and the
array's files read again before the next warm run; the
limits decode from memory, so they have no cold run and the cold rows' "% limit" is
against the same limit).  Warm runs read from the page cache: on two
cores these workloads are bound by decoding, not by the disk.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numcodecs
import numpy as np

import lsio_ray.zarr as lz
from lsio_ray.zarr.plan import select_chunks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc

ROOT = os.environ.get("LSIO_ZARR_BENCH_DIR", "/tmp/lsio-zarr-bench")
SHAPE = tuple(int(s) for s in os.environ.get("LSIO_ZARR_BENCH_SHAPE", "512,1024,1024").split(","))
REPS = int(os.environ.get("LSIO_ZARR_BENCH_REPS", "3"))
NCROPS = int(os.environ.get("LSIO_ZARR_BENCH_CROPS", "200"))
PREFETCH = int(os.environ.get("LSIO_ZARR_BENCH_PREFETCH", "16"))
CROP = (8, 256, 256)
NSERIES = 16
SLAB = 32
CORES = os.cpu_count() or 1


def _list(name: str, default: str) -> list[str]:
    return [s.strip() for s in os.environ.get(name, default).split(",") if s.strip()]


LAYOUTS = _list("LSIO_ZARR_BENCH_LAYOUTS", "v3-chunks,v3-shards,v2-blosc")
WORKLOADS = _list("LSIO_ZARR_BENCH_WORKLOADS", "crops,slabs,series")
READERS = _list("LSIO_ZARR_BENCH_READERS", "lsio,lsio-reuse,tensorstore,zarr-python,limit")
CACHES = _list("LSIO_ZARR_BENCH_CACHE", "warm")
if not set(CACHES) <= {"warm", "cold"}:
    raise SystemExit(f"LSIO_ZARR_BENCH_CACHE takes warm and cold, not {CACHES}")


# -- the dataset -------------------------------------------------------------------------


def smooth(z0: int, nz: int, ny: int, nx: int) -> np.ndarray:
    """Planes z0..z0+nz of a smooth field, quantised to 1/256 with a little noise:
    about 3x with zstd level 3."""
    z = np.arange(z0, z0 + nz, dtype=np.float32)[:, None, None]
    y = np.arange(ny, dtype=np.float32)[None, :, None]
    x = np.arange(nx, dtype=np.float32)[None, None, :]
    v = np.sin(x / 37.0 + z / 11.0) * np.cos(y / 53.0 - z / 17.0) + 0.5 * np.sin((x + y) / 97.0)
    v = v.astype(np.float32)
    v += np.random.default_rng(z0).normal(0, 0.01, v.shape).astype(np.float32)
    return (np.round(v * 256) / 256).astype(np.float32)


def layout_kwargs(name: str) -> dict[str, Any]:
    from zarr.codecs import ZstdCodec

    inner = (1, min(256, SHAPE[1]), min(256, SHAPE[2]))
    if name == "v3-chunks":
        return {"chunks": inner, "compressors": [ZstdCodec(level=3)]}
    if name == "v3-shards":
        return {
            "chunks": inner,
            "shards": (min(SLAB, SHAPE[0]), SHAPE[1], SHAPE[2]),
            "compressors": [ZstdCodec(level=3)],
        }
    if name == "v2-blosc":
        return {
            "chunks": inner,
            "zarr_format": 2,
            "compressors": numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE),
        }
    raise ValueError(f"unknown layout {name!r}")


def dataset(name: str) -> str:
    """The path of a layout's array, written with lsio_ray the first time."""
    tag = "x".join(map(str, SHAPE))
    path = os.path.join(ROOT, f"{name}-{tag}.zarr")
    done = os.path.join(ROOT, f"{name}-{tag}.complete")
    if os.path.exists(done):
        return path
    os.makedirs(ROOT, exist_ok=True)
    t0 = time.perf_counter()
    arr = lz.create(
        path, shape=SHAPE, dtype="float32", fill_value=0.0, overwrite=True, **layout_kwargs(name)
    )
    step = min(SLAB, SHAPE[0])
    for z0 in range(0, SHAPE[0], step):
        nz = min(step, SHAPE[0] - z0)
        arr[z0 : z0 + nz] = smooth(z0, nz, SHAPE[1], SHAPE[2])
    with open(done, "w") as fh:
        fh.write(f"{time.perf_counter() - t0:.1f} s\n")
    print(f"# wrote {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path


# -- workloads: lists of boxes -----------------------------------------------------------


def unaligned(rng: np.random.Generator, n: int, size: int, chunk: int) -> int:
    """A random offset in [0, n - size] that is not a multiple of ``chunk``."""
    while True:
        v = int(rng.integers(0, n - size + 1))
        if v % chunk or n - size < chunk:
            return v


def boxes(workload: str) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The (lo, hi) boxes a workload reads."""
    rng = np.random.default_rng(1234)
    z, y, x = SHAPE
    cy, cx = min(CROP[1], y), min(CROP[2], x)
    if workload == "crops":
        out = []
        for _ in range(NCROPS):
            lo = (
                int(rng.integers(0, z - CROP[0] + 1)),
                unaligned(rng, y, cy, 256),
                unaligned(rng, x, cx, 256),
            )
            out.append((lo, (lo[0] + CROP[0], lo[1] + cy, lo[2] + cx)))
        return out
    if workload == "slabs":
        step = min(SLAB, z)
        return [((z0, 0, 0), (min(z0 + step, z), y, x)) for z0 in range(0, z, step)]
    if workload == "series":
        out = []
        for _ in range(NSERIES):
            lo = (0, unaligned(rng, y, cy, 256), unaligned(rng, x, cx, 256))
            out.append((lo, (z, lo[1] + cy, lo[2] + cx)))
        return out
    raise ValueError(f"unknown workload {workload!r}")


def prefetch_for(workload: str) -> int:
    return {"crops": PREFETCH, "slabs": 2, "series": 2}[workload]


# -- readers -----------------------------------------------------------------------------


def run_lsio(path: str, bxs: list, prefetch: int, reuse: bool = False, direct: bool = False) -> int:
    arr = lz.open(path, direct=direct)
    assert arr.direct == direct, "this file system refuses O_DIRECT"
    regions = [tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)) for lo, hi in bxs]
    n = 0
    for crop in arr.crops(regions, prefetch=prefetch, reuse=reuse):
        n += crop.nbytes
    return n


def run_lsio_reuse(path: str, bxs: list, prefetch: int) -> int:
    """lsio_ray with a ring of reused output buffers (``reuse=True``): no page faults on
    fresh output memory."""
    return run_lsio(path, bxs, prefetch, reuse=True)


def run_lsio_direct(path: str, bxs: list, prefetch: int) -> int:
    """lsio_ray reading with O_DIRECT (``direct=True``): no page cache."""
    return run_lsio(path, bxs, prefetch, direct=True)


def run_lsio_reuse_direct(path: str, bxs: list, prefetch: int) -> int:
    """``reuse=True`` and ``direct=True``."""
    return run_lsio(path, bxs, prefetch, reuse=True, direct=True)


def _keys(bxs: list) -> list[tuple[slice, ...]]:
    return [tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)) for lo, hi in bxs]


def run_lsio_call(path: str, bxs: list, prefetch: int) -> int:
    """One ``a[key]`` per call, nothing ahead (a PyTorch ``Dataset.__getitem__``)."""
    arr = lz.open(path)
    return sum(arr[key].nbytes for key in _keys(bxs))


def run_lsio_call_prefetch(path: str, bxs: list, prefetch: int) -> int:
    """One ``a[key]`` per call, the next ``prefetch`` keys started ahead with
    ``Array.prefetch`` (a Dataset that knows its sampler's order)."""
    arr = lz.open(path)
    keys = _keys(bxs)
    ahead = max(1, min(prefetch, 4))
    arr.prefetch(keys[:ahead])
    n = 0
    for i, key in enumerate(keys):
        if i + ahead < len(keys):
            arr.prefetch(keys[i + ahead : i + ahead + 1])
        n += arr[key].nbytes
    return n


def run_tensorstore_call(path: str, bxs: list, prefetch: int) -> int:
    """One ``arr[key].read().result()`` per call."""
    import tensorstore as ts

    driver = "zarr" if os.path.exists(os.path.join(path, ".zarray")) else "zarr3"
    arr = ts.open(
        {"driver": driver, "kvstore": {"driver": "file", "path": path}}, open=True, read=True
    ).result()
    return sum(arr[key].read().result().nbytes for key in _keys(bxs))


def run_tensorstore(path: str, bxs: list, prefetch: int) -> int:
    import tensorstore as ts

    driver = "zarr" if os.path.exists(os.path.join(path, ".zarray")) else "zarr3"
    arr = ts.open(
        {"driver": driver, "kvstore": {"driver": "file", "path": path}}, open=True, read=True
    ).result()
    n = 0
    window: list[Any] = []
    it = iter(bxs)
    for lo, hi in it:
        window.append(arr[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))].read())
        if len(window) >= prefetch:
            n += window.pop(0).result().nbytes
    for fut in window:
        n += fut.result().nbytes
    return n


def run_zarr(path: str, bxs: list, prefetch: int) -> int:
    import zarr

    arr = zarr.open_array(path, mode="r")
    n = 0
    for lo, hi in bxs:
        n += arr[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))].nbytes
    return n


def run_zarrs(path: str, bxs: list, prefetch: int) -> int:
    """zarr-python with the zarrs codec pipeline (Rust: the chunks of a read fetched and
    decoded in parallel), one read at a time, as ``zarr-python``."""
    with bc.zarrs_pipeline():
        return run_zarr(path, bxs, prefetch)


class Limit:
    """The decode limit: every touched chunk decoded on all cores, bytes in memory."""

    def __init__(self, path: str, bxs: list) -> None:
        arr = lz.open(path)
        lay = arr.layout
        self.codec = lay.codec
        keys: list[tuple[int, ...]] = []
        # each touch: the chunk's key and the box of it the workload uses (lo, hi, whole)
        self.touches: list[tuple[tuple[int, ...], list[int], list[int], bool]] = []
        for lo, hi in bxs:
            sel = select_chunks(lo, hi, lay.chunks)
            for k, a, b, f in zip(
                sel.coords.tolist(),
                sel.src_lo.tolist(),
                sel.src_hi.tolist(),
                sel.full.tolist(),
                strict=True,
            ):
                keys.append(tuple(k))
                self.touches.append((tuple(k), a, b, bool(f)))
        self.keys = keys
        self.out_bytes = sum(
            int(np.prod(np.subtract(hi, lo))) * lay.dtype.itemsize for lo, hi in bxs
        )
        self.blobs = self._load(arr, sorted(set(keys)))

    @staticmethod
    def _load(arr: lz.Array, keys: list[tuple[int, ...]]) -> dict[tuple[int, ...], bytes]:
        lay = arr.layout
        out: dict[tuple[int, ...], bytes] = {}
        if lay.shards is None:
            for k in keys:
                with open(lay.file_path(k), "rb") as fh:
                    out[k] = fh.read()
            return out
        cps = np.asarray(lay.chunks_per_shard)
        by_shard: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for k in keys:
            by_shard.setdefault(tuple((np.asarray(k) // cps).tolist()), []).append(k)
        for s, ks in by_shard.items():
            with open(lay.file_path(s), "rb") as fh:
                raw = fh.read()
            idx = lay.index
            tail = raw[-idx.nbytes :] if idx.location == "end" else raw[: idx.nbytes]
            table = idx.decode(np.frombuffer(tail, np.uint8))
            for k in ks:
                local = np.ravel_multi_index(tuple(np.asarray(k) % cps), lay.chunks_per_shard)
                off, nb = (int(v) for v in table[local])
                out[k] = raw[off : off + nb]
        return out

    def run(self) -> int:
        """The limit: the fastest decoder we have for these chunks (the C one, libzstd or
        c-blosc with a reused context, when the codec chain allows it), each touch decoded
        as a reader needs it: a whole chunk straight into place, a part of one as a box
        (the C decoder stops a zstd chunk after the block holding the box's last byte)
        copied out of the scratch chunk."""
        if self.codec.c_codec is None:
            return self.run_numcodecs()
        from lsio_ray.io._core import DECODE_JOB_DTYPE, DecodeSpec, RawEngine

        codec = self.codec
        eng = getattr(Limit, "_engine", None) or RawEngine(backend="pread", pool_bytes=1 << 20)
        Limit._engine = eng
        spec = DecodeSpec(
            codec.c_codec,
            codec.nbytes,
            codec.dtype.itemsize,
            codec.chunk_strides,
            codec.chunk_strides,
        )
        srcs = {k: np.frombuffer(v, np.uint8) for k, v in self.blobs.items()}
        touches = self.touches
        per = -(-len(touches) // CORES)
        cstr = np.asarray(codec.chunk_strides, np.int64)

        def work(part: list[tuple[tuple[int, ...], list[int], list[int], bool]]) -> None:
            scratch = np.empty(codec.nbytes, np.uint8)  # the box lands here, chunk strides
            jobs = np.zeros(len(part), DECODE_JOB_DTYPE)
            jobs["src"] = [srcs[k].ctypes.data for k, *_ in part]
            jobs["src_len"] = [srcs[k].nbytes for k, *_ in part]
            jobs["dst"] = jobs["dst_lo"] = scratch.ctypes.data
            jobs["dst_len"] = scratch.nbytes
            jobs["direct"] = [f for *_, f in part]
            lo = np.asarray([a for _, a, _, _ in part], np.int64).reshape(len(part), -1)
            hi = np.asarray([b for _, _, b, _ in part], np.int64).reshape(len(part), -1)
            if lo.shape[1]:
                jobs["src_off"] = (lo * cstr).sum(axis=1)
                jobs["shape"][:, : lo.shape[1]] = hi - lo
            if eng.decode(spec, jobs):
                raise RuntimeError("decode failed")

        with ThreadPoolExecutor(CORES) as ex:
            list(ex.map(work, [touches[i : i + per] for i in range(0, len(touches), per)]))
        return self.out_bytes  # the workload's output, so MiB/s compare with the readers

    def run_numcodecs(self) -> int:
        """The same decodes through numcodecs (what zarr-python's pipeline calls)."""
        codec = self.codec
        keys = self.keys
        per = -(-len(keys) // CORES)

        def work(part: list[tuple[int, ...]]) -> None:
            scratch = np.empty(codec.nbytes, np.uint8)
            for k in part:
                codec.decode(np.frombuffer(self.blobs[k], np.uint8), scratch)

        with ThreadPoolExecutor(CORES) as ex:
            list(ex.map(work, [keys[i : i + per] for i in range(0, len(keys), per)]))
        return self.out_bytes


# -- measuring ---------------------------------------------------------------------------


def warm_up(path: str) -> None:
    """Read every file of an array once, so that a warm run after a cold one (whose page
    cache was dropped) finds all of it cached, as the runs before it did."""
    buf = bytearray(1 << 20)
    for root, _dirs, names in os.walk(path):
        for n in names:
            with open(os.path.join(root, n), "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass


def measure(fn: Callable[[], int]) -> dict[str, float]:
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    nbytes = fn()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_s": wall,
        "bytes": nbytes,
        "cpu_user_s": r1.ru_utime - r0.ru_utime,
        "cpu_sys_s": r1.ru_stime - r0.ru_stime,
    }


def main() -> int:
    paths = {name: dataset(name) for name in LAYOUTS}
    plans = {w: boxes(w) for w in WORKLOADS}
    limits: dict[tuple[str, str], Limit] = {}
    if "limit" in READERS or "limit-numcodecs" in READERS:
        for name in LAYOUTS:
            for w in WORKLOADS:
                limits[name, w] = Limit(paths[name], plans[w])
    results: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    readers: dict[str, Callable[[str, list, int], int]] = {
        "lsio": run_lsio,
        "lsio-reuse": run_lsio_reuse,
        "lsio-direct": run_lsio_direct,
        "lsio-reuse-direct": run_lsio_reuse_direct,
        "lsio-call": run_lsio_call,
        "lsio-call-prefetch": run_lsio_call_prefetch,
        "tensorstore": run_tensorstore,
        "tensorstore-call": run_tensorstore_call,
        "zarr-python": run_zarr,
        "zarrs": run_zarrs,
    }
    if "cold" in CACHES and not bc.drop_caches():
        raise SystemExit("cold runs need to drop the page cache: run as root")
    runs = [(r, c) for r in READERS for c in CACHES if c == "warm" or not r.startswith("limit")]
    warm: set[str] = set()  # layouts whose files are all in the page cache
    for rep in range(REPS):
        for name in LAYOUTS:
            for w in WORKLOADS:
                for reader, cache in runs:
                    if cache == "warm" and not reader.startswith("limit") and name not in warm:
                        warm_up(paths[name])  # after a cold run: else this one reads cold
                        warm.add(name)
                    if reader == "limit":
                        fn: Callable[[], int] = limits[name, w].run
                    elif reader == "limit-numcodecs":
                        fn = limits[name, w].run_numcodecs
                    else:
                        fn = functools.partial(
                            readers[reader], paths[name], plans[w], prefetch_for(w)
                        )
                    if cache == "cold":
                        bc.drop_caches()
                        warm.clear()
                    m = measure(fn)
                    m["items"] = len(plans[w])
                    label = reader if cache == "warm" else f"{reader} cold"
                    results.setdefault((name, w, label), []).append(m)
                    print(f"# rep {rep} {name} {w} {label}: {m['wall_s']:.2f} s", file=sys.stderr)
    print_table(results, plans)
    out = os.environ.get("LSIO_ZARR_BENCH_JSON")
    if out:
        with open(out, "w") as fh:
            json.dump(
                [
                    {"layout": k[0], "workload": k[1], "reader": k[2], "runs": v}
                    for k, v in results.items()
                ],
                fh,
                indent=1,
            )
    return 0


def print_table(results: dict, plans: dict) -> None:
    print(f"shape {SHAPE} float32, {CORES} cores, {REPS} repetitions, prefetch {PREFETCH}")
    print(
        f"{'layout':<10} {'workload':<7} {'reader':<20} {'items/s min/med/max':>24} "
        f"{'MiB/s med':>10} {'cpu/wall':>8} {'cpu ms/item':>11} {'% limit':>8}"
    )
    for (name, w, reader), runs in results.items():
        rates = sorted(m["items"] / m["wall_s"] for m in runs)
        med = statistics.median(rates)
        mib = statistics.median(m["bytes"] / m["wall_s"] / 2**20 for m in runs)
        cpu = statistics.median((m["cpu_user_s"] + m["cpu_sys_s"]) / m["wall_s"] for m in runs)
        cpu_item = statistics.median(
            1000 * (m["cpu_user_s"] + m["cpu_sys_s"]) / m["items"] for m in runs
        )
        lim = results.get((name, w, "limit"))
        pct = ""
        if lim and not reader.startswith("limit"):
            lim_rate = statistics.median(m["items"] / m["wall_s"] for m in lim)
            pct = f"{100 * med / lim_rate:.0f}%"
        rate = f"{rates[0]:.1f}/{med:.1f}/{rates[-1]:.1f}"
        print(
            f"{name:<10} {w:<7} {reader:<20} {rate:>24} {mib:>10.0f} {cpu:>8.2f} "
            f"{cpu_item:>11.1f} {pct:>8}"
        )


if __name__ == "__main__":
    sys.exit(main())
