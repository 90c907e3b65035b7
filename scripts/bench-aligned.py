#!/usr/bin/env python3
"""Aligned image + label crops: read together, against the two ways without it.

    .venv/bin/python scripts/bench-aligned.py [--count 400] [--reps 5] [--dir DIR]

A v3 group (made in ``--dir``, default a temp dir, reused if present): ``image`` (2,
64, 512, 512) float32 zstd-3 in (2, 8, 128, 128) chunks and ``label`` (64, 512, 512)
uint8 zstd-3 in (16, 128, 128) chunks.  ``--count`` random (8, 128, 128) samples per
run, page cache warm, in one process, the three readers interleaved ``--reps`` times:

* ``aligned``: ``lz.aligned(g, ["image", "label"]).random_crops`` (both arrays' reads
  of a group of samples handed to the IO service together);
* ``zip``: ``zip(image.crops(regions), label.crops(regions))``, two streams of the same
  boxes, each with its own prefetch window;
* ``serial``: ``image[box]`` then ``label[box]`` for each sample, one read at a time.

Prints samples/s and CPU ms per sample (this process, all threads: less sensitive to
other jobs than wall time) per run and min/median/max per reader, the ratios of the medians, and
the load average before and after.  Every sample's sums are checked equal across readers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

import lsio_ray.zarr as lz

CROP = (8, 128, 128)


def _cpu() -> float:
    """CPU seconds of this process, all its threads (user + system)."""
    t = os.times()
    return t.user + t.system


def make(path: str) -> None:
    """The group, written once."""
    import zarr

    if os.path.exists(os.path.join(path, "label", "zarr.json")):
        return
    rng = np.random.default_rng(0)
    zarr.open_group(path, mode="w", zarr_format=3)
    img = rng.standard_normal((2, 64, 512, 512), dtype=np.float32).round(2)
    lz.save(f"{path}/image", img, chunks=(2, 8, 128, 128))
    lz.save(f"{path}/label", (img[0] > 0.5).astype(np.uint8), chunks=(16, 128, 128))


def run(kind: str, pair: lz.AlignedArrays, starts: np.ndarray) -> list[tuple[float, int]]:
    """One pass of ``kind`` over the samples at ``starts``: each sample's sums (the data
    touched, and compared across readers)."""
    image, label = pair["image"], pair["label"]
    boxes = [
        tuple(slice(int(s), int(s) + c) for s, c in zip(lo, CROP, strict=True)) for lo in starts
    ]
    if kind == "aligned":
        it = pair.samples(lambda a, b: starts[a:b], len(starts), CROP, prefetch=16)
        pairs = ((s["image"], s["label"]) for s in it)
    elif kind == "zip":
        imgs = image.crops([(slice(None), *b) for b in boxes], prefetch=16)
        pairs = zip(imgs, label.crops(boxes, prefetch=16), strict=True)
    else:
        pairs = ((image[(slice(None), *b)], label[b]) for b in boxes)
    return [(float(a.sum(dtype=np.float64)), int(b.sum())) for a, b in pairs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "lsio-bench-aligned"))
    args = ap.parse_args()
    path = os.path.join(args.dir, "ds.zarr")
    make(path)
    pair = lz.aligned(path, ["image", "label"])
    kinds = ["aligned", "zip", "serial"]
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    cpus: dict[str, list[float]] = {k: [] for k in kinds}
    load0 = os.getloadavg()
    run("aligned", pair, pair.random_starts(CROP, 50, 99))  # warm the cache and threads
    for rep in range(args.reps):
        starts = pair.random_starts(CROP, args.count, rep)
        first = None
        for kind in kinds if rep % 2 == 0 else kinds[::-1]:
            c0, t0 = _cpu(), time.perf_counter()
            got = run(kind, pair, starts)
            dt, cpu = time.perf_counter() - t0, _cpu() - c0
            rates[kind].append(len(got) / dt)
            cpus[kind].append(1e3 * cpu / len(got))
            print(
                f"rep {rep} {kind:8s} {len(got) / dt:8.1f} samples/s "
                f"{1e3 * cpu / len(got):6.2f} CPU ms/sample"
            )
            if first is None:
                first = got
            assert got == first, f"{kind} read other samples"
    load1 = os.getloadavg()
    med = {k: statistics.median(v) for k, v in rates.items()}
    for k in kinds:
        v = rates[k]
        c = cpus[k]
        print(
            f"{k:8s} samples/s min {min(v):.1f} median {med[k]:.1f} max {max(v):.1f}; "
            f"CPU ms/sample min {min(c):.2f} median {statistics.median(c):.2f} max {max(c):.2f}"
        )
    print(
        f"aligned/zip {med['aligned'] / med['zip']:.2f}x, "
        f"aligned/serial {med['aligned'] / med['serial']:.2f}x"
    )
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f}")


if __name__ == "__main__":
    main()
