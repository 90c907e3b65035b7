"""Zarr arrays on object storage: every layout fixture (v2, v3, sharded, every codec)
uploaded to a real S3-compatible server (moto, a process on 127.0.0.1) and read through
lsio_ray -- equal to zarr-python's read of the same local files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("obstore")
pytest.importorskip("moto")
zarr = pytest.importorskip("zarr")

from _servers import S3Server, s3_bucket  # noqa: E402
from _zarr_helpers import LAYOUTS, check_equal, regions, write_fixture  # noqa: E402

import lsio_ray.zarr as lz  # noqa: E402
from lsio_ray.io import remote, stores  # noqa: E402

BUCKET = "lsio-zarr"


def upload(s3: S3Server, local: str, prefix: str) -> str:
    """Upload the tree ``local`` under ``s3://BUCKET/prefix``; returns its URL."""
    return s3.upload_tree(local, BUCKET, prefix)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_bucket(BUCKET, configure=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def uploaded(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    root = str(tmp_path_factory.mktemp("zarr-remote"))
    out = {}
    for spec in LAYOUTS:
        path, _ = write_fixture(root, spec)
        out[spec.name] = (path, upload(s3, path, f"arrays/{spec.name}.zarr"))
    return out


@pytest.mark.parametrize("spec", LAYOUTS, ids=[s.name for s in LAYOUTS])
def test_every_layout_reads_equal_to_zarr_python(
    spec: object, uploaded: dict[str, tuple[str, str]]
) -> None:
    name = spec.name  # type: ignore[attr-defined]
    local, url = uploaded[name]
    want = zarr.open_array(local, mode="r")[...]
    arr = lz.open(url)
    assert arr.shape == want.shape and arr.dtype == want.dtype
    for key in regions(want.shape):
        check_equal(arr[key], want[key], f"{name} {key!r} over S3")


def test_random_crops_over_s3_equal_local(uploaded: dict[str, tuple[str, str]]) -> None:
    name = next(s.name for s in LAYOUTS if len(s.shape) == 3)
    local, url = uploaded[name]
    a, b = lz.open(local), lz.open(url)
    shape = tuple(max(1, s // 2) for s in a.shape)
    got_l = [c.copy() for c in a.random_crops(shape, 12, seed=4)]
    got_r = [c.copy() for c in b.random_crops(shape, 12, seed=4)]
    for x, y in zip(got_l, got_r, strict=True):
        np.testing.assert_array_equal(x, y)


def test_missing_array_and_missing_chunks(s3: S3Server, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"s3://{BUCKET}/nothing.zarr"):
        lz.open(f"s3://{BUCKET}/nothing.zarr")
    # an array whose chunks were never written reads as its fill value
    path = str(tmp_path / "empty.zarr")
    zarr.create_array(path, shape=(4, 8), chunks=(2, 4), dtype="i2", fill_value=7)
    url = upload(s3, path, "empty.zarr")
    np.testing.assert_array_equal(lz.open(url)[...], np.full((4, 8), 7, "i2"))


def test_arrays_over_http_equal_zarr_python(
    uploaded: dict[str, tuple[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The same fixtures served read-only by nginx (byte ranges, suffix ranges for shard
    indexes at the end, 404 for missing chunks)."""
    from _servers import nginx_server

    root = os.path.dirname(next(iter(uploaded.values()))[0])
    names = [
        s.name
        for s in LAYOUTS
        if s.name in ("v3-raw", "v3-shard-end", "v3-blosc-lz4", "v2-blosc-lz4-shuffle")
    ] or [s.name for s in LAYOUTS[:3]]
    with nginx_server(root) as base:
        for name in names:
            local = uploaded[name][0]
            want = zarr.open_array(local, mode="r")[...]
            arr = lz.open(f"{base}/{os.path.basename(local)}")
            for key in regions(want.shape)[:6]:
                check_equal(arr[key], want[key], f"{name} {key!r} over HTTP")
        with pytest.raises(FileNotFoundError, match=f"{base}/nothing.zarr"):
            lz.open(f"{base}/nothing.zarr")


def test_storage_options_as_zarr_users_pass_them(
    s3: S3Server, uploaded: dict[str, tuple[str, str]]
) -> None:
    """``storage_options=`` configures the bucket the way zarr-python and fsspec users
    pass options; for a local path they are refused."""
    local, url = uploaded["v3-raw"]
    stores._options.clear()
    stores._stores.clear()
    try:
        arr = lz.open(url, storage_options=s3.options())
        np.testing.assert_array_equal(arr[...], zarr.open_array(local, mode="r")[...])
        with pytest.raises(ValueError, match="storage_options"):
            lz.open(local, storage_options={"region": "x"})
    finally:
        remote.configure(f"s3://{BUCKET}", **s3.options())
