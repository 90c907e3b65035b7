"""Wrong credentials: real servers answering 403 -- moto with IAM authentication
enforced (``INITIAL_NO_AUTH_ACTION_COUNT``: the setup's requests pass, then a key it
does not know is refused) and nginx denying a location.  Each read fails with one clear
error naming the URL, the byte range and the store's answer, and is never retried (the
requests are counted in the servers' own logs)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("obstore")
pytest.importorskip("moto")

from _servers import S3Server, moto_server, nginx_server

import lsio_ray.zarr as lz
from lsio_ray import Engine, OpGroup, get_ranges
from lsio_ray.io import remote, stores

BUCKET = "lsio-denied"
MIB = 1 << 20
#: ranges far apart: three requests (never coalesced: the gaps are far over the 256 KiB default)
RANGES = [(10, 20), (3 * MIB, 3 * MIB + 100), (6 * MIB, 6 * MIB + 7)]
BLOB = np.random.default_rng(1).integers(0, 256, 7 * MIB, dtype=np.uint8).tobytes()


@pytest.fixture
def denying_s3(tmp_path: Path) -> Iterator[tuple[S3Server, Path]]:
    log = tmp_path / "moto.log"
    # two requests unauthenticated (the bucket, the object), then IAM is enforced
    with moto_server(env={"INITIAL_NO_AUTH_ACTION_COUNT": "2"}, request_log=str(log)) as srv:
        cl = srv.client()
        cl.create_bucket(Bucket=BUCKET)
        cl.put_object(Bucket=BUCKET, Key="data/blob", Body=BLOB)
        yield srv, log
    stores._options.clear()
    stores._stores.clear()


def _requests(log: Path, status: int) -> list[str]:
    """The requests the server logged with ``status`` (werkzeug's request lines)."""
    lines = log.read_text(errors="replace").splitlines()
    return [ln for ln in lines if re.search(rf'HTTP/1\.1\S*" {status} ', ln)]


def _read(ops: list[Any]) -> list[Any]:
    with Engine() as eng:
        return eng.submit(OpGroup(ops), errors="return").collect()


def _check_errors(chunks: list[Any], where: str) -> None:
    assert len(chunks) == len(RANGES)
    for c, (a, b) in zip(chunks, RANGES, strict=True):
        assert isinstance(c.error, PermissionError), c.error
        text = str(c.error)
        assert where in text  # the URL
        assert f"{a}..{b}" in text  # the byte range
        assert "403" in text  # the store's answer


@pytest.mark.timeout(120)
def test_s3_wrong_key_is_one_clear_error_per_range_never_retried(
    denying_s3: tuple[S3Server, Path],
) -> None:
    srv, log = denying_s3
    url = f"s3://{BUCKET}/data/blob"
    opts = srv.options()
    remote.configure(f"s3://{BUCKET}", **{**opts, "access_key_id": "AKIAWRONGKEY000000"})
    chunks = _read([get_ranges(url, RANGES)])
    _check_errors(chunks, url)
    assert "InvalidAccessKeyId" in str(chunks[0].error)  # what the store said, kept
    denied = _requests(log, 403)
    # one request per range (retries are for throttling, 5xx and timeouts, never 403)
    assert len(denied) == len(RANGES), denied
    # opening a Zarr array there: one error naming the URL and the answer, no retries
    with pytest.raises(PermissionError, match=rf"403 Forbidden.*s3://{BUCKET}/x\.zarr/zarr\.json"):
        lz.open(f"s3://{BUCKET}/x.zarr")
    assert len(_requests(log, 403)) - len(denied) <= 3  # zarr.json (and v2's .zarray)


@pytest.mark.timeout(120)
def test_http_forbidden_location_is_one_clear_error_never_retried(tmp_path: Path) -> None:
    root = tmp_path / "www"
    (root / "secret").mkdir(parents=True)
    (root / "secret" / "blob").write_bytes(BLOB)
    (root / "open").mkdir()
    (root / "open" / "blob").write_bytes(BLOB)
    log = tmp_path / "access.log"
    with nginx_server(str(root), str(log), "location /secret/ { deny all; }") as base:
        ok = _read([get_ranges(f"{base}/open/blob", RANGES)])
        for c, (a, b) in zip(ok, RANGES, strict=True):
            assert c.error is None and bytes(c.data) == BLOB[a:b]
        url = f"{base}/secret/blob"
        _check_errors(_read([get_ranges(url, RANGES)]), url)
    statuses = [ln.split()[0] for ln in log.read_text().splitlines()]
    assert statuses.count("403") == len(RANGES), statuses  # no retries
    assert statuses.count("206") >= 1
