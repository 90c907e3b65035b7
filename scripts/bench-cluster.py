#!/usr/bin/env python3
"""Multi-node benchmark: locality on the network-namespace cluster, and the model
(benchmarks/results/cluster.md).

Starts ``lsio_ray.deploy.local_cluster.LocalCluster`` (``$LSIO_CLUSTER_BENCH_NODES`` (3)
nodes, one CPU each, needs root) under ``$LSIO_CLUSTER_BENCH_DIR``
(/tmp/lsio-cluster-bench), and places the chunk files of the first
``$LSIO_CLUSTER_BENCH_PLANES`` (256) planes of the bench-zarr array (zstd-3 chunks of
(1,256,256) float32) on the nodes' data dirs (hard links):

* ``spread``: plane k on node k mod N (each node holds 1/N of the files);
* ``one node``: every file on node-0.

The job, the same for both: op groups of 16 planes (256 files, every file read whole),
submitted through a ``Coordinator(roots=cluster.roots)`` (``order="node"``: one piece per
node per group), each batch decoded (numcodecs zstd) by a Ray task pinned to the batch's
node (``on_node``), which returns its node, chunks and decoded bytes.  Interleaved,
``$LSIO_CLUSTER_BENCH_REPS`` (3) repetitions, cold page cache before each run
(``sync; echo 3 > /proc/sys/vm/drop_caches``).

Reported: wall time and decoded MiB/s (min/median/max), the bytes each node's IO actor
read (``Coordinator.stats()``) against the bytes of the files it holds, and the bytes each
node decoded -- locality holds when a node read exactly its own files and decoded exactly
what it read.  Then the cluster model, throughput = min(summed disk, summed decode cores x
per-core rate, network), with the per-core decode rate measured here and the disk and
network figures measured on these machines before (bench-io, bench-ray), predicted for
4, 16 and 64 nodes.  On one machine every node shares the same 2 cores and disk: the run
proves locality and per-node scaling up to 2 cores, not speed-up.

Results: printed and written to ``$LSIO_CLUSTER_BENCH_OUT``
(/tmp/lsio-cluster-bench/results.md).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc

WORK = os.environ.get("LSIO_CLUSTER_BENCH_DIR", "/tmp/lsio-cluster-bench")
NODES = int(os.environ.get("LSIO_CLUSTER_BENCH_NODES", "3"))
PLANES = int(os.environ.get("LSIO_CLUSTER_BENCH_PLANES", "256"))
REPS = int(os.environ.get("LSIO_CLUSTER_BENCH_REPS", "3"))
OUT = os.environ.get("LSIO_CLUSTER_BENCH_OUT", os.path.join(WORK, "results.md"))
COLD = os.environ.get("LSIO_CLUSTER_BENCH_COLD", "1") == "1"
PER_GROUP = 16  # planes per op group
CHUNK_BYTES = 256 * 256 * 4

# figures measured on these machines before (not in this run)
DISK_GBS = (1.3, 2.4)  # per node, sequential O_DIRECT reads, GB/s (scripts/bench-io.sh, fio)
NET_GIBS = (0.8, 1.1)  # per node, 16 MiB Ray objects across nodes, GiB/s (bench-ray)
CORES_PER_NODE = 2


def _decode_batch(batch: Any) -> tuple[str, int, int, float]:
    import numcodecs
    import ray

    codec = numcodecs.Zstd()
    out = np.empty(CHUNK_BYTES // 4, np.float32)
    n = nbytes = 0
    s = 0.0
    for _, view in batch:
        codec.decode(view, out=out)
        s += float(out[::4096].sum(dtype=np.float64))
        n += 1
        nbytes += out.nbytes
    return ray.get_runtime_context().get_node_id(), n, nbytes, s


def place(src: str, nodes: list[Any], layout: str) -> tuple[list[list[str]], dict[str, int]]:
    """Link the chunk files into the nodes' data dirs; (file paths per group, bytes per
    node id)."""
    z, y, x = json.load(open(os.path.join(src, "zarr.json")))["shape"]
    ny, nx = y // 256, x // 256
    held: dict[str, int] = defaultdict(int)
    groups: list[list[str]] = []
    for k in range(min(PLANES, z)):
        node = nodes[k % len(nodes)] if layout == "spread" else nodes[0]
        if k % PER_GROUP == 0:
            groups.append([])
        for j in range(ny):
            d = os.path.join(node.data_dir, layout, "c", str(k), str(j))
            os.makedirs(d, exist_ok=True)
            for i in range(nx):
                a = os.path.join(src, "c", str(k), str(j), str(i))
                b = os.path.join(d, str(i))
                if not os.path.exists(b):
                    try:
                        os.link(a, b)
                    except OSError:
                        shutil.copyfile(a, b)
                groups[-1].append(b)
                held[node.node_id] += os.path.getsize(b)
    return groups, dict(held)


def run_job(coord: Any, task: Any, groups: list[list[str]]) -> dict[str, Any]:
    import ray

    from lsio_ray import OpGroup, get_ranges
    from lsio_ray.ray.tasks import on_node

    coord.reset_stats()
    t0 = time.perf_counter()
    refs = []
    ogs = (OpGroup([get_ranges(p) for p in g], metadata=n) for n, g in enumerate(groups))
    for stream in coord.stream(ogs, window=2 * len(coord.nodes), order="node"):
        for bref in stream:
            refs.append((bref.node_id, task.options(**on_node(bref.node_id)).remote(bref.ref)))
    got = [(holder, ray.get(r)) for holder, r in refs]
    wall = time.perf_counter() - t0
    stats = coord.stats()
    decoded: dict[str, int] = defaultdict(int)
    chunks = 0
    checksum = 0.0
    moved = 0
    for holder, (node, n, nb, s) in got:
        decoded[node] += nb
        chunks += n
        checksum += s
        moved += nb if node != holder else 0
    return {
        "wall_s": wall,
        "read": {n: st["bytes_read"] for n, st in stats.items()},
        "decoded": dict(decoded),
        "chunks": chunks,
        "checksum": checksum,
        "batches_off_node": moved,
    }


def per_core_decode(src: str, n: int = 256) -> float:
    """numcodecs zstd decode, one thread, decoded MiB/s over ``n`` chunks in memory."""
    import numcodecs

    z, y, _ = json.load(open(os.path.join(src, "zarr.json")))["shape"]
    blobs = []
    for k in range(n):
        p = os.path.join(src, "c", str(k % z), str((k // z) % (y // 256)), "0")
        with open(p, "rb") as fh:
            blobs.append(fh.read())
    codec = numcodecs.Zstd()
    out = np.empty(CHUNK_BYTES // 4, np.float32)
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for b in blobs:
            codec.decode(b, out=out)
        best = max(best, n * CHUNK_BYTES / 2**20 / (time.perf_counter() - t0))
    return best


def model(decode_mibs: float, ratio: float) -> str:
    """The cluster model's prediction (decoded GiB/s) for 4, 16, 64 nodes."""
    rows = []
    for n in (1, 4, 16, 64):
        disk = [n * g * 1e9 * ratio / 2**30 for g in DISK_GBS]  # decoded-equivalent
        dec = n * CORES_PER_NODE * decode_mibs / 1024
        local = min(disk[0], dec), min(disk[1], dec)
        net = [n * g for g in NET_GIBS]
        cross = min(local[0], net[0]), min(local[1], net[1])
        one = min(local[0], NET_GIBS[0]), min(local[1], NET_GIBS[1])
        binds = "decode" if dec < disk[0] else "disk"
        rows.append(
            [
                str(n),
                f"{disk[0]:,.1f}-{disk[1]:,.1f}",
                f"{dec:,.1f}",
                f"{net[0]:,.1f}-{net[1]:,.1f}",
                f"**{local[0]:,.1f}-{local[1]:,.1f}** ({binds})",
                f"{cross[0]:,.1f}-{cross[1]:,.1f}",
                f"{one[0]:,.1f}-{one[1]:,.1f}",
            ]
        )
    return bc.md_table(
        [
            "nodes",
            "summed disk (decoded-equiv. GiB/s)",
            "summed decode GiB/s",
            "summed network GiB/s",
            "predicted, decode where read",
            "every decoded byte crosses nodes",
            "all to one consumer",
        ],
        rows,
    )


def main() -> int:
    import ray

    from lsio_ray.deploy.local_cluster import LocalCluster
    from lsio_ray.ray import Coordinator

    src = bc.zarr_dataset("v3-chunks")
    os.makedirs(WORK, exist_ok=True)
    per_core = per_core_decode(src)
    with LocalCluster(
        nodes=NODES, root=os.path.join(WORK, "cluster"), name="lsbench", cpus_per_node=1
    ) as lc:
        ray.init(address=lc.address, log_to_driver=False, configure_logging=False)
        nodes = lc.nodes
        names = {n.node_id: n.name for n in nodes}
        layouts = {lay: place(src, nodes, lay) for lay in ("spread", "one node")}
        coord = Coordinator(roots=lc.roots)
        task = ray.remote(num_cpus=1)(_decode_batch)
        for _, (groups, _) in layouts.items():  # warm-up: actors, workers, imports
            run_job(coord, task, groups[:1])
        runs: dict[str, list[dict[str, Any]]] = {lay: [] for lay in layouts}
        can_drop = COLD and bc.drop_caches()
        for rep in range(REPS):
            for lay, (groups, _) in layouts.items():
                if can_drop:
                    bc.drop_caches()
                r = run_job(coord, task, groups)
                runs[lay].append(r)
                print(f"# rep {rep} {lay}: {r['wall_s']:.2f} s", file=sys.stderr, flush=True)
        ray.shutdown()

    ref = runs["spread"][0]
    for lay, rs in runs.items():
        for r in rs:
            assert r["chunks"] == ref["chunks"], (lay, r["chunks"])
            assert abs(r["checksum"] - ref["checksum"]) < 1e-6 * abs(ref["checksum"]) + 1e-3
    decoded_total = ref["chunks"] * CHUNK_BYTES
    compressed_total = sum(layouts["spread"][1].values())
    ratio = decoded_total / compressed_total
    mib = decoded_total / 2**20
    rows = []
    for lay, rs in runs.items():
        lo, md, hi = bc.summary([r["wall_s"] for r in rs])
        rows.append(
            [
                f"{lay} ({NODES if lay == 'spread' else 1} node(s) hold files)",
                f"{lo:.2f} / {md:.2f} / {hi:.2f}",
                f"{mib / hi:,.0f} / {mib / md:,.0f} / {mib / lo:,.0f}",
            ]
        )
    speed = (
        bc.summary([r["wall_s"] for r in runs["one node"]])[1]
        / bc.summary([r["wall_s"] for r in runs["spread"]])[1]
    )
    loc_rows = []
    for lay, (_, held) in layouts.items():
        r = runs[lay][-1]
        for node in nodes:
            nid = node.node_id
            loc_rows.append(
                [
                    f"{lay}: {names[nid]}",
                    f"{held.get(nid, 0):,}",
                    f"{r['read'].get(nid, 0):,}",
                    "yes" if held.get(nid, 0) == r["read"].get(nid, 0) else "NO",
                    f"{r['decoded'].get(nid, 0):,}",
                ]
            )
        loc_rows.append(
            [f"{lay}: decoded off the batch's node", "", "", "", f"{r['batches_off_node']:,}"]
        )
    head = (
        f"Cluster: {NODES} network-namespace nodes x 1 CPU on one {os.cpu_count()}-core machine; "
        f"{ref['chunks']:,} zstd-3 chunks of (1,256,256) float32 ({mib:,.0f} MiB decoded, "
        f"{compressed_total / 2**20:,.0f} MiB on disk, ratio {ratio:.2f}), groups of "
        f"{PER_GROUP} planes, decode task on the batch's node, {REPS} interleaved reps, "
        f"{'cold page cache' if can_drop else 'WARM cache (no root)' if COLD else 'WARM cache'}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    t1 = bc.md_table(["files on", "wall s min / med / max", "decoded MiB/s min / med / max"], rows)
    t2 = bc.md_table(
        [
            "layout: node",
            "bytes held",
            "bytes read by its IO actor",
            "read == held",
            "bytes decoded there",
        ],
        loc_rows,
    )
    text = (
        f"{head}\n\n{t1}\n\nspread vs one node: {speed:.2f}x (bounded by the 2 shared cores)\n\n"
        f"Locality (last rep):\n\n{t2}\n\n"
        f"### Cluster model\n\n"
        f"throughput = min(summed disk bandwidth, summed decode cores x per-core decode rate, "
        f"network for the bytes that must cross nodes).  Figures: per-core zstd decode "
        f"{per_core:,.0f} MiB/s (numcodecs, one thread, measured in this run), compression "
        f"ratio {ratio:.2f} (so disk bytes x {ratio:.2f} = decoded bytes), per-node disk "
        f"{DISK_GBS[0]}-{DISK_GBS[1]} GB/s sequential O_DIRECT (fio, scripts/bench-io.sh), Ray "
        f"across nodes {NET_GIBS[0]}-{NET_GIBS[1]} GiB/s per node (16 MiB objects, "
        f"scripts/bench-ray.py), {CORES_PER_NODE} cores per node.  Decoded GiB/s:\n\n"
        f"{model(per_core, ratio)}\n\n"
        f"With reads and decodes on the node holding the files (what lsio_ray's coordinator "
        f"and on_node tasks do, shown above: each node read only its own files and decoded "
        f"only what it read), nothing but results crosses the network and the job scales "
        f"with nodes until the summed decode rate meets the summed disk rate.  A job that "
        f"ships decoded bytes to other nodes is capped by the network column instead, and a "
        f"single consumer node (e.g. one trainer) by one node's {NET_GIBS[0]}-{NET_GIBS[1]} "
        f"GiB/s whatever the cluster size.\n"
    )
    print(text)
    with open(OUT, "w") as fh:
        fh.write(text)
        fh.write("\n<!-- raw -->\n" + json.dumps(runs) + "\n")
    print(f"# written to {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
