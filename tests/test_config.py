"""Settings validation: every engine setting and every environment variable lsio_ray
reads is checked for type and range before anything is allocated, and the error names
the setting (or the variable) and what is allowed."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from lsio_ray import Engine, config
from lsio_ray.io._core import RawEngine

_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
_PHYS = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

# setting -> (bad type, out of range (too big), out of range (too small) or None)
_INTS = {
    "depth": (2.5, 10**6, 0),
    "threads": (3.0, 10**6, 0),
    "max_open": ("many", 10**9, -1),
}


@pytest.mark.parametrize("name", sorted(_INTS))
def test_integer_settings_reject_bad_types_and_ranges(name):
    bad_type, too_big, too_small = _INTS[name]
    with pytest.raises((TypeError, ValueError), match=name):
        config.validate(name, bad_type)
    for bad in (too_big, too_small, True):
        with pytest.raises((TypeError, ValueError), match=rf"{name}.*\d+\.\.\d+"):
            config.validate(name, bad)
    with pytest.raises((TypeError, ValueError), match=name):
        with config.set(**{name: too_big}):
            pass
    # through the engine itself: refused before the C engine allocates anything
    with pytest.raises((TypeError, ValueError), match=name):
        Engine(backend="pread", **{name: too_big})
    with pytest.raises((TypeError, ValueError), match=name):
        RawEngine(backend="pread", **{name: bad_type})


def test_integer_settings_ranges():
    assert config.validate("depth", 4096) == 4096
    with pytest.raises(ValueError, match=r"depth=4097 is out of range: allowed 1\.\.4096"):
        config.validate("depth", 4097)
    assert config.validate("threads", 1024) == 1024 and config.validate("threads", "8") == 8
    with pytest.raises(ValueError, match=r"threads=1025 .*1\.\.1024"):
        config.validate("threads", 1025)
    top = min(_NOFILE, 1 << 20)
    assert config.validate("max_open", top) == top
    with pytest.raises(ValueError, match=rf"max_open={top + 1} .*1\.\.{top}.*RLIMIT_NOFILE"):
        config.validate("max_open", top + 1)


def test_max_open_of_a_billion_is_refused_without_allocating():
    """The review's case: max_open=10**9 used to allocate ~3.8 GiB of descriptor slots."""
    with pytest.raises(ValueError, match=r"max_open=1000000000 is out of range"):
        Engine(max_open=10**9)


def test_pool_bytes():
    assert config.validate("pool_bytes", "64M") == 64 << 20
    assert config.validate("pool_bytes", 4096) == 4096
    for bad in ("lots", 2.5, [1]):
        with pytest.raises((TypeError, ValueError), match="pool_bytes"):
            config.validate("pool_bytes", bad)
    for bad in (0, 100, -(1 << 20), "-1M", "1P", 1 << 50, "inf", "nan"):
        with pytest.raises(ValueError, match=r"pool_bytes"):
            config.validate("pool_bytes", bad)
    # rounded up to a power of two, the pool must fit in physical memory
    with pytest.raises(ValueError, match=r"pool_bytes.*physical memory"):
        config.validate("pool_bytes", _PHYS + 1)
    with pytest.raises(ValueError, match="pool_bytes"):
        Engine(pool_bytes=_PHYS * 4)


@pytest.mark.parametrize("name", ["register_buffers", "fixed_files", "link_open", "direct"])
def test_flag_settings(name):
    assert config.validate(name, True) is True and config.validate(name, "off") is False
    assert config.validate(name, 1) is True and config.validate(name, 0) is False
    for bad in (2, "maybe", 0.5, None):
        with pytest.raises((TypeError, ValueError), match=rf"{name}.*(true|false|bool)"):
            config.validate(name, bad)


def test_backend_setting():
    assert config.validate("backend", "URING") == "uring"
    with pytest.raises(ValueError, match=r"backend must be auto, uring or pread"):
        config.validate("backend", "spdk")
    with pytest.raises(TypeError, match="backend"):
        config.validate("backend", 1)
    with pytest.raises(KeyError, match="unknown setting"):
        config.validate("bogus", 1)


_ENV_CHECK = r"""
import sys
from lsio_ray import config
try:
    exec(sys.argv[1])
except (TypeError, ValueError) as exc:
    print("ERROR", exc)
else:
    print("OK")
"""

_ENV_CASES = [
    ("LSIO_MAX_OPEN", "1000000000", "config.get('max_open')", r"LSIO_MAX_OPEN.*max_open"),
    ("LSIO_MAX_OPEN", "lots", "config.get('max_open')", r"LSIO_MAX_OPEN.*integer"),
    ("LSIO_DEPTH", "0", "config.get('depth')", r"LSIO_DEPTH.*depth.*1\.\.4096"),
    ("LSIO_DEPTH", "1e9", "config.get('depth')", r"LSIO_DEPTH.*integer"),
    ("LSIO_THREADS", "100000", "config.get('threads')", r"LSIO_THREADS.*1\.\.1024"),
    ("LSIO_POOL_BYTES", "1P", "config.get('pool_bytes')", r"LSIO_POOL_BYTES.*pool_bytes"),
    ("LSIO_POOL_BYTES", "-5M", "config.get('pool_bytes')", r"LSIO_POOL_BYTES"),
    ("LSIO_BACKEND", "fast", "config.get('backend')", r"LSIO_BACKEND.*auto, uring or pread"),
    ("LSIO_FIXED_FILES", "2", "config.get('fixed_files')", r"LSIO_FIXED_FILES.*true"),
    ("LSIO_DIRECT", "perhaps", "config.get('direct')", r"LSIO_DIRECT"),
    ("LSIO_MAX_OPEN", "1000000000", "from lsio_ray import Engine; Engine()", r"LSIO_MAX_OPEN"),
    # variables read outside config.py go through the same checks
    (
        "LSIO_ZARR_THREADS",
        "100000",
        "from lsio_ray.zarr.loader import Loader; Loader()",
        r"LSIO_ZARR_THREADS.*1\.\.1024",
    ),
    (
        "LSIO_ZARR_MAX_INFLIGHT",
        "0",
        "from lsio_ray.zarr.loader import Loader; Loader()",
        r"LSIO_ZARR_MAX_INFLIGHT.*1\.\.",
    ),
    (
        "LSIO_ZARR_INDEX_CACHE",
        "1P",
        "from lsio_ray.zarr.shards import ShardIndexCache; ShardIndexCache()",
        r"LSIO_ZARR_INDEX_CACHE.*physical memory",
    ),
    (
        "LSIO_ZARR_INDEX_CACHE",
        "nan",
        "from lsio_ray.zarr.shards import ShardIndexCache; ShardIndexCache()",
        r"LSIO_ZARR_INDEX_CACHE",
    ),
    (
        "LSIO_ZARR_COALESCE_GAP",
        "1.5",
        "from lsio_ray.zarr.array import _env_coalesce_gap; _env_coalesce_gap()",
        r"LSIO_ZARR_COALESCE_GAP.*integer",
    ),
    (
        "LSIO_ZARR_COALESCE_GAP",
        "-7",
        "from lsio_ray.zarr.array import _env_coalesce_gap; _env_coalesce_gap()",
        r"LSIO_ZARR_COALESCE_GAP.*-1\.\.",
    ),
    (
        "LSIO_RAY_BATCH_BYTES",
        "1P",
        "from lsio_ray.ray.batches import default_batch_bytes; default_batch_bytes()",
        r"LSIO_RAY_BATCH_BYTES",
    ),
    (
        "LSIO_RAY_BATCH_BYTES",
        "0",
        "from lsio_ray.ray.batches import default_batch_bytes; default_batch_bytes()",
        r"LSIO_RAY_BATCH_BYTES",
    ),
]


@pytest.mark.parametrize(("var", "raw", "code", "pattern"), _ENV_CASES)
def test_bad_environment_variables_are_named(var, raw, code, pattern):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSIO_")}
    env[var] = raw
    r = subprocess.run(
        [sys.executable, "-c", _ENV_CHECK, code], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip()
    assert out.startswith("ERROR"), f"{var}={raw!r} was accepted"
    import re

    assert re.search(pattern, out), out
    assert repr(raw) in out or raw in out, out  # the value as given


def test_good_environment_variables_are_used(monkeypatch):
    monkeypatch.setenv("LSIO_DEPTH", " 128 ")
    monkeypatch.setenv("LSIO_POOL_BYTES", "8M")
    monkeypatch.setenv("LSIO_MAX_OPEN", "64")
    monkeypatch.setenv("LSIO_REGISTER_BUFFERS", "no")
    assert config.get("depth") == 128 and config.get("pool_bytes") == 8 << 20
    assert config.get("max_open") == 64 and config.get("register_buffers") is False
    with config.set(depth="32"):
        assert config.get("depth") == 32
    with Engine(backend="pread") as eng:
        assert eng.pool_bytes == 8 << 20 and eng.raw.depth == 128
