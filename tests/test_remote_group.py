"""Zarr groups on object storage (a real S3-compatible server, moto) and over HTTP (nginx):
hierarchies written locally by zarr-python (v2 and v3, nested, with and without
consolidated metadata), uploaded, and opened by URL must give the same tree, keys,
attributes and array values as the local group and zarr-python; HTTP without
consolidated metadata behaves as documented (opens, members by name, no listing);
hostile member names are refused; a missing group is an error naming the URL; the CLI
prints the tree of a group on S3 from the environment's credentials."""

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
zarr = pytest.importorskip("zarr")

from _servers import S3Server, nginx_server, s3_bucket  # noqa: E402
from test_zarr_group import build  # noqa: E402

import lsio_ray  # noqa: E402
import lsio_ray.zarr as lz  # noqa: E402
from lsio_ray.interactive import InteractiveArray  # noqa: E402
from lsio_ray.io.url import UnsupportedURLError  # noqa: E402

pytestmark = pytest.mark.timeout(300)

BUCKET = "lsio-groups"
OTHER = "lsio-groups-opts"  # a bucket whose options come only with the call
ROOT = str(Path(__file__).resolve().parent.parent)
TREES = [(fmt, cons) for fmt in (2, 3) for cons in (False, True)]


def _name(fmt: int, cons: bool) -> str:
    return f"g{fmt}{'c' if cons else ''}.zarr"


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory of the four hierarchies, a hostile one and an image+label pair."""
    root = tmp_path_factory.mktemp("remote-groups")
    for fmt, cons in TREES:
        build(root / _name(fmt, cons), fmt, consolidated=cons)
    # a v3 group whose consolidated metadata names a member outside it
    hostile = root / "hostile.zarr"
    shutil.copytree(root / "g3c.zarr", hostile)
    doc = json.loads((hostile / "zarr.json").read_text())
    meta = doc["consolidated_metadata"]["metadata"]
    meta["../outside"] = meta["temperature"]
    (hostile / "zarr.json").write_text(json.dumps(doc))
    # the same in v2's .zmetadata
    hostile2 = root / "hostile2.zarr"
    shutil.copytree(root / "g2c.zarr", hostile2)
    doc = json.loads((hostile2 / ".zmetadata").read_text())
    doc["metadata"]["../outside/.zarray"] = doc["metadata"]["temperature/.zarray"]
    (hostile2 / ".zmetadata").write_text(json.dumps(doc))
    # an image and its label on one grid
    rng = np.random.default_rng(7)
    pair = zarr.open_group(str(root / "pair.zarr"), mode="w", zarr_format=3)
    pair.create_array("image", shape=(2, 20, 24), chunks=(1, 8, 8), dtype="f4")[...] = rng.random(
        (2, 20, 24), dtype=np.float32
    )
    pair.create_array("label", shape=(20, 24), chunks=(5, 6), dtype="u1")[...] = rng.integers(
        0, 9, (20, 24), dtype=np.uint8
    )
    return str(root)


@pytest.fixture(scope="module")
def s3(local: str) -> Iterator[S3Server]:
    with s3_bucket(BUCKET, configure=True) as srv:
        srv.client().create_bucket(Bucket=OTHER)
        for name in os.listdir(local):
            srv.upload_tree(os.path.join(local, name), BUCKET, name)
        srv.upload_tree(os.path.join(local, "g3c.zarr"), OTHER, "data/g3c.zarr")
        srv.upload_tree(os.path.join(local, "pair.zarr"), OTHER, "data/pair.zarr")
        yield srv


@pytest.fixture(scope="module")
def http(local: str) -> Iterator[str]:
    with nginx_server(local) as base:
        yield base


def _check_same(remote: lz.Group, here: lz.Group, local_path: str) -> None:
    """``remote`` has ``here``'s tree, keys, attributes and members, and every array reads
    as zarr-python reads the local copy."""
    assert remote.zarr_format == here.zarr_format
    assert remote.consolidated is here.consolidated
    assert remote.attrs == here.attrs == {"title": "test", "n": 3}
    assert list(remote.keys()) == list(here.keys()) and len(remote) == len(here) == 5
    ours = dict(remote.members(max_depth=None))
    theirs = dict(here.members(max_depth=None))
    assert sorted(ours) == sorted(theirs)
    ref = zarr.open_group(local_path, mode="r")
    arrays = 0
    for name, node in ours.items():
        assert type(node) is type(theirs[name]), name
        if isinstance(node, lz.Group):
            assert node.attrs == theirs[name].attrs
            assert node.path == f"{remote.path}/{name}"
            continue
        arrays += 1
        assert node.path == f"{remote.path}/{name}"
        assert node.shape == theirs[name].shape and node.dtype == theirs[name].dtype
        assert node.attrs == theirs[name].attrs
        np.testing.assert_array_equal(node[...], ref[name][...])
    assert arrays == 6
    # the tree and the summary: the same but for the group's path
    info, want = remote.info(), here.info()
    assert info["path"] == remote.path and want["path"] == here.path
    info.pop("path")
    want.pop("path")
    if remote.path.startswith("http"):  # no listing: no stored sizes
        for m in want["members"]:
            if m["node_type"] == "array":
                m.update(stored_bytes=None, stored_files=None, stored_complete=False)
    assert info == want
    if not remote.path.startswith("http"):
        assert remote.tree().replace(remote.path, "X") == here.tree().replace(here.path, "X")


@pytest.mark.parametrize(("fmt", "cons"), TREES, ids=[_name(*t) for t in TREES])
def test_group_on_s3_equals_the_local_group(s3: S3Server, local: str, fmt: int, cons: bool) -> None:
    del s3
    name = _name(fmt, cons)
    url = f"s3://{BUCKET}/{name}"
    g = lz.open_group(url)
    assert g.path == url and g.listable
    _check_same(g, lz.open_group(os.path.join(local, name)), os.path.join(local, name))
    # nested access by path, and lz.open / lsio_ray.open find the group
    np.testing.assert_array_equal(
        g["sub/deeper/y"][1:6], zarr.open_array(os.path.join(local, name, "sub/deeper/y"))[1:6]
    )
    assert "sub/x" in g and "sub/nope" not in g and "nope" not in g
    with pytest.raises(KeyError, match="nope"):
        g["sub/nope"]
    opened = lz.open(url + "/")
    assert isinstance(opened, lz.Group) and opened.path == url
    wrapped = lsio_ray.open(url)
    assert isinstance(wrapped, lz.Group)
    assert isinstance(wrapped["temperature"], InteractiveArray)
    assert lz.open_group(url, use_consolidated=False).consolidated is False
    # a member array alone, opened by URL, is the same array
    np.testing.assert_array_equal(lz.open(f"{url}/sub/x")[...], g["sub/x"][...])


def test_storage_options_open_the_group(s3: S3Server, local: str) -> None:
    url = f"s3://{OTHER}/data/g3c.zarr"
    g = lz.open_group(url, storage_options=s3.options())
    ref = zarr.open_group(os.path.join(local, "g3c.zarr"), mode="r")
    np.testing.assert_array_equal(g["temperature"][...], ref["temperature"][...])
    np.testing.assert_array_equal(g["sub/x"][...], ref["sub/x"][...])
    assert isinstance(lz.open(url, storage_options=s3.options()), lz.Group)
    with pytest.raises(ValueError, match="storage_options are for object storage"):
        lz.open_group(os.path.join(local, "g3c.zarr"), storage_options={"region": "x"})


@pytest.mark.parametrize("fmt", [2, 3])
def test_http_with_consolidated_metadata(http: str, local: str, fmt: int) -> None:
    name = _name(fmt, True)
    g = lz.open(f"{http}/{name}")
    assert isinstance(g, lz.Group) and g.listable and g.consolidated
    _check_same(g, lz.open_group(os.path.join(local, name)), os.path.join(local, name))


@pytest.mark.parametrize("fmt", [2, 3])
def test_http_without_consolidated_metadata(http: str, local: str, fmt: int) -> None:
    name = _name(fmt, False)
    url = f"{http}/{name}"
    g = lz.open(url)
    assert isinstance(g, lz.Group)
    assert g.zarr_format == fmt and not g.consolidated and not g.listable
    assert g.attrs == {"title": "test", "n": 3}
    assert repr(g) == (
        f"<lsio_ray.zarr.Group {url!r} v{fmt}, members not listed (HTTP, no consolidated metadata)>"
    )
    # members named explicitly open from their own documents
    ref = zarr.open_group(os.path.join(local, name), mode="r")
    for member in ("temperature", "sub/x", "sub/deeper/y"):
        np.testing.assert_array_equal(g[member][...], ref[member][...])
    assert g["sub"].attrs == {"level": 1}
    assert "sub/x" in g and "nope" not in g and "sub/nope" not in g
    with pytest.raises(KeyError, match="nope"):
        g["nope"]
    # listing says why it cannot
    for listing in (g.keys, lambda: len(g), g.info, g.tree, lambda: g["sub"].keys()):
        with pytest.raises(lz.GroupError, match="an HTTP server lists no objects") as err:
            listing()
        assert url in str(err.value)
    with pytest.raises(lz.GroupError, match="use_consolidated=True"):
        lz.open_group(url, use_consolidated=True)


@pytest.mark.parametrize("where", ["s3", "http"])
@pytest.mark.parametrize("name", ["hostile.zarr", "hostile2.zarr"])
def test_hostile_consolidated_member_is_refused(
    s3: S3Server, http: str, where: str, name: str
) -> None:
    del s3
    url = f"s3://{BUCKET}/{name}" if where == "s3" else f"{http}/{name}"
    with pytest.raises(lz.GroupError, match="refused") as err:
        lz.open_group(url)
    assert url in str(err.value) and "'../outside'" in str(err.value)
    # names the user gives are checked too
    g = lz.open_group(url.replace(name, "g3c.zarr" if name == "hostile.zarr" else "g2c.zarr"))
    for bad in ("../g3.zarr", "sub/../../g3.zarr", "/abs", "sub//x", "sub/./x"):
        with pytest.raises(lz.GroupError, match="refused"):
            g[bad]
        with pytest.raises(lz.GroupError, match="refused"):
            bad in g  # noqa: B015


def test_a_hostile_name_in_the_store_listing_is_refused(s3: S3Server, local: str) -> None:
    """Object keys may hold a '..' segment (S3 keeps them as written): a prefix named
    '..' listed under the group is refused, never read as a member (object_store refuses
    the listing itself, an OSError naming the URL; :func:`group_access.child` would
    refuse the name next)."""
    src = os.path.join(local, "g3.zarr", "temperature", "zarr.json")
    s3.client().upload_file(src, BUCKET, "sneaky.zarr/../g3.zarr/zarr.json")
    s3.client().upload_file(
        os.path.join(local, "g3.zarr", "zarr.json"), BUCKET, "sneaky.zarr/zarr.json"
    )
    g = lz.open_group(f"s3://{BUCKET}/sneaky.zarr")
    with pytest.raises(OSError, match=r"\.\.") as err:
        list(g.keys())
    assert f"s3://{BUCKET}/sneaky.zarr" in str(err.value)
    assert g.attrs == {"title": "test", "n": 3}  # the group itself still opens


def test_missing_group_names_the_url(s3: S3Server, http: str) -> None:
    del s3
    for url in (f"s3://{BUCKET}/nothing.zarr", f"{http}/nothing.zarr"):
        with pytest.raises(FileNotFoundError, match="no Zarr group here") as err:
            lz.open_group(url)
        assert url in str(err.value)
        with pytest.raises(FileNotFoundError, match="no Zarr array or group here") as err:
            lz.open(url)
        assert url in str(err.value)
    with pytest.raises(lz.GroupError, match="is a Zarr array, not a group"):
        lz.open_group(f"s3://{BUCKET}/g3.zarr/temperature")
    with pytest.raises(UnsupportedURLError, match="ftp"):
        lz.open_group("ftp://host/g.zarr")


def test_aligned_crops_from_a_group_on_s3(s3: S3Server, local: str) -> None:
    del s3
    pair = lz.aligned(f"s3://{BUCKET}/pair.zarr", ["image", "label"])
    assert pair.root == f"s3://{BUCKET}/pair.zarr"
    ref = zarr.open_group(os.path.join(local, "pair.zarr"), mode="r")
    image, label = ref["image"][...], ref["label"][...]
    n = 0
    for s in pair.random_crops((8, 6), 12, seed=1):
        y, x = (int(v) for v in s["lo"])
        np.testing.assert_array_equal(s["image"], image[:, y : y + 8, x : x + 6])
        np.testing.assert_array_equal(s["label"], label[y : y + 8, x : x + 6])
        n += 1
    assert n == 12


@pytest.mark.timeout(600)
def test_ray_data_crops_from_a_group_on_s3(
    s3: S3Server, local: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``read_zarr_crops(group_url, arrays=[...])`` on a Ray cluster, the store's options
    given with the call only (shipped to the read tasks)."""
    ray = pytest.importorskip("ray")
    from _ray_helpers import local_cluster

    import lsio_ray.data as ld
    from lsio_ray.io import stores

    url = f"s3://{OTHER}/data/pair.zarr"
    stores._options.pop(f"s3://{OTHER}", None)  # the options come with the call only
    stores._stores.clear()
    ref = zarr.open_group(os.path.join(local, "pair.zarr"), mode="r")
    image, label = ref["image"][...], ref["label"][...]
    with local_cluster(tmp_path_factory.mktemp("cluster"), workers=1):
        ds = ld.read_zarr_crops(
            url,
            (8, 6),
            20,
            arrays=["image", "label"],
            seed=2,
            storage_options=s3.options(),
            include_paths=True,
            override_num_blocks=2,
        )
        rows = ds.take_all()
    assert ray.is_initialized() is False
    assert sorted(int(r["index"]) for r in rows) == list(range(20))
    assert {r["path"] for r in rows} == {url}
    for r in rows:
        y, x = (int(v) for v in r["lo"])
        np.testing.assert_array_equal(r["image"], image[:, y : y + 8, x : x + 6])
        np.testing.assert_array_equal(r["label"], label[y : y + 8, x : x + 6])


def _env(s3: S3Server) -> dict[str, str]:
    return s3.environ(PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lsio_ray.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_cli_info_prints_the_tree_of_a_group_on_s3(s3: S3Server, local: str) -> None:
    url = f"s3://{BUCKET}/g2c.zarr"
    env = _env(s3)
    res = _cli(env, "info", url)
    assert res.returncode == 0, res.stderr
    here = lz.open_group(os.path.join(local, "g2c.zarr"))
    assert res.stdout.strip() == here.tree().replace(here.path, url).strip()
    assert "Zarr v2 group" in res.stdout and "deeper/" in res.stdout
    res = _cli(env, "info", url, "--json")
    assert res.returncode == 0, res.stderr
    info: dict[str, Any] = json.loads(res.stdout)
    assert info["path"] == url and info["consolidated"] is True
    assert info["members"] == json.loads(json.dumps(here.info()["members"], default=str))
    res = _cli(env, "info", f"s3://{BUCKET}/nothing.zarr")
    assert res.returncode == 1
    assert f"s3://{BUCKET}/nothing.zarr" in res.stderr


def test_cli_info_over_http(http: str) -> None:
    """With consolidated metadata the tree (sizes unknown: no listing); without, an
    error saying why the members cannot be listed."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = _cli(env, "info", f"{http}/g3c.zarr")
    assert res.returncode == 0, res.stderr
    assert "Zarr v3 group" in res.stdout and "temperature" in res.stdout
    assert "(10, 13)" in res.stdout
    res = _cli(env, "info", f"{http}/g3.zarr")
    assert res.returncode == 1
    assert f"{http}/g3.zarr" in res.stderr and "an HTTP server lists no objects" in res.stderr


def test_listing_probes_the_members_concurrently(s3: S3Server, tmp_path: Path) -> None:
    """A group without consolidated metadata lists its members by reading each one's
    documents: on object storage several at a time.  Seen from a proxy in front of the
    server, with a round trip of latency: several connections are open at once (one
    after another, the probes never overlap)."""
    from _servers import FaultProxy

    names = [f"a{i:02d}" for i in range(12)]
    g = zarr.open_group(str(tmp_path / "many.zarr"), mode="w", zarr_format=3)
    for name in names:
        g.create_array(name, shape=(4,), chunks=(4,), dtype="u1")[...] = np.arange(4)
    bucket = "lsio-groups-many"
    s3.client().create_bucket(Bucket=bucket)
    s3.upload_tree(str(tmp_path / "many.zarr"), bucket, "many.zarr")
    port = int(s3.endpoint.rsplit(":", 1)[1])
    with FaultProxy(("127.0.0.1", port), rtt_s=0.02) as proxy:
        group = lz.open_group(
            f"s3://{bucket}/many.zarr", storage_options=s3.options(proxy.endpoint)
        )
        assert sorted(group.keys()) == names
        assert all(group[n].shape == (4,) for n in names[:2])
        assert proxy.open_max >= 4, proxy.open_max
