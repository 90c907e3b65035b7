"""Node-local shards on a real 3-node Ray cluster, one network namespace per worker node:
each trainer's crops are read and decoded on its own node, so no crop bytes cross nodes.

The bytes crossing nodes are the counters of the worker nodes' veths (every byte between
a worker node and any other node passes its veth).  The same shards consumed by trainers
on the *other* nodes are the control: there every crop crosses, so the counters see it.

Then a real Ray Train ``DataParallelTrainer`` with :class:`lsio_ray.train.NodeShardsConfig`:
each worker gets its own node's shard.

Needs root and iproute2 (network namespaces); CI runs as root.  About 60-90 s.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from lsio_ray.deploy.local_cluster import LocalCluster

ray = pytest.importorskip("ray", reason="the local cluster runs Ray (pip install 'lsio_ray[ray]')")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="network namespaces need root and iproute2 (CI runs as root)",
)

SHAPE = (32, 256, 256)
CROP = (4, 64, 64)  # float32: 64 KiB per crop
PER_TRAINER = 96  # 6 MiB of crops per trainer


def _check(rows: dict[int, Any], data: np.ndarray, count: int) -> None:
    assert sorted(rows) == list(range(count))
    for lo, total in rows.values():
        box = tuple(slice(s, s + c) for s, c in zip(lo, CROP, strict=True))
        assert total == pytest.approx(float(data[box].sum(dtype=np.float64)), rel=1e-9)


@pytest.mark.timeout(420)
def test_node_shards_read_every_crop_on_its_trainers_node(tmp_path: Path) -> None:
    import lsio_ray.data as ld

    class Trainer:  # nested: Ray pickles it by value (workers cannot import tests)
        """A stand-in for a training loop on one node: iterates a dataset it is given and
        keeps, per row, its index, corner and checksum (so the test checks every crop)."""

        def node_id(self) -> str:
            return ray.get_runtime_context().get_node_id()

        def consume(self, ds: Any) -> dict[int, tuple[tuple[int, ...], float]]:
            ray.data.DataContext.get_current().enable_progress_bars = False
            rows: dict[int, tuple[tuple[int, ...], float]] = {}
            for batch in ds.iter_batches(batch_size=16, batch_format="numpy"):
                for i, lo, crop in zip(batch["index"], batch["lo"], batch["crop"], strict=True):
                    rows[int(i)] = (tuple(int(v) for v in lo), float(crop.sum(dtype=np.float64)))
            return rows

    data = np.random.default_rng(5).standard_normal(SHAPE).astype("float32")
    path = str(tmp_path / "a.zarr")
    zarr.create_array(path, shape=SHAPE, chunks=(1, 128, 128), dtype="float32")[...] = data
    name = f"s{os.getpid() % 10_000_000}"
    cluster = LocalCluster(
        nodes=3,
        root=tmp_path / "cluster",
        name=name,
        cpus_per_node=2,
        object_store_memory=256 << 20,
    )
    with cluster:
        if ray.is_initialized():
            ray.shutdown()
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            actor = ray.remote(num_cpus=0)(Trainer)
            trainers = [actor.options(resources={n.resource: 0.01}).remote() for n in cluster.nodes]
            node_ids = ray.get([t.node_id.remote() for t in trainers], timeout=120)
            assert node_ids == [n.node_id for n in cluster.nodes]
            count = PER_TRAINER * len(node_ids)
            crop_bytes = count * int(np.prod(CROP)) * 4

            def run(shards: list[Any], order: list[int]) -> tuple[dict[int, Any], int]:
                before = cluster.link_bytes()
                out = ray.get(
                    [t.consume.remote(shards[k]) for t, k in zip(trainers, order, strict=True)],
                    timeout=240,
                )
                after = cluster.link_bytes()
                rows: dict[int, Any] = {}
                for part in out:
                    assert not rows.keys() & part.keys()
                    rows.update(part)
                return rows, sum(after[k] - before[k] for k in after)

            # warm every node's workers (their first task fetches code and the Ray Data
            # libraries' state across nodes) on a small read first
            warm = ld.node_shards(ld.read_zarr_crops, path, CROP, 6, seed=1, node_ids=node_ids)
            run(warm, [0, 1, 2])

            shards = ld.node_shards(
                ld.read_zarr_crops,
                path,
                CROP,
                count,
                seed=2,
                node_ids=node_ids,
                block_bytes=1 << 20,
            )
            rows, local = run(shards, [0, 1, 2])
            _check(rows, data, count)
            # control: the worker nodes' trainers swap shards, so their 2/3 of the crops
            # are read on one node and consumed on another
            rows, swapped = run(shards, [0, 2, 1])
            _check(rows, data, count)
            moved = crop_bytes * 2 // 3
            print(f"crop bytes {crop_bytes}: crossing {local} local, {swapped} swapped")
            assert swapped >= moved, (swapped, moved)
            assert local < moved // 8, (local, moved)

            # Ray Train: a real DataParallelTrainer, one worker pinned to each node (1 of
            # its 2 CPUs), NodeShardsConfig giving each worker its node's shard
            from ray.train import RunConfig, ScalingConfig
            from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

            from lsio_ray.data_shards import node_key
            from lsio_ray.train import NodeShardsConfig

            out = tmp_path / "train"
            out.mkdir()

            def loop(config: dict[str, Any]) -> None:
                import json

                import ray.train

                rows = {}
                it = ray.train.get_dataset_shard("train")
                for batch in it.iter_batches(batch_size=16, batch_format="numpy"):
                    for i, lo, crop in zip(batch["index"], batch["lo"], batch["crop"], strict=True):
                        rows[int(i)] = ([int(v) for v in lo], float(crop.sum(dtype=np.float64)))
                rank = ray.train.get_context().get_world_rank()
                node = ray.get_runtime_context().get_node_id()
                with open(f"{config['out']}/rank{rank}.json", "w") as fh:
                    json.dump({"node": node, "rows": rows}, fh)

            crops = functools.partial(
                ld.read_zarr_crops, path, CROP, count, seed=3, block_bytes=1 << 20
            )
            before = cluster.link_bytes()
            DataParallelTrainer(
                loop,
                train_loop_config={"out": str(out)},
                scaling_config=ScalingConfig(
                    num_workers=3,
                    resources_per_worker={"CPU": 1},
                    label_selector=[{node_key(): n} for n in node_ids],
                ),
                run_config=RunConfig(storage_path=str(tmp_path / "storage"), name="shards"),
                datasets={"train": crops},
                dataset_config=NodeShardsConfig(train=crops),
            ).fit()
            after = cluster.link_bytes()
            rows = {}
            for rank, node in enumerate(node_ids):
                got = json.loads((out / f"rank{rank}.json").read_text())
                assert got["node"] == node
                part = {int(i): (tuple(lo), total) for i, (lo, total) in got["rows"].items()}
                a, b = min(part), max(part) + 1
                assert sorted(part) == list(range(a, b))  # shard `rank`: one contiguous range
                assert a == count * rank // 3
                rows.update(part)
            _check(rows, data, count)
            crossed = sum(after[k] - before[k] for k in after)
            print(f"Ray Train with NodeShardsConfig: crossing {crossed} (control traffic too)")
            assert crossed < moved // 2, (crossed, moved)
        finally:
            ray.shutdown()
