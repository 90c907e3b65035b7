"""``lsio-ray rechunk``: the command line of :func:`lsio_ray.ray.rechunk`.

    lsio-ray rechunk in.zarr out.zarr --chunks 64,256,256 --shards 64,1024,1024 \\
        --codec zstd:3 --zarr-format 3 --address auto

Registered in ``lsio_ray.cli`` through :func:`add_rechunk_parser`.  The arguments are
checked before Ray is imported or started (:func:`check_arguments`: exit status 2 and a
message naming the argument or path); then the command starts a local Ray cluster of
its own, or joins the one ``--address`` (or ``RAY_ADDRESS``) names, and says which on
stderr (:func:`start_ray`).  The progress bar (tqdm, on stderr) is shown when stderr is
a terminal, unless ``--no-progress``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from lsio_ray import argtypes
from lsio_ray.io import objects, url
from lsio_ray.paths import check_disjoint, is_within

if TYPE_CHECKING:
    from lsio_ray.ray.rechunk.group_plan import Rules

__all__ = ["ArgumentsError", "add_rechunk_parser", "check_arguments", "cmd_rechunk", "start_ray"]


class ArgumentsError(ValueError):
    """An argument of ``lsio-ray rechunk`` that cannot work, found before Ray starts:
    the message names the argument or path (exit status 2)."""


def _roots(items: list[str] | None) -> dict[str, list[str]] | None:
    if not items:
        return None
    out: dict[str, list[str]] = {}
    for item in items:
        node, sep, path = item.partition("=")
        if not sep or not node or not path:
            raise ArgumentsError(f"--root {item!r}: use NODE_ID=DIRECTORY")
        out.setdefault(node, []).append(path)
    return out


def _shape_text(shape: tuple[int, ...]) -> str:
    return ",".join(str(s) for s in shape)


def shape_rule(text: str) -> tuple[str | None, tuple[int, ...]]:
    """A ``--chunks``/``--shards`` value: ``SHAPE`` (the rule for every array) or
    ``PATH=SHAPE`` (one array of a group, ``sub/temperature=1,256,256``); the shape
    parsed strictly (:func:`lsio_ray.argtypes.shape`)."""
    path, sep, shape = text.rpartition("=")
    if sep and not path.strip("/ "):
        raise argparse.ArgumentTypeError(f"not PATH=SHAPE: {text!r}: the array path is empty")
    return (path.strip("/ ") if sep else None), argtypes.shape(shape)


def _rules(
    flag: str, items: list[tuple[str | None, tuple[int, ...]]] | None
) -> tuple[int, ...] | dict[str, tuple[int, ...]] | None:
    """The ``chunks``/``shards`` of :func:`lsio_ray.ray.rechunk.rechunk` from the
    repeated ``flag``: one shape, or a mapping of array paths (``"*"``: the shape given
    without a path) to shapes."""
    if not items:
        return None
    out: dict[str, tuple[int, ...]] = {}
    for path, shape in items:  # given again: the last one counts, as argparse's options
        out[path if path is not None else "*"] = shape
    if list(out) == ["*"]:
        return out["*"]
    return out


def _visible_here(path: str, roots: dict[str, list[str]] | None, address: str | None) -> bool:
    """Whether this process sees ``path`` as the job will: not under Ray Client (a
    ``ray://`` address: this machine is no node of the cluster) and not under a
    ``--root`` directory (one node's local disk, perhaps not this machine's)."""
    if address is not None and address.startswith("ray://"):
        return False
    for dirs in (roots or {}).values():
        if any(is_within(path, os.path.abspath(d)) for d in dirs):
            return False
    return True


def _source_layout(src: str) -> tuple[dict[str, Any], Any]:
    """The metadata documents and layout of the source array, read here; raises
    :class:`ArgumentsError` naming ``src`` when it is missing or no Zarr array."""
    from lsio_ray.zarr.codec_api import METADATA_FILES

    if url.is_remote(src):
        return _layout_from(src, _remote_documents(src, METADATA_FILES))
    if not os.path.exists(src):
        raise ArgumentsError(f"the source {src} does not exist")
    if not os.path.isdir(src):
        raise ArgumentsError(
            f"the source {src} is not a Zarr array: not a directory (an array is a "
            "directory holding zarr.json or .zarray)"
        )
    raw: dict[str, bytes | None] = {}
    for name in METADATA_FILES:
        path = os.path.join(src, name)
        try:
            with open(path, "rb") as f:
                raw[name] = f.read()
        except FileNotFoundError:
            raw[name] = None
        except OSError as exc:
            raise ArgumentsError(f"the source {src}: cannot read {path}: {exc}") from None
    return _layout_from(src, raw)


def _remote_documents(src: str, names: tuple[str, ...]) -> dict[str, bytes | None]:
    """The metadata documents of the array at URL ``src`` (None: no such object)."""
    raw: dict[str, bytes | None] = {}
    for name in names:
        try:
            raw[name] = objects.read_object(url.join(src, name))
        except (OSError, ValueError) as exc:
            raise ArgumentsError(f"the source {src}: cannot read {name}: {exc}") from None
    return raw


def _layout_from(src: str, raw: dict[str, bytes | None]) -> tuple[dict[str, Any], Any]:
    """The documents and layout of ``src`` from its metadata files' bytes."""
    from lsio_ray.zarr.codec_api import docs_from_files, layout_from_docs

    if not any(v is not None for v in raw.values()) and url.is_remote(src):
        raise ArgumentsError(f"the source {src} does not exist: no zarr.json or .zarray there")
    try:
        docs = docs_from_files(raw, src)
    except FileNotFoundError:
        raise ArgumentsError(
            f"the source {src} is not a Zarr array: no zarr.json or .zarray in it"
        ) from None
    except ValueError as exc:  # not JSON
        raise ArgumentsError(f"the source {src} is not a Zarr array: {exc}") from None
    try:
        return docs, layout_from_docs(src, docs)
    except ValueError as exc:  # ArrayMetadataError: a group, or invalid metadata
        raise ArgumentsError(f"the source is not a Zarr array: {exc}") from None


def _check_destination(dst: str, overwrite: bool) -> None:
    """Refuse an existing destination unless ``overwrite`` -- except an unfinished run
    (its job state inside), which the job itself resumes or refuses -- and anything
    there but a directory (a file, a dangling link), which the job cannot replace."""
    from lsio_ray.ray.rechunk import STATE_DIR
    from lsio_ray.ray.rechunk.group_plan import source_is_group

    if url.is_remote(dst):
        _check_remote_destination(dst, overwrite, STATE_DIR)
        return
    if not os.path.lexists(dst):
        return
    if not os.path.isdir(dst):
        raise ArgumentsError(
            f"the destination {dst} exists and is not a directory (the new array is one): "
            "remove it or choose another path"
        )
    if overwrite:
        return
    listing = os.listdir(dst)
    if not listing or os.path.isfile(os.path.join(dst, STATE_DIR, "job.json")):
        return
    what = (
        "a Zarr group"
        if source_is_group(dst)
        else "a Zarr array"
        if {"zarr.json", ".zarray"} & set(listing)
        else "a non-empty directory"
    )
    raise ArgumentsError(
        f"the destination {dst} exists and holds {what}; pass --overwrite to replace it"
    )


def _check_remote_destination(dst: str, overwrite: bool, state_dir: str) -> None:
    """:func:`_check_destination` for a URL: HTTP is read-only; objects already under
    the prefix need ``--overwrite`` unless they are an unfinished run of the job."""
    if url.scheme_of(dst) in ("http", "https"):
        raise ArgumentsError(
            f"the destination {dst} is on an HTTP server, which lsio_ray reads only: write "
            "to a local directory or object storage (s3://, gs://, az://)"
        )
    if overwrite:
        return
    try:
        there = objects.list_prefix(dst, limit=1)
        unfinished = objects.object_size(url.join(dst, state_dir, "job.json")) is not None
    except OSError as exc:
        raise ArgumentsError(f"the destination {dst}: {exc}") from None
    if there and not unfinished:
        raise ArgumentsError(
            f"the destination {dst} holds objects already; pass --overwrite to replace them"
        )


def check_arguments(args: argparse.Namespace) -> None:
    """Check the arguments of ``lsio-ray rechunk`` before Ray is imported or started.

    Raises :class:`ArgumentsError` naming the argument or path when ``--root``,
    ``--block-bytes`` or ``--batch-bytes`` is malformed; when the destination is the
    source, lies inside it or holds it (symbolic links resolved,
    :func:`lsio_ray.paths.check_disjoint`); when the source is missing or no Zarr
    array or group; when ``--chunks``/``--shards`` do not have one size per dimension
    of the source -- of every array they apply to, for a group, naming the array --
    or name no array of the group, or the job cannot be planned with them
    (``--codec``, ``--zarr-format``: :func:`~lsio_ray.ray.rechunk.plan.plan_job`, as
    the job does); and when the
    destination exists without ``--overwrite`` (an unfinished run of a job is left to
    the job, which resumes it or refuses it) or is no directory.  Paths this process
    may not see as the job does -- under a ``--root`` directory (one node's disk) or
    with a ``ray://`` address -- are checked by the job on their node instead, after
    Ray starts."""
    from lsio_ray.ray.rechunk.group_plan import source_is_group
    from lsio_ray.ray.rechunk.plan import plan_job

    roots = _roots(args.root)
    if args.block_bytes <= 0:
        raise ArgumentsError(f"--block-bytes must be positive, not {args.block_bytes}")
    if args.batch_bytes is not None and args.batch_bytes <= 0:
        raise ArgumentsError(f"--batch-bytes must be positive, not {args.batch_bytes}")
    try:
        src, dst = check_disjoint(args.src, args.dst)
    except ValueError as exc:
        raise ArgumentsError(str(exc)) from None
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    chunks, shards = _rules("--chunks", args.chunks), _rules("--shards", args.shards)
    if _visible_here(src, roots, address) and source_is_group(src):
        _check_group(args, src, dst, chunks, shards)
    elif isinstance(chunks, dict) or isinstance(shards, dict):
        flag = "--chunks" if isinstance(chunks, dict) else "--shards"
        raise ArgumentsError(
            f"{flag} PATH=SHAPE or repeated: for the arrays of a group, and the source {src} "
            "is no group this process sees (for an array, give one shape)"
        )
    elif _visible_here(src, roots, address):
        docs, layout = _source_layout(src)
        for flag, shape in (("--chunks", chunks), ("--shards", shards)):
            if shape is not None and len(shape) != layout.ndim:
                n = len(shape)
                raise ArgumentsError(
                    f"{flag} {_shape_text(shape)}: {n} size{'s' * (n != 1)} for the source "
                    f"{src}, an array of {layout.ndim} dimensions (shape "
                    f"{_shape_text(layout.shape)})"
                )
        try:
            plan_job(
                src,
                dst,
                docs,
                chunks=chunks,
                shards=shards,
                codec=args.codec,
                zarr_format=args.zarr_format,
                block_bytes=args.block_bytes,
                cpus=1,
            )
        except ValueError as exc:
            given = [f"--chunks {_shape_text(chunks)}"]
            if shards is not None:
                given.append(f"--shards {_shape_text(shards)}")
            if args.codec is not None:
                given.append(f"--codec {args.codec}")
            if args.zarr_format is not None:
                given.append(f"--zarr-format {args.zarr_format}")
            raise ArgumentsError(
                f"the new array ({' '.join(given)}) cannot be made from the source {src}: {exc}"
            ) from None
    if _visible_here(dst, roots, address):
        _check_destination(dst, args.overwrite)


def _check_group(
    args: argparse.Namespace,
    src: str,
    dst: str,
    chunks: Rules,
    shards: Rules | None,
) -> None:
    """The group ``src``'s conversion planned whole (every array's rule, shards and
    codec, the groups' documents), as the job does: :class:`ArgumentsError` naming the
    array that does not fit."""
    from lsio_ray.ray.rechunk.group_plan import plan_group

    try:
        gplan = plan_group(
            src,
            dst,
            chunks=chunks,
            shards=shards,
            codec=args.codec,
            zarr_format=args.zarr_format,
            block_bytes=args.block_bytes,
            flag_prefix="--",
        )
        gplan.documents()
    except (ValueError, OSError) as exc:  # GroupError too; a member listed but missing
        raise ArgumentsError(str(exc)) from None


def start_ray(address: str | None) -> str:
    """Connect this process to Ray for the job; returns a line saying to which cluster.

    ``address`` (``--address``), else env ``RAY_ADDRESS``: that cluster.  Neither: a
    new local cluster for this run (``address="local"``; a bare ``ray.init()`` would
    join whatever cluster ``ray start`` left on this machine), with Ray's token
    authentication on as Ray's default is, but set through ``RAY_AUTH_MODE`` so that
    Ray does not print its notice about it.  Ray's logging setup and worker logs stay
    out of the terminal (``configure_logging=False``, ``log_to_driver=False``)."""
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target is None and "ray" not in sys.modules:
        # Ray's default for a new local cluster, said explicitly: no notice printed.
        # Only before Ray is imported: it reads the setting once.
        os.environ.setdefault("RAY_AUTH_MODE", "token")

    import ray  # optional (the ray extra) and heavy: imported once the arguments are good

    if ray.is_initialized():
        return "Ray: the cluster this process is connected to already"
    ctx = ray.init(address=target or "local", log_to_driver=False, configure_logging=False)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if target is None:
        return f"Ray: started a local cluster for this run ({cpus} CPUs)"
    info = getattr(ctx, "address_info", None) or {}
    resolved = info.get("gcs_address")
    where = target if not resolved or resolved == target else f"{target} ({resolved})"
    source = "--address" if address else "RAY_ADDRESS"
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return f"Ray: connected to the cluster at {where} ({source}; {nodes} nodes, {cpus} CPUs)"


def cmd_rechunk(args: argparse.Namespace) -> int:
    """Run ``lsio-ray rechunk``; returns the exit status.

    Every argument is checked first (:func:`check_arguments`), before Ray is imported
    or started and before anything is removed: a mistake exits with status 2 and a
    message naming the argument or path.  Then Ray starts or is joined
    (:func:`start_ray`, which cluster is said on stderr) and the job runs; a failure
    of the job exits with status 1."""
    try:
        check_arguments(args)
    except ArgumentsError as exc:
        print(f"lsio-ray rechunk: error: {exc}", file=sys.stderr)
        return 2

    from lsio_ray.ray.rechunk import GroupRechunkResult, RechunkError, rechunk

    show = not args.no_progress and not args.json and sys.stderr.isatty()
    print(f"lsio-ray rechunk: {start_ray(args.address)}", file=sys.stderr, flush=True)
    try:
        res = rechunk(
            args.src,
            args.dst,
            chunks=_rules("--chunks", args.chunks),
            shards=_rules("--shards", args.shards),
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
    if isinstance(res, GroupRechunkResult):
        _print_group(res, args.json)
    elif args.json:
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


def _print_group(res: Any, as_json: bool) -> None:
    """A group's result: JSON, or one line per array and the totals."""
    if as_json:
        print(json.dumps(res.summary(), default=list))
        return
    for path, r in res.arrays.items():
        print(
            f"  {path}: {r.blocks} blocks ({r.blocks_skipped} already done), "
            f"{r.units_written} files written, {r.bytes_read / (1 << 20):.1f} MiB read"
        )
    for path in res.arrays_skipped:
        print(f"  {path}: converted by an earlier run")
    cons = ", consolidated metadata" if res.consolidated else ""
    n = len(res.arrays) + len(res.arrays_skipped)
    print(
        f"{res.src} -> {res.dst}: {n} array{'s' * (n != 1)} "
        f"({len(res.arrays_skipped)} already done), {res.groups} group"
        f"{'s' * (res.groups != 1)}{cons}; "
        f"{res.blocks} blocks, {res.bytes_read / (1 << 20):.1f} MiB read, "
        f"{res.bytes_written / (1 << 20):.1f} MiB written in {res.seconds:.1f} s, "
        f"{res.retries} retries"
    )


def add_rechunk_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``rechunk`` command on an argparse subparsers object."""
    p = subparsers.add_parser(
        "rechunk",
        help="re-chunk or convert a Zarr array or group across a Ray cluster (resumable)",
        description="Re-chunk the Zarr array SRC into a new array DST (v2 or v3, sharded "
        "or not, any codec) on every node of a Ray cluster.  SRC may be a group (v2 or "
        "v3, nested): every array in it is converted, one after another on the whole "
        "cluster, with per-array --chunks PATH=SHAPE or one rule for all; the hierarchy "
        "and every attribute are kept, and consolidated metadata is written when SRC has "
        "it.  Every argument is checked before Ray starts.  Interrupted, run the same "
        "command again: finished blocks (and arrays) are not redone and the result is "
        "the same, byte for byte.",
    )
    p.add_argument(
        "src",
        help="the source array or group (a directory, or an s3:// gs:// az:// http(s):// "
        "URL; a group over HTTP needs consolidated metadata)",
    )
    p.add_argument(
        "dst",
        help="the new array or group (a directory, or an s3:// gs:// az:// URL; "
        "credentials and endpoint from the environment: AWS_ENDPOINT_URL, "
        "AWS_ACCESS_KEY_ID...)",
    )
    p.add_argument(
        "--chunks",
        type=shape_rule,
        action="append",
        required=True,
        metavar="[PATH=]SHAPE",
        help="chunk shape, e.g. 64,256,256 (the inner chunk when sharded).  For a group: "
        "repeat with PATH=SHAPE per array (temperature=1,256,256, sub/mask=256,256); a "
        "SHAPE without PATH is the rule of every array not named, refused for an array "
        "of another number of dimensions; arrays no rule covers keep their chunks",
    )
    p.add_argument(
        "--shards",
        type=shape_rule,
        action="append",
        default=None,
        metavar="[PATH=]SHAPE",
        help="shard shape (v3 only); for a group, per array as --chunks",
    )
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
        help="the Ray cluster to join, e.g. auto (the one `ray start` made here) or "
        "HOST:PORT (default: env RAY_ADDRESS, else a new local Ray for this run)",
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
