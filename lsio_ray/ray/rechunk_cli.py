"""``lsio-ray rechunk``: the command line of :func:`lsio_ray.ray.rechunk`.

    lsio-ray rechunk in.zarr out.zarr --chunks 64,256,256 --shards 64,1024,1024 \\
        --codec zstd:3 --zarr-format 3 --address auto

Registered in ``lsio_ray.cli`` through :func:`add_rechunk_parser`.  The progress bar
(tqdm, on stderr) is shown when stderr is a terminal, unless ``--no-progress``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lsio_ray import argtypes

__all__ = ["add_rechunk_parser", "cmd_rechunk"]


def _roots(items: list[str] | None) -> dict[str, list[str]] | None:
    if not items:
        return None
    out: dict[str, list[str]] = {}
    for item in items:
        node, sep, path = item.partition("=")
        if not sep or not node or not path:
            raise ValueError(f"--root {item!r}: use NODE_ID=DIRECTORY")
        out.setdefault(node, []).append(path)
    return out


def cmd_rechunk(args: argparse.Namespace) -> int:
    """Run ``lsio-ray rechunk``; returns the exit status.

    A destination that is the source, inside it or holding it (symbolic links
    resolved, see :func:`lsio_ray.paths.check_disjoint`) is refused with status 1
    before Ray is imported or started, and before anything is removed."""
    from lsio_ray.paths import check_disjoint

    try:
        check_disjoint(args.src, args.dst)
    except ValueError as exc:
        print(f"lsio-ray rechunk: error: {exc}", file=sys.stderr)
        return 1

    import ray

    from lsio_ray.ray.rechunk import RechunkError, rechunk

    show = not args.no_progress and not args.json and sys.stderr.isatty()
    if not ray.is_initialized():
        ray.init(address=args.address, log_to_driver=False, configure_logging=False)
    try:
        res = rechunk(
            args.src,
            args.dst,
            chunks=args.chunks,
            shards=args.shards,
            codec=args.codec,
            zarr_format=args.zarr_format,
            overwrite=args.overwrite,
            roots=_roots(args.root),
            block_bytes=args.block_bytes,
            batch_bytes=args.batch_bytes,
            progress=show,
            io=args.io,
            direct=args.direct or None,
        )
    except (RechunkError, FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f"lsio-ray rechunk: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        out: dict[str, Any] = dict(vars(res))
        print(json.dumps(out, default=list))
    else:
        rate = res.bytes_read / (1 << 20) / res.seconds if res.seconds else 0.0
        print(
            f"{res.src} -> {res.dst}: {res.blocks} blocks ({res.blocks_skipped} already "
            f"done), {res.units_written} files written, {res.bytes_read / (1 << 20):.1f} MiB "
            f"read, {res.bytes_written / (1 << 20):.1f} MiB written in {res.seconds:.1f} s "
            f"({rate:.0f} MiB/s read), {res.retries} retries"
        )
    return 0


def add_rechunk_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``rechunk`` command on an argparse subparsers object."""
    p = subparsers.add_parser(
        "rechunk",
        help="re-chunk or convert a Zarr array across a Ray cluster (resumable)",
        description="Re-chunk the Zarr array SRC into a new array DST (v2 or v3, sharded "
        "or not, any codec) on every node of a Ray cluster.  Interrupted, run the same "
        "command again: finished blocks are not redone and the result is the same.",
    )
    p.add_argument("src", help="the source array (a directory)")
    p.add_argument("dst", help="the new array (a directory)")
    p.add_argument(
        "--chunks",
        type=argtypes.shape,
        required=True,
        help="chunk shape, e.g. 64,256,256 (the inner chunk when sharded)",
    )
    p.add_argument("--shards", type=argtypes.shape, default=None, help="shard shape (v3 only)")
    p.add_argument(
        "--codec",
        default=None,
        help="zstd:LEVEL, gzip:LEVEL, blosc:CNAME:LEVEL[:SHUFFLE], lz4 (v2), none "
        "(default: zarr-python's)",
    )
    p.add_argument(
        "--zarr-format",
        type=int,
        choices=(2, 3),
        default=None,
        help="2 or 3 (default: the source's)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing DST (never one that is, holds or lies inside SRC)",
    )
    p.add_argument(
        "--root",
        action="append",
        metavar="NODE_ID=DIR",
        help="a node-local directory (repeatable); other paths are shared",
    )
    p.add_argument(
        "--block-bytes",
        type=argtypes.size,
        default=argtypes.size("64M"),
        help="decoded bytes per block, the memory of one task (64M)",
    )
    p.add_argument(
        "--batch-bytes",
        type=argtypes.size,
        default=None,
        help="bytes per Ray object of read chunks (16M)",
    )
    p.add_argument(
        "--io",
        choices=("auto", "actors"),
        default="auto",
        help="auto: a block's task reads (and writes) its own node's files itself when its "
        "inputs are on one node or shared; actors: every block through the IO actors' "
        "streams (auto)",
    )
    p.add_argument(
        "--direct",
        action="store_true",
        help="read the input files with O_DIRECT (default: env LSIO_DIRECT)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_rechunk)
    return p
