"""`lsio-ray bench`: make-files and read, run for real on small files in tmp_path.

The read benchmark is checked through its counters (ops, bytes, files), which must agree
with each other and with the data set, for every pattern on both backends; never on
timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lsio_ray import bench, cli
from lsio_ray.errors import RangePastEOFError

COUNT = 5
SIZE = 256 << 10
BS = 16 << 10
KEYS = set(
    "backend ops_per_s mib_per_s files_per_s cpu_user_s cpu_sys_s wall_s "
    "ops bytes files pattern block_size depth threads direct features".split()
)


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python -m lsio_ray.cli ARGS`` in a subprocess."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "lsio_ray.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\n{proc.stderr}")
    return proc


def read_json(*args: str) -> dict[str, Any]:
    """Run ``bench read --json ARGS`` and parse its one JSON object."""
    proc = run_cli("bench", "read", "--json", *args)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """COUNT files of SIZE random bytes, made by the CLI."""
    d = tmp_path_factory.mktemp("bench")
    proc = run_cli(
        "bench", "make-files", "--dir", str(d), "--count", str(COUNT), "--size", "256K", "--json"
    )
    res = json.loads(proc.stdout)
    assert (res["written"], res["skipped"], res["bytes_written"]) == (COUNT, 0, COUNT * SIZE)
    return d


# ------------------------------------------------------------------------------ make-files


def test_make_files_names_sizes_and_random_content(data_dir: Path) -> None:
    names = sorted(p.name for p in data_dir.iterdir())
    assert names == [f"f{i:06d}" for i in range(COUNT)]
    blobs = [(data_dir / n).read_bytes() for n in names]
    assert all(len(b) == SIZE for b in blobs)
    assert len(set(blobs)) == COUNT  # every file different
    assert len(zlib.compress(blobs[0])) > 0.99 * SIZE  # incompressible


def test_make_files_is_idempotent(tmp_path: Path) -> None:
    first = bench.make_files(tmp_path, 3, "4K")
    assert (first.written, first.skipped) == (3, 0)
    before = (tmp_path / "f000001").read_bytes()
    (tmp_path / "f000002").write_bytes(b"short")  # wrong size: rewritten
    again = bench.make_files(tmp_path, 4, 4096)
    assert (again.written, again.skipped) == (2, 2)
    assert (tmp_path / "f000001").read_bytes() == before
    assert all((tmp_path / f"f{i:06d}").stat().st_size == 4096 for i in range(4))


def test_make_files_odd_and_empty_sizes(tmp_path: Path) -> None:
    bench.make_files(tmp_path / "odd", 2, 1001)
    assert [p.stat().st_size for p in sorted((tmp_path / "odd").iterdir())] == [1001, 1001]
    bench.make_files(tmp_path / "empty", 2, 0)
    assert [p.stat().st_size for p in sorted((tmp_path / "empty").iterdir())] == [0, 0]


def test_make_files_human_output(tmp_path: Path) -> None:
    proc = run_cli("bench", "make-files", "--dir", str(tmp_path), "--count", "2", "--size", "8K")
    assert "2 written" in proc.stdout and proc.stderr == ""  # no tqdm bar without a tty


# ------------------------------------------------------------------------------ read


@pytest.mark.parametrize("backend", ["uring", "pread"])
@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
@pytest.mark.parametrize("pattern", ["random", "sequential", "whole-file"])
def test_read_one_pass_counts(data_dir: Path, pattern: str, backend: str, direct: bool) -> None:
    args = [
        "--dir",
        str(data_dir),
        "--pattern",
        pattern,
        "--backend",
        backend,
        "--block-size",
        "16K",
        "--depth",
        "8",
        "--io-threads",
        "2",
        "--passes",
        "1",
        "--duration",
        "60s",
        "--seed",
        "1",
    ]
    if direct:
        args.append("--direct")
    d = read_json(*args)
    assert KEYS <= d.keys()
    assert d["backend"] == backend
    assert (d["pattern"], d["block_size"], d["depth"], d["threads"], d["direct"]) == (
        pattern,
        BS,
        8,
        1,
        direct,
    )
    if backend == "uring":
        assert "statx" in d["features"]  # the uring backend needs it
    else:
        assert d["features"] == []
    total = COUNT * SIZE
    if pattern == "whole-file":
        assert d["ops"] == d["files"] == COUNT
        assert d["bytes"] == d["files"] * SIZE
    else:
        # one pass = as many block reads as the data set holds
        assert d["ops"] == total // BS
        assert d["bytes"] == d["ops"] * BS == total
        assert 1 <= d["files"] <= d["ops"]
    assert d["wall_s"] > 0 and d["cpu_user_s"] >= 0 and d["cpu_sys_s"] >= 0
    assert d["ops_per_s"] == pytest.approx(d["ops"] / d["wall_s"])
    assert d["mib_per_s"] == pytest.approx(d["bytes"] / 2**20 / d["wall_s"])
    assert d["files_per_s"] == pytest.approx(d["files"] / d["wall_s"])


@pytest.mark.parametrize("backend", ["uring", "pread"])
@pytest.mark.parametrize("pattern", ["random", "sequential", "whole-file"])
def test_read_timed_run(data_dir: Path, pattern: str, backend: str) -> None:
    d = read_json(
        "--dir",
        str(data_dir),
        "--pattern",
        pattern,
        "--backend",
        backend,
        "--bs",
        "4K",
        "--depth",
        "16",
        "--threads",
        "2",
        "--duration",
        "300ms",
    )
    assert d["threads"] == 2 and d["backend"] == backend
    assert d["wall_s"] >= 0.3
    assert d["ops"] > 0 and d["files"] > 0
    if pattern == "whole-file":
        assert d["ops"] == d["files"]
        assert d["bytes"] == d["files"] * SIZE
    else:
        assert d["bytes"] == d["ops"] * 4096


def test_threads_split_the_data_exactly(data_dir: Path) -> None:
    seq = read_json(
        "--dir",
        str(data_dir),
        "--pattern",
        "sequential",
        "--bs",
        "16K",
        "--threads",
        "3",
        "--passes",
        "2",
        "--backend",
        "uring",
    )
    assert seq["ops"] == 2 * COUNT * SIZE // BS
    whole = read_json(
        "--dir",
        str(data_dir),
        "--pattern",
        "whole-file",
        "--threads",
        "3",
        "--passes",
        "1",
        "--backend",
        "pread",
        "--known-size",
    )
    assert whole["ops"] == whole["files"] == COUNT
    assert whole["bytes"] == COUNT * SIZE


def test_sequential_short_tail_and_random_full_blocks(tmp_path: Path) -> None:
    bench.make_files(tmp_path, 2, 10000)  # 2 full 4 KiB blocks + 1808 bytes
    seq = bench.run_read(
        bench.ReadSpec(
            dir=str(tmp_path), pattern="sequential", passes=1, duration_s=0, backend="pread"
        )
    )
    assert (seq.ops, seq.bytes) == (6, 20000)
    rnd = bench.run_read(
        bench.ReadSpec(dir=str(tmp_path), pattern="random", passes=3, duration_s=0, backend="uring")
    )
    assert (rnd.ops, rnd.bytes) == (12, 12 * 4096)  # only whole blocks


def test_random_batches_group_ranges_per_file(data_dir: Path) -> None:
    spec = bench.ReadSpec(dir=str(data_dir), block_size=BS, depth=4, run=8)
    fs = bench.list_files(data_dir)
    plan = bench._Plan(spec, fs, 0, 64, np.random.default_rng(0))
    nxt = plan.next()
    assert nxt is not None
    files, ranges = nxt
    assert len(ranges) == 64 and files["nranges"].sum() == 64
    assert len(files) <= 64 // 8  # at most batch / run files per batch
    assert len(set(files["group"].tolist())) == len(files)  # one run per file
    assert (ranges["offset"] % BS == 0).all() and (ranges["length"] == BS).all()
    assert (ranges["offset"] + BS <= SIZE).all()
    assert (files["path_off"] == fs.offs[files["group"]]).all()


def test_read_error_names_the_path(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = bench.list_files

    def lying(directory: Any, limit: Any = None) -> bench.FileSet:
        fs = real(directory, limit)
        fs.sizes = fs.sizes * 4  # ranges past the end of every file
        return fs

    monkeypatch.setattr(bench.files, "list_files", lying)
    with pytest.raises(RangePastEOFError) as info:
        bench.run_read(
            bench.ReadSpec(
                dir=str(data_dir),
                pattern="random",
                block_size=BS,
                passes=1,
                duration_s=0,
                backend="uring",
            )
        )
    assert str(data_dir) in str(info.value)


def test_read_human_output(data_dir: Path) -> None:
    proc = run_cli(
        "bench", "read", "--dir", str(data_dir), "--duration", "200ms", "--backend", "uring"
    )
    assert "ops/s" in proc.stdout and "MiB/s" in proc.stdout and "backend uring" in proc.stdout


def test_read_without_files_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_cli("bench", "read", "--dir", str(tmp_path), check=False)
    assert proc.returncode == 1
    assert "make-files" in proc.stderr and proc.stdout == ""


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert cli.main(["bench"]) == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "read", "--dir", "x", "--pattern", "zigzag"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["bench", "read", "--dir", "x", "--block-size", "lots"])
    capsys.readouterr()


def test_parse_duration() -> None:
    assert bench.parse_duration("10s") == 10
    assert bench.parse_duration("500ms") == 0.5
    assert bench.parse_duration("2m") == 120
    assert bench.parse_duration("1.5") == 1.5
    assert bench.parse_duration(3) == 3
    with pytest.raises(ValueError):
        bench.parse_duration("soon")


def test_spec_validation(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="pattern"):
        bench.run_read(bench.ReadSpec(dir=str(data_dir), pattern="zigzag"))
    with pytest.raises(ValueError, match="512"):
        bench.run_read(bench.ReadSpec(dir=str(data_dir), block_size=1000, direct=True))
    with pytest.raises(ValueError, match="duration"):
        bench.run_read(bench.ReadSpec(dir=str(data_dir), duration_s=0, passes=0))
