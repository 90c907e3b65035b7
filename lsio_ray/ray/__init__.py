"""lsio_ray on a Ray cluster: IO actors per node, a locality-aware coordinator, and
Ray tasks for the compute stages.

* :func:`io_actor` / :class:`IOActor` -- one per node, owning that node's engine and
  buffer pool, serving pieces of op groups as streams of :class:`Batch` objects.
* :class:`Coordinator` -- shards :class:`~lsio_ray.OpGroup` s by file locality and
  returns one ordered :class:`GroupStream` of :class:`BatchRef` s per group, resuming
  streams across actor and node failures.
* :mod:`lsio_ray.ray.tasks` -- decompress, reduce, compress and write-back stages as
  Ray tasks placed on the node that read their bytes; :func:`run_pipeline` chains them.
* :func:`rechunk` -- cluster-wide, resumable Zarr re-chunking and format conversion.
"""

from __future__ import annotations

from typing import Any

from lsio_ray.ray.actor import NAMESPACE, IOActor, actor_name, io_actor
from lsio_ray.ray.batches import DEFAULT_BATCH_BYTES, INDEX_DTYPE, Batch, BatchRef
from lsio_ray.ray.coordinator import Coordinator, GroupStream, is_system_error
from lsio_ray.ray.errors import InputError, NodeLostError, OutputError, RayLayerError
from lsio_ray.ray.locality import Locality, alive_nodes

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "INDEX_DTYPE",
    "NAMESPACE",
    "Batch",
    "BatchRef",
    "Coordinator",
    "GroupStream",
    "IOActor",
    "InputError",
    "Locality",
    "NodeLostError",
    "OutputError",
    "RayLayerError",
    "actor_name",
    "alive_nodes",
    "io_actor",
    "is_system_error",
    "rechunk",
]


def __getattr__(name: str) -> Any:
    if name == "rechunk":
        from lsio_ray.ray.rechunk import rechunk

        return rechunk
    raise AttributeError(f"module 'lsio_ray.ray' has no attribute {name!r}")
