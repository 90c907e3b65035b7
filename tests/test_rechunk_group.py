"""Converting a whole Zarr group on a 2-node Ray cluster: every array re-chunked by its
own rule or one rule for all, the hierarchy and attributes kept, consolidated metadata
written as zarr-python writes it (read back by zarr-python), rules that cannot fit
refused before Ray starts, and a driver killed mid-group resumed to the same bytes."""

from __future__ import annotations

import importlib.abc
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")
zarr = pytest.importorskip("zarr")
numcodecs = pytest.importorskip("numcodecs")

from _ray_helpers import LocalCluster, local_cluster  # noqa: E402

from lsio_ray.ray import Coordinator  # noqa: E402
from lsio_ray.ray.rechunk import GroupRechunkResult, rechunk  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Consolidated metadata is currently")


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("ray-rechunk-group"), workers=1) as c:
        yield c


@pytest.fixture(scope="module")
def coord(lc: LocalCluster) -> Coordinator:
    return Coordinator(batch_bytes=64 << 10)


def _data(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    a = (np.random.default_rng(seed).normal(0, 1, shape) * 50).astype(dtype)
    a[tuple(slice(0, s // 3) for s in shape)] = 0  # some all-fill chunks
    return a


def _array(group: Any, name: str, data: np.ndarray, attrs: dict[str, Any], **kw: Any) -> None:
    z = group.create_array(name, shape=data.shape, dtype=data.dtype, fill_value=0, **kw)
    z[...] = data
    z.attrs.update(attrs)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _assert_same_hierarchy(src: Path, out: Path, zarr_format: int) -> dict[str, Any]:
    """``out`` read by zarr-python through its consolidated metadata holds what ``src``
    holds: the same groups and arrays, attributes, shapes, dtypes and values.  Returns
    the arrays of ``out`` by path."""
    a = zarr.open_group(str(src), mode="r")
    b = zarr.open_consolidated(str(out), zarr_format=zarr_format)
    assert b.metadata.consolidated_metadata is not None
    assert dict(b.attrs) == dict(a.attrs)
    ma = dict(a.members(max_depth=None))
    mb = dict(b.members(max_depth=None))
    assert sorted(mb) == sorted(ma)
    for path, node in ma.items():
        other = mb[path]
        assert type(other) is type(node), path
        assert dict(other.attrs) == dict(node.attrs), path
        if isinstance(node, zarr.Array):
            assert (other.shape, other.dtype) == (node.shape, node.dtype), path
            np.testing.assert_array_equal(other[...], node[...], err_msg=path)
    # and the same read by listing the directories, not the consolidated metadata
    listed = zarr.open_group(str(out), mode="r", use_consolidated=False)
    assert sorted(dict(listed.members(max_depth=None))) == sorted(ma)
    return {p: n for p, n in mb.items() if isinstance(n, zarr.Array)}


def _assert_consolidated_as_zarr_writes_it(out: Path, tmp: Path, zarr_format: int) -> None:
    """zarr-python consolidating a copy of ``out`` writes the very bytes ``out`` has."""
    copy = tmp / f"reconsolidated-{out.name}"
    shutil.copytree(out, copy)
    zarr.consolidate_metadata(str(copy), zarr_format=zarr_format)
    assert _files(copy) == _files(out)
    shutil.rmtree(copy)


def test_nested_v3_group_with_per_array_rules(
    lc: LocalCluster, coord: Coordinator, capsys: pytest.CaptureFixture[str]
) -> None:
    base = lc.shared / "v3"
    src = base / "src.zarr"
    root = zarr.open_group(str(src), mode="w", zarr_format=3, attributes={"title": "t", "n": 3})
    _array(root, "temperature", _data((8, 30, 28), "float32", 1), {"units": "K"}, chunks=(2, 8, 8))
    sub = root.create_group("sub", attributes={"kind": "masks"})
    _array(sub, "mask", _data((30, 28), "uint8", 2), {"labels": [0, 1]}, chunks=(16, 7))
    deeper = sub.create_group("deeper", attributes={"empty": True})
    _array(deeper, "lat", np.linspace(-90, 90, 30), {}, chunks=(7,))
    root.create_group("nothing")  # an empty group is kept too
    zarr.consolidate_metadata(str(src), zarr_format=3)

    res = rechunk(
        src,
        base / "out.zarr",
        chunks={"temperature": (4, 16, 16), "sub/mask": (30, 14)},
        shards={"temperature": (8, 32, 16)},
        codec="zstd:1",
        coordinator=coord,
        block_bytes=8_000,
        progress=True,
    )
    assert isinstance(res, GroupRechunkResult)
    bar = capsys.readouterr().err  # one tqdm bar over the blocks of every array
    assert f"{res.blocks}/{res.blocks}" in bar and bar.count("rechunk:") >= 1, bar
    assert sorted(res.arrays) == ["sub/deeper/lat", "sub/mask", "temperature"]
    assert res.arrays_skipped == [] and res.groups == 4 and res.consolidated
    assert res.blocks > 3 and res.bytes_read > 0

    out = base / "out.zarr"
    arrays = _assert_same_hierarchy(src, out, 3)
    assert arrays["temperature"].chunks == (4, 16, 16)
    assert arrays["temperature"].shards == (8, 32, 16)
    assert arrays["sub/mask"].chunks == (30, 14) and arrays["sub/mask"].shards is None
    assert arrays["sub/deeper/lat"].chunks == (7,)  # no rule: its own chunks
    assert not (out / ".lsio-rechunk").exists()
    assert not list(out.rglob(".lsio-rechunk"))
    _assert_consolidated_as_zarr_writes_it(out, base, 3)
    # lsio_ray's own reader sees the same group
    import lsio_ray.zarr as lz

    g = lz.open_group(out)
    assert g.consolidated and g.attrs == {"title": "t", "n": 3}
    np.testing.assert_array_equal(g["sub/mask"][...], zarr.open_array(str(src / "sub/mask"))[...])


def test_v2_group_with_one_rule_and_an_override_from_the_cli(lc: LocalCluster) -> None:
    from lsio_ray.cli import main

    base = lc.shared / "v2"
    src = base / "src.zarr"
    root = zarr.open_group(str(src), mode="w", zarr_format=2, attributes={"history": "made"})
    comp = numcodecs.Zstd(level=1)
    _array(root, "u", _data((6, 20, 20), "int16", 3), {"long_name": "u"}, chunks=(3, 7, 7))
    _array(root, "v", _data((6, 20, 20), "int16", 4), {}, chunks=(6, 5, 5), compressors=comp)
    _array(root, "lon", np.arange(20, dtype="f8"), {"units": "deg"}, chunks=(6,))
    sub = root.create_group("level", attributes={"z": 850})
    _array(sub, "w", _data((6, 20, 20), "float32", 5), {}, chunks=(2, 10, 10))
    zarr.consolidate_metadata(str(src), zarr_format=2)

    out = base / "out.zarr"
    text = io.StringIO()
    with redirect_stdout(text):
        rc = main(
            [
                "rechunk",
                str(src),
                str(out),
                "--chunks",
                "6,10,10",  # every array not named...
                "--chunks",
                "lon=20",  # ...and this one its own
                "--codec",
                "blosc:lz4:5",
                "--json",
                "--no-progress",
                "--address",
                lc.cluster.address,
            ]
        )
    assert rc == 0
    res = json.loads(text.getvalue())
    assert res["node_type"] == "group" and res["consolidated"] and res["groups"] == 2
    assert sorted(res["arrays"]) == ["level/w", "lon", "u", "v"]
    assert all(r["blocks"] >= 1 for r in res["arrays"].values())
    arrays = _assert_same_hierarchy(src, out, 2)
    assert {p: a.chunks for p, a in arrays.items()} == {
        "u": (6, 10, 10),
        "v": (6, 10, 10),
        "level/w": (6, 10, 10),
        "lon": (20,),
    }
    assert arrays["u"].metadata.compressor.cname == "lz4"
    assert (out / ".zmetadata").is_file() and (out / "level" / ".zattrs").is_file()
    _assert_consolidated_as_zarr_writes_it(out, base, 2)


def test_a_group_without_consolidated_metadata_converted_to_v2(lc: LocalCluster) -> None:
    """No consolidated metadata in, none out; v3 -> v2 conversion of the whole group;
    the command's summary names the arrays and the totals."""
    from lsio_ray.cli import main

    base = lc.shared / "plain"
    src = base / "src.zarr"
    root = zarr.open_group(str(src), mode="w", zarr_format=3, attributes={"plain": True})
    _array(root, "x", _data((12, 10), "int32", 8), {"a": 1}, chunks=(5, 5))
    root.create_group("g", attributes={"b": 2}).create_group("h")
    out = base / "out.zarr"
    text = io.StringIO()
    with redirect_stdout(text):
        argv = ["rechunk", str(src), str(out), "--chunks", "12,5", "--zarr-format", "2"]
        rc = main([*argv, "--no-progress", "--address", lc.cluster.address])
    assert rc == 0
    lines = text.getvalue().splitlines()
    assert lines[0].startswith("  x: ") and "blocks" in lines[0], lines
    assert "1 array (0 already done), 3 groups;" in lines[-1], lines
    assert "consolidated" not in lines[-1], lines
    assert not (out / ".zmetadata").exists() and (out / "g" / "h" / ".zgroup").is_file()
    g = zarr.open_group(str(out), mode="r", zarr_format=2)
    assert g.metadata.consolidated_metadata is None
    assert dict(g.attrs) == {"plain": True} and dict(g["g"].attrs) == {"b": 2}
    assert g["x"].chunks == (12, 5) and dict(g["x"].attrs) == {"a": 1}
    np.testing.assert_array_equal(g["x"][...], zarr.open_array(str(src / "x"))[...])


class _RayTripwire(importlib.abc.MetaPathFinder):
    """Records every attempt to import Ray and makes it fail."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "ray" or name.startswith("ray."):
            self.attempts.append(name)
            raise ModuleNotFoundError(f"test: importing {name} is not allowed", name=name)
        return None


def test_rules_that_do_not_fit_are_refused_before_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No Ray import is even attempted (Ray is out of ``sys.modules`` meanwhile) and
    nothing is written: the message names the array, its dimensions and the rule."""
    from lsio_ray import cli

    src = tmp_path / "src.zarr"
    root = zarr.open_group(str(src), mode="w", zarr_format=3)
    _array(root, "cube", _data((4, 8, 8), "int32", 6), {}, chunks=(2, 4, 4))
    sub = root.create_group("sub")
    _array(sub, "image", _data((8, 8), "int32", 7), {}, chunks=(4, 4))
    dst = tmp_path / "out.zarr"
    trip = _RayTripwire()
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    monkeypatch.setattr(sys, "meta_path", [trip, *sys.meta_path])

    def run(*argv: str) -> str:
        rc = cli.main(["rechunk", str(src), *argv, "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert "Traceback" not in err
        return err

    err = run(str(dst), "--chunks", "2,8,8")
    assert "--chunks 2,8,8 (the rule for every array)" in err, err
    assert "'sub/image'" in err and "2 dimensions" in err and str(src) in err, err
    assert "sub/image=SHAPE" in err, err
    err = run(str(dst), "--chunks", "cube=2,8,8", "--chunks", "sub/image=8,8,1")
    assert "--chunks 8,8,1 (the rule for 'sub/image')" in err, err
    err = run(str(dst), "--chunks", "cube=2,8,8", "--chunks", "sub/nope=8,8")
    assert "'sub/nope'" in err and "its arrays: cube, sub/image" in err, err
    err = run(str(dst), "--chunks", "2,8,8", "--chunks", "sub/image=8,8", "--shards", "cube=3,8,8")
    assert "'cube'" in err and "divisible" in err, err
    err = run(str(src / "sub" / "copy.zarr"), "--chunks", "cube=2,8,8", "--overwrite")
    assert "inside" in err, err
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    err = run(str(dst), "--chunks", "2,8,8", "--chunks", "sub/image=8,8")
    assert "exists and holds a non-empty directory" in err, err
    err = run(str(src), "--chunks", "2,8,8", "--chunks", "sub/image=8,8")
    assert "is the source" in err, err
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=2)
    err = run(str(tmp_path / "other.zarr"), "--chunks", "2,8,8", "--chunks", "sub/image=8,8")
    assert "exists and holds a Zarr group; pass --overwrite" in err, err
    assert trip.attempts == []
    assert sorted(p.name for p in dst.iterdir()) == ["keep.txt"]
    assert not (src / "sub" / "copy.zarr").exists()
    # the Python function refuses the same, before Ray is imported
    with pytest.raises(ValueError, match="'sub/image' of the group"):
        rechunk(src, tmp_path / "py.zarr", chunks=(2, 8, 8))
    assert trip.attempts == [] and not (tmp_path / "py.zarr").exists()


_KILLED_DRIVER = """
import os, signal, sys, time
import ray
from lsio_ray.ray.rechunk import rechunk

ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
out = sys.argv[3]
group_journal = os.path.join(out, ".lsio-rechunk", "done")
second = os.path.join(out, "b", ".lsio-rechunk", "done")

def crash_mid_second_array(done, total):
    if all(os.path.exists(j) and os.path.getsize(j) >= 16 for j in (group_journal, second)):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup at all: a crash
    time.sleep(0.6)  # an array's journal is flushed every 0.5 s

rechunk(sys.argv[2], out, chunks=(8, 8), codec="zstd:2", block_bytes=600, window=1,
        progress=crash_mid_second_array)
"""


def test_resume_after_the_driver_is_killed(lc: LocalCluster, coord: Coordinator) -> None:
    base = lc.shared / "resume"
    src = base / "src.zarr"
    root = zarr.open_group(str(src), mode="w", zarr_format=3, attributes={"run": 1})
    # "b", the array the driver dies in, has more blocks (9) than run at once (4: a CPU
    # and a slot per node), so its first journal flush comes before its last block
    for k, (name, n) in enumerate((("a", 16), ("b", 24), ("c", 16))):
        _array(root, name, _data((n, n), "int32", 10 + k), {"k": k}, chunks=(4, 4))
    zarr.consolidate_metadata(str(src), zarr_format=3)
    kw: dict[str, Any] = dict(chunks=(8, 8), codec="zstd:2", block_bytes=600)
    whole = rechunk(src, base / "whole.zarr", coordinator=coord, **kw)
    assert isinstance(whole, GroupRechunkResult)
    assert all(r.blocks >= 4 for r in whole.arrays.values())

    out = base / "crashed.zarr"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_DRIVER, lc.cluster.address, str(src), str(out)],
        capture_output=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert (out / "a" / "zarr.json").exists()  # the first array is done...
    assert (out / "b" / ".lsio-rechunk" / "done").exists()  # ...the second under way
    assert not (out / "zarr.json").exists()  # the group's documents come last

    seen: list[tuple[int, int]] = []
    res = rechunk(src, out, coordinator=coord, progress=lambda d, t: seen.append((d, t)), **kw)
    assert isinstance(res, GroupRechunkResult)
    assert res.arrays_skipped == ["a"]
    assert sorted(res.arrays) == ["b", "c"]
    assert res.arrays["b"].blocks_skipped >= 1 and res.arrays["c"].blocks_skipped == 0
    assert res.blocks_skipped == res.arrays["b"].blocks_skipped
    # one count over the whole group, starting past what was done
    total = sum(r.blocks for r in whole.arrays.values())
    assert seen[-1] == (total, total) and seen[0][0] > whole.arrays["a"].blocks
    assert _files(out) == _files(base / "whole.zarr")
    _assert_same_hierarchy(src, out, 3)
    # finished: not replaced without overwrite, nor resumed with other rules
    with pytest.raises(FileExistsError, match="holds a Zarr array or group"):
        rechunk(src, out, coordinator=coord, **kw)
    assert _files(out) == _files(base / "whole.zarr")
