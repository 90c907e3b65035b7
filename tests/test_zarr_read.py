"""Reads through lsio_ray.zarr equal zarr-python's, element for element.

Every layout of the issue (v3 codecs, both endians, transpose, sharding with the index at
either end, both chunk key encodings; v2 compressors, shuffles, C and F order, both
separators) and every fixed-size numeric dtype and bool, with missing chunks (fill
values, NaN included) and edge chunks, on both engine backends.
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zarr
from _zarr_helpers import BACKENDS, DTYPE_SPECS, LAYOUTS, Spec, check_equal, regions, write_fixture
from lsio_ray._lsio import lib

import lsio_ray.zarr as lz
import lsio_ray.zarr.read as read_mod
from lsio_ray import config
from lsio_ray.io.service import default_service
from lsio_ray.zarr.loader import Loader, default_loader


@pytest.fixture(scope="module", params=BACKENDS)
def loader(request: pytest.FixtureRequest) -> Iterator[Loader]:
    """A loader per engine backend (the io_uring one must really run io_uring)."""
    ld = Loader(backend=request.param)
    assert ld.backend == request.param
    yield ld
    ld.close()


@pytest.fixture(scope="module", params=BACKENDS)
def direct_loader(request: pytest.FixtureRequest) -> Iterator[Loader]:
    """A loader per backend whose engine registers its pool, as the process-wide one for
    ``direct=True`` arrays does."""
    ld = Loader(backend=request.param, register_buffers=True)
    if request.param == "uring" and may_register(ld.engine.pool_bytes):
        assert "registered_buffers" in ld.engine.features
    yield ld
    ld.close()


def may_register(nbytes: int) -> bool:
    """Whether this process may pin ``nbytes`` for io_uring (root, or RLIMIT_MEMLOCK)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return os.geteuid() == 0 or soft == resource.RLIM_INFINITY or soft >= nbytes


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("zarr-read"))


_written: dict[str, tuple[str, np.ndarray]] = {}


def fixture_array(root: str, spec: Spec) -> str:
    if spec.name not in _written:
        _written[spec.name] = write_fixture(root, spec)
    return _written[spec.name][0]


def check_array(path: str, loader: Loader, direct: bool = False) -> None:
    ref = zarr.open_array(path, mode="r")
    full = ref[...]
    a = lz.open(path, loader=loader, direct=direct)
    assert a.direct is direct
    assert a.shape == ref.shape
    assert a.dtype == full.dtype
    assert a.chunks == ref.chunks
    assert a.shards == ref.shards
    check_equal(a[...], full, f"{path} [...]")
    for key in regions(a.shape):
        want = full[key]
        got = a[key]
        check_equal(np.asarray(got), np.asarray(want), f"{path} {key!r}")
        plain = isinstance(key, tuple) and all(
            isinstance(k, int) or (isinstance(k, slice) and k.step in (None, 1)) for k in key
        )
        if plain and key:
            check_equal(got, np.asarray(ref[key]), f"{path} {key!r} vs zarr-python region")
    # reading into the caller's buffer, including a non-contiguous one
    out = np.empty(full.shape, dtype=full.dtype)
    assert a.read(..., out=out) is out
    check_equal(out, full, f"{path} read(out=)")
    if full.ndim >= 2:
        big = np.zeros((full.shape[0], full.shape[1] * 2, *full.shape[2:]), dtype=full.dtype)
        view = big[:, ::2]
        a.read(..., out=view)
        check_equal(view, full, f"{path} read(out=strided)")
    assert loader.engine.stats()["buffers_out"] == 0


@pytest.mark.parametrize("spec", LAYOUTS, ids=[s.name for s in LAYOUTS])
def test_layouts(spec: Spec, root: str, loader: Loader) -> None:
    check_array(fixture_array(root, spec), loader)


@pytest.mark.parametrize("spec", LAYOUTS, ids=[s.name for s in LAYOUTS])
def test_layouts_direct(
    spec: Spec, root: str, direct_loader: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same reads with O_DIRECT: whole chunk files, shard indexes at either end and
    inner chunks at unaligned offsets (the engine reads an aligned superset), into
    registered buffers (fixed-buffer reads) on io_uring."""
    flags: list[int] = []
    real = read_mod.file_plan

    def recording(*args: Any, **kwargs: Any) -> Any:
        flags.append(kwargs.get("flags", 0))
        return real(*args, **kwargs)

    monkeypatch.setattr(read_mod, "file_plan", recording)
    check_array(fixture_array(root, spec), direct_loader, direct=True)
    assert flags and all(f == lib.LSIO_F_DIRECT for f in flags), flags


def test_direct_and_buffered_arrays_share_the_process_service(root: str) -> None:
    """One IO service per process: arrays opened with and without direct=True (and no
    loader) read through the same service; ``direct`` is a property of their reads."""
    path = fixture_array(root, LAYOUTS[0])
    a = lz.open(path, direct=True)
    b = lz.open(path, direct=True)
    c = lz.open(path)
    assert a.loader is b.loader is c.loader is default_loader() is default_service()
    assert default_loader(direct=True) is default_service()
    check_equal(a[...], zarr.open_array(path, mode="r")[...], "direct, shared service")
    check_equal(c[...], zarr.open_array(path, mode="r")[...], "buffered, shared service")


@pytest.mark.parametrize("env", ["LSIO_DIRECT", "LSIO_REGISTER_BUFFERS"])
def test_process_service_registers_its_pool_when_direct_is_set(env: str) -> None:
    """With the direct (or register_buffers) setting on, the process's service registers
    its pool with io_uring (where this process may pin it): an O_DIRECT read into it is
    a fixed-buffer read.  Without it, the pool is not registered."""
    code = (
        "import os, resource;"
        "from lsio_ray.io.service import default_service;"
        "e = default_service().engine;"
        "soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0];"
        "ok = os.geteuid() == 0 or soft == resource.RLIM_INFINITY or soft >= e.pool_bytes;"
        "print(e.backend, ok, 'registered_buffers' in e.features)"
    )
    for value, want in (("1", True), ("0", False)):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, env: value, "LSIO_BACKEND": "uring"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        backend, allowed, registered = out[0], out[1] == "True", out[2] == "True"
        assert backend == "uring"
        assert registered == (want and allowed), (env, value, out)


def test_direct_setting_and_fallback(
    root: str, loader: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``direct`` defaults to the config setting (env LSIO_DIRECT); a file system that
    refuses O_DIRECT gets buffered reads instead of failing."""
    path = fixture_array(root, LAYOUTS[0])
    assert lz.open(path, loader=loader).direct is False
    with config.set(direct=True):
        assert lz.open(path, loader=loader).direct is True
    monkeypatch.setenv("LSIO_DIRECT", "1")
    assert lz.open(path, loader=loader).direct is True
    assert lz.open(path, loader=loader, direct=False).direct is False
    real_open = os.open

    def no_direct(p: Any, fl: int, *args: Any) -> int:
        if fl & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument", p)
        return real_open(p, fl, *args)

    monkeypatch.setattr(os, "open", no_direct)
    a = lz.open(path, loader=loader, direct=True)
    assert a.direct is False
    check_equal(a[...], zarr.open_array(path, mode="r")[...], "buffered fallback")


@pytest.mark.parametrize("spec", DTYPE_SPECS, ids=[s.name for s in DTYPE_SPECS])
def test_dtypes(spec: Spec, root: str, loader: Loader) -> None:
    check_array(fixture_array(root, spec), loader)


def test_metadata_properties(root: str, loader: Loader) -> None:
    spec = next(s for s in LAYOUTS if s.name == "v3-shard-end")
    path = fixture_array(root, spec)
    zarr.open_array(path, mode="r+").attrs["hello"] = [1, 2]
    a = lz.open(path, loader=loader)
    assert a.shards == (8, 10, 12)
    assert a.chunks == (4, 5, 6)
    assert a.attrs == {"hello": [1, 2]}
    assert a.fill_value == -7
    assert a.zarr_format == 3
    assert a.ndim == 3 and len(a) == 11 and a.size == 11 * 13 * 17
    assert "shards=(8, 10, 12)" in repr(a)
    info = a.info()
    assert info["shard_grid"] == [2, 2, 2] and info["chunks_per_shard"] == [2, 2, 2]
    assert info["stored_bytes"] > 0


def test_missing_everything(tmp_path, loader: Loader) -> None:
    """An array with no chunk at all reads as its fill value (NaN here)."""
    path = str(tmp_path / "empty.zarr")
    zarr.create_array(
        path, shape=(10, 10), chunks=(3, 3), shards=(6, 6), dtype="f4", fill_value=np.nan
    )
    a = lz.open(path, loader=loader)
    assert np.isnan(a[...]).all()
    assert a[2:5, 1].shape == (3,)


def test_zero_dim(tmp_path, loader: Loader) -> None:
    for fmt in (2, 3):
        path = str(tmp_path / f"scalar{fmt}.zarr")
        z = zarr.create_array(path, shape=(), chunks=(), dtype="i4", zarr_format=fmt, fill_value=3)
        a = lz.open(path, loader=loader)
        check_equal(a[...], np.asarray(z[...]), "0-d fill")
        z[...] = 42
        check_equal(a[()], np.asarray(42, dtype="i4"), "0-d")


def test_large_region_many_batches(tmp_path) -> None:
    """More ranges than max_inflight and a pool far smaller than the data: the IO is
    fed in batches and back-pressured by the pool, and the result is still exact."""
    path = str(tmp_path / "many.zarr")
    data = np.arange(64 * 64 * 8, dtype="u2").reshape(8, 64, 64)
    zarr.create_array(path, data=data, chunks=(1, 8, 8))
    with Loader(backend="uring", pool_bytes=64 << 10, max_inflight=50) as ld:
        a = lz.open(path, loader=ld)
        check_equal(a[...], data, "many chunks")
        st = ld.engine.stats()
        assert st["pool_peak"] <= st["pool_bytes"]
        assert st["buffers_out"] == 0
