"""The coordinator: op groups in, one ordered stream of batch ObjectRefs per group out.

>>> import ray
>>> from lsio_ray import OpGroup, get_ranges
>>> from lsio_ray.ray import Coordinator
>>> coord = Coordinator(roots={node1: ["/data/node1"], node2: ["/data/node2"]})
>>> for stream in coord.stream(groups, window=4):      # groups in submission order
...     for bref in stream:                              # batches in order
...         decode.options(**on_node(bref.node_id)).remote(bref.ref)

Each group is split by file locality (:mod:`lsio_ray.ray.locality`) into pieces, one per
run of consecutive operations held by the same node, and every piece is started at once
as a streaming-generator call on that node's IO actor.  The coordinator lives in the
driver (an ``ObjectRefGenerator`` cannot be passed to another task) and forwards the
pieces' refs in group order.

Fault tolerance.  A piece's stream is watched one ref behind: a ref is forwarded only
once the next one has arrived or the call has finished cleanly, because a call that dies
(actor or node lost) ends its stream with one extra ref holding the system error.  The
coordinator counts the batches it forwarded per piece; when a call dies it drops the
held ref and calls again with ``skip=<forwarded>`` -- on the restarted actor, or, when
the node has left and the files are on shared storage, on another node.  The actor cuts
batches by a rule that depends only on the ranges' sizes, so the new call yields exactly
the batches not yet delivered: none is repeated or skipped.  Batches already delivered
that lived on a lost node are lost with it (Ray cannot rebuild actor outputs); a job
such as :func:`~lsio_ray.ray.rechunk` re-runs the groups whose tasks hit that.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from lsio_ray.io.ops import OpGroup
from lsio_ray.io.url import is_remote
from lsio_ray.ray.actor import io_actor
from lsio_ray.ray.batches import Batch, BatchRef, default_batch_bytes
from lsio_ray.ray.errors import NodeLostError
from lsio_ray.ray.locality import Locality, alive_nodes
from lsio_ray.ray.spec import PieceSpec, split_runs

__all__ = ["Coordinator", "GroupStream", "is_system_error", "root_cause"]


def is_system_error(exc: BaseException) -> bool:
    """True for failures of the system (a process, actor, node or object lost), which
    are retried; False for errors raised by the code itself (a bad file, a bug)."""
    import ray.exceptions as rex

    if isinstance(exc, rex.RayTaskError):
        cause = getattr(exc, "cause", None)
        return cause is not None and is_system_error(cause)
    system = (
        rex.RayActorError,
        rex.ObjectLostError,
        rex.WorkerCrashedError,
        rex.NodeDiedError,
        rex.OwnerDiedError,
        rex.ActorUnschedulableError,
        rex.TaskUnschedulableError,
        rex.LocalRayletDiedError,
        rex.RaySystemError,
    )
    return isinstance(exc, system) or isinstance(exc, getattr(rex, "ActorUnavailableError", ()))


# pick_node asks Ray which nodes are alive at most this often
NODE_CHECK_SECONDS = 1.0


class _Piece:
    """One piece of a group served by one node, with its resume state."""

    def __init__(self, coord: Coordinator, node: str, spec: PieceSpec, pinned: bool) -> None:
        self.coord = coord
        self.node = node
        self.spec = spec
        self.pinned = pinned  # the files live on that node only
        self.delivered = 0
        self.attempts = 0
        self.gen: Any = None
        self.done = False
        self.weight = spec.known_bytes() + 4096 * spec.total
        self._charged = False  # counted in the coordinator's load of self.node

    def start(self) -> None:
        """Call the node's IO actor (resuming after the batches already forwarded)."""
        actor = self.coord.actor(self.node)
        self._charge()
        self.gen = actor.run.options(
            _generator_backpressure_num_objects=self.coord.backpressure
        ).remote(self.spec, self.coord.batch_bytes, self.delivered)

    def _charge(self) -> None:
        if not self._charged:
            self.coord._load[self.node] += self.weight
            self._charged = True

    def _discharge(self) -> None:
        if self._charged:
            self.coord._load[self.node] -= self.weight
            self._charged = False

    def _finished(self) -> None:
        self.done = True
        self._discharge()
        self.gen = None

    def refs(self) -> Iterator[Any]:
        """This piece's batch refs, in order, resuming across failures."""
        import ray

        held = None
        while True:
            if self.gen is None:
                self.start()
            try:
                ref = next(self.gen)
            except StopIteration:
                try:
                    ray.get(self.gen.completed())
                except Exception as exc:
                    failure: BaseException | None = exc
                else:
                    failure = None
                if failure is None:
                    if held is not None:
                        self.delivered += 1
                        yield held
                    self._finished()
                    return
                if not is_system_error(failure):
                    self._finished()
                    raise root_cause(failure) from None
                held = None  # the extra ref carrying the system error (or a batch we redo)
                self._restart(failure)
                continue
            except Exception as exc:
                if not is_system_error(exc):
                    self._finished()
                    raise
                held = None
                self._restart(exc)
                continue
            if held is not None:
                self.delivered += 1
                yield held
            held = ref

    def _restart(self, exc: BaseException) -> None:
        self._discharge()
        self.gen = None
        self.attempts += 1
        self.coord.retries += 1
        if self.attempts > self.coord.max_attempts:
            raise RuntimeError(
                f"a piece of {self.spec.total} ranges on node {self.node} failed "
                f"{self.attempts} times; last error: {exc}"
            ) from exc
        if not self.coord.node_alive(self.node):
            if self.pinned:
                raise NodeLostError(self.node, self.spec.path_list()) from exc
            self.node = self.coord.pick_node()
        else:
            time.sleep(min(2.0, 0.1 * self.attempts))

    def cancel(self) -> None:
        """Stop the call (best effort) and forget it."""
        if self.gen is not None:
            import ray

            try:
                ray.cancel(self.gen)
            except Exception:
                pass
        self._finished()


def root_cause(exc: BaseException) -> BaseException:
    """The exception a Ray task or actor call raised in its own code, unwrapped from
    Ray's wrapper (``RayTaskError.cause``); ``exc`` itself when it carries none."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


class GroupStream:
    """The ordered stream of one group's batches.

    Iterating yields :class:`~lsio_ray.ray.BatchRef` (``ref``, ``node_id``, ``group``,
    ``seq``) in order: the pieces in group order, each piece's batches in order.  Every
    range of the group appears in exactly one batch.  :meth:`batches` and :meth:`chunks`
    fetch the batches into this process (``ray.get``, zero-copy on the same node).
    """

    def __init__(
        self, coord: Coordinator, index: int, group: OpGroup, pieces: list[_Piece]
    ) -> None:
        self._coord = coord
        self.index = index
        self.metadata: Any = group.metadata
        self.nranges: int = group.nranges
        self._pieces = pieces
        self._seq = 0
        self._iter: Iterator[BatchRef] | None = None

    @property
    def nodes(self) -> list[str]:
        """The node serving each piece, in order."""
        return [p.node for p in self._pieces]

    def _gen(self) -> Iterator[BatchRef]:
        for piece in self._pieces:
            for ref in piece.refs():
                out = BatchRef(ref, piece.node, self.index, self._seq)
                self._seq += 1
                yield out

    def __iter__(self) -> Iterator[BatchRef]:
        if self._iter is None:
            self._iter = self._gen()
        return self._iter

    def refs(self) -> list[BatchRef]:
        """Every remaining batch ref (waits for the group's IO to finish)."""
        return list(iter(self))

    def batches(self) -> Iterator[Batch]:
        """The batches themselves, fetched one at a time."""
        import ray

        for bref in self:
            yield ray.get(bref.ref)

    def chunks(self) -> Iterator[tuple[Any, np.ndarray]]:
        """``(metadata, bytes)`` per range in order; a failed range raises its
        :class:`~lsio_ray.ray.InputError` where it stands."""
        for batch in self.batches():
            yield from batch

    def cancel(self) -> None:
        """Stop the pieces still running."""
        for p in self._pieces:
            if not p.done:
                p.cancel()

    @property
    def done(self) -> bool:
        """True once every piece has finished and been forwarded."""
        return all(p.done for p in self._pieces)

    def __repr__(self) -> str:
        return (
            f"<GroupStream #{self.index} metadata={self.metadata!r} "
            f"ranges={self.nranges} pieces={len(self._pieces)} delivered={self._seq}>"
        )


class Coordinator:
    """Shards op groups over the cluster's IO actors by file locality.

    ``roots``: node-local disks, ``{node_id: [directory, ...]}``; a file under a root is
    read by that node only.  ``discover``: ask the actors which node has files under no
    root.  Other files are on shared storage and spread over ``nodes`` (default: every
    live node), a whole group to the least busy node.  ``batch_bytes``: bytes per batch
    (default 16 MiB, env ``LSIO_RAY_BATCH_BYTES``).  ``backpressure``: batches a piece
    may run ahead of its consumer.  ``max_attempts``: calls per piece before giving up.
    ``engine``: settings for the IO actors' engines (used when they are started).
    """

    def __init__(
        self,
        *,
        roots: Mapping[str, Iterable[str]] | None = None,
        discover: bool = False,
        nodes: Iterable[str] | None = None,
        batch_bytes: int | None = None,
        backpressure: int = 8,
        max_attempts: int = 5,
        engine: dict[str, Any] | None = None,
        record_paths: bool = False,
        detached: bool = False,
    ) -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("connect to Ray first (ray.init(address=...))")
        self.locality = Locality(roots)
        self.discover = discover
        live = alive_nodes()
        self.nodes: list[str] = [n for n in (nodes or live) if n in live]
        if not self.nodes:
            raise RuntimeError("no live node to run IO actors on")
        for node in self.locality.nodes_with_roots:
            if node not in live:
                raise ValueError(f"node {node} (given in roots) is not a live node")
        self.batch_bytes = int(batch_bytes or default_batch_bytes())
        self.backpressure = int(backpressure)
        self.max_attempts = int(max_attempts)
        self._engine = engine
        self._record = record_paths
        self._detached = detached
        self._actors: dict[str, Any] = {}
        self._load: dict[str, int] = collections.defaultdict(int)
        self._rr = 0
        self._groups = 0
        self.retries = 0
        self._checked = time.monotonic()  # when nodes was last checked against Ray

    # -- actors and nodes ----------------------------------------------------------------
    def actor(self, node: str) -> Any:
        """The IO actor of ``node`` (started on first use)."""
        a = self._actors.get(node)
        if a is None:
            a = io_actor(
                node, engine=self._engine, record_paths=self._record, detached=self._detached
            )
            self._actors[node] = a
        return a

    def actors(self) -> dict[str, Any]:
        """Every node's IO actor, started if needed."""
        return {n: self.actor(n) for n in self.nodes}

    @property
    def engine_settings(self) -> dict[str, Any] | None:
        """The settings the IO actors' engines are started with (``engine=``; None:
        the engine's defaults), for a job that runs an engine of its own alike (a copy:
        changing it changes nothing here)."""
        return None if self._engine is None else dict(self._engine)

    def node_alive(self, node: str) -> bool:
        """Whether ``node`` is alive now (asks Ray).  Nodes that have left the cluster
        are dropped from :attr:`nodes` on the way, so :meth:`pick_node` and new groups
        no longer go to them; ``node_alive("")`` only does that."""
        live = alive_nodes()
        self.nodes = [n for n in self.nodes if n in live]
        self._checked = time.monotonic()
        return node in live

    def pick_node(self) -> str:
        """A node for work that may run anywhere (shared storage): the least busy of
        :attr:`nodes` by the bytes of the groups in flight, round-robin among equals.
        Raises :class:`RuntimeError` when no node is left."""
        if time.monotonic() - self._checked >= NODE_CHECK_SECONDS:
            # work placed softly on a node that left is run elsewhere by Ray without a
            # failure to tell us: look again now and then
            self.node_alive("")
        if not self.nodes:
            raise RuntimeError("no live node left")
        best = min(self._load[n] for n in self.nodes)
        cands = [n for n in self.nodes if self._load[n] == best]
        self._rr += 1
        return cands[self._rr % len(cands)]

    def node_of(self, path: str) -> str | None:
        """The node that must read ``path`` (None: any node, shared storage; always for
        object storage and HTTP, which every node reaches through its own network)."""
        if is_remote(path):
            return None
        node = self.locality.declared(path)
        if node is not None or not self.discover:
            return node
        known, node = self.locality.cached(path)
        if known:
            return node
        import ray

        actors = self.actors()
        answers = ray.get([a.exists.remote([path]) for a in actors.values()])
        holders = [n for n, ans in zip(actors, answers, strict=True) if ans[0]]
        return self.locality.remember(path, holders)

    # -- groups --------------------------------------------------------------------------
    def assign(self, group: OpGroup) -> tuple[list[str], list[bool]]:
        """The node serving each operation of ``group`` and whether it is pinned there."""
        owners = [self.node_of(op.path) for op in group.operations]
        pinned = [o is not None for o in owners]
        if not any(pinned):
            node = self.pick_node()
            return [node] * len(owners), pinned
        # unpinned ops join a neighbour's piece rather than splitting the group
        filled: list[str | None] = list(owners)
        last = next(o for o in owners if o is not None)
        for i, o in enumerate(filled):
            if o is None:
                filled[i] = last
            else:
                last = o
        return [str(o) for o in filled], pinned

    def submit(self, group: OpGroup, *, order: str = "operation") -> GroupStream:
        """Start a group's IO on its nodes now; returns its :class:`GroupStream`.

        ``order="operation"``: one piece per run of consecutive operations on the same
        node, so the stream keeps operation order.  ``order="node"``: one piece per node
        (fewer calls; operation order holds within each node's piece only)."""
        if not isinstance(group, OpGroup):
            raise TypeError(f"submit takes an OpGroup, not {type(group).__name__}")
        by = {"operation": "run", "node": "node"}.get(order)
        if by is None:
            raise ValueError(f"order must be 'operation' or 'node', not {order!r}")
        nodes, pinned = self.assign(group)
        pieces: list[_Piece] = []
        if group.operations:
            pin_of = dict(zip(range(len(nodes)), pinned, strict=True))
            for node, spec in split_runs(group, nodes, by=by):
                is_pinned = any(pin_of[int(i)] for i in spec.op_ids.tolist())
                pieces.append(_Piece(self, node, spec, is_pinned))
        for p in pieces:
            p.start()
        stream = GroupStream(self, self._groups, group, pieces)
        self._groups += 1
        return stream

    def stream(
        self, groups: Iterable[OpGroup], *, window: int = 4, order: str = "operation"
    ) -> Iterator[GroupStream]:
        """Submit groups ``window`` ahead of the consumer and yield their streams in
        submission order.  Closing the iterator early cancels the groups in flight."""
        if window < 1:
            raise ValueError(f"window must be >= 1, not {window}")
        pending: collections.deque[GroupStream] = collections.deque()
        try:
            for g in groups:
                pending.append(self.submit(g, order=order))
                if len(pending) >= window:
                    yield pending.popleft()
            while pending:
                yield pending.popleft()
        finally:
            for s in pending:
                s.cancel()

    # -- observability -------------------------------------------------------------------
    def stats(self) -> dict[str, dict[str, Any]]:
        """Each node's IO actor counters (:meth:`IOActor.stats`), by node."""
        import ray

        actors = self.actors()
        got = ray.get([a.stats.remote() for a in actors.values()])
        return dict(zip(actors, got, strict=True))

    def paths_read(self) -> dict[str, list[str]]:
        """Files each node read (actors started with ``record_paths=True``)."""
        import ray

        actors = self.actors()
        got = ray.get([a.paths_read.remote() for a in actors.values()])
        return dict(zip(actors, got, strict=True))

    def reset_stats(self) -> None:
        """Zero every node's IO actor counters."""
        import ray

        ray.get([a.reset_stats.remote() for a in self.actors().values()])

    def __repr__(self) -> str:
        return (
            f"<Coordinator nodes={len(self.nodes)} roots={len(self.locality.roots)} "
            f"batch={self.batch_bytes >> 20} MiB groups={self._groups}>"
        )
