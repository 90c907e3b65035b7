"""The command line and ``lsio_ray.open`` on URLs: ``lsio-ray info`` / ``rechunk`` /
``bench`` against a real S3-compatible server (moto) and a real HTTP server (nginx),
the CLI run as a subprocess with the store's options in the environment only
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``... as obstore reads them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("obstore")
pytest.importorskip("moto")
zarr = pytest.importorskip("zarr")

from _servers import S3Server, nginx_server, s3_bucket  # noqa: E402

import lsio_ray  # noqa: E402

BUCKET = "lsio-cli"
ROOT = str(Path(__file__).resolve().parent.parent)


def _values() -> np.ndarray:
    return np.arange(16 * 40, dtype=np.float32).reshape(16, 40)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("cli-remote")
    path = str(root / "a.zarr")
    zarr.create_array(path, shape=(16, 40), chunks=(4, 16), dtype="f4")[...] = _values()
    return path


def _tree(local: str) -> list[tuple[str, int]]:
    out = []
    for d, _, names in os.walk(local):
        for n in names:
            full = os.path.join(d, n)
            out.append((os.path.relpath(full, local).replace(os.sep, "/"), os.path.getsize(full)))
    return sorted(out)


@pytest.fixture(scope="module")
def s3(local: str) -> Iterator[S3Server]:
    with s3_bucket(BUCKET) as srv:
        srv.upload_tree(local, BUCKET, "a.zarr")
        yield srv


def _env(s3: S3Server) -> dict[str, str]:
    return s3.environ(PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lsio_ray.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_info_on_s3_counts_the_objects(s3: S3Server, local: str) -> None:
    tree = _tree(local)
    res = _cli(_env(s3), "info", f"s3://{BUCKET}/a.zarr", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["path"] == f"s3://{BUCKET}/a.zarr"
    assert info["stored_files"] == len(tree)
    assert info["stored_bytes"] == sum(n for _, n in tree)
    res = _cli(_env(s3), "info", f"s3://{BUCKET}/a.zarr")
    assert res.returncode == 0, res.stderr
    assert f"stored in {len(tree)} objects" in res.stdout
    res = _cli(_env(s3), "info", f"s3://{BUCKET}/nothing.zarr")
    assert res.returncode == 1
    assert f"s3://{BUCKET}/nothing.zarr" in res.stderr


def test_info_over_http_says_the_size_is_unknown(local: str) -> None:
    with nginx_server(os.path.dirname(local)) as base:
        res = _cli(dict(os.environ, PYTHONPATH=ROOT), "info", f"{base}/a.zarr")
        assert res.returncode == 0, res.stderr
        assert "shape       (16, 40)" in res.stdout
        assert "stored size unknown (an HTTP server lists no objects)" in res.stdout
        arr = lsio_ray.open(f"{base}/a.zarr")
        np.testing.assert_array_equal(arr[...], _values())
        assert "stored size unknown" in repr(arr)
        assert "an HTTP server" in repr(arr)


def test_lsio_ray_open_on_s3(s3: S3Server, local: str) -> None:
    arr = lsio_ray.open(f"s3://{BUCKET}/a.zarr", storage_options=s3.options())
    np.testing.assert_array_equal(arr[2:9, 5:33], _values()[2:9, 5:33])
    text = repr(arr)
    assert f"stored in {len(_tree(local))} objects" in text
    assert "object storage" in text


@pytest.mark.timeout(600)
def test_rechunk_between_s3_and_local_from_the_environment(
    s3: S3Server, local: str, tmp_path: Path
) -> None:
    env = _env(s3)
    dst = f"s3://{BUCKET}/b.zarr"
    res = _cli(env, "rechunk", f"s3://{BUCKET}/a.zarr", dst, "--chunks", "8,8", "--no-progress")
    assert res.returncode == 0, res.stderr
    out = str(tmp_path / "c.zarr")
    res = _cli(env, "rechunk", dst, out, "--chunks", "16,40", "--no-progress")
    assert res.returncode == 0, res.stderr
    got = zarr.open_array(out, mode="r")
    assert got.chunks == (16, 40)
    np.testing.assert_array_equal(got[...], _values())
    # an existing destination needs --overwrite; errors name the URL, before Ray starts
    res = _cli(env, "rechunk", f"s3://{BUCKET}/a.zarr", dst, "--chunks", "8,8")
    assert res.returncode == 2
    assert f"the destination {dst} holds objects already" in res.stderr
    res = _cli(env, "rechunk", f"s3://{BUCKET}/none.zarr", out + "2", "--chunks", "8,8")
    assert res.returncode == 2
    assert f"the source s3://{BUCKET}/none.zarr does not exist" in res.stderr
    res = _cli(env, "rechunk", f"s3://{BUCKET}/a.zarr", "http://127.0.0.1:9/x", "--chunks", "8,8")
    assert res.returncode == 2
    assert "http://127.0.0.1:9/x is on an HTTP server" in res.stderr


def test_bench_on_urls(s3: S3Server) -> None:
    env = _env(s3)
    res = _cli(env, "bench", "crops", f"s3://{BUCKET}/a.zarr", "--shape", "4,8", "--count", "20")
    assert res.returncode == 0, res.stderr
    assert f"20 crops of (4, 8) from s3://{BUCKET}/a.zarr" in res.stdout
    res = _cli(env, "bench", "read", "--dir", f"s3://{BUCKET}/files")
    assert res.returncode == 1
    assert f"s3://{BUCKET}/files: lsio-ray bench read measures the io_uring engine" in res.stderr
    res = _cli(env, "bench", "make-files", "--dir", "ftp://host/files")
    assert res.returncode == 1
    assert "ftp://host/files: unknown URL scheme 'ftp'" in res.stderr
