"""Use case 3 ("Vincent's"): rows of chunks delivered in order, decode out of order.

Chunks are laid out as rows of a grid (``r.c``); each row is a time series, and its
chunks must reach the user in order 0, 1, 2, ... .  Each row is one OpGroup; groups are
delivered in submission order.  Underneath, the IO lands in any order, decoding runs on a
thread pool in any order, and the results are re-ordered before the user sees them.

Run: python examples/timeseries.py
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import os
import tempfile
from collections.abc import Iterator

import numcodecs
import numpy as np

from lsio_ray import Chunk, Engine, OpGroup, get_ranges

CODEC = numcodecs.Zstd(level=1)
N = 4096  # samples per chunk


def make_grid(root: str, rows: int, cols: int) -> None:
    """Write chunk files ``root/r.c`` whose samples encode (row, col)."""
    for r in range(rows):
        for c in range(cols):
            a = np.arange(N, dtype=np.float64) + c * N + r * 1e9
            with open(os.path.join(root, f"{r}.{c}"), "wb") as f:
                f.write(CODEC.encode(a))


def decode(chunk: Chunk) -> np.ndarray:
    with chunk:  # buffer back to the pool as soon as it is decoded
        return np.frombuffer(CODEC.decode(chunk.data), np.float64).copy()


def rows_in_order(
    eng: Engine, pool: cf.Executor, root: str, rows: int, cols: int
) -> Iterator[tuple[int, Iterator[np.ndarray]]]:
    """Yield (row, iterator of decoded chunks in column order) for each row, in order."""
    groups = (
        OpGroup(
            [get_ranges(os.path.join(root, f"{r}.{c}"), metadata=[c]) for c in range(cols)],
            metadata=r,
        )
        for r in range(rows)
    )
    for group in eng.stream(groups, window=3, order="completion"):

        def ordered(group=group) -> Iterator[np.ndarray]:
            pending: dict[int, cf.Future[np.ndarray]] = {}
            ready: collections.deque[cf.Future[np.ndarray]] = collections.deque()
            nxt = 0
            for chunk in group:  # IO completes in any order...
                pending[chunk.metadata] = pool.submit(decode, chunk)  # ...decode in any order
                while nxt in pending:
                    ready.append(pending.pop(nxt))
                    nxt += 1
                while ready and ready[0].done():
                    yield ready.popleft().result()  # ...delivered in order
            while ready:
                yield ready.popleft().result()

        yield group.metadata, ordered()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--cols", type=int, default=64)
    ap.add_argument("--backend", default="auto", choices=["auto", "uring", "pread"])
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="lsio-timeseries-")
    make_grid(root, args.rows, args.cols)
    with Engine(backend=args.backend, pool_bytes="4M") as eng, cf.ThreadPoolExecutor(4) as pool:
        for r, series in rows_in_order(eng, pool, root, args.rows, args.cols):
            whole = np.concatenate(list(series))
            expect = np.arange(args.cols * N, dtype=np.float64) + r * 1e9
            assert np.array_equal(whole, expect), f"row {r} out of order"
    print(f"{args.rows} rows x {args.cols} chunks delivered in order, each row verified")


if __name__ == "__main__":
    main()
