#!/usr/bin/env python3
"""N trainers on N nodes: crop bytes crossing nodes and each trainer's ingest rate, for
node-local shards against Ray Data's own splits (benchmarks/results/node-shards.md).

Starts ``lsio_ray.deploy.local_cluster.LocalCluster`` (``$LSIO_SHARDS_BENCH_NODES`` (3)
network-namespace nodes, ``$LSIO_SHARDS_BENCH_CPUS`` (1) CPU each, needs root) and one
trainer actor per node, each iterating its share of ``$LSIO_SHARDS_BENCH_CROPS`` (120)
random (8,256,256) crops per trainer of the bench-zarr array (float32, zstd-3,
(1,256,256) chunks; every node sees it, as on shared storage), warm page cache.  Three
ways, interleaved, ``$LSIO_SHARDS_BENCH_REPS`` (3) repetitions:

* ``node_shards``: ``lsio_ray.data.node_shards(read_zarr_crops, ..., node_ids=trainers)``,
  trainer i iterating shard i, read on its node;
* ``split+hints``: one ``read_zarr_crops`` and ``streaming_split(N, equal=True,
  locality_hints=trainers)``, what Ray Train does by default;
* ``split``: the same without locality hints.

Reported per way (min / median / max over reps): the wall time, the ingest rate of each
trainer (decoded MiB/s into its loop, from its first to its last batch), and the bytes
crossing nodes (the worker nodes' veth counters, :meth:`LocalCluster.link_bytes`) per
byte of crops.  The machine's 2 cores are shared by every node, so rates show the cost of
moving bytes between nodes, not scaling.

Results: printed and written to ``$LSIO_SHARDS_BENCH_OUT``
(/tmp/lsio-shards-bench/results.md).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc

WORK = os.environ.get("LSIO_SHARDS_BENCH_DIR", "/tmp/lsio-shards-bench")
NODES = int(os.environ.get("LSIO_SHARDS_BENCH_NODES", "3"))
CPUS = int(os.environ.get("LSIO_SHARDS_BENCH_CPUS", "1"))
PER_TRAINER = int(os.environ.get("LSIO_SHARDS_BENCH_CROPS", "120"))
REPS = int(os.environ.get("LSIO_SHARDS_BENCH_REPS", "3"))
OUT = os.environ.get("LSIO_SHARDS_BENCH_OUT", os.path.join(WORK, "results.md"))
CROP = (8, 256, 256)
WAYS = ("node_shards", "split+hints", "split")


class Trainer:
    """A training loop's stand-in: iterates what it is given, keeps rows and times."""

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def consume(self, ds: Any) -> dict[str, Any]:
        import ray

        ray.data.DataContext.get_current().enable_progress_bars = False
        t0 = time.perf_counter()
        first = last = None
        rows, nbytes, total = 0, 0, 0.0
        for batch in ds.iter_batches(batch_size=16, batch_format="numpy"):
            now = time.perf_counter()
            first = now if first is None else first
            last = now
            crops = batch["crop"]
            rows += len(crops)
            nbytes += crops.nbytes
            total += float(crops[:, 0, 0, 0].sum(dtype=np.float64))
        return {
            "rows": rows,
            "bytes": nbytes,
            "wall": time.perf_counter() - t0,
            "stream": (last - first) if first is not None and last is not None else 0.0,
            "checksum": total,
        }


def run_way(way: str, path: str, trainers: list[Any], nodes: list[str], lc: Any) -> dict:
    import ray

    import lsio_ray.data as ld

    count = PER_TRAINER * len(nodes)
    if way == "node_shards":
        its = ld.node_shards(ld.read_zarr_crops, path, CROP, count, seed=7, node_ids=nodes)
    else:
        ds = ld.read_zarr_crops(path, CROP, count, seed=7)
        hints = nodes if way == "split+hints" else None
        its = ds.streaming_split(len(nodes), equal=True, locality_hints=hints)
    before = lc.link_bytes()
    t0 = time.perf_counter()
    out = ray.get([t.consume.remote(it) for t, it in zip(trainers, its, strict=True)])
    wall = time.perf_counter() - t0
    after = lc.link_bytes()
    crossed = {k: after[k] - before[k] for k in after}
    crop_bytes = sum(o["bytes"] for o in out)
    assert sum(o["rows"] for o in out) == count, out
    return {
        "wall": wall,
        "crossed": crossed,
        "crop_bytes": crop_bytes,
        "per_trainer_mibs": [o["bytes"] / 2**20 / max(o["wall"], 1e-9) for o in out],
        "checksum": sum(o["checksum"] for o in out),
    }


def main() -> int:
    import ray

    from lsio_ray.deploy.local_cluster import LocalCluster

    path = bc.zarr_dataset("v3-chunks")
    os.makedirs(WORK, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {w: [] for w in WAYS}
    with LocalCluster(
        nodes=NODES,
        root=os.path.join(WORK, "cluster"),
        name="lsshard",
        cpus_per_node=CPUS,
        object_store_memory=512 << 20,
    ) as lc:
        ray.init(address=lc.address, log_to_driver=False, configure_logging=False)
        actor = ray.remote(num_cpus=0)(Trainer)
        trainers = [actor.options(resources={n.resource: 0.01}).remote() for n in lc.nodes]
        nodes = ray.get([t.node_id.remote() for t in trainers])
        for way in WAYS:  # warm-up: workers, imports, page cache
            run_way(way, path, trainers, nodes, lc)
        for rep in range(REPS):
            for way in WAYS:
                r = run_way(way, path, trainers, nodes, lc)
                runs[way].append(r)
                ratio = sum(r["crossed"].values()) / r["crop_bytes"]
                msg = f"# rep {rep} {way}: {r['wall']:.2f} s, crossing {ratio:.3f}"
                print(msg, file=sys.stderr)
        ray.shutdown()

    ref = runs["node_shards"][0]["checksum"]
    for way, rs in runs.items():
        for r in rs:
            assert abs(r["checksum"] - ref) <= 1e-6 * abs(ref) + 1e-3, (way, r["checksum"], ref)
    crop_mib = runs["node_shards"][0]["crop_bytes"] / 2**20
    rows = []
    for way, rs in runs.items():
        wall = bc.summary([r["wall"] for r in rs])
        agg = [crop_mib / r["wall"] for r in rs]
        per = [float(np.median(r["per_trainer_mibs"])) for r in rs]
        slow = [min(r["per_trainer_mibs"]) for r in rs]
        cross = [sum(r["crossed"].values()) / r["crop_bytes"] for r in rs]
        fmt = lambda v: " / ".join(f"{x:,.0f}" for x in bc.summary(v))  # noqa: E731
        rows.append(
            [
                way,
                " / ".join(f"{x:.2f}" for x in wall),
                fmt(agg),
                fmt(per),
                fmt(slow),
                " / ".join(f"{x:.3f}" for x in bc.summary(cross)),
            ]
        )
    head = (
        f"{NODES} network-namespace nodes x {CPUS} CPU on one {os.cpu_count()}-core machine, "
        f"one trainer per node, {PER_TRAINER} random {CROP} float32 crops per trainer "
        f"({crop_mib:,.0f} MiB decoded in all) of the bench-zarr array (zstd-3, (1,256,256) "
        f"chunks), warm cache, {REPS} interleaved reps, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load before: "
        f"{os.getloadavg()[0]:.1f}"
    )
    table = bc.md_table(
        [
            "way",
            "wall s min / med / max",
            "all trainers MiB/s",
            "per trainer MiB/s (median trainer)",
            "slowest trainer MiB/s",
            "bytes crossing nodes per crop byte",
        ],
        rows,
    )
    text = f"{head}\n\n{table}\n"
    print(text)
    with open(OUT, "w") as fh:
        fh.write(text)
        fh.write("\n<!-- raw -->\n" + json.dumps(runs) + "\n")
    print(f"# written to {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
