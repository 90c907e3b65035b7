"""Zarr groups: ``lsio_ray.zarr.Group`` against zarr-python on hierarchies it wrote.

Every hierarchy is built by zarr-python (v2 and v3, nested, with and without
consolidated metadata, several dtypes and codecs) and read both ways; member lists,
attributes and array contents must agree.  Hostile hierarchies (member names leaving
the group, symbolic links out of it or around in a cycle, consolidated metadata naming
members that are gone) must be refused with an error naming the member.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

import lsio_ray
import lsio_ray.zarr as lz
from lsio_ray.interactive import InteractiveArray
from lsio_ray.zarr.cli import main as zarr_cli

pytestmark = pytest.mark.timeout(120)

FORMATS = [2, 3]


def _consolidate(path: Path) -> None:
    """zarr-python's consolidation (its v3 warning is expected and silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(str(path))


def build(path: Path, fmt: int, *, consolidated: bool) -> dict[str, np.ndarray]:
    """A nested hierarchy written by zarr-python; returns each array's data by path.

    /                 attrs {"title": ...}
    ├── temperature   float32 (10, 13) chunks (4, 5), edge chunks, zstd / blosc
    ├── counts        int64   (7,)     gzip
    ├── mask          bool    (6, 6)   no compressor
    ├── empty/        a group with nothing in it
    └── sub/          attrs {"level": 1}
        ├── x         uint16  (5, 4, 3), partly written (the rest is fill value)
        ├── z         float64 (9,) fill NaN, never written
        └── deeper/
            └── y     complex64 (8,)  (v3: sharded)
    """
    rng = np.random.default_rng(fmt)
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    root.attrs.update({"title": "test", "n": 3})
    compressors: dict[str, Any] = (
        {"zstd": ZstdCodec(level=3), "gzip": GzipCodec(level=1)}
        if fmt == 3
        else {
            "zstd": numcodecs.Blosc(cname="zstd"),
            "gzip": numcodecs.GZip(level=1),
        }
    )
    data = {
        "temperature": rng.random((10, 13), dtype=np.float32),
        "counts": rng.integers(-(2**40), 2**40, 7),
        "mask": rng.random((6, 6)) > 0.5,
    }
    root.create_array(
        "temperature",
        shape=(10, 13),
        chunks=(4, 5),
        dtype="f4",
        compressors=compressors["zstd"],
        attributes={"units": "K"},
    )[:] = data["temperature"]
    root.create_array(
        "counts", shape=(7,), chunks=(3,), dtype="i8", compressors=compressors["gzip"]
    )[:] = data["counts"]
    root.create_array("mask", shape=(6, 6), chunks=(4, 4), dtype="bool", compressors=None)[:] = (
        data["mask"]
    )
    root.create_group("empty")
    sub = root.create_group("sub", attributes={"level": 1})
    x = np.zeros((5, 4, 3), dtype="u2")
    x[:2] = rng.integers(0, 60000, (2, 4, 3))
    sub.create_array("x", shape=(5, 4, 3), chunks=(2, 2, 3), dtype="u2", fill_value=0)[:2] = x[:2]
    data["sub/x"] = x
    sub.create_array("z", shape=(9,), chunks=(4,), dtype="f8", fill_value=np.nan)
    data["sub/z"] = np.full(9, np.nan)
    deeper = sub.create_group("deeper")
    y = (rng.random(8) + 1j * rng.random(8)).astype("c8")
    if fmt == 3:
        deeper.create_array(
            "y", shape=(8,), chunks=(2,), shards=(4,), dtype="c8", compressors=BloscCodec()
        )[:] = y
    else:
        deeper.create_array("y", shape=(8,), chunks=(3,), dtype="c8")[:] = y
    data["sub/deeper/y"] = y
    if consolidated:
        _consolidate(path)
    return data


@pytest.fixture(params=[(f, c) for f in FORMATS for c in (False, True)], ids=str)
def hierarchy(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, int, bool, dict]:
    fmt, consolidated = request.param
    path = tmp_path / f"g{fmt}.zarr"
    data = build(path, fmt, consolidated=consolidated)
    return path, fmt, consolidated, data


def _zarr_members(path: Path) -> dict[str, Any]:
    """zarr-python's view: every member by path."""
    return dict(zarr.open_group(str(path), mode="r").members(max_depth=None))


# -- against zarr-python -----------------------------------------------------------------


def test_members_match_zarr_python(hierarchy: tuple[Path, int, bool, dict]) -> None:
    path, fmt, consolidated, _ = hierarchy
    ref = zarr.open_group(str(path), mode="r")
    g = lz.open(path)
    assert isinstance(g, lz.Group)
    assert g.zarr_format == fmt and g.consolidated is consolidated
    assert g.attrs == dict(ref.attrs) == {"title": "test", "n": 3}
    assert list(g.keys()) == list(g) == sorted(ref.keys())
    assert len(g) == len(list(ref.keys())) == 5
    assert [n for n, _ in g.arrays()] == sorted(n for n, _ in ref.arrays())
    assert [n for n, _ in g.groups()] == sorted(n for n, _ in ref.groups())
    ours = dict(g.members(max_depth=None))
    theirs = _zarr_members(path)
    assert sorted(ours) == sorted(theirs)
    for name, node in ours.items():
        assert isinstance(node, lz.Array) == isinstance(theirs[name], zarr.Array), name
    assert [p for p, _ in g.members()] == sorted(ref.keys())  # max_depth=0: direct only
    assert sorted(p for p, _ in g.members(max_depth=1)) == sorted(
        p for p in theirs if p.count("/") <= 1
    )
    assert g["sub"].attrs == {"level": 1} and g["sub"].consolidated is consolidated
    assert list(g["sub"].keys()) == ["deeper", "x", "z"] and list(g["empty"].keys()) == []


def test_reads_match_zarr_python(hierarchy: tuple[Path, int, bool, dict]) -> None:
    path, _, _, data = hierarchy
    g = lz.open(path)
    theirs = _zarr_members(path)
    for name, expected in data.items():
        a = g[name]
        ref = theirs[name]
        assert isinstance(a, lz.Array)
        assert a.shape == ref.shape and a.dtype == ref.dtype and a.chunks == ref.chunks
        assert a.attrs == dict(ref.attrs)
        np.testing.assert_array_equal(a[...], ref[...])
        np.testing.assert_array_equal(a[...], expected)
    # a path and a walk through the groups reach the same array
    np.testing.assert_array_equal(g["sub"]["deeper"]["y"][2:7], data["sub/deeper/y"][2:7])
    np.testing.assert_array_equal(g["sub/x"][1, :, 2], data["sub/x"][1, :, 2])


def test_contains_and_missing_keys(hierarchy: tuple[Path, int, bool, dict]) -> None:
    path, *_ = hierarchy
    g = lz.open(path)
    assert "temperature" in g and "sub" in g and "sub/x" in g and "sub/deeper/y" in g
    assert "nope" not in g and "sub/nope" not in g and "temperature/x" not in g
    assert "nope/x" not in g
    with pytest.raises(KeyError, match="nope"):
        g["nope"]
    with pytest.raises(KeyError, match="'temperature' is an array"):
        g["temperature/x"]


def test_array_options_pass_to_members(tmp_path: Path) -> None:
    build(tmp_path / "g.zarr", 3, consolidated=False)
    g = lz.open(tmp_path / "g.zarr", coalesce_gap=4096, write_empty_chunks=True, direct=False)
    a = g["sub/x"]
    assert a.coalesce_gap == 4096 and a.write_empty_chunks and not a.direct
    with pytest.raises(TypeError, match="no_such_option"):
        lz.open(tmp_path / "g.zarr", no_such_option=1)
    with lz.open(tmp_path / "g.zarr", backend="pread") as g2:
        b, c = g2["temperature"], g2["counts"]
        assert b.loader is c.loader and b.loader.backend == "pread"
        np.testing.assert_array_equal(b[...], g["temperature"][...])


def test_open_array_unchanged(tmp_path: Path) -> None:
    data = build(tmp_path / "g.zarr", 3, consolidated=False)
    a = lz.open(tmp_path / "g.zarr" / "temperature")
    assert isinstance(a, lz.Array)
    np.testing.assert_array_equal(a[...], data["temperature"])
    with pytest.raises(lz.ArrayMetadataError, match="not an array"):
        lz.open_array(tmp_path / "g.zarr")
    with pytest.raises(lz.GroupError, match="is a Zarr array, not a group"):
        lz.open_group(tmp_path / "g.zarr" / "temperature")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="no Zarr array or group"):
        lz.open(tmp_path / "plain")
    with pytest.raises(FileNotFoundError):
        lz.open(tmp_path / "absent")


def test_lsio_ray_open_wraps_arrays_for_notebooks(tmp_path: Path) -> None:
    data = build(tmp_path / "g.zarr", 2, consolidated=True)
    g = lsio_ray.open(tmp_path / "g.zarr", progress_bytes=1)
    assert isinstance(g, lz.Group)
    t = g["temperature"]
    assert isinstance(t, InteractiveArray) and t.progress_bytes == 1
    np.testing.assert_array_equal(t.read(progress=False), data["temperature"])
    assert all(isinstance(a, InteractiveArray) for _, a in g["sub"].arrays())
    assert isinstance(lsio_ray.open(tmp_path / "g.zarr" / "counts"), InteractiveArray)


def test_stale_consolidated_metadata_is_what_zarr_python_sees(tmp_path: Path) -> None:
    path = tmp_path / "g.zarr"
    build(path, 3, consolidated=True)
    zarr.open_group(str(path), mode="r+", use_consolidated=False).create_array(
        "late", shape=(2,), dtype="i4"
    )
    ref = zarr.open_group(str(path), mode="r")
    assert "late" not in list(ref.keys())  # zarr-python trusts the consolidated metadata
    assert "late" not in lz.open(path)
    listed = lz.Group(path, use_consolidated=False)
    assert not listed.consolidated and "late" in listed
    assert sorted(listed.keys()) == sorted(
        zarr.open_group(str(path), mode="r", use_consolidated=False).keys()
    )
    with pytest.raises(lz.GroupError, match="no consolidated metadata"):
        lz.Group(tmp_path / "g.zarr" / "sub", use_consolidated=True)


# -- consolidating -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_consolidate_metadata(tmp_path: Path, fmt: int) -> None:
    path = tmp_path / "g.zarr"
    data = build(path, fmt, consolidated=False)
    assert not lz.open(path).consolidated
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zarr-python's v3 warning
        g = lz.consolidate_metadata(path)
    assert g.consolidated
    if fmt == 2:
        assert (path / ".zmetadata").exists()
    else:
        assert json.loads((path / "zarr.json").read_text())["consolidated_metadata"]
    ref = zarr.open_group(str(path), mode="r")
    assert ref.metadata.consolidated_metadata is not None
    assert sorted(dict(g.members(max_depth=None))) == sorted(_zarr_members(path))
    for name, expected in data.items():
        np.testing.assert_array_equal(g[name][...], expected)


def test_consolidate_refuses_a_link_out_before_writing(tmp_path: Path) -> None:
    build(tmp_path / "outside.zarr", 2, consolidated=False)
    path = tmp_path / "g.zarr"
    build(path, 2, consolidated=False)
    os.symlink(tmp_path / "outside.zarr" / "temperature", path / "sub" / "evil")
    with pytest.raises(lz.GroupError, match=r"'sub/evil' resolves to .*outside the group"):
        lz.consolidate_metadata(path)
    assert not (path / ".zmetadata").exists()


# -- summaries ---------------------------------------------------------------------------


def test_tree_and_repr(hierarchy: tuple[Path, int, bool, dict]) -> None:
    path, fmt, consolidated, _ = hierarchy
    g = lz.open(path)
    text = g.tree()
    assert str(g) == text
    lines = text.splitlines()
    assert lines[0].startswith(f"Zarr v{fmt} group {g.path}")
    assert ("consolidated" in lines[0]) is consolidated
    assert "6 arrays, 3 groups" in lines[0]
    row = {ln.split("── ", 1)[1].split()[0].rstrip("/"): ln for ln in lines if "── " in ln}
    assert set(row) == {"temperature", "counts", "mask", "empty", "sub", "x", "z", "deeper", "y"}
    assert "(10, 13)" in row["temperature"] and "float32" in row["temperature"]
    assert "chunks (4, 5)" in row["temperature"] and "stored" in row["temperature"]
    assert ("zstd" if fmt == 3 else "blosc") in row["temperature"]
    assert "gzip" in row["counts"] and "bool" in row["mask"] and "complex64" in row["y"]
    assert "uint16" in row["x"] and "(5, 4, 3)" in row["x"]
    if fmt == 3:
        assert "chunks (2,) in shards (4,)" in row["y"] and "sharding_indexed" in row["y"]
    # nesting: y is drawn under deeper, under sub
    assert row["y"].startswith("│   │   └── y ")
    assert row["x"].startswith("│   ├── x ") and row["temperature"].startswith("└── temperature")
    assert (
        repr(g)
        == f"<lsio_ray.zarr.Group {g.path!r} v{fmt} "
        + ("consolidated" if consolidated else "listed")
        + ", 5 members>"
    )


def test_info_counts_stored_bytes(tmp_path: Path) -> None:
    path = tmp_path / "g.zarr"
    build(path, 3, consolidated=False)
    info = lz.open(path).info()
    by_path = {m["path"]: m for m in info["members"]}
    t = by_path["temperature"]
    on_disk = sum(f.stat().st_size for f in (path / "temperature").rglob("*") if f.is_file())
    assert t["stored_bytes"] == on_disk and t["stored_complete"] and not t["missing"]
    assert t["shape"] == [10, 13] and t["dtype"] == "float32" and t["nbytes"] == 10 * 13 * 4
    assert t["attributes"] == {"units": "K"} and t["error"] is None
    assert by_path["sub"]["node_type"] == "group" and by_path["sub"]["attributes"] == {"level": 1}
    assert info["truncated"] == 0
    assert lz.open(path).info(max_members=2)["truncated"] == 7


def test_info_cli_on_a_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.zarr"
    build(path, 2, consolidated=True)
    assert zarr_cli(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Zarr v2 group" in out and "temperature" in out and "(10, 13)" in out
    assert "deeper/" in out and "complex64" in out
    assert zarr_cli(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["node_type"] == "group" and info["consolidated"] is True
    assert [m["path"] for m in info["members"]] == [
        "counts",
        "empty",
        "mask",
        "sub",
        "sub/deeper",
        "sub/deeper/y",
        "sub/x",
        "sub/z",
        "temperature",
    ]
    # the array form is unchanged
    assert zarr_cli(["info", str(path / "temperature"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["chunk_grid"] == [3, 3]


def test_info_cli_refuses_a_hostile_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build(tmp_path / "outside.zarr", 3, consolidated=False)
    path = tmp_path / "g.zarr"
    build(path, 3, consolidated=False)
    os.symlink(tmp_path / "outside.zarr", path / "sub" / "escape")
    assert zarr_cli(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert "'sub/escape' resolves to" in err and "outside the group" in err


def test_info_cli_through_lsio_ray_main(tmp_path: Path) -> None:
    path = tmp_path / "g.zarr"
    build(path, 3, consolidated=False)
    out = subprocess.run(
        [sys.executable, "-c", "import sys, lsio_ray.cli as c; sys.exit(c.main())", "info", path],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.startswith(f"Zarr v3 group {path}") and "└── temperature" in out


def test_xarray_dataset(tmp_path: Path) -> None:
    xr = pytest.importorskip("xarray")
    pd = pytest.importorskip("pandas")
    temp = np.random.default_rng(0).random((4, 5, 6)).astype("f4")
    ds = xr.Dataset(
        {
            "temperature": (("time", "lat", "lon"), temp),
            "station": (("lat",), np.array(["a", "bb", "ccc", "d", "e"])),
        },
        coords={"time": pd.date_range("2020-01-01", periods=4), "lat": np.arange(5.0)},
    )
    for fmt in FORMATS:
        path = tmp_path / f"ds{fmt}.zarr"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.to_zarr(path, mode="w", zarr_format=fmt, consolidated=True)
        g = lz.open(path)
        assert g.consolidated and sorted(g.keys()) == ["lat", "station", "temperature", "time"]
        np.testing.assert_array_equal(g["temperature"][...], temp)
        np.testing.assert_array_equal(g["lat"][...], np.arange(5.0))
        # a string array is described, and refused only when opened
        row = next(ln for ln in g.tree().splitlines() if "station" in ln)
        assert "(5,)" in row and "lsio_ray cannot read it" in row
        with pytest.raises(lz.UnsupportedError, match="station"):
            g["station"]


# -- hostile hierarchies -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../x", "/etc", "a/../../x", "sub/./x", "sub//x", "", "sub/", ".", "a\x00b"]
)
def test_hostile_keys_are_refused(tmp_path: Path, name: str) -> None:
    build(tmp_path / "g.zarr", 3, consolidated=False)
    g = lz.open(tmp_path / "g.zarr")
    with pytest.raises(lz.GroupError, match="refused") as err:
        g[name]
    assert repr(name) in str(err.value) and str(g.path) in str(err.value)
    with pytest.raises(lz.GroupError):
        name in g  # noqa: B015
    with pytest.raises(TypeError, match="str"):
        g[3]  # type: ignore[index]


def _edit_json(path: Path, edit: Any) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("bad", ["../outside", "/tmp/abs", "sub/../../outside", "sub/./x"])
def test_hostile_v3_consolidated_names(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "g.zarr"
    build(path, 3, consolidated=True)

    def edit(doc: dict[str, Any]) -> None:
        meta = doc["consolidated_metadata"]["metadata"]
        meta[bad] = meta["temperature"]

    _edit_json(path / "zarr.json", edit)
    with pytest.raises(lz.GroupError, match="refused") as err:
        lz.open(path)
    assert repr(bad) in str(err.value) or repr(bad.split("/")[-1]) in str(err.value)


@pytest.mark.parametrize("bad", ["../outside", "/abs", "sub/../../outside"])
def test_hostile_v2_consolidated_names(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "g.zarr"
    build(path, 2, consolidated=True)

    def edit(doc: dict[str, Any]) -> None:
        meta = doc["metadata"]
        meta[f"{bad}/.zarray"] = meta["temperature/.zarray"]

    _edit_json(path / ".zmetadata", edit)
    with pytest.raises(lz.GroupError, match="refused") as err:
        lz.open(path)
    assert repr(bad) in str(err.value)


def test_consolidated_member_without_parent_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "g.zarr"
    build(path, 3, consolidated=True)

    def edit(doc: dict[str, Any]) -> None:
        meta = doc["consolidated_metadata"]["metadata"]
        meta["ghost/t"] = meta["temperature"]

    _edit_json(path / "zarr.json", edit)
    with pytest.raises(lz.GroupError, match="'ghost/t' but not its parent group 'ghost'"):
        lz.open(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_symlink_out_of_the_root_is_refused(tmp_path: Path, fmt: int) -> None:
    build(tmp_path / "outside.zarr", fmt, consolidated=False)
    path = tmp_path / "g.zarr"
    build(path, fmt, consolidated=False)
    os.symlink(tmp_path / "outside.zarr" / "temperature", path / "sub" / "evil")
    g = lz.open(path)
    assert list(g.keys())  # the top level is clean
    with pytest.raises(lz.GroupError, match=r"'sub/evil' resolves to .*outside the group"):
        g["sub/evil"]
    with pytest.raises(lz.GroupError, match="sub/evil"):
        list(g["sub"].keys())
    with pytest.raises(lz.GroupError, match="sub/evil"):
        g.tree()
    # a group opened inside the hierarchy has its own root: the link leaves it too
    with pytest.raises(lz.GroupError, match="'evil' resolves to"):
        lz.open(path / "sub")["evil"]


def test_symlink_out_of_the_root_listed_in_consolidated_metadata(tmp_path: Path) -> None:
    build(tmp_path / "outside.zarr", 3, consolidated=False)
    path = tmp_path / "g.zarr"
    build(path, 3, consolidated=True)
    shutil.rmtree(path / "counts")
    os.symlink(tmp_path / "outside.zarr" / "counts", path / "counts")
    g = lz.open(path)
    assert "counts" in g  # the metadata lists it ...
    with pytest.raises(lz.GroupError, match=r"'counts' resolves to .*outside the group"):
        g["counts"]  # ... but it is never read through the link
    with pytest.raises(lz.GroupError, match="counts"):
        g.info()


def test_symlink_inside_the_root_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "g.zarr"
    data = build(path, 3, consolidated=False)
    os.symlink(path / "temperature", path / "sub" / "alias")
    g = lz.open(path)
    np.testing.assert_array_equal(g["sub/alias"][...], data["temperature"])
    assert g["sub/alias"].path == str(path / "temperature")


def test_symlink_cycle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "g.zarr"
    build(path, 2, consolidated=False)
    os.symlink(path, path / "sub" / "deeper" / "loop")
    g = lz.open(path)
    with pytest.raises(lz.GroupError, match=r"'sub/deeper/loop' resolves to .*cycle"):
        g.members(max_depth=None)
    with pytest.raises(lz.GroupError, match="cycle"):
        g.tree()


def test_root_given_through_a_symlink(tmp_path: Path) -> None:
    path = tmp_path / "g.zarr"
    data = build(path, 3, consolidated=False)
    os.symlink(path, tmp_path / "link.zarr")
    g = lz.open(tmp_path / "link.zarr")
    assert g.root == str(path)
    np.testing.assert_array_equal(g["sub/x"][...], data["sub/x"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_consolidated_member_missing_on_disk(tmp_path: Path, fmt: int) -> None:
    path = tmp_path / "g.zarr"
    build(path, fmt, consolidated=True)
    shutil.rmtree(path / "sub" / "x")
    g = lz.open(path)
    assert "sub/x" in g
    with pytest.raises(FileNotFoundError, match="'sub/x' is listed in the consolidated") as err:
        g["sub/x"]
    assert err.value.filename == str(path / "sub" / "x")
    with pytest.raises(FileNotFoundError, match="sub/x"):
        g.members(max_depth=None)
    row = next(ln for ln in g.tree().splitlines() if "── x" in ln)
    assert "MISSING on disk" in row


def test_control_characters_in_names_are_escaped(tmp_path: Path) -> None:
    path = tmp_path / "g.zarr"
    data = build(path, 3, consolidated=False)
    evil = "red\x1b[31m\nline"
    shutil.copytree(path / "counts", path / evil)
    g = lz.open(path)
    assert evil in g
    np.testing.assert_array_equal(g[evil][...], data["counts"])
    text = g.tree()
    assert "\x1b" not in text and repr(evil) in text
    assert len(text.splitlines()) == 1 + 1 + 1 + 10  # header, attributes, "/", members


def test_invalid_member_metadata_names_the_member(tmp_path: Path) -> None:
    path = tmp_path / "g.zarr"
    build(path, 3, consolidated=False)
    (path / "sub" / "x" / "zarr.json").write_text("{not json")
    with pytest.raises(lz.ArrayMetadataError, match="sub/x"):
        list(lz.open(path)["sub"].keys())
    (path / "sub" / "x" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "other"}')
    with pytest.raises(lz.GroupError, match=r"sub/x.*node_type 'other'"):
        list(lz.open(path)["sub"].keys())


def test_group_error_pickles() -> None:
    err = lz.GroupError("/data/g.zarr", "member '../x' is refused")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, lz.GroupError) and str(back) == str(err)
    assert isinstance(back, ValueError)
