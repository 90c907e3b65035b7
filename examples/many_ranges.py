"""The batch API: a million byte ranges in a few Python calls, no object per range.

``RawEngine`` takes numpy arrays of requests and returns numpy arrays of completions;
buffers go back with one ``release_many`` per batch.  This is the layer the Zarr reader
and the Ray actors use, and what ``lsio-ray bench read`` measures.

Run: python examples/many_ranges.py --ranges 1000000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from lsio_ray.io._core import FILE_DTYPE, RANGE_DTYPE, RawEngine, view


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranges", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=64 << 20, help="file size in bytes")
    ap.add_argument("--backend", default="auto", choices=["auto", "uring", "pread"])
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="lsio-ranges-")
    path = os.path.join(d, "data")
    data = np.random.default_rng(0).integers(0, 256, args.size, dtype=np.uint8)
    data.tofile(path)

    rng = np.random.default_rng(1)
    starts = rng.integers(0, args.size // 4096, args.ranges) * 4096
    eng = RawEngine(backend=args.backend, depth=128, pool_bytes="64M")
    t0 = time.perf_counter()
    batch = 65536
    checked = 0
    for i in range(0, args.ranges, batch):
        s = starts[i : i + batch]
        files = np.zeros(1, FILE_DTYPE)
        files["nranges"] = len(s)
        ranges = np.zeros(len(s), RANGE_DTYPE)
        ranges["offset"], ranges["length"] = s, 4096
        ranges["tag"] = np.arange(i, i + len(s))
        eng.submit(files, ranges, path.encode() + b"\0")
        left = len(s)
        while left:
            out = eng.reap(8192, min(left, 1024), -1)
            if out["error"].any():
                raise OSError(-int(out["error"][out["error"] != 0][0]), path)
            row = out[0]  # spot-check one chunk of each reaped batch against the file
            off = int(starts[row["tag"]])
            assert np.array_equal(view(int(row["data"]), 4096), data[off : off + 4096])
            checked += 1
            eng.release_many(out["buf_id"])
            left -= len(out)
    dt = time.perf_counter() - t0
    st = eng.stats()
    eng.close()
    print(
        f"{args.ranges:,} x 4 KiB reads ({eng.backend}) in {dt:.2f} s: "
        f"{args.ranges / dt:,.0f} reads/s, {st['submit_calls']:,} submit calls, "
        f"pool peak {st['pool_peak'] >> 20} MiB; {checked} batches spot-checked"
    )


if __name__ == "__main__":
    main()
