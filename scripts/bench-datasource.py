#!/usr/bin/env python3
"""Ray Data crops benchmark: lsio_ray.data against what Ray users write today
(benchmarks/results/ray-data.md).

Random crops (8,256,256) of the bench-zarr array (``scripts/bench-zarr.py``: v3, float32,
(512,1024,1024), chunks (1,256,256), zstd 3, unsharded; reused if it exists), the same
``$LSIO_DS_BENCH_CROPS`` (400) crops (``lsio_ray.data.random_box_starts``, seed 7) for every
reader, consumed with ``iter_batches`` (every crop summed in the driver, checked equal
across readers), ``$LSIO_DS_BENCH_REPS`` (3) interleaved repetitions, each reader cold
(``sync; echo 3 > /proc/sys/vm/drop_caches`` right before, needs root; not with
``LSIO_DS_BENCH_COLD=0``) and then warm:

* ``lsio read_zarr_crops``: ``lsio_ray.data.read_zarr_crops(path, crop, count, seed=7)``;
  also with ``parallelism=2``, and with ``decode_block=512`` (the decode-aware sampler:
  each read task decodes each chunk its crops touch once); and with ``per_cell=16`` (the
  clustered sampler: other crops, each still uniform, 16 from each cell, checked equal
  to ``Array.clustered_crops`` in the driver, which is also timed); and with
  ``direct=True`` (O_DIRECT reads);
* ``ray.data.range + zarr-python``: ``ray.data.range(count).map_batches(fn)``, ``fn``
  opening the array with zarr-python and reading its crops (batch_size 16);
* ``ray.data.range + tensorstore``: the same with tensorstore (all reads of a batch issued,
  then awaited);
* ``lsio local engine``: ``lsio_ray.zarr.open(path).random_crops(...)`` in the driver
  (no Ray: Ray Data's overhead is the difference), also with ``direct=True``;
* ``tensorstore, one process``: the crops read in the driver, 16 in flight;
* ``decode limit``: every chunk the crops touch (as often as they touch it) decoded by
  numcodecs on 2 threads from bytes already in memory, nothing else.

Ray: ``ray.init(address="local", num_cpus=2, include_dashboard=False)``.

Part 2 (xarray): a dataset with one variable ``v`` (``$LSIO_DS_BENCH_XR_PLANES`` (256)
planes of (1024,1024) float32 = 1 GiB) made of hard links to the same chunk files, read
whole with ``xr.open_zarr(lsio_ray.zarr.Store(path))["v"].values``, the same opened under
``lsio_ray.zarr.use_lsio_pipeline()`` (zarr's codec pipeline replaced by lsio_ray's C decode
path), against ``xr.open_zarr(path)["v"].values`` (zarr-python's LocalStore), cold and warm,
interleaved.

Results: printed and written to ``$LSIO_DS_BENCH_OUT`` (/tmp/lsio-ds-bench/results.md).
``LSIO_DS_BENCH_PARTS`` (``crops,xarray``) picks the parts; ``LSIO_DS_BENCH_READERS``
(comma-separated substrings of the reader names) a subset of the crop readers.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc

WORK = os.environ.get("LSIO_DS_BENCH_DIR", "/tmp/lsio-ds-bench")
REPS = int(os.environ.get("LSIO_DS_BENCH_REPS", "3"))
COUNT = int(os.environ.get("LSIO_DS_BENCH_CROPS", "400"))
XR_PLANES = int(os.environ.get("LSIO_DS_BENCH_XR_PLANES", "256"))
OUT = os.environ.get("LSIO_DS_BENCH_OUT", os.path.join(WORK, "results.md"))
PARTS = [p for p in os.environ.get("LSIO_DS_BENCH_PARTS", "crops,xarray").split(",") if p]
COLD = os.environ.get("LSIO_DS_BENCH_COLD", "1") == "1"
READERS = [r for r in os.environ.get("LSIO_DS_BENCH_READERS", "").split(",") if r]
CROP = (8, 256, 256)
SEED = 7
BATCH = 16


def _sums(crops: np.ndarray) -> list[float]:
    return [float(c.sum(dtype=np.float64)) for c in crops]


# -- readers: each returns {crop index: sum} ---------------------------------------------


def run_lsio_data(
    path: str,
    parallelism: int | None = None,
    decode_block: int = 0,
    per_cell: int = 0,
    direct: bool = False,
) -> dict[int, float]:
    import lsio_ray.data

    ds = lsio_ray.data.read_zarr_crops(
        path,
        CROP,
        COUNT,
        seed=SEED,
        override_num_blocks=parallelism,
        decode_block=decode_block,
        per_cell=per_cell,
        direct=direct,
    )
    out: dict[int, float] = {}
    for b in ds.iter_batches(batch_size=BATCH, batch_format="numpy"):
        out.update(zip(b["index"].tolist(), _sums(b["crop"]), strict=True))
    return out


def _zarr_fn(path: str, starts: np.ndarray) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def fn(batch: dict[str, Any]) -> dict[str, Any]:
        import zarr

        arr = zarr.open_array(path, mode="r")
        ids = batch["id"]
        crops = []
        for i in ids.tolist():
            z, y, x = starts[i].tolist()
            crops.append(arr[z : z + CROP[0], y : y + CROP[1], x : x + CROP[2]])
        return {"crop": np.stack(crops), "index": ids}

    return fn


def _ts_fn(path: str, starts: np.ndarray) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def fn(batch: dict[str, Any]) -> dict[str, Any]:
        import tensorstore as ts

        arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}).result()
        ids = batch["id"]
        futs = []
        for i in ids.tolist():
            z, y, x = starts[i].tolist()
            futs.append(arr[z : z + CROP[0], y : y + CROP[1], x : x + CROP[2]].read())
        return {"crop": np.stack([f.result() for f in futs]), "index": ids}

    return fn


def run_ray_range(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[int, float]:
    import ray

    ds = ray.data.range(COUNT).map_batches(fn, batch_size=BATCH, batch_format="numpy")
    out: dict[int, float] = {}
    for b in ds.iter_batches(batch_size=BATCH, batch_format="numpy"):
        out.update(zip(b["index"].tolist(), _sums(b["crop"]), strict=True))
    return out


def run_local(path: str, direct: bool = False) -> dict[int, float]:
    import lsio_ray.zarr as lz

    arr = lz.open(path, direct=direct)
    return {
        i: float(c.sum(dtype=np.float64))
        for i, c in enumerate(arr.random_crops(CROP, COUNT, seed=SEED, prefetch=16))
    }


def run_clustered_local(path: str, per_cell: int) -> dict[int, float]:
    import lsio_ray.zarr as lz

    arr = lz.open(path)
    crops = arr.clustered_crops(CROP, COUNT, seed=SEED, per_cell=per_cell)
    return {i: float(c.sum(dtype=np.float64)) for i, c in enumerate(crops)}


def run_ts_local(path: str, starts: np.ndarray) -> dict[int, float]:
    import tensorstore as ts

    arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}).result()
    out: dict[int, float] = {}
    window: list[tuple[int, Any]] = []
    for i, (z, y, x) in enumerate(starts.tolist()):
        window.append((i, arr[z : z + CROP[0], y : y + CROP[1], x : x + CROP[2]].read()))
        if len(window) >= 16:
            j, f = window.pop(0)
            out[j] = float(f.result().sum(dtype=np.float64))
    for j, f in window:
        out[j] = float(f.result().sum(dtype=np.float64))
    return out


# -- part 1 ---------------------------------------------------------------------------------


def crops_part(path: str) -> str:
    from lsio_ray.data import random_box_starts

    shape = tuple(json.load(open(os.path.join(path, "zarr.json")))["shape"])
    starts = random_box_starts(shape, CROP, COUNT, SEED)
    bxs = [(tuple(s), tuple(int(a + c) for a, c in zip(s, CROP, strict=True))) for s in starts]
    limit = bc.bench_zarr().Limit(path, bxs)
    readers: dict[str, Callable[[], Any]] = {
        "lsio read_zarr_crops (Ray Data)": lambda: run_lsio_data(path),
        "lsio read_zarr_crops, parallelism=2": lambda: run_lsio_data(path, 2),
        "lsio read_zarr_crops, direct=True": lambda: run_lsio_data(path, direct=True),
        "lsio read_zarr_crops, decode_block=512": lambda: run_lsio_data(path, None, 512),
        "lsio read_zarr_crops, per_cell=16 (clustered)": lambda: run_lsio_data(path, None, 0, 16),
        "lsio clustered_crops, per_cell=16, local (no Ray)": lambda: run_clustered_local(path, 16),
        "ray.data.range + zarr-python": lambda: run_ray_range(_zarr_fn(path, starts)),
        "ray.data.range + tensorstore": lambda: run_ray_range(_ts_fn(path, starts)),
        "lsio local engine (no Ray)": lambda: run_local(path),
        "lsio local engine, direct=True (no Ray)": lambda: run_local(path, direct=True),
        "tensorstore, one process": lambda: run_ts_local(path, starts),
        "decode limit (2 threads)": limit.run,
    }
    if READERS:  # a subset (the limit always runs: every ratio needs it)
        readers = {
            k: v
            for k, v in readers.items()
            if k.startswith("decode") or any(r in k for r in READERS)
        }
    refs: dict[bool, np.ndarray] = {}  # the clustered readers draw other crops
    for name, fn in readers.items():  # warm-up: workers, imports; and the reference sums
        out = fn()
        if name.startswith("decode"):
            continue
        got = np.array([out[i] for i in range(COUNT)])
        ref = refs.setdefault("per_cell" in name, got)
        if not np.allclose(got, ref, rtol=1e-9, atol=1e-6):
            raise AssertionError(f"{name}: crops differ from the first such reader's")
    can_drop = COLD and bc.drop_caches()
    times: dict[tuple[str, str], list[float]] = {}
    for rep in range(REPS):
        for name, fn in readers.items():
            modes = ["warm"] if name.startswith("decode") else ["cold", "warm"]
            for mode in modes:
                if mode == "cold" and not (COLD and bc.drop_caches()):
                    continue
                t0 = time.perf_counter()
                out = fn()
                dt = time.perf_counter() - t0
                if not name.startswith("decode"):
                    assert len(out) == COUNT, (name, len(out))
                times.setdefault((name, mode), []).append(dt)
                print(f"# rep {rep} {name} {mode}: {dt:.2f} s", file=sys.stderr, flush=True)
    lim = COUNT / bc.summary(times["decode limit (2 threads)", "warm"])[1]
    rate = {k: COUNT / bc.summary(v)[1] for k, v in times.items()}
    rows = []
    for (name, mode), ts in times.items():
        lo, md, hi = bc.summary(ts)
        r = COUNT / md
        zp = rate.get(("ray.data.range + zarr-python", mode))
        tsr = rate.get(("ray.data.range + tensorstore", mode))
        tsl = rate.get(("tensorstore, one process", mode))
        rows.append(
            [
                f"{name}, {mode}",
                f"{COUNT / hi:.1f} / {r:.1f} / {COUNT / lo:.1f}",
                f"{r * np.prod(CROP) * 4 / 2**20:,.0f}",
                f"{100 * r / lim:.0f}%",
                f"{r / zp:.2f}x" if zp else "-",
                f"{r / tsr:.2f}x" if tsr else "-",
                f"{r / tsl:.2f}x" if tsl else "-",
            ]
        )
    b = rate.get(("lsio local engine (no Ray)", "warm"))
    a = max(
        rate.get(("lsio read_zarr_crops (Ray Data)", "warm"), 0),
        rate.get(("lsio read_zarr_crops, parallelism=2", "warm"), 0),
    )
    head = (
        f"{COUNT} random crops {CROP} of {shape} float32 (chunks (1,256,256) zstd-3, "
        f"unsharded), seed {SEED}, batches of {BATCH}, {os.cpu_count()} cores, {REPS} "
        f"interleaved reps, {'cold = after drop_caches' if can_drop else 'NO cold runs'}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    table = bc.md_table(
        [
            "reader, cache",
            "crops/s min / med / max",
            "MiB/s med",
            "% decode limit",
            "vs Ray Data + zarr-python",
            "vs Ray Data + tensorstore",
            "vs tensorstore 1 proc",
        ],
        rows,
    )
    note = ""
    if a and b:
        note = (
            "\nRay Data overhead (warm, best lsio read_zarr_crops against the local engine): "
            f"{100 * (b / a - 1):+.1f}% time\n"
        )
    return f"{head}\n\n{table}\n{note}"


# -- part 2: xarray -------------------------------------------------------------------------


def xr_dataset(src: str) -> str:
    """A Zarr v3 group with variable ``v``: the first XR_PLANES planes of ``src``, hard links."""
    path = os.path.join(WORK, f"xr-{XR_PLANES}.zarr")
    done = path + ".complete"
    if os.path.exists(done):
        return path
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    meta = json.load(open(os.path.join(src, "zarr.json")))
    assert meta["chunk_grid"]["configuration"]["chunk_shape"][0] == 1
    meta["shape"] = [XR_PLANES, *meta["shape"][1:]]
    meta["dimension_names"] = ["t", "y", "x"]
    os.makedirs(os.path.join(path, "v"))
    with open(os.path.join(path, "zarr.json"), "w") as fh:
        json.dump({"zarr_format": 3, "node_type": "group", "attributes": {}}, fh)
    with open(os.path.join(path, "v", "zarr.json"), "w") as fh:
        json.dump(meta, fh)
    for k in range(XR_PLANES):
        s = os.path.join(src, "c", str(k))
        for j in os.listdir(s):
            os.makedirs(os.path.join(path, "v", "c", str(k), j))
            for i in os.listdir(os.path.join(s, j)):
                os.link(os.path.join(s, j, i), os.path.join(path, "v", "c", str(k), j, i))
    open(done, "w").close()
    return path


def _xr_lsio_pipeline(xr: Any, lz: Any, path: str) -> np.ndarray:
    """``xr.open_zarr(lsio_ray.zarr.Store(path))["v"].values`` with the arrays opened under
    ``use_lsio_pipeline()`` (zarr picks an array's codec pipeline when it opens it)."""
    with lz.use_lsio_pipeline():
        return xr.open_zarr(lz.Store(path), consolidated=False)["v"].values


def xarray_part(src: str) -> str:
    import warnings

    import xarray as xr

    import lsio_ray.zarr as lz

    warnings.filterwarnings("ignore")
    path = xr_dataset(src)
    readers: dict[str, Callable[[], np.ndarray]] = {
        "xr.open_zarr(lsio_ray.zarr.Store)": lambda: (
            xr.open_zarr(lz.Store(path), consolidated=False)["v"].values
        ),
        "xr.open_zarr(Store) with LsioCodecPipeline": lambda: _xr_lsio_pipeline(xr, lz, path),
        "xr.open_zarr(path) (zarr LocalStore)": lambda: (
            xr.open_zarr(path, consolidated=False)["v"].values
        ),
    }
    fns = list(readers.values())
    first = fns[0]()
    for fn in fns[1:]:  # one extra copy in memory at a time (1 GiB each)
        assert np.array_equal(first, fn())
    nbytes = first.nbytes
    shape = first.shape
    del first
    times: dict[tuple[str, str], list[float]] = {}
    for rep in range(REPS):
        for name, fn in readers.items():
            for mode in ("cold", "warm"):
                if mode == "cold" and not (COLD and bc.drop_caches()):
                    continue
                t0 = time.perf_counter()
                v = fn()
                dt = time.perf_counter() - t0
                assert v.nbytes == nbytes
                del v
                times.setdefault((name, mode), []).append(dt)
                print(f"# xr rep {rep} {name} {mode}: {dt:.2f} s", file=sys.stderr, flush=True)
    rows = []
    for (name, mode), ts in times.items():
        lo, md, hi = bc.summary(ts)
        peer = bc.summary(times["xr.open_zarr(path) (zarr LocalStore)", mode])[1]
        rows.append(
            [
                f"{name}, {mode}",
                f"{lo:.2f} / {md:.2f} / {hi:.2f}",
                f"{nbytes / 2**20 / md:,.0f}",
                f"{peer / md:.2f}x",
            ]
        )
    head = (
        f"xarray: variable v {shape} float32 ({nbytes / 2**20:,.0f} MiB), "
        f"chunks (1,256,256) zstd-3, read whole with .values (no dask installed), {REPS} "
        f"interleaved reps"
    )
    table = bc.md_table(
        ["reader, cache", "s min / med / max", "MiB/s med", "vs zarr LocalStore"], rows
    )
    return f"{head}\n\n{table}\n"


def main() -> int:
    import ray

    path = bc.zarr_dataset("v3-chunks")
    os.makedirs(WORK, exist_ok=True)
    parts = []
    if "crops" in PARTS:
        bc.init_local_ray()
        ray.data.DataContext.get_current().enable_progress_bars = False
        import logging

        logging.getLogger("ray.data").setLevel(logging.WARNING)
        parts.append(crops_part(path))
        ray.shutdown()
    if "xarray" in PARTS:
        parts.append(xarray_part(path))
    text = "\n".join(parts)
    print(text)
    with open(OUT, "w") as fh:
        fh.write(text)
    print(f"# written to {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
