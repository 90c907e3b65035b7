"""Hardening of the C core against hostile input: special files (FIFOs, devices, /proc),
failed writes that must leave nothing behind, temp-file names that cannot be
pre-planted, modes kept on replace, and absurd engine settings.

Tests that could hang on a regression (a FIFO read blocking forever) run in a
subprocess under a timeout, so they fail instead of hanging the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_py(code: str, *args: str, timeout: float = 60, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a fresh interpreter; fail (not hang) when it does not exit in time.
    Returns its stdout; a non-zero exit fails with its stderr."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            cwd=ROOT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hung: no exit within {timeout} s\nstdout: {exc.stdout}\nstderr: {exc.stderr}")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


# ---------------------------------------------------------------------------- settings

_ABSURD = """
import resource, sys, time
from lsio_ray._core import RawEngine
name, value, backend = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.monotonic()
try:
    RawEngine(backend=backend, **{name: value})
except (ValueError, OSError) as exc:
    print(type(exc).__name__, exc)
else:
    raise SystemExit(f"{name}={value} accepted")
dt = time.monotonic() - t0
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
assert dt < 2, f"{name}={value}: refused after {dt:.1f} s"
assert grew < 64 * 1024, f"{name}={value}: max RSS grew by {grew} KiB"
"""


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_open", 10**9),
        ("depth", 10**9),
        ("threads", 10**9),
        ("pool_bytes", 1 << 50),
        ("max_open", 65537),
    ],
)
def test_absurd_settings_refused(backend, name, value):
    """Absurd sizes are refused at once, with an error naming the setting, before any
    memory is allocated for them (max_open=10**9 used to take 3.8 GiB)."""
    out = run_py(_ABSURD, name, str(value), backend, timeout=30)
    assert name in out, out


def test_pool_larger_than_memory_refused(backend):
    """A pool bound larger than the machine's memory is no bound: refused."""
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGESIZE")
    if ram + (1 << 30) > 1 << 40:
        pytest.skip("more than 1 TiB of memory: the 1 TiB bound is the one that applies")
    out = run_py(_ABSURD, "pool_bytes", str(ram + (1 << 30)), backend, timeout=30)
    assert "pool_bytes" in out, out


# ---------------------------------------------------------------------------- temp names


def test_put_over_planted_temp_names(make_engine, tmp_path):
    """Temp names cannot be guessed: symlinks planted at the names the old scheme used
    (``key.lsio-tmp.PID.N``) and at many more do not make ``put`` fail, and the file they
    point to is never written."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"do not touch")
    d = tmp_path / "data"
    d.mkdir()
    key = d / "key"
    names = {f"key.lsio-tmp.{os.getpid()}.{n}" for n in range(1, 257)}
    for n in range(2000):
        names.add(f"key.lsio-tmp.{n:016x}")
        names.add(f"key.lsio-tmp.{(n * 0x9E3779B97F4A7C15) % (1 << 64):016x}")
    planted = [d / n for n in sorted(names)]
    for p in planted:
        p.symlink_to(victim)
    eng = make_engine()
    for i in range(20):
        eng.put(key, f"version {i}".encode())
        assert key.read_bytes() == f"version {i}".encode()
        assert not key.is_symlink()
    assert victim.read_bytes() == b"do not touch"
    assert all(p.is_symlink() for p in planted)
    assert sum(".lsio-tmp." in n for n in os.listdir(d)) == len(planted)
