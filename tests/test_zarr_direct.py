"""The ``direct="auto"`` rule (lsio_ray.zarr.direct) decides on real file systems: tmpfs
and procfs are recognised, an array that fits the page cache is read buffered, one that
does not (the page cache's room made small) with O_DIRECT, and the setting overrides it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

import lsio_ray.zarr as lz
import lsio_ray.zarr.direct as rule
from lsio_ray import config

SHM = "/dev/shm"


def _write(root: str) -> tuple[str, np.ndarray]:
    path = os.path.join(root, "d.zarr")
    z = zarr.create_array(
        path, shape=(8, 64, 64), chunks=(1, 32, 32), dtype="float32", fill_value=0.0,
        compressors=zarr.codecs.ZstdCodec(level=3),
    )  # fmt: skip
    data = np.random.default_rng(0).standard_normal((8, 64, 64)).astype("float32")
    z[...] = data
    return path, data


def _accepts_direct(root: str) -> bool:
    probe = os.path.join(root, "probe")
    with open(probe, "wb") as fh:
        fh.write(b"x" * 4096)
    try:
        os.close(os.open(probe, os.O_RDONLY | os.O_DIRECT))
    except OSError:
        return False
    finally:
        os.unlink(probe)
    return True


def _disk_dir(tmp_path: Path) -> str:
    fs = rule.file_system(tmp_path)
    if fs in rule.MEMORY_FS or fs in rule.NETWORK_FS or fs.startswith("fuse"):
        pytest.skip(f"the test directory is on {fs}, not a local disk's file system")
    if not _accepts_direct(str(tmp_path)):
        pytest.skip(f"{fs} refuses O_DIRECT here")
    return str(tmp_path)


def test_file_system_types_of_real_mounts(tmp_path: Path) -> None:
    assert rule.file_system("/proc/self") == "proc"
    assert rule.file_system("/") != ""
    if os.path.ismount(SHM):
        assert rule.file_system(SHM) == "tmpfs"
        assert rule.file_system(os.path.join(SHM, "no", "such", "file")) == "tmpfs"


def test_tmpfs_is_never_auto_direct() -> None:
    if rule.file_system(SHM) != "tmpfs":
        pytest.skip("/dev/shm is not a tmpfs here")
    root = os.path.join(SHM, f"lsio-direct-test-{os.getpid()}")
    os.makedirs(root)
    try:
        path, data = _write(root)
        a = lz.open(path)  # even when the data would not fit the page cache
        assert a.direct is False and "tmpfs" in a.direct_reason
        assert rule.choose_direct(a.layout, cache_bytes=0) == (
            False,
            "tmpfs: a memory file system",
        )
        np.testing.assert_array_equal(a[...], data)
        # the setting overrides the rule (O_DIRECT where tmpfs allows it, Linux >= 6.6)
        with config.set(direct=True):
            assert lz.open(path).direct is rule.supports_direct(path)
    finally:
        shutil.rmtree(root)


def test_local_disk_direct_when_larger_than_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = _write(_disk_dir(tmp_path))
    a = lz.open(path)
    assert a.direct is False and "(it fits)" in a.direct_reason  # small: buffered
    # the page cache's room made smaller than the array: O_DIRECT
    monkeypatch.setattr(rule, "page_cache_limit", lambda: 1024)
    b = lz.open(path)
    assert b.direct is True and "(more than fits)" in b.direct_reason
    np.testing.assert_array_equal(b[...], data)
    np.testing.assert_array_equal(b[1:7, 5:60, 3:33], data[1:7, 5:60, 3:33])
    # overrides: the argument, then the setting (env LSIO_DIRECT)
    assert lz.open(path, direct=False).direct is False
    with config.set(direct=False):
        assert lz.open(path).direct is False
        assert lz.open(path, direct=True).direct is True
    monkeypatch.setenv("LSIO_DIRECT", "0")
    assert lz.open(path).direct is False
    monkeypatch.setenv("LSIO_DIRECT", "auto")
    assert lz.open(path).direct is True


def test_stored_bytes_estimate(tmp_path: Path) -> None:
    path, _ = _write(str(tmp_path))
    true = sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, fs in os.walk(os.path.join(path, "c"))
        for f in fs
    )
    est = rule.stored_bytes(lz.open(path).layout)
    assert 0.7 * true <= est <= 1.3 * true, (est, true)
    # an array never written stores nothing
    empty = zarr.create_array(str(tmp_path / "e.zarr"), shape=(4, 4), chunks=(2, 2), dtype="u1")
    assert empty is not None and rule.stored_bytes(lz.open(str(tmp_path / "e.zarr")).layout) == 0


def test_page_cache_limit_is_memory() -> None:
    with open("/proc/meminfo") as fh:
        total = int(next(line for line in fh if line.startswith("MemTotal:")).split()[1]) * 1024
    assert 0 < rule.page_cache_limit() <= total


def test_direct_setting_values() -> None:
    assert config.validate("direct", "AUTO") == "auto"
    assert config.validate("direct", "on") is True
    assert config.get("direct") == "auto" or "LSIO_DIRECT" in os.environ
    with pytest.raises(ValueError, match="direct must be auto or a boolean"):
        config.validate("direct", "sometimes")


def test_auto_direct_array_gets_a_registered_pool(tmp_path: Path) -> None:
    """An array ``direct="auto"`` reads O_DIRECT (more than the page cache's room, here
    made small) makes the process's service with its pool registered, as
    ``direct=True`` does; an array that fits does not."""
    path = os.path.join(_disk_dir(tmp_path), "a.zarr")
    data = np.arange(64 * 64, dtype="float32").reshape(64, 64)
    zarr.create_array(path, shape=data.shape, chunks=(16, 64), dtype=data.dtype)[...] = data
    code = (
        "import os, resource, sys, numpy as np;"
        "import lsio_ray.zarr as lz, lsio_ray.zarr.direct as rule;"
        "from lsio_ray.io.service import default_service;"
        "small = sys.argv[2] == 'small';"
        "rule.page_cache_limit = (lambda: 1024) if small else rule.page_cache_limit;"
        "a = lz.open(sys.argv[1]); x = a[...];"
        "e = default_service().engine;"
        "soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0];"
        "ok = os.geteuid() == 0 or soft == resource.RLIM_INFINITY or soft >= e.pool_bytes;"
        "print(a.direct, ok, 'registered_buffers' in e.features, float(x.sum()))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LSIO_DIRECT", "LSIO_REGISTER_BUFFERS")}
    for cache, want in (("small", True), ("real", False)):
        out = subprocess.run(
            [sys.executable, "-c", code, path, cache],
            env={**env, "LSIO_BACKEND": "uring"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        direct, allowed, registered = out[0] == "True", out[1] == "True", out[2] == "True"
        assert direct is want, out
        assert registered == (want and allowed), (cache, out)
        assert float(out[3]) == float(data.sum())
