"""Converting a whole Zarr group whose source is on object storage (a real S3-compatible
server, moto, a process on 127.0.0.1) on a 2-node Ray cluster: S3 -> local directory and
S3 -> S3, v3 with consolidated metadata and v2 without, nested groups with arrays of
different dtypes and chunks; attributes and hierarchy kept, consolidated metadata
written when the source had it (by zarr-python's own functions), every array equal to
zarr-python's read of the source; an interrupted S3 -> S3 run resumed to the same
objects; the plan's checks on a URL (hostile member names refused, a group over HTTP
without consolidated metadata said to be unlistable); and the command line refusing a
rule that does not fit an array of a group on S3, naming it, before Ray starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("obstore")
pytest.importorskip("moto")
ray = pytest.importorskip("ray")
zarr = pytest.importorskip("zarr")

from _ray_helpers import LocalCluster, local_cluster  # noqa: E402
from _servers import KEY, S3Server, nginx_server, s3_bucket  # noqa: E402
from test_rechunk_group import _array, _assert_consolidated_as_zarr_writes_it, _data, _files  # noqa: E402

import lsio_ray.zarr as lz  # noqa: E402
from lsio_ray.io import objects  # noqa: E402
from lsio_ray.ray import Coordinator  # noqa: E402
from lsio_ray.ray.rechunk import GroupRechunkResult, rechunk  # noqa: E402
from lsio_ray.ray.rechunk.group_plan import plan_group, source_is_group  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:Consolidated metadata is currently"),
    pytest.mark.timeout(300),
]

BUCKET = "lsio-group-src"
ROOT = str(Path(__file__).resolve().parent.parent)
#: (Zarr format, consolidated metadata) of the source groups
SOURCES = [(3, True), (2, False)]
RULES: dict[str, Any] = dict(chunks={"temperature": (4, 16, 16), "sub/mask": (30, 14)})


def _name(fmt: int, cons: bool) -> str:
    return f"g{fmt}{'c' if cons else ''}.zarr"


def _build(path: Path, fmt: int, cons: bool) -> None:
    """A nested group written by zarr-python:

    /                 attrs {"title": "t", "n": 3}
    ├── temperature   float32 (8, 30, 28) chunks (2, 8, 8), attrs {"units": "K"}
    ├── nothing/      an empty group
    └── sub/          attrs {"kind": "masks"}
        ├── mask      uint8 (30, 28) chunks (16, 7), attrs {"labels": [0, 1]}
        └── deeper/   attrs {"empty": True}
    """
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt, attributes={"title": "t", "n": 3})
    _array(root, "temperature", _data((8, 30, 28), "float32", 1), {"units": "K"}, chunks=(2, 8, 8))
    sub = root.create_group("sub", attributes={"kind": "masks"})
    _array(sub, "mask", _data((30, 28), "uint8", 2), {"labels": [0, 1]}, chunks=(16, 7))
    sub.create_group("deeper", attributes={"empty": True})
    root.create_group("nothing")
    if cons:
        zarr.consolidate_metadata(str(path), zarr_format=fmt)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The source groups, written locally; a copy of the v3 one whose consolidated
    metadata names a member outside it."""
    root = tmp_path_factory.mktemp("remote-group-src")
    for fmt, cons in SOURCES:
        _build(root / _name(fmt, cons), fmt, cons)
    hostile = root / "hostile.zarr"
    shutil.copytree(root / "g3c.zarr", hostile)
    doc = json.loads((hostile / "zarr.json").read_text())
    meta = doc["consolidated_metadata"]["metadata"]
    meta["../outside"] = meta["temperature"]
    (hostile / "zarr.json").write_text(json.dumps(doc))
    return root


@pytest.fixture(scope="module")
def s3(local: Path) -> Iterator[S3Server]:
    with s3_bucket(BUCKET, configure=True) as srv:
        for name in os.listdir(local):
            srv.upload_tree(str(local / name), BUCKET, f"src/{name}")
        yield srv


@pytest.fixture(scope="module")
def lc(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("ray-rechunk-group-remote"), workers=1) as c:
        yield c


@pytest.fixture(scope="module")
def coord(lc: LocalCluster) -> Coordinator:
    return Coordinator(batch_bytes=64 << 10)


def _store(s3: S3Server) -> Any:
    """zarr-python's own store on the bucket (an ObjectStore over obstore's S3Store)."""
    from obstore.store import S3Store

    s3store = S3Store(
        BUCKET,
        endpoint=s3.endpoint,
        access_key_id=KEY["access_key_id"],
        secret_access_key=KEY["secret_access_key"],
        region=KEY["region"],
        client_options={"allow_http": True},
    )
    return zarr.storage.ObjectStore(s3store, read_only=True)


def _s3_files(u: str) -> dict[str, bytes | None]:
    return {k: objects.read_object(f"{u}/{k}") for k, _ in objects.list_prefix(u)}


def _assert_same_as_source(src: Any, out: Any, cons: bool) -> dict[str, Any]:
    """The group ``out`` (zarr-python's) holds what the source group ``src`` (zarr-python's
    read of it on S3) holds: groups, arrays, attributes, shapes, dtypes and values; read
    through its consolidated metadata when the source had some.  Returns its arrays."""
    assert (out.metadata.consolidated_metadata is not None) is cons
    assert dict(out.attrs) == dict(src.attrs) == {"title": "t", "n": 3}
    ms = dict(src.members(max_depth=None))
    mo = dict(out.members(max_depth=None))
    assert sorted(mo) == sorted(ms) == ["nothing", "sub", "sub/deeper", "sub/mask", "temperature"]
    for path, node in ms.items():
        other = mo[path]
        assert type(other) is type(node), path
        assert dict(other.attrs) == dict(node.attrs), path
        if isinstance(node, zarr.Array):
            assert (other.shape, other.dtype) == (node.shape, node.dtype), path
            np.testing.assert_array_equal(other[...], node[...], err_msg=path)
    arrays = {p: n for p, n in mo.items() if isinstance(n, zarr.Array)}
    assert arrays["temperature"].chunks == (4, 16, 16)
    assert arrays["sub/mask"].chunks == (30, 14)
    assert (arrays["temperature"].dtype, arrays["sub/mask"].dtype) == (np.float32, np.uint8)
    return arrays


@pytest.mark.parametrize(("fmt", "cons"), SOURCES, ids=["v3-consolidated", "v2-listed"])
def test_s3_group_to_local_and_to_s3(
    s3: S3Server, lc: LocalCluster, coord: Coordinator, fmt: int, cons: bool
) -> None:
    name = _name(fmt, cons)
    u_src = f"s3://{BUCKET}/src/{name}"
    assert source_is_group(u_src) and not source_is_group(f"{u_src}/temperature")
    src = zarr.open_group(_store(s3), path=f"src/{name}", mode="r", zarr_format=fmt)

    # S3 -> a local directory, with one progress count over the whole group
    out = lc.shared / f"from-s3-{name}"
    seen: list[tuple[int, int]] = []
    res = rechunk(
        u_src,
        out,
        coordinator=coord,
        block_bytes=8_000,
        progress=lambda d, t: seen.append((d, t)),
        **RULES,
    )
    assert isinstance(res, GroupRechunkResult)
    assert res.src == u_src and sorted(res.arrays) == ["sub/mask", "temperature"]
    assert res.arrays_skipped == [] and res.groups == 4 and res.consolidated is cons
    assert res.blocks > 2 and res.bytes_read > 0 and seen[-1] == (res.blocks, res.blocks)
    use = None if cons else False
    g = zarr.open_group(str(out), mode="r", zarr_format=fmt, use_consolidated=use)
    _assert_same_as_source(src, g, cons)
    assert not list(out.rglob(".lsio-rechunk"))
    if cons:
        _assert_consolidated_as_zarr_writes_it(out, lc.shared, fmt)
    else:
        assert not (out / ".zmetadata").exists()  # v2, as its source
        assert (out / "nothing" / ".zgroup").is_file()

    # S3 -> S3: the very objects of the S3 -> local conversion, read back by zarr-python
    u = f"s3://{BUCKET}/out/{name}"
    res = rechunk(u_src, u, coordinator=coord, block_bytes=8_000, **RULES)
    assert isinstance(res, GroupRechunkResult) and res.dst == u
    assert _s3_files(u) == _files(out)
    g = zarr.open_group(_store(s3), path=f"out/{name}", mode="r", zarr_format=fmt)
    _assert_same_as_source(src, g, cons)
    # lsio_ray's own reader sees the same group on S3
    ours = lz.open_group(u)
    assert ours.consolidated is cons and ours.attrs == {"title": "t", "n": 3}
    np.testing.assert_array_equal(ours["sub/mask"][...], src["sub/mask"][...])


class _Stop(Exception):
    pass


def test_s3_to_s3_resumed_after_an_interruption(
    s3: S3Server, lc: LocalCluster, coord: Coordinator
) -> None:
    """Stopped in the middle of its second array, the job run again skips the first,
    resumes the second and writes the same objects as an uninterrupted run."""
    u_src = f"s3://{BUCKET}/src/g3c.zarr"
    kw: dict[str, Any] = dict(coordinator=coord, block_bytes=8_000, **RULES)
    whole = rechunk(u_src, f"s3://{BUCKET}/resume/whole.zarr", **kw)
    assert isinstance(whole, GroupRechunkResult)
    first = whole.arrays["sub/mask"].blocks  # the arrays run in path order

    def stop_in_the_second_array(done: int, total: int) -> None:
        if done > first + 1:
            raise _Stop

    u = f"s3://{BUCKET}/resume/out.zarr"
    with pytest.raises(_Stop):
        rechunk(u_src, u, progress=stop_in_the_second_array, **kw)
    names = [k for k, _ in objects.list_prefix(u)]
    assert ".lsio-rechunk/done" in names and "sub/mask/zarr.json" in names
    assert "zarr.json" not in names and "temperature/zarr.json" not in names
    res = rechunk(u_src, u, **kw)
    assert isinstance(res, GroupRechunkResult)
    assert res.arrays_skipped == ["sub/mask"] and sorted(res.arrays) == ["temperature"]
    assert res.blocks_skipped >= 1
    assert _s3_files(u) == _s3_files(f"s3://{BUCKET}/resume/whole.zarr")


def test_plan_checks_member_names_on_a_url(s3: S3Server, local: Path) -> None:
    """Pure planning (no Ray): a hostile name in the consolidated metadata is refused,
    and the arrays' metadata comes from their own objects."""
    kw: dict[str, Any] = dict(
        chunks=(4, 16, 16), shards=None, codec=None, zarr_format=None, block_bytes=8_000
    )
    with pytest.raises(lz.GroupError, match="refused") as err:
        plan_group(f"s3://{BUCKET}/src/hostile.zarr", str(local / "x.zarr"), **kw)
    assert "'../outside'" in str(err.value)
    u = f"s3://{BUCKET}/src/g2.zarr"
    gplan = plan_group(u, str(local / "y.zarr"), **{**kw, "chunks": RULES["chunks"]})
    assert [(a.path, a.src) for a in gplan.arrays] == [
        ("sub/mask", f"{u}/sub/mask"),
        ("temperature", f"{u}/temperature"),
    ]
    assert gplan.zarr_format == 2 and not gplan.consolidated
    assert gplan.groups == {
        "": {"title": "t", "n": 3},
        "nothing": {},
        "sub": {"kind": "masks"},
        "sub/deeper": {"empty": True},
    }
    assert not (local / "x.zarr").exists() and not (local / "y.zarr").exists()


def test_http_group_needs_consolidated_metadata(local: Path, tmp_path: Path) -> None:
    """Over HTTP (nginx), which lists nothing: a group with consolidated metadata is
    planned from it; one without is refused, saying why, before Ray starts."""
    with nginx_server(str(local)) as base:
        gplan = plan_group(
            f"{base}/g3c.zarr",
            str(tmp_path / "a.zarr"),
            chunks=RULES["chunks"],
            shards=None,
            codec=None,
            zarr_format=None,
            block_bytes=8_000,
        )
        assert [a.path for a in gplan.arrays] == ["sub/mask", "temperature"]
        assert gplan.consolidated
        with pytest.raises(lz.GroupError, match="an HTTP server lists no objects") as err:
            rechunk(f"{base}/g2.zarr", tmp_path / "b.zarr", chunks=(4, 16, 16))
        assert f"{base}/g2.zarr" in str(err.value)
    assert not (tmp_path / "b.zarr").exists()


def test_cli_refuses_a_bad_rule_before_ray(s3: S3Server, tmp_path: Path) -> None:
    """``lsio-ray rechunk s3://... DST`` with a rule that does not fit one array of the
    group: exit status 2 naming the array and the rule, before Ray is imported (the
    credentials from the environment, as a user's shell gives them)."""
    u_src = f"s3://{BUCKET}/src/g3c.zarr"
    dst = tmp_path / "out.zarr"
    env = s3.environ(PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # the command run with any import of Ray failing: it must not need it to refuse
    script = (
        "import sys\n"
        "class Trip:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ray' or name.startswith('ray.'):\n"
        "            raise ModuleNotFoundError('test: importing ray', name=name)\n"
        "sys.meta_path.insert(0, Trip())\n"
        "from lsio_ray.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    cases = (
        (["--chunks", "2,8,8"], ["'sub/mask'", "2 dimensions", "--chunks sub/mask=SHAPE"]),
        (["--chunks", "sub/x=8,8"], ["'sub/x'", "its arrays: sub/mask, temperature"]),
    )
    for rule, said in cases:
        proc = subprocess.run(
            [sys.executable, "-c", script, "rechunk", u_src, str(dst), *rule, "--no-progress"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            check=False,
        )
        assert proc.returncode == 2, proc.stderr
        assert u_src in proc.stderr and all(s in proc.stderr for s in said), proc.stderr
        assert "Traceback" not in proc.stderr and "Ray:" not in proc.stderr, proc.stderr
    assert not dst.exists()
