"""One benchmark thread's request batches, built vectorised (numpy only, nothing per
range), and the batch and pool sizes chosen from the spec."""

from __future__ import annotations

import numpy as np

from lsio_ray.bench.files import FileSet, _pow2ceil
from lsio_ray.bench.spec import ReadSpec
from lsio_ray.io._core import FILE_DTYPE, RANGE_DTYPE

LSIO_F_DIRECT = 1
"""``lsio_file.flags`` bit for O_DIRECT (``LSIO_F_DIRECT`` in csrc/lsio.h)."""

_MIN_POOL = 64 << 20
_MAX_AUTO_POOL = 2 << 30
_BATCH_BYTES = 16 << 20  # aim for this many bytes per batch
_MAX_BATCH = 4096  # ranges per submit
_RUN_PER_DEPTH = 4  # random: ranges per file op (statx, open, reads, close) per depth...
_MIN_RUN = 1024  # ... and at least this many: each file op costs a statx and an open in
# io-wq plus a close, which take depth slots; with 128 reads per op W1 (depth 32) ran at
# ~65% of fio on a busy 2-CPU VM, with 1024-4096 at ~85%
_REAP_TIMEOUT_MS = 100  # reap wakes up at least this often to look at the clock


class _Plan:
    """Generates one thread's request batches (numpy only, nothing per range)."""

    def __init__(
        self, spec: ReadSpec, fs: FileSet, index: int, batch: int, rng: np.random.Generator
    ) -> None:
        self.spec, self.fs, self.batch, self.rng = spec, fs, batch, rng
        self.flags = LSIO_F_DIRECT if spec.direct else 0
        bs = spec.block_size
        n = len(fs)
        nthreads = spec.threads
        self.passes_done = 0  # full passes over this thread's share
        self.total = 0  # ranges per pass of this thread (0: nothing to do)
        if spec.pattern == "random":
            # uniform over all full blocks of the data set (with replacement)
            blocks = fs.sizes // bs
            self.sel = np.flatnonzero(blocks)
            if self.sel.size == 0:
                raise ValueError(f"no file holds a full block of {bs} bytes")
            self.blocks = blocks[self.sel]
            self.p = self.blocks / self.blocks.sum()
            self.all = np.arange(self.sel.size)
            self.run = spec.run or max(_MIN_RUN, _RUN_PER_DEPTH * spec.depth)
            # a "pass" reads as many blocks as the data set holds (shared by the threads)
            total = int(self.blocks.sum())
            self.total = total // nthreads + (index < total % nthreads)
        elif spec.pattern == "sequential":
            # this thread's contiguous slice of the concatenated (file, block) sequence
            blocks = (fs.sizes + bs - 1) // bs
            cum = np.concatenate(([0], np.cumsum(blocks)))
            total = int(cum[-1])
            lo, hi = total * index // nthreads, total * (index + 1) // nthreads
            self.cum = cum
            self.lo, self.total, self.pos = lo, hi - lo, 0
        else:  # whole-file: this thread's files, random order
            self.mine = np.arange(index, n, nthreads)
            self.total = int(self.mine.size)
            self.order = self.rng.permutation(self.mine)
            self.pos = 0
        self.issued = 0  # ranges handed out in this pass

    def next(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The next (files, ranges) batch, or None when the pass limit is reached."""
        if self.total == 0:
            return None
        passes = self.spec.passes
        if passes and self.passes_done >= passes:
            return None
        b = self.batch
        if passes:
            b = min(b, (passes - self.passes_done) * self.total - self.issued)
        pattern = self.spec.pattern
        if pattern == "random":
            files, ranges = self._random(b)
        elif pattern == "sequential":
            files, ranges = self._sequential(b)
        else:
            files, ranges = self._whole(b)
        self.issued += len(ranges)
        while self.issued >= self.total:
            self.issued -= self.total
            self.passes_done += 1
        return files, ranges

    def _files(self, idx: np.ndarray, counts: np.ndarray) -> np.ndarray:
        files = np.zeros(idx.size, FILE_DTYPE)
        files["group"] = idx
        files["path_off"] = self.fs.offs[idx]
        files["flags"] = self.flags
        files["nranges"] = counts
        return files

    def _random(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        # k files drawn by size, then the ranges spread over them by size
        k = max(1, b // self.run)
        if k < self.sel.size:
            pick = np.sort(self.rng.choice(self.sel.size, k, replace=False, p=self.p))
            blocks = self.blocks[pick]
            counts = self.rng.multinomial(b, blocks / blocks.sum())
        else:
            pick, blocks = self.all, self.blocks
            counts = self.rng.multinomial(b, self.p)
        nz = np.flatnonzero(counts)
        counts = counts[nz]
        bs = self.spec.block_size
        ranges = np.zeros(b, RANGE_DTYPE)
        ranges["offset"] = self.rng.integers(0, np.repeat(blocks[nz], counts)) * bs
        ranges["length"] = bs
        return self._files(self.sel[pick[nz]], counts), ranges

    def _sequential(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        # b consecutive blocks from the current position, wrapping around the slice
        g = self.lo + (self.pos + np.arange(b, dtype=np.int64)) % self.total
        self.pos = (self.pos + b) % self.total
        fidx = np.searchsorted(self.cum, g, side="right") - 1
        bs = self.spec.block_size
        off = (g - self.cum[fidx]) * bs
        ranges = np.zeros(b, RANGE_DTYPE)
        ranges["offset"] = off
        ranges["length"] = np.minimum(bs, self.fs.sizes[fidx] - off)
        # runs of the same file (a wrap-around starts a new run even for the same file)
        cut = np.flatnonzero((fidx[1:] != fidx[:-1]) | (g[1:] != g[:-1] + 1)) + 1
        starts = np.concatenate(([0], cut))
        counts = np.diff(np.concatenate((starts, [b])))
        return self._files(fidx[starts], counts), ranges

    def _whole(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        need = b
        while need > 0:
            if self.pos >= self.order.size:
                self.order = self.rng.permutation(self.mine)
                self.pos = 0
            take = self.order[self.pos : self.pos + need]
            self.pos += take.size
            need -= take.size
            parts.append(take)
        idx = np.concatenate(parts) if len(parts) > 1 else parts[0]
        ranges = np.zeros(idx.size, RANGE_DTYPE)
        if self.spec.known_size:
            ranges["length"] = self.fs.sizes[idx]  # no statx; open linked to the read
        else:
            ranges["length"] = -1  # offset 0, to the end of the file
        return self._files(idx, np.ones(idx.size, np.uint32)), ranges


def _auto_batch(spec: ReadSpec, unit: int) -> int:
    """Ranges per submit: 16 MiB worth, and for random/sequential at least 4 x depth
    (so that a file op carries many reads); between 1 and 4096."""
    n = _BATCH_BYTES // max(unit, 1)
    if spec.pattern != "whole-file":
        n = max(n, _RUN_PER_DEPTH * spec.depth)
    return int(max(1, min(_MAX_BATCH, n)))


def _alloc_unit(spec: ReadSpec, fs: FileSet) -> int:
    """Pool bytes one range takes (the buddy pool rounds up to a power of two)."""
    if spec.pattern == "whole-file":
        unit = int(fs.sizes.max())
    else:
        unit = spec.block_size
    if spec.direct:
        # the aligned superset read: a block not a multiple of 4 KiB may straddle one more
        unit = (unit + 4095) // 4096 * 4096 + (4096 if unit % 4096 else 0)
    return _pow2ceil(max(unit, 4096))


def _auto_pool(spec: ReadSpec, unit: int, batch: int) -> int:
    """Room for ``depth`` reads in flight plus two batches of completions (64 MiB to 2 GiB)."""
    need = max((spec.depth + 2 * batch) * unit, 4 * spec.depth * unit, _MIN_POOL)
    return _pow2ceil(min(need, max(_MAX_AUTO_POOL, 2 * unit)))
