"""What the Ray Data readers of :mod:`lsio_ray.data` and :mod:`lsio_ray.data_aligned`
share: the block buffers of a read task (:class:`BlockPool`) and the dataset made of a
datasource whose blocks are already sized (:func:`read_dataset`)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import ray
import ray.data

__all__ = ["DEFAULT_BLOCK_BYTES", "BlockPool", "read_dataset"]

#: the size of the blocks a read task emits (Ray costs ~1 ms per object: megabytes)
DEFAULT_BLOCK_BYTES = 32 << 20


class BlockPool:
    """Block buffers for a read task, reused once nothing else refers to them.

    A fresh block of tens of MiB costs a page fault per 4 KiB page (~4% of a read task's
    CPU).  Ray copies a yielded block into its object store, but Ray Data may keep the
    block (or an Arrow table built on its memory, zero-copy) for a while before that: a
    buffer is handed out again only when this pool holds the sole reference to it, so a
    block still in use is never overwritten."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self.bufs: list[np.ndarray] = []

    def take(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A C-contiguous array of ``shape`` and ``dtype`` that nobody else refers to."""
        dtype = np.dtype(dtype)
        for i in range(len(self.bufs)):
            # references: the list's, and getrefcount's argument
            if sys.getrefcount(self.bufs[i]) == 2:
                buf = self.bufs[i]
                if buf.shape == shape and buf.dtype == dtype:
                    return buf
        buf = np.empty(shape, dtype)
        if len(self.bufs) < self.keep:
            self.bufs.append(buf)
        return buf


def read_dataset(
    src: Any,
    parallelism: int | None,
    ray_args: dict[str, Any],
) -> ray.data.Dataset:
    """``ray.data.read_datasource(src)`` with ``parallelism`` read tasks (default: one
    per CPU of the cluster), pinned to ``src.node`` when it is set, and the dataset's
    target block size lowered to one of ``src``'s blocks (``src.rows_per_block`` rows of
    ``src.crop_nbytes``)."""
    args = dict(ray_args)
    remote = args.get("ray_remote_args") or {}
    if src.node is not None and "label_selector" not in args and "label_selector" not in remote:
        args["label_selector"] = {ray._raylet.RAY_NODE_ID_KEY: src.node}
    if parallelism is None:
        # One read task per CPU of the cluster: Ray's own default (many small tasks, each
        # paying task and block costs and its own array open) was 2.1x slower here
        # (``scripts/bench-datasource.py``, benchmarks/results/ray-data.md).
        parallelism = max(1, int(ray.cluster_resources().get("CPU", 1)))
    args["override_num_blocks"] = int(parallelism)
    ds = ray.data.read_datasource(src, **args)
    # Ray Data merges a read task's blocks until they reach the dataset's
    # target_max_block_size (128 MiB by default): a copy of every crop into a fresh
    # block, and a read task's first rows held back until 128 MiB are decoded.  Our
    # blocks are already sized (block_bytes), so the dataset (its own copy of the
    # DataContext) takes them as they are.
    full = src.rows_per_block * src.crop_nbytes
    ctx = ds.context
    if ctx.target_max_block_size is None or ctx.target_max_block_size > full:
        ctx.target_max_block_size = full
    return ds
