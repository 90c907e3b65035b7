"""Converting a whole Zarr group, and :func:`rechunk`, the entry point for arrays and groups.

A group's conversion re-chunks every array in it (v2 or v3, nested; a directory or a
group on object storage, to a directory or to object storage) with per-array
chunks or one rule for all (:mod:`~lsio_ray.ray.rechunk.group_plan`, checked whole
before Ray starts), keeps every group's and array's attributes and the hierarchy, and
writes consolidated metadata when the source had it, as zarr-python does.  One Ray
connection and one :class:`~lsio_ray.ray.Coordinator` (its IO actors) serve every
array; the arrays run one after another, each as the array job runs
(:func:`~lsio_ray.ray.rechunk.driver.rechunk_array`: at least four blocks per CPU where
the array is big enough, so each saturates the cluster; a small array -- coordinates,
masks -- is quick).

**Resume.**  The group's state is kept in ``DST/.lsio-rechunk/`` like an array's: its
``job.json`` (the source, every array's new metadata, the groups' attributes) and a
journal of the arrays done.  Run again after an interruption, the arrays done are
skipped, the one in progress resumes from its own journal, the others run; the groups'
documents are written last (the root's last of all), so an unfinished destination is
never mistaken for a group, and the output is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lsio_ray.paths import check_disjoint
from lsio_ray.ray.coordinator import Coordinator
from lsio_ray.ray.rechunk.driver import DriverIO, RechunkResult, check_disjoint_on, rechunk_array
from lsio_ray.ray.rechunk.group_plan import ArrayJob, GroupPlan, Rules, plan_group, source_is_group
from lsio_ray.ray.rechunk.journal import STATE_DIR, Journal
from lsio_ray.ray.rechunk.plan import plan_job
from lsio_ray.zarr.codec_api import GROUP_FILES

__all__ = ["GroupRechunkResult", "rechunk", "rechunk_group"]


@dataclass
class GroupRechunkResult:
    """What a :func:`rechunk_group` run did."""

    src: str
    dst: str
    arrays: dict[str, RechunkResult]
    """The arrays converted (or finished) by this run, by path below the group."""
    arrays_skipped: list[str]
    """The arrays an earlier run had converted."""
    groups: int
    """Groups in the hierarchy, the root included."""
    consolidated: bool
    """Whether consolidated metadata was written."""
    seconds: float
    blocks_skipped: int = field(default=0)
    """Blocks of the arrays converted by this run that an earlier run had done."""

    @property
    def blocks(self) -> int:
        """Blocks of the arrays converted by this run."""
        return sum(r.blocks for r in self.arrays.values())

    @property
    def bytes_read(self) -> int:
        return sum(r.bytes_read for r in self.arrays.values())

    @property
    def bytes_written(self) -> int:
        return sum(r.bytes_written for r in self.arrays.values())

    @property
    def units_written(self) -> int:
        return sum(r.units_written for r in self.arrays.values())

    @property
    def retries(self) -> int:
        return sum(r.retries for r in self.arrays.values())

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary: the totals, and each array's result."""
        return {
            "src": self.src,
            "dst": self.dst,
            "node_type": "group",
            "groups": self.groups,
            "consolidated": self.consolidated,
            "arrays_skipped": list(self.arrays_skipped),
            "blocks": self.blocks,
            "blocks_skipped": self.blocks_skipped,
            "units_written": self.units_written,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "retries": self.retries,
            "seconds": self.seconds,
            "arrays": {p: dict(vars(r)) for p, r in self.arrays.items()},
        }


def rechunk(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    chunks: Rules,
    shards: Rules | None = None,
    codec: str | None = None,
    zarr_format: int | None = None,
    overwrite: bool = False,
    address: str | None = None,
    roots: dict[str, list[str]] | None = None,
    coordinator: Coordinator | None = None,
    block_bytes: int = 64 << 20,
    batch_bytes: int | None = None,
    window: int | None = None,
    max_attempts: int = 4,
    fsync: bool = False,
    progress: bool | Callable[[int, int], None] = False,
    io: str = "auto",
    direct: bool | None = None,
) -> RechunkResult | GroupRechunkResult:
    """Re-chunk (and/or convert) the Zarr array or group ``src`` into ``dst``.

    An array: :func:`~lsio_ray.ray.rechunk.driver.rechunk_array` (every argument is
    described there).  A group (a directory or an object-storage prefix holding the
    ``zarr.json`` of a group or ``.zgroup``), or ``chunks``/``shards`` given as a mapping:
    :func:`rechunk_group` -- ``chunks`` is then one shape for every array, or a mapping
    of array paths (``{"temperature": (1, 256, 256), "sub/mask": (256, 256)}``) to
    shapes, ``"*"`` naming the rule of the arrays not named (arrays no rule covers keep
    their chunks); ``shards`` likewise; ``codec`` and ``zarr_format`` apply to every
    array.  ``progress``: one bar (or ``(done, total)`` callable) over the blocks of the
    whole group."""
    kw: dict[str, Any] = dict(
        shards=shards,
        codec=codec,
        zarr_format=zarr_format,
        overwrite=overwrite,
        address=address,
        roots=roots,
        coordinator=coordinator,
        block_bytes=block_bytes,
        batch_bytes=batch_bytes,
        window=window,
        max_attempts=max_attempts,
        fsync=fsync,
        progress=progress,
        io=io,
        direct=direct,
    )
    if isinstance(chunks, Mapping) or isinstance(shards, Mapping) or source_is_group(src):
        return rechunk_group(src, dst, chunks=chunks, **kw)
    assert not isinstance(shards, Mapping)
    return rechunk_array(src, dst, chunks=chunks, **kw)


def rechunk_group(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    chunks: Rules,
    shards: Rules | None = None,
    codec: str | None = None,
    zarr_format: int | None = None,
    overwrite: bool = False,
    address: str | None = None,
    roots: dict[str, list[str]] | None = None,
    coordinator: Coordinator | None = None,
    block_bytes: int = 64 << 20,
    batch_bytes: int | None = None,
    window: int | None = None,
    max_attempts: int = 4,
    fsync: bool = False,
    progress: bool | Callable[[int, int], None] = False,
    io: str = "auto",
    direct: bool | None = None,
) -> GroupRechunkResult:
    """Convert every array of the Zarr group ``src`` into a new group ``dst`` with the
    same hierarchy and attributes (see the module docstring; arguments as
    :func:`rechunk` and :func:`~lsio_ray.ray.rechunk.driver.rechunk_array` take them).

    Before Ray is started and anything is removed or written, raises
    :class:`ValueError` naming both paths when ``dst`` is ``src``, lies inside it or
    holds it (:func:`lsio_ray.paths.check_disjoint`), and naming the array when its
    rule does not fit it (a shape with another number of dimensions than the array's,
    shards for v2, an unknown codec) or a rule names no array of the group.  The
    source may be a directory this process sees (local or shared) or a URL: a prefix
    of object storage (``s3://bucket/ds.zarr``, read with this process's store
    options), or a group over HTTP with consolidated metadata (without it its members
    cannot be listed: :class:`~lsio_ray.zarr.GroupError` says so).  The destination
    may be a local, shared or node-local directory, or an object-storage URL.  A
    destination neither empty nor an unfinished run of this job raises
    ``FileExistsError`` unless ``overwrite``."""
    src_root, dst_root = check_disjoint(src, dst)
    t0 = time.time()
    gplan = plan_group(
        src_root,
        dst_root,
        chunks=chunks,
        shards=shards,
        codec=codec,
        zarr_format=zarr_format,
        block_bytes=block_bytes,
    )
    documents = gplan.documents()
    import ray  # optional and heavy (~1 s): imported once the plan is good

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    coord = coordinator or Coordinator(roots=roots, batch_bytes=batch_bytes)
    files = DriverIO(coord)
    try:
        owner = coord.node_of(dst_root)
        if owner is not None and (owner != files.here or not files.see_here):
            check_disjoint_on(owner, src_root, dst_root)
        on_dst = files.destination(dst_root, owner, max_attempts)
        journal, done = Journal.open(
            on_dst,
            dst_root,
            gplan.identity(),
            len(gplan.arrays),
            overwrite=overwrite,
            fsync=fsync,
        )
        done |= _finished(on_dst, gplan, done)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        totals = [_nblocks(job, gplan, block_bytes, cpus) for job in gplan.arrays]
        bar = _Progress(progress, totals, done)
        results: dict[str, RechunkResult] = {}
        skipped: list[str] = []
        blocks_skipped = 0
        try:
            for i, job in enumerate(gplan.arrays):
                if done[i]:
                    skipped.append(job.path)
                    continue
                res = rechunk_array(
                    job.src,
                    job.dst,
                    chunks=job.chunks,
                    shards=job.shards,
                    codec=codec,
                    zarr_format=gplan.zarr_format,
                    coordinator=coord,
                    block_bytes=block_bytes,
                    window=window,
                    max_attempts=max_attempts,
                    fsync=fsync,
                    progress=bar.array(i, job.path),
                    io=io,
                    direct=direct,
                )
                results[job.path] = res
                blocks_skipped += res.blocks_skipped
                bar.finished(i, res.blocks)
                journal.add(i)
                journal.flush(force=True)
        finally:
            bar.close()
        # the groups' documents last: the deepest first, the root's last of all
        rank = {name: k for k, name in enumerate(GROUP_FILES[gplan.zarr_format])}
        for key in sorted(documents, key=lambda k: (-k.count("/"), rank[k.rpartition("/")[2]])):
            on_dst(
                "write_files",
                [os.path.join(dst_root, key)],
                [np.frombuffer(documents[key], np.uint8)],
                fsync=fsync,
            )
        journal.remove()
        on_dst("remove_temp_files", dst_root)
        return GroupRechunkResult(
            src=src_root,
            dst=dst_root,
            arrays=results,
            arrays_skipped=skipped,
            groups=len(gplan.groups),
            consolidated=gplan.consolidated,
            seconds=time.time() - t0,
            blocks_skipped=blocks_skipped,
        )
    finally:
        files.close()


def _finished(on_dst: Callable[..., Any], gplan: GroupPlan, done: np.ndarray) -> np.ndarray:
    """The arrays an earlier run finished after its journal's last flush: their
    metadata written and their job state removed (the destination was this job's
    since it began, so nothing else put them there)."""
    meta = "zarr.json" if gplan.zarr_format == 3 else ".zarray"
    out = np.zeros(len(gplan.arrays), bool)
    for i, job in enumerate(gplan.arrays):
        if not done[i]:
            got = on_dst(
                "read_files",
                [os.path.join(job.dst, meta), os.path.join(job.dst, STATE_DIR, "job.json")],
            )
            out[i] = got[0] is not None and got[1] is None
    return out


def _nblocks(job: ArrayJob, gplan: GroupPlan, block_bytes: int, cpus: int) -> int:
    """The blocks of ``job`` as its array job plans them on ``cpus`` CPUs."""
    p = job.plan
    return plan_job(
        job.src,
        job.dst,
        p.src_docs,
        chunks=job.chunks,
        shards=job.shards,
        codec=None,  # the codec does not change the blocks
        zarr_format=gplan.zarr_format,
        block_bytes=block_bytes,
        cpus=cpus,
    ).nblocks


class _Progress:
    """One progress bar (tqdm), or ``(done, total)`` calls, over the blocks of every
    array of the group; the arrays done before are counted done from the start."""

    def __init__(self, progress: Any, totals: Sequence[int], done: np.ndarray) -> None:
        self.totals = list(totals)
        self.base = sum(t for t, d in zip(totals, done, strict=True) if d)
        self.n = self.base
        self.fn: Callable[[int, int], None] | None = progress if callable(progress) else None
        self.bar: Any = None
        if progress and self.fn is None:
            from tqdm.auto import tqdm  # optional: only for a progress bar

            self.bar = tqdm(
                total=sum(totals), initial=self.n, unit="block", desc="rechunk", dynamic_ncols=True
            )

    def _to(self, n: int) -> None:
        if n <= self.n:
            return
        if self.bar is not None:
            self.bar.update(n - self.n)
        self.n = n
        if self.fn is not None:
            self.fn(n, sum(self.totals))

    def array(self, i: int, path: str) -> Callable[[int, int], None]:
        """The progress callable of the array ``i`` (``path``)."""
        if self.bar is not None:
            self.bar.set_postfix_str(path, refresh=False)

        def step(done: int, total: int) -> None:
            self._to(self.base + done)

        return step

    def finished(self, i: int, blocks: int) -> None:
        """The array ``i`` is done, in ``blocks`` blocks (its planned count corrected)."""
        if blocks != self.totals[i]:
            self.totals[i] = blocks
            if self.bar is not None:
                self.bar.total = sum(self.totals)
        self.base += blocks
        self._to(self.base)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
