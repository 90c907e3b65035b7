"""The IO actor: one per node, serving that node's pieces of op groups.

Each node runs one :class:`IOActor`, named ``lsio-io-<node_id>`` in the ``lsio_ray``
namespace, pinned to its node (``NodeAffinitySchedulingStrategy(node_id, soft=False)``),
started on first use (:func:`io_actor`) and restarted by Ray if it dies
(``max_restarts=-1``).  It asks for no CPU (``num_cpus=0``): the cores belong to the
decode tasks.  It is a threaded actor: every call runs on its own thread, so several
pieces stream at once and ``stats``/``ping`` answer while they do.

The actor is only the Ray wrapper: serving a piece is
:class:`~lsio_ray.ray.pieces.PieceServer`'s, over the actor process's IO service
(:mod:`lsio_ray.io.service`), which owns the engine and its pool.
"""

from __future__ import annotations

import resource
from typing import Any

from lsio_ray.ray.pieces import PieceServer

__all__ = ["NAMESPACE", "IOActor", "actor_name", "io_actor"]

NAMESPACE = "lsio_ray"
"""The Ray namespace the IO actors are registered in."""


def actor_name(node_id: str) -> str:
    """The registered name of a node's IO actor."""
    return f"lsio-io-{node_id}"


class IOActor(PieceServer):
    """A node's IO actor: a :class:`~lsio_ray.ray.pieces.PieceServer` (same arguments)
    with a liveness check and its process's CPU time.
    Use :func:`io_actor`."""

    def __init__(self, engine: dict[str, Any] | None = None, **options: Any) -> None:
        super().__init__(engine, **options)

    def stats(self) -> dict[str, Any]:
        """:meth:`PieceServer.stats`, with the node id, the actor's process id and the
        CPU time its process used (``cpu_s``, all threads, since it started)."""
        out = super().stats()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out["cpu_s"] = ru.ru_utime + ru.ru_stime
        return out

    def ping(self) -> str:
        """The node id (a liveness check)."""
        return self.node_id

    def shutdown(self) -> None:
        """Cancel the pieces being served and free the engine when the actor owns it
        (the actor is unusable after)."""
        self.close()
        if not self._own:
            self.service.close()


_REMOTE: Any = None
_HANDLES: dict[str, Any] = {}
"""Handles of the actors this process started: a non-detached actor lives as long as its
creator holds a handle, so they are kept for the life of the process (the driver)."""


def _remote_class() -> Any:
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(IOActor)
    return _REMOTE


def io_actor(
    node_id: str,
    *,
    engine: dict[str, Any] | None = None,
    detached: bool = False,
    record_paths: bool = False,
    max_concurrency: int = 64,
    **options: Any,
) -> Any:
    """The IO actor of ``node_id``: found by name if it runs, else started there.

    Started with ``num_cpus=0`` (it must never hold a core the tasks need),
    ``max_restarts=-1`` (Ray restarts it if it dies), no automatic task retries (the
    coordinator resumes streams itself), ``max_concurrency`` threads, and
    ``NodeAffinitySchedulingStrategy(node_id, soft=False)``.  ``detached=True`` keeps it
    alive after the driver exits.  ``engine`` and ``record_paths`` apply only when this
    call starts the actor.  The process that starts an actor keeps its handle (a
    non-detached actor dies with its creator's last handle), so the actors of a driver
    live until it exits.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = actor_name(node_id)
    job = ray.get_runtime_context().get_job_id()
    if _HANDLES.get("job") != job:  # a new connection: handles of an old one are void
        _HANDLES.clear()
        _HANDLES["job"] = job
    mine = _HANDLES.get(node_id)
    if mine is not None:
        return mine
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        pass
    opts: dict[str, Any] = {
        "name": name,
        "namespace": NAMESPACE,
        "get_if_exists": True,
        "num_cpus": 0,
        "max_restarts": -1,
        "max_task_retries": 0,
        "max_concurrency": max_concurrency,
        "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False),
    }
    if detached:
        opts["lifetime"] = "detached"
    opts.update(options)
    handle = _remote_class().options(**opts).remote(engine, record_paths=record_paths)
    _HANDLES[node_id] = handle
    return handle
