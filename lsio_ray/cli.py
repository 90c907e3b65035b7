"""The ``lsio-ray`` command line.

Layout: one ``add_*`` function per command group registers its subparsers, and each
subcommand is one ``cmd_*`` function taking the parsed ``argparse.Namespace`` and
returning the exit status.  To add a top-level command (``info``, ``rechunk``, ...), write
``cmd_x`` and an ``add_x(subparsers)`` that registers it, and append ``add_x`` to
:data:`COMMAND_GROUPS`; for a new ``bench`` mode (``bench crops``), append its ``add_*``
function to :data:`BENCH_MODES`.

    lsio-ray bench make-files --dir /data/bench --count 64 --size 64M
    lsio-ray bench read --dir /data/bench --block-size 4K --pattern random --direct \\
        --depth 64 --threads 1 --backend uring --duration 10s --json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import lsio_ray
from lsio_ray import argtypes, zarr_args

__all__ = [
    "BENCH_MODES",
    "COMMAND_GROUPS",
    "EXTRAS",
    "add_bench_commands",
    "add_bench_crops",
    "add_bench_make_files",
    "add_bench_read",
    "add_demo_command",
    "add_info_command",
    "add_rechunk_command",
    "build_parser",
    "cmd_bench_crops",
    "cmd_bench_make_files",
    "cmd_bench_read",
    "cmd_demo",
    "cmd_info",
    "main",
    "missing_extra",
]

Subparsers = Any  # argparse's _SubParsersAction is private


# ---------------------------------------------------------------------------------------
# argument types


def _show_progress(args: argparse.Namespace) -> bool:
    if getattr(args, "json", False) or getattr(args, "no_progress", False):
        return False
    return sys.stderr.isatty()


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


# ---------------------------------------------------------------------------------------
# bench


def _local_dir(path: str, command: str) -> None:
    """Refuse a URL for ``command``, which measures the local engine on local files (an
    unknown scheme: :class:`~lsio_ray.io.url.UnsupportedURLError` naming it)."""
    from lsio_ray.io.url import is_remote, resolve  # the IO service: only when run

    if is_remote(resolve(path)):
        raise ValueError(
            f"{path}: lsio-ray bench {command} measures the io_uring engine on local files; "
            "for object storage or HTTP use `lsio-ray bench crops URL` (or "
            "scripts/bench-remote.py)"
        )


def cmd_bench_make_files(args: argparse.Namespace) -> int:
    """``lsio-ray bench make-files``: write the benchmark's random data files."""
    from lsio_ray.bench import make_files

    _local_dir(args.dir, "make-files")
    res = make_files(
        args.dir,
        args.count,
        args.size,
        seed=args.seed,
        progress=_show_progress(args),
        fsync=args.fsync,
    )
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        rate = res.bytes_written / (1 << 20) / res.wall_s if res.wall_s > 0 else 0.0
        print(
            f"{res.dir}: {res.count} files of {_fmt_bytes(res.size)}: "
            f"{res.written} written ({_fmt_bytes(res.bytes_written)}, {rate:.0f} MiB/s), "
            f"{res.skipped} already there"
        )
    return 0


def cmd_bench_read(args: argparse.Namespace) -> int:
    """``lsio-ray bench read``: the fio-like read benchmark."""
    from lsio_ray.bench import ReadSpec, run_read

    _local_dir(args.dir, "read")
    spec = ReadSpec(
        dir=args.dir,
        pattern=args.pattern,
        block_size=args.block_size,
        direct=args.direct,
        depth=args.depth,
        threads=args.threads,
        backend=args.backend,
        duration_s=args.duration,
        passes=args.passes,
        pool_bytes=args.pool_bytes,
        io_threads=args.io_threads,
        batch=args.batch,
        run=args.ranges_per_file,
        known_size=args.known_size,
        ring_thread=args.ring_thread,
        max_files=args.files,
        seed=args.seed,
    )
    res = run_read(spec, progress=_show_progress(args))
    if args.json:
        print(json.dumps(res.to_dict()))
        return 0
    cpu = res.cpu_user_s + res.cpu_sys_s
    bs = "whole files" if res.pattern == "whole-file" else _fmt_bytes(res.block_size)
    workers = f", {res.io_threads} pread workers each" if res.io_threads else ""
    print(
        f"{res.pattern} reads of {bs}{' O_DIRECT' if res.direct else ''} from "
        f"{res.nfiles} files ({_fmt_bytes(res.dataset_bytes)}), backend {res.backend}, "
        f"depth {res.depth}, {res.threads} thread(s){workers}"
    )
    print(f"  features  {', '.join(res.features) or '-'}")
    print(
        f"  ops       {res.ops} in {res.wall_s:.2f} s: {res.ops_per_s:,.0f} ops/s, "
        f"{res.mib_per_s:,.1f} MiB/s, {res.files_per_s:,.0f} files/s "
        f"({res.files} file ops)"
    )
    print(
        f"  cpu       user {res.cpu_user_s:.2f} s, sys {res.cpu_sys_s:.2f} s "
        f"({cpu / res.wall_s if res.wall_s else 0:.2f} cores, "
        f"{1e6 * cpu / res.ops if res.ops else 0:.2f} us/op)"
    )
    st = res.engine
    if st.get("submit_calls"):
        print(
            f"  engine    {st['ops_submitted']} kernel ops in {st['submit_calls']} "
            f"io_uring_enter calls, pool peak {_fmt_bytes(st['pool_peak'])}"
        )
    if st.get("completed"):
        hist = st["inflight_hist"]
        top = max(i for i, h in enumerate(hist) if h) if any(hist) else 0
        shares = " ".join(
            f"{1 << i}:{100 * h / st['completed']:.1f}%" for i, h in enumerate(hist[: top + 1])
        )
        print(
            f"  depth     mean in flight {st['mean_inflight']:.1f} (max {st['inflight_max']});"
            f" ops completed by in flight then: {shares}"
        )
    if st.get("steady_calls"):
        calls = st["steady_calls"]
        print(
            f"  enter     {st['completed'] / calls:.1f} ops / call, "
            f"{st['cqes'] / calls:.1f} completions / call, {st['wait_calls']} waits, "
            f"{st['enter_ns'] / 1e9 / st['steady_s']:.0%} of the time in io_uring_enter, "
            f"{st['run_delay_s'] / st['steady_s']:.0%} runnable waiting for a CPU"
        )
    return 0


def add_bench_make_files(bsub: Subparsers) -> argparse.ArgumentParser:
    """Register ``bench make-files``."""
    mk = bsub.add_parser(
        "make-files",
        help="write random data files for the read benchmark",
        description="Write COUNT files of SIZE random bytes as DIR/f000000, DIR/f000001, "
        "... (files already of the right size are kept).",
    )
    mk.add_argument("--dir", required=True, help="directory for the files")
    mk.add_argument("--count", type=argtypes.positive, default=64, help="number of files (64)")
    mk.add_argument(
        "--size", type=argtypes.size, default=argtypes.size("64M"), help="bytes per file (64M)"
    )
    mk.add_argument("--seed", type=int, default=0, help="random seed (0)")
    mk.add_argument("--fsync", action="store_true", help="fsync every file")
    mk.add_argument("--json", action="store_true", help="print one JSON object")
    mk.add_argument("--no-progress", action="store_true", help="no progress bar")
    mk.set_defaults(func=cmd_bench_make_files)
    return mk


def add_bench_read(bsub: Subparsers) -> argparse.ArgumentParser:
    """Register ``bench read``."""
    rd = bsub.add_parser(
        "read",
        help="read benchmark (throughput, CPU time)",
        description="Read the files of DIR (made by make-files) with N threads, each with "
        "its own engine, and report MiB/s, ops/s, files/s and CPU time "
        "(getrusage of the whole process: Python threads, pread workers and "
        "io_uring io-wq workers; interrupt time is not included).",
    )
    rd.add_argument("--dir", required=True, help="directory holding f000000, f000001, ...")
    rd.add_argument(
        "--pattern",
        choices=("random", "sequential", "whole-file"),
        default="random",
        help="access pattern (random)",
    )
    rd.add_argument(
        "--block-size",
        "--bs",
        type=argtypes.size,
        default=4096,
        help="bytes per read for random/sequential (4K)",
    )
    rd.add_argument("--direct", action="store_true", help="O_DIRECT reads")
    rd.add_argument(
        "--depth", type=argtypes.positive, default=64, help="ops in flight per engine (64)"
    )
    rd.add_argument(
        "--threads",
        type=argtypes.positive,
        default=1,
        help="Python threads, each with its own engine (1)",
    )
    rd.add_argument(
        "--backend",
        choices=("auto", "uring", "pread"),
        default="auto",
        help="engine backend (auto)",
    )
    rd.add_argument(
        "--io-threads",
        type=argtypes.positive,
        default=None,
        help="pread backend worker threads per engine (LSIO_THREADS, 4)",
    )
    rd.add_argument(
        "--duration",
        type=argtypes.duration,
        default=10.0,
        help="run time, e.g. 10s, 500ms, 1m; 0 = no limit (10s)",
    )
    rd.add_argument(
        "--passes",
        type=int,
        default=0,
        help="stop after this many passes over the data, e.g. 1 to read every "
        "file once (0 = time only)",
    )
    rd.add_argument(
        "--pool-bytes",
        type=argtypes.size,
        default=None,
        help="buffer pool per engine (default: from depth, batch and block size)",
    )
    rd.add_argument(
        "--batch",
        type=argtypes.positive,
        default=None,
        help="ranges per submit (default: 16 MiB worth, at most 4096)",
    )
    rd.add_argument(
        "--ranges-per-file",
        type=argtypes.positive,
        default=None,
        help="random: reads per file op (open, reads, close); each batch spreads over "
        "batch/N files drawn at random (default: max(1024, 4 x depth); 1 = every file in "
        "every batch)",
    )
    rd.add_argument(
        "--known-size",
        action="store_true",
        help="whole-file: read (0, listed size) instead of (0, -1 = to the end): the engine "
        "then needs no statx and links the open to the read",
    )
    rd.add_argument(
        "--ring-thread",
        action="store_true",
        help="io_uring: a C thread of each engine keeps the ring full and reap only collects "
        "(default: the reaping thread drives the ring)",
    )
    rd.add_argument(
        "--files", type=argtypes.positive, default=None, help="use only the first N files"
    )
    rd.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    rd.add_argument("--json", action="store_true", help="print one JSON object")
    rd.add_argument("--no-progress", action="store_true", help="no progress bar")
    rd.set_defaults(func=cmd_bench_read)
    return rd


def cmd_bench_crops(args: argparse.Namespace) -> int:
    """``lsio-ray bench crops``: :func:`lsio_ray.zarr.cli.cmd_bench_crops`, imported now
    (it needs the ``zarr`` extra)."""
    from lsio_ray.zarr.cli import cmd_bench_crops as run

    return run(args)


def add_bench_crops(bsub: Subparsers) -> argparse.ArgumentParser:
    """Register ``bench crops`` (random crops of a Zarr array, :mod:`lsio_ray.zarr.cli`)."""
    return zarr_args.add_bench_crops_parser(bsub, cmd_bench_crops)


BENCH_MODES: list[Callable[[Subparsers], argparse.ArgumentParser]] = [
    add_bench_make_files,
    add_bench_read,
    add_bench_crops,
]
"""Functions registering the ``bench`` modes (each gets the bench subparsers object)."""


def add_bench_commands(sub: Subparsers) -> argparse.ArgumentParser:
    """Register ``bench`` and every mode in :data:`BENCH_MODES`; returns its parser."""
    bench = sub.add_parser(
        "bench", help="fio-like benchmarks", description="fio-like benchmarks of the lsio engine."
    )
    bsub = bench.add_subparsers(dest="bench_command", metavar="MODE")
    bench.set_defaults(func=_usage(bench))
    for add in BENCH_MODES:
        add(bsub)
    return bench


def add_rechunk_command(sub: Subparsers) -> argparse.ArgumentParser:
    """Register ``rechunk`` (cluster-wide Zarr re-chunking, :mod:`lsio_ray.ray.rechunk_cli`)."""
    from lsio_ray.ray.rechunk_cli import add_rechunk_parser

    return add_rechunk_parser(sub)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo (:mod:`lsio_ray.demo`), printing as it goes."""
    from lsio_ray.demo import DemoOptions, run_demo

    opts = DemoOptions(workdir=args.dir, quick=args.quick, keep=args.keep)
    times = run_demo(opts, lambda line: print(line, flush=True))
    print(f"demo done: {times}")
    return 0


def add_demo_command(sub: Subparsers) -> argparse.ArgumentParser:
    """Register ``demo``: the main job on data it makes itself."""
    p = sub.add_parser(
        "demo",
        help="run the demo on generated data",
        description="The IO engine against fio and pread, random crops of a "
        "Zarr array, and a re-chunk on a local Ray cluster, on data made in "
        "a temporary directory.",
    )
    p.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="small data, short runs")
    p.add_argument("--keep", action="store_true", help="keep the generated data")
    p.set_defaults(func=cmd_demo)
    return p


def cmd_info(args: argparse.Namespace) -> int:
    """``lsio-ray info``: :func:`lsio_ray.zarr.cli.cmd_info`, imported now (it needs the
    ``zarr`` extra)."""
    from lsio_ray.zarr.cli import cmd_info as run

    return run(args)


def add_info_command(sub: Subparsers) -> argparse.ArgumentParser:
    """Register ``info`` (describe a Zarr array, :mod:`lsio_ray.zarr.cli`)."""
    return zarr_args.add_info_parser(sub, cmd_info)


COMMAND_GROUPS: list[Callable[[Subparsers], argparse.ArgumentParser]] = [
    add_demo_command,
    add_info_command,
    add_bench_commands,
    add_rechunk_command,
]
"""Functions registering top-level commands, in ``--help`` order."""


def _usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def build_parser() -> argparse.ArgumentParser:
    """The full ``lsio-ray`` parser.  Building it imports no optional dependency (zarr,
    numcodecs, Ray): each command imports what it needs when it runs."""
    parser = argparse.ArgumentParser(
        prog="lsio-ray", description="Light-speed IO on Ray: tools and benchmarks."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {lsio_ray.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMAND_GROUPS:
        add(sub)
    parser.set_defaults(func=_usage(parser))
    return parser


EXTRAS: dict[str, str] = {
    "zarr": "zarr",
    "numcodecs": "zarr",
    "google_crc32c": "zarr",
    "crc32c": "zarr",
    "ray": "ray",
    "matplotlib": "interactive",
}
"""Top-level module -> the ``lsio_ray`` extra (``pip install 'lsio_ray[EXTRA]'``) that
installs it: named in the error when a command finds it missing."""


def missing_extra(exc: BaseException) -> tuple[str, str] | None:
    """``(module, extra)`` when ``exc`` (or what caused it) is the failed import of a
    module an ``lsio_ray`` extra provides (:data:`EXTRAS`) and that module is not
    installed, else None (an installed but broken module is another matter)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ImportError) and cur.name:
            top = cur.name.split(".")[0]
            if top in EXTRAS and importlib.util.find_spec(top) is None:
                return top, EXTRAS[top]
        cur = cur.__cause__ or cur.__context__
    return None


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the flush at exit cannot fail again on a
    reader that went away (the Python docs' recipe, "Note on SIGPIPE")."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError):  # stdout is no file (tests capturing it)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lsio-ray`` script; returns the exit status.

    0 on success; 2 for a usage error (argparse's, and the commands' own checks of
    their arguments, e.g. ``rechunk``'s of its paths); 1 when the command failed, or
    needs an extra that is not installed (the message says which: ``pip install
    'lsio_ray[zarr]'``); 130 on Ctrl-C.  Output cut short by its reader (``lsio-ray
    info x | head -3``) is not an error: 0, and nothing on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    name = " ".join(
        p for p in ("lsio-ray", args.command, getattr(args, "bench_command", None)) if p
    )
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # a closed pipe raises here, not in the flush at exit
        return status
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except ImportError as exc:
        found = missing_extra(exc)
        if found is None:
            raise
        module, extra = found
        print(
            f"{name}: error: this command needs the '{extra}' extra ({module} is not "
            f"installed): pip install 'lsio_ray[{extra}]'",
            file=sys.stderr,
        )
        return 1
    except (OSError, ValueError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
