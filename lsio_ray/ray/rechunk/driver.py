"""The re-chunk job's driver for one array: :func:`rechunk_array` -- plan, destination, blocks,
metadata (a whole group: :mod:`~lsio_ray.ray.rechunk.group`).

It reads the source's metadata (on the node holding it), plans the job
(:mod:`~lsio_ray.ray.rechunk.plan`), opens or resumes the destination's journal
(:mod:`~lsio_ray.ray.rechunk.journal`), runs one task per block not done yet
(:func:`~lsio_ray.ray.rechunk.block.rechunk_block`), at most one per core plus one
per node at once, retrying blocks lost to system failures, journals each finished
block, and writes the metadata last.  It reaches the cluster only through public
:class:`~lsio_ray.ray.Coordinator` methods: ``node_of``, ``submit``, ``actor``,
``node_alive``, ``pick_node``, ``engine_settings``, ``nodes`` and ``retries``.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lsio_ray.io import config
from lsio_ray.io.ops import OpGroup
from lsio_ray.io.stores import exported
from lsio_ray.io.url import is_remote
from lsio_ray.paths import check_disjoint
from lsio_ray.ray.coordinator import Coordinator, GroupStream, is_system_error, root_cause
from lsio_ray.ray.errors import RayLayerError
from lsio_ray.ray.pieces import close_process_io, process_io
from lsio_ray.ray.rechunk.block import BlockJob, BlockResult, rechunk_block
from lsio_ray.ray.rechunk.journal import Journal, job_identity
from lsio_ray.ray.rechunk.plan import Plan, block_box, block_ops, local_engine, plan_job
from lsio_ray.ray.tasks import on_node
from lsio_ray.zarr.codec_api import METADATA_FILES, docs_from_files, supports_direct

__all__ = ["DriverIO", "RechunkError", "RechunkResult", "check_disjoint_on", "rechunk_array"]


class RechunkError(RayLayerError):
    """The conversion failed; the message names the block, and the file and node when
    an input was at fault."""


@dataclass
class RechunkResult:
    """What a :func:`rechunk_array` run (the conversion of one array) did."""

    src: str
    dst: str
    shape: tuple[int, ...]
    block: tuple[int, ...]
    blocks: int
    blocks_skipped: int
    units_written: int
    bytes_read: int
    bytes_written: int
    seconds: float
    retries: int
    bytes_read_by_node: dict[str, int] = field(default_factory=dict)
    """Chunk bytes read per node (the metadata documents, read by the IO actors, are
    not counted)."""
    blocks_in_task: int = 0
    """Blocks whose task did its own IO (``io="auto"``); the others went through the
    IO actors' streams."""


def rechunk_array(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    chunks: Sequence[int],
    shards: Sequence[int] | None = None,
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
) -> RechunkResult:
    """Re-chunk (and/or convert) the Zarr array ``src`` into a new array ``dst``.

    ``chunks``: the new chunk shape (the inner chunk when ``shards`` is given); ``shards``:
    the new shard shape, or None for no sharding; ``codec``: see
    :func:`~lsio_ray.ray.rechunk.plan.parse_codec` (None: zarr-python's default);
    ``zarr_format``: 2 or 3 (default: the source's).  ``address``: the Ray cluster to join
    when not connected yet; ``roots``/``coordinator``: file locality (see
    :class:`~lsio_ray.ray.Coordinator`).  ``block_bytes``: the decoded size of one block
    (the memory per task); ``window``: blocks planned ahead of the running tasks -- for
    blocks read through the IO actors, the blocks being read at once (default: two per
    node).  ``progress``: a tqdm bar in this process, or a callable ``(done, total)``.
    ``io``: ``"auto"`` (default) lets the task of a block whose input files are all on one
    node (or on shared storage) read them itself, on that node, and write its output there
    when the output is on that node (or shared) -- no hop through an IO actor and the object
    store; other blocks, and every block with ``"actors"``, read through the IO actors'
    ordered streams and write through the output's IO actor.  ``direct``: read the input
    files with O_DIRECT (each is read once: no page-cache copy, and the page cache is left
    to the output).  It is for inputs read cold or larger than memory: measured 3-9% faster
    cold, 0-4% slower from a warm cache, as a task waits for the device before decoding its
    block.  Default: the ``direct`` setting of :mod:`lsio_ray.config` (env ``LSIO_DIRECT``)
    when it is True (its default ``"auto"`` leaves re-chunk inputs buffered); off where
    the driver sees the source on a file system refusing it, and for a source on object
    storage.  ``src`` and ``dst`` may be object-storage URLs (see the package
    docstring).  Resumable: see the package docstring (:mod:`lsio_ray.ray.rechunk`).

    Raises :class:`ValueError` naming both paths, before Ray is started and before
    anything is removed or written, when ``dst`` is ``src``, lies inside it or holds it,
    compared as written and with symbolic links resolved, or holds a symbolic link
    leading into the source (:func:`lsio_ray.paths.check_disjoint`): ``overwrite=True``
    never removes the source.  A node-local destination on another node than the
    driver's is checked on that node as well.
    """
    import ray  # optional and heavy (~1 s): imported on use

    if io not in ("auto", "actors"):
        raise ValueError(f"io must be 'auto' or 'actors', not {io!r}")
    # before Ray starts and anything is removed or written: a destination that is the
    # source, inside it or holding it (symbolic links resolved) would destroy the source
    src_root, dst_root = check_disjoint(src, dst)
    t0 = time.time()
    if direct is None:
        direct = config.get("direct") is True  # "auto" (the default): buffered
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    coord = coordinator or Coordinator(roots=roots, batch_bytes=batch_bytes)
    if is_remote(src_root):
        direct = False  # objects are not files
    elif direct and os.path.isdir(src_root):
        direct = supports_direct(src_root)
    files = DriverIO(coord)
    try:
        # the source's metadata, read on the node that holds it
        names = list(METADATA_FILES)
        got = files.call(
            files.meta_node(src_root), "read_files", [os.path.join(src_root, n) for n in names]
        )
        src_docs = docs_from_files(dict(zip(names, got, strict=True)), src_root)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        plan = plan_job(
            src_root,
            dst_root,
            src_docs,
            chunks=chunks,
            shards=shards,
            codec=codec,
            zarr_format=zarr_format,
            block_bytes=block_bytes,
            cpus=cpus,
        )

        # the destination: fresh, or an unfinished run of this very job
        owner = coord.node_of(dst_root)
        if owner is not None and (owner != files.here or not files.see_here):
            # a node-local destination this driver cannot see: check it where it is too
            check_disjoint_on(owner, src_root, dst_root)
        on_dst = files.destination(dst_root, owner, max_attempts)
        journal, done = Journal.open(
            on_dst,
            dst_root,
            job_identity(src_root, plan),
            plan.nblocks,
            overwrite=overwrite,
            fsync=fsync,
        )
        todo = np.flatnonzero(~done).tolist()
        skipped = plan.nblocks - len(todo)

        job = BlockJob(
            src=src_root,
            dst=dst_root,
            src_docs=plan.src_docs,
            dst_docs=plan.dst_docs,
            grid=plan.grid,
            block=plan.block,
            owner=owner,
            fsync=fsync,
            direct=direct,
            local_engine=local_engine(coord.engine_settings, plan.src),
            storage=exported([src_root, dst_root]),
        )
        blocks = _Blocks(
            coord, plan, job, io=io, cpus=cpus, window=window, max_attempts=max_attempts
        )
        retries0 = coord.retries
        step, close_bar = _progress_fn(progress, plan.nblocks, skipped)
        try:
            blocks.run(todo, journal, step)
        finally:
            close_bar()
        coord.node_alive("")  # nodes that left during the job: dropped for the next one

        # finish: metadata last (v2: attributes before .zarray), then forget the journal
        order = sorted(plan.dst_bytes, key=lambda k: (k == ".zarray", k == "zarr.json", k))
        for name in order:
            on_dst(
                "write_files",
                [os.path.join(dst_root, name)],
                [np.frombuffer(plan.dst_bytes[name], np.uint8)],
                fsync=fsync,
            )
        journal.remove()
        # writes interrupted by a crash leave temp files beside the units: all are
        # where the destination is (its node's disk, or the shared storage)
        on_dst("remove_temp_files", dst_root)
        return RechunkResult(
            src=src_root,
            dst=dst_root,
            shape=tuple(plan.src.shape),
            block=plan.block,
            blocks=plan.nblocks,
            blocks_skipped=skipped,
            units_written=blocks.units,
            bytes_read=blocks.nread,
            bytes_written=blocks.nwritten,
            seconds=time.time() - t0,
            retries=coord.retries - retries0 + sum(blocks.attempts.values()),
            bytes_read_by_node=dict(blocks.by_node),
            blocks_in_task=blocks.in_task,
        )
    finally:
        files.close()


class DriverIO:
    """IO service calls for the job's metadata and journal, made where the files are:
    in this process when that is this driver's node (its own IO service,
    :func:`~lsio_ray.ray.pieces.process_io`: no IO actor -- a process of ~70 MiB -- is
    started for them), else by the node's IO actor.  Not under Ray Client, whose driver
    runs on another machine than the node it names."""

    def __init__(self, coord: Coordinator) -> None:
        import ray  # optional and heavy (~1 s): imported on use
        from ray.util.client import ray as ray_client

        self.coord = coord
        self.here: str = ray.get_runtime_context().get_node_id()
        self.see_here = not ray_client.is_connected()
        self.used_here = False

    def meta_node(self, path: str) -> str:
        """The node to read ``path`` on: its holder, else (shared) this driver's node
        when it is one of the coordinator's, else the first of them; an object-storage
        URL, this driver (its process has the store's options)."""
        node = self.coord.node_of(path)
        if node is not None:
            return node
        if is_remote(path) and self.see_here:
            return self.here  # object storage: this process, with its store options
        return self.here if self.here in self.coord.nodes else self.coord.nodes[0]

    def call(self, node: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """An IO actor method for ``node``'s files: run here when ``node`` is this
        driver's, else by the node's IO actor."""
        import ray  # optional and heavy (~1 s): imported on use

        if node == self.here and self.see_here:
            self.used_here = True
            return getattr(process_io(self.coord.engine_settings), method)(*args, **kwargs)
        return ray.get(getattr(self.coord.actor(node), method).remote(*args, **kwargs))

    def destination(
        self, dst_root: str, owner: str | None, max_attempts: int
    ) -> Callable[..., Any]:
        """``call(method, *args, **kwargs)`` for the destination's files.  On shared
        storage a node lost mid-job is pruned and the call goes to another node; a
        node-local destination lost with its node fails the job."""

        def on_dst(method: str, *args: Any, **kwargs: Any) -> Any:
            for attempt in range(max_attempts):
                node = owner or self.meta_node(dst_root)
                try:
                    return self.call(node, method, *args, **kwargs)
                except Exception as exc:
                    last = attempt + 1 == max_attempts
                    if owner is not None or not is_system_error(exc) or last:
                        raise
                    self.coord.node_alive(node)

        return on_dst

    def close(self) -> None:
        """Free this process's IO service if the job used it."""
        if self.used_here:
            close_process_io()


class _Blocks:
    """The block tasks of one run: planned ``window`` ahead, at most one per CPU plus
    one per node running, each placed where its inputs are; blocks lost to a system
    failure are run again (``max_attempts`` in all), other failures end the job with a
    :class:`RechunkError`.  Counts what the tasks did."""

    def __init__(
        self,
        coord: Coordinator,
        plan: Plan,
        job: BlockJob,
        *,
        io: str,
        cpus: int,
        window: int | None,
        max_attempts: int,
    ) -> None:
        import ray  # optional and heavy (~1 s): imported on use

        self.coord = coord
        self.plan = plan
        self.job = job
        self.job_ref = ray.put(job)
        self.task = ray.remote(num_cpus=1, max_retries=0)(rechunk_block)
        self.io = io
        self.max_attempts = max_attempts
        self.window = window or max(2, 2 * len(coord.nodes))
        self.max_running = cpus + len(coord.nodes)
        self.attempts: dict[int, int] = collections.defaultdict(int)
        self.retry: collections.deque[int] = collections.deque()
        self.queue: Iterator[int] = iter(())
        self.reading: collections.deque[tuple[int, GroupStream | None, str | None]] = (
            collections.deque()
        )
        self.running: dict[Any, int] = {}
        self.local_blocks: set[int] = set()
        self.units = self.nread = self.nwritten = self.in_task = 0
        self.by_node: dict[str, int] = collections.defaultdict(int)

    def place(self, bid: int) -> tuple[OpGroup, str | None, bool]:
        """The block's reads, the node its task must run on (None: any), and whether
        the task does its own IO (its inputs all on one node, or shared)."""
        src = self.plan.src
        ops = block_ops(src, self.plan.grid, self.plan.block, bid, self.job.direct)
        group = OpGroup(ops, metadata=bid)
        if self.io == "actors" and not is_remote(self.job.src):
            # (objects on a store have no node: every block's task reads its own, with
            # the driver's store options -- never the IO actors)
            return group, None, False
        holders = {self.coord.node_of(op.path) for op in group.operations}
        if len(holders) > 1:
            return group, None, False  # inputs on several nodes: the actors' streams
        node = holders.pop() if holders else None
        if node is not None and self.attempts[bid] and not self.coord.node_alive(node):
            raise RechunkError(
                f"block {bid} of {self.job.src}: its input {group.operations[0].path} is on "
                f"node {node}, which is gone"
            )
        return group, node, True

    def failed(self, bid: int, exc: BaseException) -> None:
        """Block ``bid``'s task failed: run it again (a system failure, attempts left),
        else raise :class:`RechunkError` naming the block."""
        self.attempts[bid] += 1
        if is_system_error(exc) and self.attempts[bid] < self.max_attempts:
            if bid in self.local_blocks:
                self.coord.node_alive("")  # forget lost nodes: the retry goes to a live one
            self.retry.append(bid)
            return
        cause = root_cause(exc)
        lo, hi = block_box(bid, self.plan.grid, self.plan.block, self.plan.src.shape)
        raise RechunkError(
            f"block {bid} ({lo.tolist()}..{hi.tolist()}) of {self.job.src}: "
            f"{type(cause).__name__}: {cause}"
        ) from cause

    def _next_block(self) -> int | None:
        if self.retry:
            return self.retry.popleft()
        return next(self.queue, None)

    def _launch(self) -> bool:
        """Start the task of the oldest block planned; whether one was started."""
        bid, stream, node = self.reading.popleft()
        if stream is None:
            # its inputs' node (hard: only it has them), else the next node round-robin
            # (soft: another if that one is lost) -- the codecs are the bottleneck, so
            # shared inputs spread over every node's cores, even when the output is one
            # node's (its actor then writes)
            where = node or self.coord.pick_node()
            opts = on_node(where, soft=node is None)
            ref = self.task.options(**opts).remote(self.job_ref, bid, True)
            self.local_blocks.add(bid)
            self.running[ref] = bid
            return True
        try:
            brefs = stream.refs()
        except Exception as exc:
            self.failed(bid, exc)
            return False
        where = _majority([b.node_id for b in brefs]) if brefs else None
        opts = on_node(where) if where else {}
        ref = self.task.options(**opts).remote(self.job_ref, bid, False, *[b.ref for b in brefs])
        self.running[ref] = bid
        return True

    def _collect(self, ready: list[Any], journal: Journal, step: Callable[[int], None]) -> bool:
        """Take the results of the finished tasks ``ready``; whether one failed (and is
        to be run again)."""
        import ray  # optional and heavy (~1 s): imported on use

        again = False
        for ref in ready:
            bid = self.running.pop(ref)
            try:
                res: BlockResult = ray.get(ref)
            except Exception as exc:
                self.failed(bid, exc)
                again = True
                continue
            self.units += res.units
            self.nread += res.bytes_read
            self.nwritten += res.bytes_written
            for n, b in res.reads_by_node.items():
                self.by_node[n] += b
            self.in_task += bid in self.local_blocks
            journal.add(bid)
            step(1)
        return again

    def run(self, todo: list[int], journal: Journal, step: Callable[[int], None]) -> None:
        """Run the blocks ``todo`` (and their retries) to the end, journalling each
        finished one.  On any error the tasks and reads in flight are cancelled and the
        journal flushed before it is raised."""
        import ray  # optional and heavy (~1 s): imported on use

        self.queue = iter(todo)
        try:
            exhausted = False
            while True:
                while not exhausted and len(self.reading) < self.window:
                    bid = self._next_block()
                    if bid is None:
                        exhausted = True
                        break
                    group, node, local = self.place(bid)
                    if local:  # the task reads: nothing to start
                        self.reading.append((bid, None, node))
                    else:
                        self.reading.append((bid, self.coord.submit(group, order="node"), None))
                if not self.reading and not self.running:
                    if self.retry:
                        exhausted = False
                        continue
                    break
                launched = False
                if self.reading and len(self.running) < self.max_running:
                    launched = self._launch()
                    if self.retry:
                        exhausted = False
                if self.running:
                    # every task already done, else (when there is nothing to launch)
                    # block until the first one is: a core must not idle until all end
                    refs = list(self.running)
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                    can_launch = self.reading and len(self.running) < self.max_running
                    if not ready and not (launched or can_launch):
                        ready, _ = ray.wait(refs, num_returns=1, timeout=1.0)
                    if self._collect(ready, journal, step):
                        exhausted = False
                journal.flush()
            journal.flush(force=True)
        except BaseException:
            try:
                journal.flush(force=True)
            finally:
                for ref in self.running:
                    try:
                        ray.cancel(ref)
                    except Exception:
                        pass
                for _, stream, _ in self.reading:
                    if stream is not None:
                        stream.cancel()
            raise


def _progress_fn(
    progress: Any, total: int, initial: int
) -> tuple[Callable[[int], None], Callable[[], None]]:
    if callable(progress):
        state = {"n": initial}

        def step(k: int) -> None:
            state["n"] += k
            progress(state["n"], total)

        return step, lambda: None
    if progress:
        from tqdm.auto import tqdm  # optional: only for a progress bar

        bar = tqdm(total=total, initial=initial, unit="block", desc="rechunk", dynamic_ncols=True)
        return bar.update, bar.close
    return (lambda k: None), (lambda: None)


def check_disjoint_on(node: str, src: str, dst: str) -> None:
    """:func:`~lsio_ray.paths.check_disjoint` run on ``node`` (its file system's view);
    its :class:`ValueError` raised here as is, prefixed with the node."""
    import ray  # optional and heavy (~1 s): imported on use

    check = ray.remote(num_cpus=0, max_retries=0)(check_disjoint)
    try:
        ray.get(check.options(**on_node(node, soft=False)).remote(src, dst))
    except Exception as exc:
        cause = root_cause(exc)
        if isinstance(cause, ValueError):
            raise ValueError(f"on node {node}: {cause}") from None
        raise


def _majority(nodes: list[str]) -> str:
    return collections.Counter(nodes).most_common(1)[0][0]
