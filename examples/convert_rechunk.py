"""Use case 1, on one machine: convert and re-chunk, the way the user sketched it.

    rx_of_filled_buffers = uring_local.get(src_filenames)          # submit groups of reads
    rx_of_decompressed   = decompressor.map(rx_of_filled_buffers)  # decode as chunks land
    uring_local.reuse_buffers(...)                                 # buffers back at once
    reduce(..., 10); compress; uring_local.put(...)                # merge, compress, write

Input: ``--groups`` x ``--per-group`` zstd-compressed chunk files (made here).  Each group
of input chunks is merged into one output chunk, compressed and written back atomically
through the same engine.  Decoding runs on a thread pool (numcodecs releases the GIL) as
chunks land, in whatever order they land; each IO buffer goes back to the pool the moment
its chunk is decoded, so the pool bound (``--pool``) is all the memory IO ever uses.

Run: python examples/convert_rechunk.py --dir /tmp/lsio-example
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import tempfile
import time

import numcodecs
import numpy as np

from lsio_ray import Chunk, Engine, OpGroup, get_ranges, put_file

CHUNK = (64, 64)  # float32 input chunk; 10 of them stack into one output chunk


def make_inputs(root: str, groups: int, per_group: int) -> list[list[str]]:
    """Write the input chunk files; returns their paths, grouped."""
    codec = numcodecs.Zstd(level=3)
    os.makedirs(os.path.join(root, "in"), exist_ok=True)
    out = []
    for g in range(groups):
        paths = []
        for i in range(per_group):
            p = os.path.join(root, "in", f"{g}.{i}")
            a = np.full(CHUNK, g * 1000 + i, np.float32) + np.arange(CHUNK[1], dtype=np.float32)
            with open(p, "wb") as f:
                f.write(codec.encode(a))
            paths.append(p)
        out.append(paths)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--groups", type=int, default=200)
    ap.add_argument("--per-group", type=int, default=10)
    ap.add_argument("--pool", default="8M", help="IO buffer pool bound")
    ap.add_argument("--backend", default="auto", choices=["auto", "uring", "pread"])
    args = ap.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="lsio-convert-")
    inputs = make_inputs(root, args.groups, args.per_group)
    os.makedirs(os.path.join(root, "out"), exist_ok=True)
    codec = numcodecs.Zstd(level=3)

    def decompress(chunk: Chunk) -> tuple[int, np.ndarray]:
        with chunk:  # the IO buffer goes back to the pool when decoding is done
            arr = np.frombuffer(codec.decode(chunk.data), np.float32).reshape(CHUNK)
        return chunk.metadata, arr

    t0 = time.perf_counter()
    with (
        Engine(backend=args.backend, pool_bytes=args.pool) as eng,
        cf.ThreadPoolExecutor(os.cpu_count()) as pool,
    ):
        # One OpGroup per output chunk; group metadata names the output file.
        groups = (
            OpGroup(
                [get_ranges(p, metadata=[i]) for i, p in enumerate(paths)],
                metadata=os.path.join(root, "out", f"{g}"),
            )
            for g, paths in enumerate(inputs)
        )
        writes = []
        for group in eng.stream(groups, window=4, order="completion"):
            # decode each chunk as it lands, in landing order, on the thread pool
            futures = [pool.submit(decompress, chunk) for chunk in group]
            parts = dict(f.result() for f in futures)
            merged = np.stack([parts[i] for i in range(len(parts))])  # reduce: N -> 1
            compressed = codec.encode(merged)  # compress
            writes.append(eng.submit(OpGroup([put_file(group.metadata, compressed)])))
        for w in writes:  # every write confirmed (atomic: temp file + rename)
            w.collect()
    dt = time.perf_counter() - t0

    # check: every output chunk holds its group's inputs, in order
    for g in range(args.groups):
        with open(os.path.join(root, "out", f"{g}"), "rb") as f:
            out = np.frombuffer(codec.decode(f.read()), np.float32)
        out = out.reshape(args.per_group, *CHUNK)
        assert all(out[i, 0, 0] == g * 1000 + i for i in range(args.per_group)), g
    n = args.groups * args.per_group
    print(
        f"converted {n} chunks into {args.groups} in {dt:.2f} s ({n / dt:,.0f} chunks/s); "
        f"outputs verified in {root}/out"
    )


if __name__ == "__main__":
    main()
