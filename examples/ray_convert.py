"""Use case 1 on a Ray cluster: the user's sketch, with the Ray layer.

    rx_of_filled_buffers = uring_local.get(src_filenames)          # coordinator: op groups
    rx_of_decompressed   = decompressor.map(rx_of_filled_buffers)  # a task per batch, as it
                                                                   #   arrives, on its node
    reduce(..., 10); compress; uring_local.put(...)                # a task per group; the
                                                                   #   write goes through the
                                                                   #   owner node's IO actor

Input: ``--groups`` x ``--per-group`` zstd-compressed chunk files (made here).  Every group
of 10 input chunks becomes one output chunk: stacked, compressed, written atomically.
Each node's IO actor reads the files, batches them into Ray objects of a few MiB, and the
decode tasks run on the node that read the batch.

Run: python examples/ray_convert.py --dir /tmp/lsio-ray-example [--address auto]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

import numcodecs
import numpy as np
import ray

from lsio_ray import OpGroup, get_ranges
from lsio_ray.ray import Coordinator, tasks

CHUNK = (64, 64)  # float32 input chunk; 10 of them stack into one output chunk
ZSTD = numcodecs.Zstd(level=3)


def make_inputs(root: str, groups: int, per_group: int) -> list[OpGroup]:
    """Write the input chunk files; one op group per output chunk (its path as metadata)."""
    os.makedirs(os.path.join(root, "in"), exist_ok=True)
    out = []
    for g in range(groups):
        ops = []
        for i in range(per_group):
            path = os.path.join(root, "in", f"{g}.{i}")
            chunk = np.full(CHUNK, g * 1000 + i, dtype=np.float32)
            with open(path, "wb") as fh:
                fh.write(ZSTD.encode(chunk))
            ops.append(get_ranges(path, metadata=[i]))
        out.append(OpGroup(ops, metadata=os.path.join(root, "out", str(g))))
    return out


def decode(data: np.ndarray) -> np.ndarray:
    """Decompress one input chunk (runs in a Ray task, on the node that read it)."""
    return np.frombuffer(ZSTD.decode(data), dtype=np.float32).reshape(CHUNK)


def stack(arrays: list[np.ndarray], metadata: list[Any], group_metadata: Any) -> np.ndarray:
    """Merge a group's chunks (already in range order) into one output chunk."""
    return np.stack(arrays)


def main(argv: list[str] | None = None) -> int:
    """Run the example; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=None, help="working directory (default: a temp dir)")
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--per-group", type=int, default=10)
    ap.add_argument("--address", default=None, help="Ray cluster (default: start one)")
    args = ap.parse_args(argv)
    root = args.dir or tempfile.mkdtemp(prefix="lsio-ray-example-")
    ray.init(address=args.address, log_to_driver=False, configure_logging=False)
    # functions defined in this script must travel by value to the workers
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    groups = make_inputs(root, args.groups, args.per_group)
    coord = Coordinator()  # shared storage: every node may read any file
    t0 = time.perf_counter()
    results = list(
        tasks.run_pipeline(
            coord,
            groups,
            decode=decode,
            reduce=stack,
            encode=ZSTD.encode,
            output=lambda path: path,
            fuse=False,
        )
    )
    dt = time.perf_counter() - t0
    for g, res in enumerate(results):
        with open(res.path, "rb") as fh:
            got = np.frombuffer(ZSTD.decode(fh.read()), dtype=np.float32)
        want = np.repeat(
            g * 1000 + np.arange(args.per_group, dtype=np.float32), CHUNK[0] * CHUNK[1]
        )
        if not np.array_equal(got, want):
            print(f"output {res.path} is wrong", file=sys.stderr)
            return 1
    nodes = {n for n, st in coord.stats().items() if st["bytes_read"]}
    print(
        f"converted {args.groups * args.per_group} chunks into {len(results)} on "
        f"{len(nodes)} node(s) in {dt:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
