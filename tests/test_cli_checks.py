"""The ``lsio-ray`` command line as a demanding user meets it.

* ``rechunk`` checks every argument before Ray is imported or started: each mistake
  exits 2 with a message naming the argument or path, and no import of Ray is even
  attempted (counted by an import hook, not timed);
* shapes are parsed strictly (``--chunks 16,128,12x`` is an error, not ``16,128,12``);
* without ``--address`` it starts a local Ray of its own, says so on stderr, and Ray's
  token-authentication notice is not printed;
* ``--version``; output cut short by its reader (``| head``) exits 0 quietly;
* the base install: ``--help`` and ``bench read`` import no zarr, numcodecs or
  google_crc32c, and a command needing a missing extra names it.
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import os
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import lsio_ray
import lsio_ray.zarr as lz
from lsio_ray import argtypes, cli
from lsio_ray.interactive import InteractiveArray
from lsio_ray.ray import rechunk_cli

OPTIONAL = ("zarr", "numcodecs", "google_crc32c", "ray")
MAIN = "import sys; from lsio_ray.cli import main; sys.exit(main(sys.argv[1:]))"


def _array(path: Path, zarr_format: int = 3) -> np.ndarray:
    """A small 3-D array at ``path`` (written by zarr-python)."""
    data = np.arange(12 * 20 * 8, dtype=np.int32).reshape(12, 20, 8)
    z = zarr.create_array(
        str(path), shape=data.shape, dtype=data.dtype, chunks=(4, 5, 8), zarr_format=zarr_format
    )
    z[...] = data
    return data


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _run(code: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``python -c code args`` with the package's Python, output captured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=kw.pop("timeout", 120),
        env=env,
        **kw,
    )


class _RayTripwire(importlib.abc.MetaPathFinder):
    """Records every attempt to import Ray (or any ``ray.*``) and makes it fail."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "ray" or name.startswith("ray."):
            self.attempts.append(name)
            raise ModuleNotFoundError(f"test: importing {name} is not allowed", name=name)
        return None


@pytest.fixture
def ray_tripwire(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The list of Ray imports attempted during the test (Ray, even when some earlier
    test imported it, is out of ``sys.modules`` meanwhile and comes back after)."""
    trip = _RayTripwire()
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    monkeypatch.setattr(sys, "meta_path", [trip, *sys.meta_path])
    yield trip.attempts


def _rechunk(
    capsys: pytest.CaptureFixture[str], *argv: str, parse_error: bool = False
) -> tuple[int, str]:
    """``lsio-ray rechunk ARGV`` in this process: (exit status, stderr)."""
    if parse_error:
        with pytest.raises(SystemExit) as ei:
            cli.main(["rechunk", *argv])
        code = ei.value.code
        assert isinstance(code, int)
        return code, capsys.readouterr().err
    rc = cli.main(["rechunk", *argv])
    return rc, capsys.readouterr().err


# -- 1. rechunk: every argument checked before Ray ----------------------------------------


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize(
    ("flag", "value", "n"),
    [("--chunks", "4,5", 2), ("--chunks", "4,5,8,1", 4), ("--shards", "8", 1)],
)
def test_shape_of_the_wrong_rank_is_refused_before_ray(
    tmp_path: Path,
    ray_tripwire: list[str],
    capsys: pytest.CaptureFixture[str],
    zarr_format: int,
    flag: str,
    value: str,
    n: int,
) -> None:
    src, dst = tmp_path / "in.zarr", tmp_path / "out.zarr"
    _array(src, zarr_format)
    argv = [str(src), str(dst), "--chunks", "4,5,8", flag, value]
    if flag == "--shards":
        argv += ["--zarr-format", "3"]
    rc, err = _rechunk(capsys, *argv)
    assert rc == 2, err
    assert f"{flag} {value}: {n} size" in err, err
    assert "3 dimensions" in err and str(src) in err, err
    assert "Traceback" not in err
    assert ray_tripwire == []
    assert not dst.exists()


@pytest.mark.parametrize(
    ("extra", "what"),
    [
        (["--shards", "8,10,8", "--zarr-format", "2"], "shards need zarr_format 3"),
        (["--codec", "brotli"], "unknown codec 'brotli'"),
        (["--codec", "zstd:high"], "level 'high' is not an integer"),
        (["--shards", "6,10,8"], "divisible"),  # 6 is no multiple of the chunk's 4
    ],
)
def test_settings_the_new_array_cannot_have_are_refused_before_ray(
    tmp_path: Path,
    ray_tripwire: list[str],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    what: str,
) -> None:
    src, dst = tmp_path / "in.zarr", tmp_path / "out.zarr"
    _array(src)
    rc, err = _rechunk(capsys, str(src), str(dst), "--chunks", "4,5,8", *extra)
    assert rc == 2, err
    assert what in err, err
    assert extra[0] in err and str(src) in err, err  # names the argument and the source
    assert ray_tripwire == []
    assert not dst.exists()


def test_a_missing_or_non_array_source_is_refused_before_ray(
    tmp_path: Path, ray_tripwire: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    dst = tmp_path / "out.zarr"
    (tmp_path / "file.zarr").write_bytes(b"not a directory")
    (tmp_path / "empty.zarr").mkdir()
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.zarr" / "zarr.json").write_text("{not json")
    cases = {
        "nope.zarr": "does not exist",
        "file.zarr": "not a directory",
        "empty.zarr": "no zarr.json or .zarray",
        "bad.zarr": "not a Zarr array",
    }
    for name, what in cases.items():
        src = tmp_path / name
        rc, err = _rechunk(capsys, str(src), str(dst), "--chunks", "4,5,8")
        assert rc == 2, (name, err)
        assert what in err and str(src) in err, (name, err)
        assert "Traceback" not in err
    assert ray_tripwire == []
    assert not dst.exists()


@pytest.mark.parametrize("kind", ["array", "directory", "file", "link"])
def test_an_existing_destination_is_refused_without_overwrite(
    tmp_path: Path, ray_tripwire: list[str], capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """An array or a non-empty directory: refused unless ``--overwrite``.  A file or a
    dangling symbolic link, which the job cannot replace by a directory: refused
    even with ``--overwrite``."""
    src, dst = tmp_path / "in.zarr", tmp_path / "out.zarr"
    _array(src)
    if kind == "array":
        _array(dst, zarr_format=2)
    elif kind == "directory":
        dst.mkdir()
        (dst / "notes.txt").write_text("mine")
    elif kind == "file":
        dst.write_text("mine")
    else:
        dst.symlink_to(tmp_path / "elsewhere")
    before = _tree(tmp_path)
    rc, err = _rechunk(capsys, str(src), str(dst), "--chunks", "4,5,8")
    assert rc == 2, err
    assert str(dst) in err, err
    if kind in ("array", "directory"):
        assert "--overwrite" in err, err
        assert ("a Zarr array" if kind == "array" else "a non-empty directory") in err, err
        rechunk_cli.check_arguments(_args(str(src), str(dst), "--chunks", "4,5,8", "--overwrite"))
    else:
        assert "is not a directory" in err, err
        rc, err = _rechunk(capsys, str(src), str(dst), "--chunks", "4,5,8", "--overwrite")
        assert rc == 2 and "is not a directory" in err, err
    assert ray_tripwire == []
    assert _tree(tmp_path) == before


def test_overlapping_trees_are_refused_before_ray_even_with_overwrite(
    tmp_path: Path, ray_tripwire: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The guard of :func:`lsio_ray.paths.check_disjoint`, run by the CLI first
    (every case of it: tests/test_tree_safety.py)."""
    src = tmp_path / "work" / "in.zarr"
    _array(src)
    (tmp_path / "link.zarr").symlink_to(src, target_is_directory=True)
    before = _tree(tmp_path)
    cases = [
        (src, src, "is the source"),
        (src, src / "out.zarr", "inside the source"),
        (src, tmp_path / "work", "contains the source"),
        (src, tmp_path / "link.zarr", "is the source"),
    ]
    for s, d, what in cases:
        rc, err = _rechunk(capsys, str(s), str(d), "--chunks", "4,5,8", "--overwrite")
        assert rc == 2, err
        assert what in err and str(d) in err, err
    assert ray_tripwire == []
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["--chunks", "16,128,12x"], "'12x' is not a positive integer"),
        (["--chunks", "4,5,"], "an empty size"),
        (["--chunks", "4,0,8"], "positive"),
        (["--chunks", "4,5,8", "--shards", "8x10,8"], "'8x10' is not a positive integer"),
        (["--chunks", "4,5,8", "--block-bytes", "lots"], "not a size"),
    ],
)
def test_malformed_arguments_are_usage_errors(
    tmp_path: Path,
    ray_tripwire: list[str],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    what: str,
) -> None:
    """argparse's own errors (exit 2, the usage and the argument named)."""
    src = tmp_path / "in.zarr"
    _array(src)
    rc, err = _rechunk(capsys, str(src), str(tmp_path / "o"), *argv, parse_error=True)
    assert rc == 2
    assert what in err and "argument --" in err, err
    assert ray_tripwire == []


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["--block-bytes", "0"], "--block-bytes must be positive"),
        (["--batch-bytes", "0"], "--batch-bytes must be positive"),
        (["--root", "no-equals-sign"], "--root 'no-equals-sign'"),
    ],
)
def test_values_that_cannot_work_are_refused_before_ray(
    tmp_path: Path,
    ray_tripwire: list[str],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    what: str,
) -> None:
    src = tmp_path / "in.zarr"
    _array(src)
    rc, err = _rechunk(capsys, str(src), str(tmp_path / "o"), "--chunks", "4,5,8", *argv)
    assert rc == 2, err
    assert what in err, err
    assert ray_tripwire == []


def _args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["rechunk", *argv])


def test_what_the_job_itself_decides_passes_the_checks(tmp_path: Path) -> None:
    """Left to the job, after Ray starts: an empty destination, ``--overwrite`` of a
    disjoint one, an unfinished run (resumed, or refused by the job when its settings
    differ), and paths this process may not see as the job does (under a ``--root``
    directory: one node's disk; a ``ray://`` address: this machine is no node)."""
    src = tmp_path / "in.zarr"
    _array(src)
    empty, full, unfinished = tmp_path / "empty", tmp_path / "full.zarr", tmp_path / "run"
    empty.mkdir()
    _array(full)
    (unfinished / ".lsio-rechunk").mkdir(parents=True)
    (unfinished / ".lsio-rechunk" / "job.json").write_text("{}")
    (unfinished / "c").mkdir()
    ok = [
        _args(str(src), str(empty), "--chunks", "4,5,8"),
        _args(str(src), str(full), "--chunks", "4,5,8", "--overwrite"),
        _args(str(src), str(unfinished), "--chunks", "4,5,8"),
        _args(str(src), str(tmp_path / "new" / "out.zarr"), "--chunks", "4,5,8"),
        # node-local paths: not looked at here, however wrong they look from here
        _args("/node/disk/in.zarr", "/node/disk/o", "--chunks", "1", "--root", "n1=/node/disk"),
        _args(str(src), str(full), "--chunks", "4,5,8", "--root", f"n1={tmp_path}"),
        _args("/remote/in.zarr", "/remote/out.zarr", "--chunks", "1", "--address", "ray://h:1"),
    ]
    for args in ok:
        rechunk_cli.check_arguments(args)  # no error
    # ... but never an overlap, wherever the paths are
    with pytest.raises(rechunk_cli.ArgumentsError, match="inside the source"):
        rechunk_cli.check_arguments(
            _args("/r/in.zarr", "/r/in.zarr/o", "--chunks", "1", "--address", "ray://h:1")
        )
    with pytest.raises(rechunk_cli.ArgumentsError, match="holds a Zarr array"):
        rechunk_cli.check_arguments(_args(str(src), str(full), "--chunks", "4,5,8"))


# -- 2. strict shapes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shape"),
    [("16,128,12", (16, 128, 12)), ("8x256x256", (8, 256, 256)), (" 4 , 5 ", (4, 5)), ("7", (7,))],
)
def test_shape_accepts_sizes(text: str, shape: tuple[int, ...]) -> None:
    assert argtypes.shape(text) == shape


NOT_SHAPES = ["16,128,12x", "16,,128", "16,128,", ",16", "8x256,256", "", "x", "0,4", "-1,4"]
NOT_SHAPES += ["+4", "1_0", "4.0", "\u0663"]  # the last: an Arabic-Indic digit three


@pytest.mark.parametrize("text", NOT_SHAPES)
def test_shape_refuses_anything_else(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=repr(text).replace("+", r"\+")):
        argtypes.shape(text)


# -- 3. which Ray ---------------------------------------------------------------------------


def _fake_ray(monkeypatch: pytest.MonkeyPatch, calls: list[dict[str, Any]]) -> None:
    """A stand-in ``ray`` module recording ``ray.init``'s arguments."""
    fake = types.ModuleType("ray")

    def init(**kw: Any) -> Any:
        calls.append(kw)
        return types.SimpleNamespace(address_info={"gcs_address": "10.0.0.5:6379"})

    fake.is_initialized = lambda: False  # type: ignore[attr-defined]
    fake.init = init  # type: ignore[attr-defined]
    fake.cluster_resources = lambda: {"CPU": 24.0}  # type: ignore[attr-defined]
    fake.nodes = lambda: [{"Alive": True}] * 3 + [{"Alive": False}]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", fake)


def test_without_an_address_a_local_ray_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ray.init()`` with no address would join a cluster ``ray start`` left behind:
    the command asks for ``address="local"`` and says so."""
    calls: list[dict[str, Any]] = []
    _fake_ray(monkeypatch, calls)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    line = rechunk_cli.start_ray(None)
    assert calls[0]["address"] == "local"
    assert calls[0]["log_to_driver"] is False and calls[0]["configure_logging"] is False
    assert line == "Ray: started a local cluster for this run (24 CPUs)"


def test_an_address_or_ray_address_is_joined_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    _fake_ray(monkeypatch, calls)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    line = rechunk_cli.start_ray(None)
    assert calls[-1]["address"] == "10.0.0.9:6379"
    assert "10.0.0.9:6379 (10.0.0.5:6379)" in line and "RAY_ADDRESS" in line, line
    line = rechunk_cli.start_ray("auto")  # --address wins over RAY_ADDRESS
    assert calls[-1]["address"] == "auto"
    assert line == (
        "Ray: connected to the cluster at auto (10.0.0.5:6379) (--address; 3 nodes, 24 CPUs)"
    )


@pytest.mark.timeout(300)
def test_rechunk_end_to_end_on_a_local_ray_quietly(tmp_path: Path) -> None:
    """The real thing once: a fresh local Ray, said on stderr, with no notice from Ray
    about token authentication; the result is zarr-python's data re-chunked."""
    src, dst = tmp_path / "in.zarr", tmp_path / "out.zarr"
    data = _array(src)
    proc = _run(
        MAIN,
        "rechunk",
        str(src),
        str(dst),
        "--chunks",
        "6,10,8",
        "--json",
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("lsio-ray rechunk: Ray: started a local cluster for this run"), lines
    assert not any("Token authentication" in x or "RAY_AUTH_MODE" in x for x in lines), lines
    assert json.loads(proc.stdout)["blocks"] >= 1
    z = zarr.open_array(str(dst))
    assert z.chunks == (6, 10, 8)
    np.testing.assert_array_equal(z[...], data)


# -- 4. --version, pipes closed early ---------------------------------------------------------


def test_version() -> None:
    proc = _run(
        "import sys; from lsio_ray.cli import main; sys.exit(main(sys.argv[1:]))", "--version"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"lsio-ray {lsio_ray.__version__}\n"


def test_info_into_a_closed_pipe_exits_0_quietly(tmp_path: Path) -> None:
    """The reader is gone before the first byte: Python's BrokenPipeError is no error of
    the command's (exit 0, nothing on stderr), not a traceback or 'Exception ignored'."""
    src = tmp_path / "in.zarr"
    _array(src)
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lsio_ray.cli", "info", str(src), "--json"],
            stdout=w,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(w)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_info_piped_into_head(tmp_path: Path) -> None:
    """``lsio-ray info x | head -3`` through a shell, exit status of the whole pipe."""
    src = tmp_path / "in.zarr"
    _array(src)
    cmd = f"set -o pipefail; '{sys.executable}' -m lsio_ray.cli info '{src}' | head -3"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 3 and str(src) in proc.stdout
    assert proc.stderr == ""


# -- 5. the base install ------------------------------------------------------------------


def test_help_and_bench_read_import_no_optional_dependency(tmp_path: Path) -> None:
    """``--help`` of every command and a real ``bench read``: no zarr, numcodecs,
    google_crc32c or Ray in ``sys.modules`` afterwards, and every command listed."""
    code = f"""
        import contextlib, io, json, sys
        from lsio_ray.cli import main
        helps = {{}}
        for argv in (["--help"], ["bench", "--help"], ["bench", "read", "--help"],
                     ["info", "--help"], ["rechunk", "--help"], ["--version"]):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                try:
                    main(argv)
                except SystemExit as e:
                    assert e.code == 0, (argv, e.code)
            helps[" ".join(argv)] = out.getvalue()
        after_help = sorted(m for m in {OPTIONAL!r} if m in sys.modules)
        d = sys.argv[1]
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["bench", "make-files", "--dir", d, "--count", "2", "--size", "64K"]) == 0
            assert main(["bench", "read", "--dir", d, "--passes", "1", "--json"]) == 0
        after_read = sorted(m for m in {OPTIONAL!r} if m in sys.modules)
        print(json.dumps([after_help, after_read, helps]))
    """
    proc = _run(code, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    after_help, after_read, helps = json.loads(proc.stdout)
    assert after_help == [] and after_read == []
    for command in ("demo", "info", "bench", "rechunk"):
        assert command in helps["--help"]
    for mode in ("make-files", "read", "crops"):
        assert mode in helps["bench --help"]
    assert "--json" in helps["info --help"] and "--chunks" in helps["rechunk --help"]


@pytest.mark.parametrize(
    ("missing", "argv", "extra"),
    [
        ("zarr", ["info", "{src}"], "zarr"),
        ("numcodecs", ["info", "{src}"], "zarr"),
        ("zarr", ["bench", "crops", "{src}", "--shape", "2,2,2", "--count", "1"], "zarr"),
        ("ray", ["rechunk", "{src}", "{dst}", "--chunks", "4,5,8"], "ray"),
    ],
)
def test_a_missing_extra_is_named(
    tmp_path: Path, missing: str, argv: list[str], extra: str
) -> None:
    """The module is made unimportable (``sys.modules[name] = None``) as if the extra
    were not installed: one line naming it and the pip command, exit 1, no traceback;
    ``--help`` still works."""
    src, dst = tmp_path / "in.zarr", tmp_path / "out.zarr"
    _array(src)
    code = f"""
        import sys
        sys.modules[{missing!r}] = None
        from lsio_ray.cli import main
        sys.exit(main(sys.argv[1:]))
    """
    args = [a.format(src=src, dst=dst) for a in argv]
    proc = _run(code, *args)
    assert proc.returncode == 1, proc.stderr
    assert f"pip install 'lsio_ray[{extra}]'" in proc.stderr, proc.stderr
    assert f"({missing} is not installed)" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not dst.exists()
    proc = _run(code, "--help")
    assert proc.returncode == 0 and "rechunk" in proc.stdout, proc.stderr


def test_missing_extra_names_only_modules_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ImportError from inside an installed extra is a broken install, not a
    missing extra; the missing module is found through ``raise ... from``."""
    err = ModuleNotFoundError("No module named 'zarr.nothing'", name="zarr.nothing")
    assert cli.missing_extra(err) is None  # zarr is installed here
    err = ModuleNotFoundError("No module named 'surely_not_a_module'", name="surely_not_a_module")
    assert cli.missing_extra(err) is None  # no extra of ours
    wrapped = ImportError("lsio_ray.zarr needs zarr-python")
    wrapped.__cause__ = ModuleNotFoundError("x", name="google_crc32c.cext")
    assert cli.missing_extra(wrapped) is None  # installed here
    monkeypatch.setitem(sys.modules, "google_crc32c", None)  # now it is not
    assert cli.missing_extra(wrapped) == ("google_crc32c", "zarr")


# -- 6. the two open functions --------------------------------------------------------------


def test_lsio_ray_open_wraps_what_lsio_ray_zarr_open_returns(tmp_path: Path) -> None:
    src = tmp_path / "in.zarr"
    data = _array(src)
    plain = lz.open(src)
    nice = lsio_ray.open(src)
    assert isinstance(plain, lz.Array) and not isinstance(plain, InteractiveArray)
    assert isinstance(nice, InteractiveArray) and not isinstance(nice, lz.Array)
    assert isinstance(nice.array, lz.Array)
    np.testing.assert_array_equal(nice[2:5], plain[2:5])
    np.testing.assert_array_equal(nice[...], data)
    assert "InteractiveArray" in (lsio_ray.open.__doc__ or "")
    assert "lsio_ray.zarr.Array" in (lsio_ray.open.__doc__ or "")
