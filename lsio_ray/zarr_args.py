"""The arguments of the Zarr commands, ``lsio-ray info`` and ``lsio-ray bench crops``.

Kept apart from the commands' code (:mod:`lsio_ray.zarr.cli`) so that building the
parser -- ``lsio-ray --help``, ``lsio-ray bench read ...`` -- imports neither
:mod:`lsio_ray.zarr` nor zarr-python: both are needed only when a Zarr command runs (the
``zarr`` extra, ``pip install 'lsio_ray[zarr]'``).  Each ``add_*`` function registers
one command on a subparsers object and sets ``func`` to the command function it is
given: :mod:`lsio_ray.cli` passes functions importing :mod:`lsio_ray.zarr.cli` on first
use, :func:`lsio_ray.zarr.cli.main` its own.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from lsio_ray import argtypes

__all__ = ["Command", "add_bench_crops_parser", "add_info_parser"]

Command = Callable[[argparse.Namespace], int]
"""A command function: the parsed arguments in, the exit status out."""


def add_info_parser(subparsers: Any, func: Command) -> argparse.ArgumentParser:
    """Register ``info`` (run by ``func``) on a subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "info",
        help="describe a Zarr array or group",
        description="Describe a Zarr array (v2 or v3): metadata, chunk and shard grid, "
        "codecs, stored size; or a group: the tree of its members with the same facts.",
    )
    p.add_argument(
        "path", help="the array's or group's directory (holding zarr.json, .zarray or .zgroup)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=func)
    return p


def add_bench_crops_parser(bench_subparsers: Any, func: Command) -> argparse.ArgumentParser:
    """Register the ``crops`` mode (run by ``func``) on the ``bench`` subparsers; returns
    its parser."""
    p = bench_subparsers.add_parser(
        "crops",
        help="random crops from a Zarr array",
        description="Read random crops of a Zarr array through lsio_ray.zarr and report "
        "crops/s and decoded MiB/s.",
    )
    p.add_argument("path", help="the array's directory")
    p.add_argument("--shape", type=argtypes.shape, required=True, help="crop shape, e.g. 8,256,256")
    p.add_argument("--count", type=argtypes.positive, default=200, help="crops to read (200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--prefetch", type=argtypes.positive, default=16, help="crops in flight (16)")
    p.add_argument(
        "--backend",
        choices=["auto", "uring", "pread"],
        default=None,
        help="engine backend (LSIO_BACKEND, else auto)",
    )
    p.add_argument(
        "--decode-threads",
        "--threads",
        dest="threads",
        type=argtypes.positive,
        default=None,
        help="decode threads (default: one per core; --threads is its old name)",
    )
    p.add_argument("--warmup", type=int, default=0, help="crops read before measuring (0)")
    p.add_argument(
        "--per-cell",
        type=argtypes.positive,
        default=0,
        help="clustered crops: N at a time from one cell, each still uniform, the cell's "
        "chunks decoded once (default: independent crops)",
    )
    p.add_argument(
        "--direct",
        action="store_true",
        help="read with O_DIRECT (default: env LSIO_DIRECT)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=func)
    return p
