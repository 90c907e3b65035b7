"""Reading a box of an array: plan, one batch of IO, decode as chunks land.

A :class:`BoxRead` plans the chunks a box touches (vectorised, see :mod:`.plan`) and
turns them into file ops for the engine:

* unsharded: one file op per chunk, reading the whole file;
* sharded: first the index of every shard not in the cache (one small range each),
  then one file op per shard with a range per needed inner chunk, adjacent ranges
  coalesced.

Completions reach the task on the loader's IO thread in batches.  Each chunk is then
decoded on a decode thread, from its pool buffer, straight into the output when the
chunk lies wholly inside the box and the destination has the chunk's layout (else into
a per-thread scratch buffer and copied), and the buffer goes back to the engine as soon
as the chunk is decoded.  Missing chunks (and missing shards, and empty inner chunks)
are filled with the fill value.

Two decode paths:

* the C path, for raw, zstd and blosc chunks (the common cases): the batch of
  completions becomes a ``DECODE_JOB_DTYPE`` array (rows gathered from a per-chunk
  template made at planning time: destination address, box, direct or not), cut in a
  few pieces, and each piece is one ``lsio_decode_batch`` call on a decode thread --
  decode, box copy and buffer release in C, without the GIL and with no Python per
  chunk.  Measured: it removes ~75 us of Python per (1,256,256) float32 chunk and lets
  both cores decode (BENCHMARKS.md);
* the Python path (numcodecs and zarr-python's codecs, one work item per chunk) for
  everything else: transposes, byte swaps, filters, checksums, gzip, lz4...
"""

from __future__ import annotations

import errno
import itertools
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from lsio_ray.io import (
    DECODE_JOB_DTYPE,
    E_PAST_EOF,
    DecodeSpec,
    address,
    extent,
    make_error,
    view,
)
from lsio_ray.zarr.batches import INDEX_TAG, FilePlan, file_plan
from lsio_ray.zarr.errors import ChunkCorruptError, ShardIndexError, decode_failure
from lsio_ray.zarr.loader import Loader, Task
from lsio_ray.zarr.plan import Selection, chunk_count, coalesce, select_chunks
from lsio_ray.zarr.shards import EMPTY, decode_index

if TYPE_CHECKING:
    from lsio_ray.zarr.array import Array

__all__ = ["BoxRead", "direct_into", "origin_address"]

_MISSING = object()  # a shard whose file does not exist
_PAST_EOF = E_PAST_EOF


def origin_address(arr: np.ndarray) -> int:
    """The address of ``arr``'s first element whatever its strides (0 when empty): what
    a decode job's ``dst`` is counted from.  :func:`lsio_ray.io.address` of the corner
    ``arr[0:1, ..., 0:1]``, which is contiguous (one element) and starts there."""
    if arr.size == 0:
        return 0
    return address(arr[(slice(0, 1),) * arr.ndim] if arr.ndim else arr[...])


def direct_into(codec: Any, strides: Any) -> bool:
    """Whether a whole chunk of ``codec`` may be decoded straight into an output of
    byte ``strides``: they are the decoded chunk's own (dimensions of length 1 aside)."""
    return all(
        int(s) == int(c)
        for s, c, k in zip(strides, codec.chunk_strides, codec.shape, strict=True)
        if k > 1
    )


class BoxRead(Task):
    """Read the box ``[lo, hi)`` of ``array`` into ``out`` (an array of the box's shape)."""

    def __init__(self, array: Array, loader: Loader, out: np.ndarray, lo: Any, hi: Any) -> None:
        super().__init__(loader)
        self.array = array
        self.layout = array.layout
        self.codec = array.layout.codec
        self.out = out
        #: job-template rows of each chunk: ``[_pair_start[i], +_pair_count[i])``; None
        #: when each chunk has exactly one destination box, row i (see scatter.ScatterTask)
        self._pair_start: np.ndarray | None = None
        self._pair_count: np.ndarray | None = None
        self._planned: np.ndarray | None = None  # decode jobs planned with the selection
        self.sel = self._select(lo, hi)
        self.remaining = self._units()
        self.plan: FilePlan | None = None
        self._lists: tuple[list[Any], ...] | None = None
        self._phase = "data"
        self._direct_ok = self.codec.direct
        self._identity = True
        if self.remaining == 0:
            return
        self._spec: DecodeSpec | None = None
        self._jobs: np.ndarray | None = None
        self._c_path()
        if self.layout.shards is None:
            self._plan_chunks()
        else:
            self._plan_index()

    # -- planning ------------------------------------------------------------------------
    def _select(self, lo: Any, hi: Any) -> Selection:
        """The chunks to read (one row each); where the C decoder takes them, their
        decode jobs are planned in the same C call (kept for :meth:`_c_path`)."""
        out, codec = self.out, self.codec
        if not self._c_decodes(out) or out.ndim == 0:
            return select_chunks(lo, hi, self.layout.chunks)
        lo_t = tuple(int(x) for x in lo)
        hi_t = tuple(int(x) for x in hi)
        jobs = np.zeros(chunk_count(lo_t, hi_t, self.layout.chunks), DECODE_JOB_DTYPE)
        sel = select_chunks(
            lo_t,
            hi_t,
            self.layout.chunks,
            jobs,
            out.strides,
            codec.chunk_strides,
            origin_address(out),
            direct_into(codec, out.strides),
        )
        jobs["dst_lo"], jobs["dst_len"] = extent(out)
        self._planned = jobs
        return sel

    def _c_decodes(self, out: np.ndarray) -> bool:
        """Whether the C decoder decodes this task's chunks into ``out``."""
        codec = self.codec
        if codec.c_codec is None or out.ndim != len(codec.shape) or out.ndim > 8:
            return False
        return not (out.size and not out.flags.writeable)

    def _units(self) -> int:
        """Units of work to finish (one per chunk here; one per chunk and box in
        subclasses that copy a chunk into several boxes)."""
        return len(self.sel)

    def _dst(self) -> np.ndarray:
        """The array the job boxes are in (``out``; a subclass may use a view of it)."""
        return self.out

    def _c_path(self) -> None:
        """Set up the C decode path (a spec and a per-chunk job template) if it applies."""
        codec, out = self.codec, self._dst()
        if not self._c_decodes(out):
            return
        self._spec = DecodeSpec(
            codec.c_codec, codec.nbytes, codec.dtype.itemsize, codec.chunk_strides, out.strides
        )
        if self._planned is not None:  # planned with the selection
            self._jobs = self._planned
            return
        self._jobs = self._template(
            np.asarray(out.strides, dtype=np.int64),
            np.asarray(codec.chunk_strides, dtype=np.int64),
        )

    def _template(self, strides: np.ndarray, cstr: np.ndarray) -> np.ndarray:
        """One job row per chunk: where its box goes, which part of the chunk it is
        (when :meth:`_select` did not plan them with the selection)."""
        out, sel = self.out, self.sel
        direct = direct_into(self.codec, strides)
        jobs = np.zeros(len(sel), DECODE_JOB_DTYPE)
        # (element-wise products, not ``@``: a matmul may wake BLAS threads that then spin)
        jobs["dst"] = origin_address(out) + (sel.dst_lo * strides).sum(axis=1)
        jobs["dst_lo"], jobs["dst_len"] = extent(out)  # the C decoder's bounds
        if out.ndim:
            jobs["src_off"] = (sel.src_lo * cstr).sum(axis=1)
            jobs["shape"][:, : out.ndim] = sel.src_hi - sel.src_lo
        jobs["tag"] = np.arange(len(sel))
        jobs["direct"] = sel.full & direct
        return jobs

    def _plan_chunks(self) -> None:
        blob, width = self.layout.paths_blob(self.sel.coords)
        self.plan = self._file_plan(blob, width, len(self.sel), 0, -1)

    def _file_plan(self, blob: bytes, width: int, *args: Any) -> FilePlan:
        """:func:`~lsio_ray.zarr.batches.file_plan` for this task's group, with the
        array's read flags (O_DIRECT for ``direct=True`` arrays): every read a task plans
        goes through here."""
        return file_plan(self.group, blob, width, *args, flags=self.array._read_flags)

    def _plan_index(self) -> None:
        lay = self.layout
        cps = np.asarray(lay.chunks_per_shard, dtype=np.int64)
        coords = self.sel.coords
        shard_c = coords // cps
        local = coords - shard_c * cps
        if lay.ndim:
            shard_lin = np.ravel_multi_index(tuple(shard_c.T), lay.file_grid)
            self.local_lin = np.ravel_multi_index(tuple(local.T), lay.chunks_per_shard)
        else:
            shard_lin = np.zeros(len(coords), np.int64)
            self.local_lin = np.zeros(len(coords), np.int64)
        self.shard_keys, self.chunk_shard = np.unique(shard_lin, return_inverse=True)
        self.chunk_shard = self.chunk_shard.reshape(-1)
        self.tables: list[Any] = self.array.index_cache.get_many(self.shard_keys)
        missing = np.array([j for j, t in enumerate(self.tables) if t is None], dtype=np.int64)
        if missing.size == 0:
            self._plan_inner()
            return
        self._phase = "index"
        self.index_j = missing
        self._index_left = len(missing)
        idx = lay.index
        assert idx is not None
        coords_s = self._shard_coords(self.shard_keys[missing])
        blob, width = lay.paths_blob(coords_s)
        off = -idx.nbytes if idx.location == "end" else 0
        self.plan = self._file_plan(blob, width, len(missing), off, idx.nbytes, INDEX_TAG)

    def _shard_coords(self, keys: np.ndarray) -> np.ndarray:
        lay = self.layout
        if lay.ndim == 0:
            return np.zeros((len(keys), 0), np.int64)
        return np.stack(np.unravel_index(keys, lay.file_grid), axis=1).astype(np.int64)

    def _plan_inner(self) -> None:
        self._phase = "data"
        n = len(self.sel)
        off = np.zeros(n, np.uint64)
        nb = np.zeros(n, np.uint64)
        absent = np.zeros(n, bool)
        by_shard = np.argsort(self.chunk_shard, kind="stable")
        bounds = np.searchsorted(self.chunk_shard[by_shard], np.arange(len(self.tables) + 1))
        for j, table in enumerate(self.tables):
            idx = by_shard[bounds[j] : bounds[j + 1]]
            if table is _MISSING:
                absent[idx] = True
            else:
                entries = table[self.local_lin[idx]]
                off[idx] = entries[:, 0]
                nb[idx] = entries[:, 1]
        empty = absent | ((off == EMPTY) & (nb == EMPTY))
        fill_idx = np.flatnonzero(empty)
        read_idx = np.flatnonzero(~empty)
        if fill_idx.size:
            self._fill(fill_idx)
        if read_idx.size == 0:
            self.plan = None
            return
        order, range_of, r_start, r_end = coalesce(
            self.chunk_shard[read_idx],
            off[read_idx],
            nb[read_idx],
            max_gap=self.array.coalesce_gap,
            max_bytes=self.array.max_coalesce,
        )
        chunks = read_idx[order]
        nr = len(r_start)
        first = np.flatnonzero(np.r_[True, range_of[1:] != range_of[:-1]])
        self.rchunks = chunks
        self.rchunk0 = first
        self.rnchunk = np.diff(np.r_[first, len(chunks)])
        self._identity = False
        self.c_off = np.zeros(n, np.int64)
        self.c_off[chunks] = off[chunks].astype(np.int64) - r_start[range_of]
        self.c_len = nb.astype(np.int64)
        range_shard = self.chunk_shard[chunks[first]]
        file_first = np.flatnonzero(np.r_[True, range_shard[1:] != range_shard[:-1]])
        file_nr = np.diff(np.r_[file_first, nr])
        self.file_shard = range_shard[file_first]
        blob, width = self.layout.paths_blob(self._shard_coords(self.shard_keys[self.file_shard]))
        self.plan = self._file_plan(blob, width, file_nr, r_start, r_end - r_start)

    # -- IO-thread interface -------------------------------------------------------------
    def has_batches(self) -> bool:
        return self.plan is not None and self.plan.has_batches()

    def next_batch(self, budget: int) -> tuple[np.ndarray, np.ndarray, bytes] | None:
        if self.plan is None:
            return None
        return self.plan.next_batch(budget)

    def io_finished(self) -> bool:
        return self.io_pending == 0 and not self.has_batches()

    def on_completions(self, comps: np.ndarray) -> int:
        plan = self.plan
        assert plan is not None
        ok, resolved, failures = plan.resolve(comps)
        if self._phase == "index":
            self._on_index(plan, comps, ok, failures)
        else:
            self._on_data(plan, comps, ok, failures)
        return resolved

    def _on_index(
        self,
        plan: FilePlan,
        comps: np.ndarray,
        ok: np.ndarray,
        failures: list[tuple[np.ndarray, int]],
    ) -> None:
        idx = self.layout.index
        assert idx is not None
        done = 0
        sel = comps[ok]
        try:
            for tag, ptr, n, size in zip(
                (sel["tag"] & np.uint64(INDEX_TAG - 1)).tolist(),
                sel["data"].tolist(),
                sel["length"].tolist(),
                sel["file_size"].tolist(),
                strict=True,
            ):
                done += 1
                j = int(self.index_j[tag])
                key = self.layout.key(self._shard_coords(self.shard_keys[j : j + 1])[0])
                try:
                    table = decode_index(idx, view(ptr, n), size)
                except ValueError as exc:
                    self.fail(ShardIndexError(self.layout.path, key, str(exc)))
                    continue
                self.array.index_cache.put(int(self.shard_keys[j]), table)
                self.tables[j] = table
        finally:
            self.loader.engine.release_many(sel["buf_id"])
        for rs, k in failures:
            done += len(rs)
            err = int(comps["error"][k])
            j = int(self.index_j[rs[0]])
            if err == -errno.ENOENT:
                self.tables[j] = _MISSING
                continue
            key = self.layout.key(self._shard_coords(self.shard_keys[j : j + 1])[0])
            if err == _PAST_EOF:
                size = int(comps["file_size"][k])
                self.fail(
                    ShardIndexError(
                        self.layout.path,
                        key,
                        f"the file ({size} bytes) is shorter than its {idx.nbytes}-byte index",
                    )
                )
            else:
                self.fail(self._os_error(plan, comps[k], key))
        self._index_left -= done
        if self._index_left == 0 and self.error is None:
            self._plan_inner()

    def _on_data(
        self,
        plan: FilePlan,
        comps: np.ndarray,
        ok: np.ndarray,
        failures: list[tuple[np.ndarray, int]],
    ) -> None:
        sel = comps[ok]
        if self.error is not None:
            self.loader.engine.release_many(sel["buf_id"])
        elif len(sel) and self._jobs is not None:
            self._queue_jobs(sel)
        elif len(sel):
            tags = sel["tag"].tolist()
            if self._identity:
                self.hold(len(tags))
                for r, ptr, n, b in zip(
                    tags,
                    sel["data"].tolist(),
                    sel["length"].tolist(),
                    sel["buf_id"].tolist(),
                    strict=True,
                ):
                    self.loader.submit(self._decode, r, ptr, n, b, None)
            else:
                counts = self.rnchunk[tags]
                self.hold(int(counts.sum()))
                for r, ptr, b, k in zip(
                    tags, sel["data"].tolist(), sel["buf_id"].tolist(), counts.tolist(), strict=True
                ):
                    c0 = int(self.rchunk0[r])
                    shared = [k, threading.Lock()] if k > 1 else None
                    for i in self.rchunks[c0 : c0 + k].tolist():
                        self.loader.submit(
                            self._decode, i, ptr + int(self.c_off[i]), int(self.c_len[i]), b, shared
                        )
        for rs, k in failures:
            chunks = self._chunks_of(rs)
            err = int(comps["error"][k])
            if err == -errno.ENOENT:
                self._fill(chunks)
            elif self.error is None:
                self.fail(self._io_error(plan, comps[k], chunks, err))

    def _queue_jobs(self, sel: np.ndarray) -> None:
        """The C path: one job per chunk of these completions, queued in pieces."""
        assert self._jobs is not None
        tags = sel["tag"].astype(np.int64)
        if self._identity:  # one chunk per completion, in its own buffer
            chunks = tags
            src = sel["data"].astype(np.int64)
            src_len = sel["length"].astype(np.int64)
            buf = np.arange(len(tags))
        else:
            # each range holds rnchunk[r] chunks (rchunks[rchunk0[r]:...]) in one buffer
            buf, pos = _spans(self.rchunk0[tags], self.rnchunk[tags])
            chunks = self.rchunks[pos]
            src = sel["data"][buf].astype(np.int64) + self.c_off[chunks]
            src_len = self.c_len[chunks]
        if self._pair_start is None:
            rows, per_chunk = chunks, None
        else:  # each chunk has _pair_count[i] boxes, template rows _pair_start[i]...
            assert self._pair_count is not None
            per_chunk = self._pair_count[chunks]
            which, rows = _spans(self._pair_start[chunks], per_chunk)
            src, src_len, buf = src[which], src_len[which], buf[which]
        jobs = self._jobs[rows]
        jobs["src"] = src
        jobs["src_len"] = src_len
        jobs["buf_id"] = sel["buf_id"][buf]
        # one counter per buffer read by several jobs: the job that ends last releases it
        # (none when every buffer has a single job: one chunk per read, one box each)
        counters = None
        if len(jobs) > len(tags):
            counters = np.bincount(buf, minlength=len(tags)).astype(np.int32)
            jobs["refcnt"] = np.where(counters[buf] > 1, address(counters) + 4 * buf, 0)
        # pieces of about `size` jobs, cut where the chunk changes (the C code decodes a
        # chunk once for consecutive jobs of the same chunk)
        n = len(jobs)
        size = min(8, max(1, -(-n // (2 * self.loader.decode_threads))))
        if per_chunk is None:
            cuts = [*range(0, n, size), n]
        else:
            starts = np.cumsum(per_chunk) - per_chunk
            at = np.searchsorted(starts, np.arange(0, n, size))
            cuts = sorted(set(starts[np.minimum(at, len(starts) - 1)].tolist()))
            cuts.append(n)
        self.hold(len(cuts) - 1)
        for a, b in itertools.pairwise(cuts):
            self.loader.submit(self._decode_jobs, jobs[a:b], counters)

    def _decode_jobs(self, jobs: np.ndarray, counters: np.ndarray | None) -> None:
        """Decode thread: one C call decodes a piece of jobs and releases their buffers
        (``counters`` is only passed to keep it alive for the C code that decrements it)."""
        engine = self.loader.engine
        try:
            if self.error is not None:
                engine.decode_end(jobs)
                return
            assert self._spec is not None
            if engine.decode(self._spec, jobs):
                self.fail(decode_failure(self.layout, self._spec, jobs, self.sel.coords))
        except Exception as exc:
            self.fail(exc)
        finally:
            self.release_hold(len(jobs))

    def _chunks_of(self, rs: np.ndarray) -> np.ndarray:
        if self._identity:
            return rs
        parts = [self.rchunks[self.rchunk0[r] : self.rchunk0[r] + self.rnchunk[r]] for r in rs]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    # -- errors --------------------------------------------------------------------------
    def _chunk_key(self, i: int) -> str:
        return self.layout.chunk_key(self.sel.coords[i])

    def _os_error(self, plan: FilePlan, row: Any, key: str) -> BaseException:
        r = int(row["tag"]) & (INDEX_TAG - 1)
        path = plan.path(int(plan.range_file[r]))
        exc = make_error(
            int(row["error"]),
            path,
            int(row["offset"]),
            int(row["length"]),
            int(row["file_size"]),
            pool_bytes=self.loader.engine.pool_bytes,
        )
        if type(exc) is OSError or (isinstance(exc, OSError) and exc.errno):
            return OSError(exc.errno, f"{self.layout.path}: chunk {key}: {exc.strerror}", path)
        return exc

    def _io_error(self, plan: FilePlan, row: Any, chunks: np.ndarray, err: int) -> BaseException:
        key = self._chunk_key(int(chunks[0])) if len(chunks) else "?"
        if err == _PAST_EOF:
            off, n, size = int(row["offset"]), int(row["length"]), int(row["file_size"])
            shown = "unknown" if size < 0 else f"{size} bytes"
            return ChunkCorruptError(
                self.layout.path,
                key,
                f"truncated file: bytes {off}..{off + n} reach past its end (length {shown})",
            )
        return self._os_error(plan, row, key)

    # -- decode-thread work --------------------------------------------------------------
    def _boxes(self, i: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        if self._lists is None:  # Python lists, made only when a chunk needs them
            sel = self.sel
            self._lists = (
                sel.dst_lo.tolist(),
                sel.dst_hi.tolist(),
                sel.src_lo.tolist(),
                sel.src_hi.tolist(),
                sel.full.tolist(),
            )
        dlo, dhi, slo, shi, _ = self._lists
        dst = tuple(map(slice, dlo[i], dhi[i]))
        src = tuple(map(slice, slo[i], shi[i]))
        return dst, src

    def _decode(self, i: int, ptr: int, n: int, buf_id: int, shared: list[Any] | None) -> None:
        try:
            if self.error is None:
                dst_idx, src_idx = self._boxes(i)
                dst = self.out[dst_idx] if dst_idx else self.out
                src = view(ptr, n)
                assert self._lists is not None
                if self._direct_ok and self._lists[4][i] and dst.flags.c_contiguous:
                    self.codec.decode_into(src, dst)
                else:
                    chunk = self.codec.decode(src, self.loader.scratch(self.codec.nbytes))
                    dst[...] = chunk[src_idx] if src_idx else chunk
        except Exception as exc:
            self.fail(
                ChunkCorruptError(self.layout.path, self._chunk_key(i), f"cannot decode: {exc}")
            )
        finally:
            last = True
            if shared is not None:
                with shared[1]:
                    shared[0] -= 1
                    last = shared[0] == 0
            if last and buf_id:
                self.loader.release(buf_id)
            self.release_hold(1)

    def _fill(self, chunks: np.ndarray) -> None:
        self.hold(1)
        self.loader.submit(self._fill_run, chunks)

    def _fill_run(self, chunks: np.ndarray) -> None:
        try:
            if self.error is None:
                fill = self.layout.fill_value
                for i in chunks.tolist():
                    dst_idx, _ = self._boxes(i)
                    dst = self.out[dst_idx] if dst_idx else self.out
                    dst[...] = fill
        except Exception as exc:
            self.fail(exc)
        finally:
            self.release_hold(len(chunks))

    def _finish(self) -> None:
        if self.error is None and self.remaining != 0:
            self.error = RuntimeError(
                f"{self.layout.path}: read finished with {self.remaining} chunks unaccounted"
            )
        self.out_ready = self.error is None
        super()._finish()


def _spans(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The spans ``[starts[j], starts[j] + counts[j])`` laid end to end: for each row,
    ``(j, index)`` as two arrays, e.g. the chunks of each range or the boxes of each
    chunk."""
    owner = np.repeat(np.arange(len(counts)), counts)
    first = np.cumsum(counts) - counts
    return owner, np.arange(int(counts.sum())) - first[owner] + starts[owner]
