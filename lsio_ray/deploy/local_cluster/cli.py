"""The ``local-cluster`` command line: ``up``, ``status`` and ``down``.

Run as ``python -m lsio_ray.deploy.local_cluster`` or through ``deploy/local-cluster``::

    python -m lsio_ray.deploy.local_cluster up --nodes 3 --root /tmp/lsio-demo
    python -m lsio_ray.deploy.local_cluster status
    python -m lsio_ray.deploy.local_cluster down
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from lsio_ray import argtypes
from lsio_ray.deploy.local_cluster.cluster import LocalCluster
from lsio_ray.deploy.local_cluster.state import (
    DEFAULT_NAME,
    STATE_FILE,
    ClusterError,
    ClusterState,
)
from lsio_ray.deploy.local_cluster.teardown import down, status


def _table(state: ClusterState | dict[str, Any]) -> str:
    data = state.to_dict() if isinstance(state, ClusterState) else state
    rows = [("node", "ip", "netns", "resource", "data dir", "node id")]
    for n in data["nodes"]:
        where = n["netns"] or "(root, head)"
        rows.append(
            (n["name"], n["ip"], where, n["resource"], n["data_dir"], (n["node_id"] or "-")[:12])
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows
    )


def _cmd_up(args: argparse.Namespace) -> int:
    cluster = LocalCluster(
        nodes=args.nodes,
        root=args.root,
        name=args.name,
        cpus_per_node=args.cpus_per_node,
        object_store_memory=args.object_store_memory,
        subnet=args.subnet,
        port=args.port,
        ray=args.ray,
        timeout=args.timeout,
    )
    state = cluster.up()
    if args.json:
        print(json.dumps(state.to_dict(), indent=2))
        return 0
    print(f"local Ray cluster {state.name!r} is up: {len(state.nodes)} nodes in {state.subnet}")
    print(f'  connect:  ray.init(address="{state.address}")   or   RAY_ADDRESS={state.address}')
    print(f"  state:    {state.state_file}")
    print(_table(state))
    print(f"  stop:     python -m lsio_ray.deploy.local_cluster down --name {state.name}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    info = status(args.name, args.root)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    left = {k: v for k, v in info["leftovers"].items() if v}
    print(f"cluster {info['name']!r}: {info['status']}")
    if "nodes" in info:
        print(f"  address:  {info['address']}   state: {info['root']}/{STATE_FILE}")
        print(_table(info))
        for n in info["nodes"]:
            gcs = "alive" if n["alive_in_gcs"] else "not in GCS"
            print(f"  {n['name']}: {n['processes']} processes, {gcs}")
    print(f"  on host:  {left or 'nothing'}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    down(args.name, args.root, keep_logs=args.keep_logs)
    print(f"cluster {args.name if args.root is None else args.root!s}: down, nothing left")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``local-cluster`` argument parser (``up``, ``status``, ``down``)."""
    parser = argparse.ArgumentParser(
        prog="local-cluster",
        description="A real multi-node Ray cluster on this machine, one network namespace "
        "per node (needs root).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--name", default=DEFAULT_NAME, help="cluster name (default: lsio)")
        p.add_argument("--json", action="store_true", help="print JSON")

    up = sub.add_parser("up", help="start a cluster and print the address to connect to")
    common(up)
    up.add_argument("--nodes", type=int, default=3, help="Ray nodes, head included (3)")
    up.add_argument("--root", required=True, help="directory for state, data dirs and logs")
    up.add_argument("--cpus-per-node", type=int, default=1, help="--num-cpus per node (1)")
    up.add_argument(
        "--object-store-memory",
        type=argtypes.size,
        default=1 << 30,
        help="per node, e.g. 512M (1G)",
    )
    up.add_argument("--subnet", help="private IPv4 subnet (default: a free /24 of 10.213/16)")
    up.add_argument("--port", type=int, help="head GCS port (default 6379, or any free port)")
    up.add_argument("--ray", help="the ray command (default: beside this python)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds per start phase")
    up.set_defaults(func=_cmd_up)

    st = sub.add_parser("status", help="what the state file says and what actually runs")
    common(st)
    st.add_argument("--root", help="cluster directory (instead of --name)")
    st.set_defaults(func=_cmd_status)

    dn = sub.add_parser("down", help="stop everything, delete namespaces/veths/bridge")
    common(dn)
    dn.add_argument("--root", help="cluster directory (instead of --name)")
    dn.add_argument("--keep-logs", action="store_true", help="keep the Ray temp dirs")
    dn.set_defaults(func=_cmd_down)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m lsio_ray.deploy.local_cluster {up,status,down}``."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ClusterError as exc:
        print(f"local-cluster: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `status | head`: stop writing, quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
