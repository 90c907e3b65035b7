"""Ray Train integration: each Train worker reads its own shard on its own node.

:class:`NodeShardsConfig` is a Ray Train ``DataConfig`` (its documented extension
point, ``configure``) that gives Train worker ``i`` shard ``(i, world_size)`` of a
reader call, read by tasks on that worker's node (:func:`lsio_ray.data.node_shards`),
instead of Train's default ``streaming_split`` of one dataset (whose blocks cross nodes
wherever they were read away from their consumer).  Needs ``ray[train]``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ray.train import DataConfig

from lsio_ray.data_shards import free_cpus, node_shards

if TYPE_CHECKING:
    from ray.data import DataIterator, Dataset

__all__ = ["NodeShardsConfig"]


def _warn_if_no_cpu_left(node_ids: list[str]) -> None:
    """Warn, naming the node, where the Train workers left less than one CPU free: the
    node's shard reads (1 CPU each unless the reader's ``num_cpus`` says otherwise) would
    wait there for as long as the workers hold their CPUs."""
    for node in sorted(set(node_ids)):
        free = free_cpus(node)
        if free is not None and free < 1:
            warnings.warn(
                f"node {node} has {free:g} CPU free with the Train workers placed: its "
                "shard's read tasks (1 CPU each by default) cannot start there until CPUs "
                "free up; give the workers fewer CPUs (ScalingConfig resources_per_worker) "
                "or the reader a smaller num_cpus (e.g. partial(read_zarr_crops, ..., "
                "num_cpus=0.25))",
                RuntimeWarning,
                stacklevel=3,
            )


class NodeShardsConfig(DataConfig):
    """Each Train worker gets its node's shard of each named reader call:

    >>> from functools import partial
    >>> crops = partial(lsio_ray.data.read_zarr_crops, "train.zarr", (8, 256, 256), 100_000)
    >>> trainer = TorchTrainer(loop, datasets={"train": crops()},
    ...                        dataset_config=NodeShardsConfig(train=crops))

    Each keyword maps a dataset name to a callable taking a reader's keyword arguments
    (a ``functools.partial`` of :func:`~lsio_ray.data.read_zarr_crops` or
    :func:`~lsio_ray.data.read_zarr_windows`).  Train requires a dataset under that name
    in ``datasets=``; it only names the shards (its own rows are not read).  Other
    datasets are configured as ``DataConfig(**data_config)`` would.

    Each shard's read tasks run on its worker's node only, so that node needs CPUs the
    workers leave free (1 per read task by default, the reader's ``num_cpus``): a
    ``RuntimeWarning`` names a node with less than one free when the workers start.
    """

    def __init__(
        self, data_config: dict[str, Any] | None = None, **readers: Callable[..., Dataset]
    ) -> None:
        if not readers:
            raise ValueError("NodeShardsConfig needs at least one name=reader")
        for name, reader in readers.items():
            if not callable(reader):
                raise TypeError(f"NodeShardsConfig({name}=) takes a callable, not {reader!r}")
        super().__init__(**(data_config or {}))
        self.readers = dict(readers)

    def configure(
        self,
        datasets: dict[str, Dataset],
        world_size: int,
        worker_handles: list[Any] | None,
        worker_node_ids: list[str] | None,
        **kwargs: Any,
    ) -> list[dict[str, DataIterator]]:
        """Every worker's iterators: for each named reader, worker ``i`` gets shard
        ``(i, world_size)`` read on ``worker_node_ids[i]``; the other datasets as
        ``DataConfig.configure`` gives them."""
        if not worker_node_ids or len(worker_node_ids) != world_size:
            raise ValueError(
                f"NodeShardsConfig needs the node id of each of the {world_size} workers, "
                f"not {worker_node_ids!r}"
            )
        missing = sorted(set(self.readers) - set(datasets))
        if missing:
            raise ValueError(
                f"NodeShardsConfig names datasets {missing} that the trainer was not given "
                "(pass one under each name in datasets=)"
            )
        _warn_if_no_cpu_left(worker_node_ids)
        rest = {k: v for k, v in datasets.items() if k not in self.readers}
        out: list[dict[str, DataIterator]] = [{} for _ in range(world_size)]
        if rest:
            out = super().configure(rest, world_size, worker_handles, worker_node_ids, **kwargs)
        for name, reader in self.readers.items():
            for i, ds in enumerate(node_shards(reader, node_ids=worker_node_ids)):
                out[i][name] = ds.iterator()
        return out
