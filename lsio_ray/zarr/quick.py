"""Small reads done by the calling thread (issue 17: one call cheap).

A ``a[key]`` call on a few chunks -- a PyTorch ``Dataset.__getitem__`` -- spends a
third of its time before the first decode: planning, a hand-over to the IO thread, the
engine's ``statx``/``open``/``read``/``close`` of each file, a hand-over to a decode
thread, and a last one back to the caller.  :func:`read_on_caller` does such a call
without the IO thread: it plans the chunks and their decode jobs in one C call
(:func:`~lsio_ray.io.plan_box`), reads the chunk files on this thread from the page cache
alone (:func:`lsio_ray.io.read_cached`), decodes one share of the chunks itself while the
decode pool does the rest, and returns True.  It returns False, having written nothing
into ``out``, for any read it does not take: a sharded, remote or O_DIRECT array, a
codec the C decoder does not handle, more chunk files than the service's ``call_files``
setting (default 8), or files that are not all regular, present and in the page cache
-- the caller then reads through the IO service as before, which reports what is wrong
with a file.  After such a miss the array's next :data:`SKIP_AFTER_MISS` calls go to the
IO service directly, so a cold array does not pay an attempt per call.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from lsio_ray.io import (
    DECODE_JOB_DTYPE,
    DecodeSpec,
    address,
    decode_chunks,
    extent,
    read_cached,
)
from lsio_ray.io.url import is_remote
from lsio_ray.zarr.errors import decode_failure
from lsio_ray.zarr.plan import chunk_count, select_chunks
from lsio_ray.zarr.read import direct_into, origin_address

if TYPE_CHECKING:
    from lsio_ray.zarr.array import Array

__all__ = ["SKIP_AFTER_MISS", "read_on_caller"]

#: calls an array sends to the IO service after one whose files were not all cached
SKIP_AFTER_MISS = 2
#: the most file bytes a call on this thread may hold (chunk count x largest file taken)
MAX_BYTES = 64 << 20


def read_on_caller(array: Array, out: np.ndarray, lo: tuple[int, ...], hi: tuple[int, ...]) -> bool:
    """Read the box ``[lo, hi)`` of ``array`` into ``out`` on this thread, when the
    module docstring's conditions hold; False (``out`` untouched) when they do not."""
    lay = array.layout
    codec = lay.codec
    loader = array.loader
    limit = codec.nbytes + (codec.nbytes >> 6) + 4096  # any codec's worst case, and more
    n = chunk_count(lo, hi, lay.chunks) if out.ndim else 0
    if (
        n == 0
        or n > getattr(loader, "call_files", 0)
        or n * limit > MAX_BYTES
        or array._call_skip > 0
        or lay.shards is not None
        or array.direct
        or codec.c_codec is None
        or out.ndim != len(codec.shape)
        or out.ndim > 8
        or not out.flags.writeable
        or is_remote(lay.path)
    ):
        if array._call_skip > 0:
            array._call_skip -= 1
        return False
    jobs = np.zeros(n, DECODE_JOB_DTYPE)
    direct = direct_into(codec, out.strides)
    sel = select_chunks(
        lo, hi, lay.chunks, jobs, out.strides, codec.chunk_strides, origin_address(out), direct
    )
    bufs = read_cached(lay.paths(sel.coords), limit)
    if bufs is None:
        array._call_skip = SKIP_AFTER_MISS
        loader.count_call_read(-1)
        return False
    loader.count_call_read(sum(b.size for b in bufs))
    jobs["dst_lo"], jobs["dst_len"] = extent(out)
    jobs["src"] = [address(b) for b in bufs]
    jobs["src_len"] = [b.size for b in bufs]
    spec = DecodeSpec(
        codec.c_codec, codec.nbytes, codec.dtype.itemsize, codec.chunk_strides, out.strides
    )
    if _decode(loader, spec, jobs):
        raise decode_failure(lay, spec, jobs, sel.coords)
    return True


def _decode(loader: Any, spec: DecodeSpec, jobs: np.ndarray) -> int:
    """Decode ``jobs`` on this thread and on up to ``decode_threads - 1`` threads of the
    decode pool, each taking the next job in turn (chunks decode at different speeds: a
    part of a chunk stops early); returns, once every job is done, how many failed (each
    marked in its row)."""
    n = len(jobs)
    helpers = min(n, max(1, int(loader.decode_threads))) - 1
    nxt = [0]
    failed = [0]
    left = [helpers]
    lock = threading.Lock()
    done = threading.Event()

    def work() -> None:
        while True:
            with lock:
                i = nxt[0]
                nxt[0] = i + 1
            if i >= n:
                return
            if decode_chunks(spec, jobs[i : i + 1]):
                with lock:
                    failed[0] += 1

    def helper() -> None:
        try:
            work()
        finally:
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

    for _ in range(helpers):
        loader.submit(helper)
    try:
        work()
    finally:  # the helpers read the caller's buffers and write into out: wait for them
        if helpers:
            done.wait()
    return failed[0]
