"""Writers that replace or remove trees stay inside their own: re-chunking never removes
or writes its source, store keys never leave the store's root, stray temp files of dead
writers are cleaned up (and nothing else), ``compressors=None`` means uncompressed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import lsio_ray
import lsio_ray.zarr as lz

# -- helpers -------------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (links not followed): a file's sha256, a link's target."""
    out: dict[str, str] = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(d) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def _source(path: Path) -> np.ndarray:
    data = (np.arange(32 * 128 * 128, dtype=np.uint16) % 1009).reshape(32, 128, 128)
    z = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=(8, 32, 32))
    z[...] = data
    return data


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail loudly if anything tries to start (or join) Ray; stop it if it did anyway."""
    ray = pytest.importorskip("ray")
    started = ray.is_initialized()

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("ray.init was called: the refusal must come before Ray starts")

    monkeypatch.setattr(ray, "init", refuse)
    try:
        yield
        assert ray.is_initialized() == started
    finally:
        if ray.is_initialized() and not started:
            ray.shutdown()


# -- 1. re-chunking never removes or writes its source --------------------------------------


def test_cli_overwrite_of_the_sources_parent_is_refused_before_ray(tmp_path: Path) -> None:
    """The reported command, exactly: ``lsio-ray rechunk work/in.zarr work --chunks
    16,64,64 --overwrite``.  It used to remove ``work`` (and the source in it), read the
    missing chunks as fill and exit 0.  Now: exit 2 (the CLI's arguments are checked
    before Ray), a message naming both paths, the source untouched, and Ray never
    imported."""
    work = tmp_path / "work"
    data = _source(work / "in.zarr")
    (work / "notes.txt").write_text("keep me")
    before = _tree(work)
    code = (
        "import sys\n"
        "sys.modules['ray'] = None  # importing Ray now raises ImportError\n"
        "from lsio_ray.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["rechunk", "work/in.zarr", "work", "--chunks", "16,64,64", "--overwrite"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    assert "contains the source" in err, err
    assert str(work) in err and str(work / "in.zarr") in err, err
    assert "Traceback" not in err, err
    assert proc.stdout == ""
    assert _tree(work) == before
    np.testing.assert_array_equal(zarr.open_array(str(work / "in.zarr"))[...], data)


def _cases(tmp_path: Path) -> dict[str, tuple[Path, Path, str]]:
    """name -> (src, dst, what the message must say), all on one source tree."""
    work = tmp_path / "work"
    src = work / "in.zarr"
    (work / "link.zarr").symlink_to(src, target_is_directory=True)
    (tmp_path / "alias").symlink_to(work, target_is_directory=True)
    holder = tmp_path / "holder"
    (holder / "c").mkdir(parents=True)
    (holder / "c" / "into").symlink_to(src / "c", target_is_directory=True)
    return {
        "parent": (src, work, "contains the source"),
        "same": (src, src, "is the source"),
        "same-through-link": (work / "link.zarr", src, "is the source"),
        "inside": (src, src / "out.zarr", "inside the source"),
        "inside-through-linked-source-name": (work / "link.zarr", src / "out", "inside the source"),
        "contains-through-link": (src, tmp_path / "alias", "contains the source"),
        "link-in-destination-into-source": (src, holder, "a symbolic link to"),
    }


CASES = [
    "parent",
    "same",
    "same-through-link",
    "inside",
    "inside-through-linked-source-name",
    "contains-through-link",
    "link-in-destination-into-source",
]


@pytest.mark.parametrize("case", CASES)
def test_rechunk_refuses_overlapping_trees(tmp_path: Path, no_ray: None, case: str) -> None:
    """``lsio_ray.rechunk`` refuses, before Ray starts and before anything is removed,
    a destination overlapping the source, symbolic links resolved."""
    data = _source(tmp_path / "work" / "in.zarr")
    src, dst, what = _cases(tmp_path)[case]
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match=what) as ei:
        lsio_ray.rechunk(src, dst, chunks=(16, 64, 64), overwrite=True)
    msg = str(ei.value)
    assert str(os.path.abspath(src)) in msg and str(os.path.abspath(dst)) in msg, msg
    assert _tree(tmp_path) == before
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "work" / "in.zarr"))[...], data)


@pytest.mark.parametrize("case", CASES)
def test_rechunk_cli_refuses_overlapping_trees(
    tmp_path: Path, no_ray: None, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from lsio_ray.cli import main

    data = _source(tmp_path / "work" / "in.zarr")
    src, dst, what = _cases(tmp_path)[case]
    before = _tree(tmp_path)
    rc = main(["rechunk", str(src), str(dst), "--chunks", "16,64,64", "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2
    assert what in err and str(src) in err and str(dst) in err, err
    assert _tree(tmp_path) == before
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "work" / "in.zarr"))[...], data)


def test_save_overwrite_never_removes_its_source(tmp_path: Path) -> None:
    """``lz.save(dst, source_array, overwrite=True)`` with ``dst`` holding the source
    array would remove it; refused, nothing removed.  A disjoint destination works."""
    work = tmp_path / "work"
    data = _source(work / "in.zarr")
    (tmp_path / "alias").symlink_to(work, target_is_directory=True)
    before = _tree(tmp_path)
    for src in (lz.open(str(work / "in.zarr")), zarr.open_array(str(work / "in.zarr"))):
        for dst in (work, tmp_path / "alias", work / "in.zarr", work / "in.zarr" / "sub"):
            with pytest.raises(ValueError, match="source") as ei:
                lz.save(dst, src, chunks=(16, 64, 64), overwrite=True)
            assert str(work / "in.zarr") in str(ei.value) and str(dst) in str(ei.value)
            assert _tree(tmp_path) == before
    out = lz.save(tmp_path / "out.zarr", lz.open(str(work / "in.zarr")), chunks=(16, 64, 64))
    np.testing.assert_array_equal(out[...], data)


# -- 2. store keys never leave the root -------------------------------------------------------

# relative keys escaping the root (which is tmp/root: they all land inside tmp, so a
# regression cannot harm anything outside the test's directory); absolute keys are
# added per test, naming files in tmp
BAD_KEYS = ["../x", "a/../../x", "a//b", "./x", "a/./b", "a/..", "..", "../out/k"]


@pytest.fixture
def jailed(tmp_path: Path) -> tuple[Any, Path, Path]:
    """A store at ``tmp/root`` (with ``a/k`` inside), ``tmp/x`` and ``tmp/out/k`` outside
    it, and ``root/link`` a symbolic link to ``tmp/out``."""
    from zarr.core.buffer import cpu

    from lsio_ray.zarr import Store

    root = tmp_path / "root"
    store = Store(root)
    store.set_sync("a/k", cpu.Buffer.from_bytes(b"inside"))
    (tmp_path / "x").write_bytes(b"outside x")
    (tmp_path / "abs").write_bytes(b"outside abs")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "k").write_bytes(b"outside k")
    (tmp_path / "out" / "sub").mkdir()
    (tmp_path / "out" / "sub" / "k").write_bytes(b"outside sub k")
    (root / "link").symlink_to(tmp_path / "out", target_is_directory=True)
    (root / "a" / "filelink").symlink_to(tmp_path / "x")
    return store, root, tmp_path


def _calls(store: Any, key: str) -> dict[str, Any]:
    """Every Store method on ``key``, as zero-argument callables."""
    from zarr.core.buffer import cpu, default_buffer_prototype
    from zarr.core.sync import sync

    proto = default_buffer_prototype()
    value = cpu.Buffer.from_bytes(b"written")

    async def collect(it: Any) -> list[str]:
        return [k async for k in it]

    return {
        "get": lambda: sync(store.get(key, proto)),
        "get_sync": lambda: store.get_sync(key),
        "get_partial_values": lambda: sync(store.get_partial_values(proto, [(key, None)])),
        "set": lambda: sync(store.set(key, value)),
        "set_sync": lambda: store.set_sync(key, value),
        "set_if_not_exists": lambda: sync(store.set_if_not_exists(key, value)),
        "exists": lambda: sync(store.exists(key)),
        "getsize": lambda: sync(store.getsize(key)),
        "delete": lambda: sync(store.delete(key)),
        "delete_sync": lambda: store.delete_sync(key),
        "delete_dir": lambda: sync(store.delete_dir(key)),
        "list_prefix": lambda: sync(collect(store.list_prefix(key))),
        "list_dir": lambda: sync(collect(store.list_dir(key))),
    }


def test_store_refuses_keys_leaving_the_root(jailed: tuple[Any, Path, Path]) -> None:
    store, _, tmp = jailed
    before = _tree(tmp)
    for key in [*BAD_KEYS, str(tmp / "abs"), str(tmp / "out"), str(tmp / "out" / "k")]:
        for name, call in _calls(store, key).items():
            with pytest.raises(ValueError, match="store key") as ei:
                call()
            assert repr(key) in str(ei.value), (name, key, str(ei.value))
            assert _tree(tmp) == before, (name, key)
    for name in ("get", "set", "exists", "delete"):
        with pytest.raises(ValueError, match="empty"):
            _calls(store, "")[name]()
    assert (tmp / "x").read_bytes() == b"outside x"
    assert (tmp / "abs").read_bytes() == b"outside abs"


@pytest.mark.parametrize("key", ["link/k", "link/sub/k", "link/sub", "link", "a/filelink"])
def test_store_never_follows_links_out_of_the_root(
    jailed: tuple[Any, Path, Path], key: str
) -> None:
    """A symbolic link inside the store leading out of it: nothing is read, written,
    listed or deleted through it, whatever the method."""
    store, _, tmp = jailed
    before = _tree(tmp)
    for name, call in _calls(store, key).items():
        with pytest.raises(ValueError, match="leads out of") as ei:
            call()
        msg = str(ei.value)
        assert repr(key) in msg and "symbolic link" in msg, (name, msg)
        assert _tree(tmp) == before, (name, key)
    assert (tmp / "out" / "k").read_bytes() == b"outside k"
    assert (tmp / "x").read_bytes() == b"outside x"


def test_store_listing_and_clearing_stay_inside(jailed: tuple[Any, Path, Path]) -> None:
    """Listings skip links leading out; delete_dir("") and clear remove the links
    themselves, never what they lead to; a link inside the store that stays inside it
    still works."""
    from zarr.core.buffer import cpu
    from zarr.core.sync import sync

    store, root, tmp = jailed
    (root / "alias").symlink_to(root / "a", target_is_directory=True)
    (root / "a" / "k2").symlink_to(root / "a" / "k")

    async def collect(it: Any) -> list[str]:
        return sorted([k async for k in it])

    assert sync(collect(store.list())) == ["a/k", "a/k2"]
    assert sync(collect(store.list_prefix(""))) == ["a/k", "a/k2"]
    assert sync(collect(store.list_dir(""))) == ["a", "alias"]
    assert sync(collect(store.list_dir("a/"))) == ["k", "k2"]
    assert store.get_sync("alias/k").to_bytes() == b"inside"  # a link staying inside
    assert store.get_sync("a/k2").to_bytes() == b"inside"
    store.set_sync("alias/new", cpu.Buffer.from_bytes(b"via inner link"))
    assert (root / "a" / "new").read_bytes() == b"via inner link"
    outside = {k: v for k, v in _tree(tmp).items() if not k.startswith("root")}
    sync(store.delete_dir(""))
    assert root.is_dir() and os.listdir(root) == []
    store.set_sync("b", cpu.Buffer.from_bytes(b"again"))
    (root / "link").symlink_to(tmp / "out", target_is_directory=True)
    sync(store.clear())
    assert root.is_dir() and os.listdir(root) == []
    assert {k: v for k, v in _tree(tmp).items() if not k.startswith("root")} == outside


def test_store_with_a_linked_root(tmp_path: Path) -> None:
    """A root that is itself a symbolic link is fine: keys resolve inside its target,
    and clear() empties the target, keeping the link."""
    from zarr.core.buffer import cpu
    from zarr.core.sync import sync

    from lsio_ray.zarr import Store

    (tmp_path / "real").mkdir()
    (tmp_path / "root").symlink_to(tmp_path / "real", target_is_directory=True)
    store = Store(tmp_path / "root")
    store.set_sync("c/0", cpu.Buffer.from_bytes(b"v"))
    (tmp_path / "real" / "c" / "back").symlink_to(tmp_path / "root" / "c")
    assert store.get_sync("c/back/0").to_bytes() == b"v"
    sync(store.clear())
    assert (tmp_path / "root").is_symlink() and os.listdir(tmp_path / "real") == []


# -- 3. stray temp files of dead writers are removed, nothing else ----------------------------


@pytest.fixture
def pids() -> Iterator[tuple[int, int]]:
    """(a PID that is dead, the PID of a live process other than this one)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield gone.pid, live.pid
    finally:
        live.kill()
        live.wait()


def _plant(d: Path, dead: int, live: int) -> tuple[set[str], set[str]]:
    """Temp-looking entries in ``d``: (names that must go, names that must stay)."""
    d.mkdir(parents=True, exist_ok=True)
    old = 1_000_000_000.0  # 2001
    go = {
        f"0.lsio-tmp.{dead}.1",  # the engine's format today
        f"0.lsio-tmp.{dead}.2.k3J9xQ",  # with the random suffix being added in C
        f"zarr.json.lsio-tmp.{dead}.17",
    }
    stay = {
        f"0.lsio-tmp.{os.getpid()}.3",  # this process: a write of another thread
        f"0.lsio-tmp.{live}.4",  # a live writer
        f"1.lsio-tmp.{dead}.5",  # dead, but modified just now (see below)
        "0.lsio-tmp",  # no PID field
        f"0.lsio-tmp.{dead}",  # no counter field
        f"0.lsio-tmpx.{dead}.1",  # not the marker
        "0.lsio-tmp.abc.1",  # PID not a number
        "0.lsio-tmp.0.1",  # PID 0
        "notes.txt",
        "0",
    }
    for name in go | stay:
        p = d / name
        p.write_bytes(b"x" * 100)
        os.utime(p, (old, old))
    os.utime(d / f"1.lsio-tmp.{dead}.5")  # recent: maybe a writer on another machine
    (d / f"dir.lsio-tmp.{dead}.1").mkdir()  # not a file
    os.utime(d / f"dir.lsio-tmp.{dead}.1", (old, old))
    (d / f"link.lsio-tmp.{dead}.1").symlink_to(d / "notes.txt")  # not a file
    os.utime(d / f"link.lsio-tmp.{dead}.1", (old, old), follow_symlinks=False)
    stay |= {f"dir.lsio-tmp.{dead}.1", f"link.lsio-tmp.{dead}.1"}
    return go, stay


def test_temp_file_pid_parsing() -> None:
    from lsio_ray.paths import temp_file_pid

    assert temp_file_pid("0.lsio-tmp.123.4") == 123
    assert temp_file_pid("a.b.lsio-tmp.123.4.RANDOM") == 123
    assert temp_file_pid("x.lsio-tmp.9.lsio-tmp.123.4") == 123
    for name in ["0", "0.lsio-tmp", "0.lsio-tmp.123", "0.lsio-tmp.123.", "0.lsio-tmp.x.1"]:
        assert temp_file_pid(name) is None, name
    assert temp_file_pid("0.lsio-tmp.0.1") is None


def test_store_write_removes_stray_temp_files(tmp_path: Path, pids: tuple[int, int]) -> None:
    """The first write of a Store into a directory removes the temp files there of
    writers that are gone, and only those; listings never show temp files."""
    from zarr.core.buffer import cpu
    from zarr.core.sync import sync

    from lsio_ray.zarr import Store

    dead, live = pids
    root = tmp_path / "s.zarr"
    go, stay = _plant(root / "c", dead, live)
    other_go, _ = _plant(root / "other", dead, live)
    kept = {n: (root / "c" / n).read_bytes() for n in stay if (root / "c" / n).is_file()}
    store = Store(root)

    async def collect(it: Any) -> list[str]:
        return sorted([k async for k in it])

    # temp files (the marker, a PID, a counter) are not keys; look-alikes are
    kept_temps = {
        f"0.lsio-tmp.{os.getpid()}.3",
        f"0.lsio-tmp.{live}.4",
        f"1.lsio-tmp.{dead}.5",
        f"dir.lsio-tmp.{dead}.1",
        f"link.lsio-tmp.{dead}.1",
    }
    assert kept_temps <= stay
    temps = go | kept_temps
    keys = {f"c/{n}" for n in (go | stay) - temps if (root / "c" / n).is_file()}
    assert set(sync(collect(store.list_prefix("c")))) == keys
    assert set(sync(collect(store.list_dir("c")))) == {k[2:] for k in keys}
    store.set_sync("c/1", cpu.Buffer.from_bytes(b"new"))
    names = set(os.listdir(root / "c"))
    assert names == stay | {"1"}, (names, go)
    assert not go & names
    for n, data in kept.items():
        assert (root / "c" / n).read_bytes() == data
    # directories the store did not write into are left alone
    assert other_go <= set(os.listdir(root / "other"))
    sync(store.set("other/x", cpu.Buffer.from_bytes(b"y")))
    assert not other_go & set(os.listdir(root / "other"))


def test_save_removes_stray_temp_files(tmp_path: Path, pids: tuple[int, int]) -> None:
    """An interrupted save leaves chunks and temp files, no metadata; saving again
    removes the dead writers' temp files everywhere in the array, and only those."""
    dead, live = pids
    path = tmp_path / "a.zarr"
    go_top, stay_top = _plant(path, dead, live)
    go_c, stay_c = _plant(path / "c" / "0", dead, live)
    data = np.arange(64, dtype="f4").reshape(8, 8)
    out = lz.save(path, data, chunks=(4, 4))
    np.testing.assert_array_equal(out[...], data)
    np.testing.assert_array_equal(zarr.open_array(str(path))[...], data)
    top, c0 = set(os.listdir(path)), set(os.listdir(path / "c" / "0"))
    assert stay_top <= top and not go_top & top, top
    assert stay_c <= c0 and not go_c & c0, c0


# -- 4. codec arguments mean what they mean in zarr-python ------------------------------------


def _zarr_docs(path: Path) -> dict[str, Any]:
    import json

    return {
        n: json.loads((path / n).read_bytes())
        for n in ("zarr.json", ".zarray", ".zattrs")
        if (path / n).exists()
    }


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize(
    "codecs",
    [
        {},
        {"compressors": None},
        {"compressors": "auto"},
        {"filters": None},
        {"serializer": "auto"},
        {"compressors": None, "filters": None},
    ],
    ids=["defaults", "compressors-None", "compressors-auto", "filters-None", "serializer", "none"],
)
def test_save_and_create_write_zarr_pythons_metadata(
    tmp_path: Path, zarr_format: int, codecs: dict[str, Any]
) -> None:
    """``lz.save`` / ``lz.create`` write the metadata ``zarr.create_array`` writes for the
    same arguments: ``compressors=None`` is uncompressed (it was zstd)."""
    data = np.arange(60, dtype="i4").reshape(6, 10)
    kw: dict[str, Any] = dict(chunks=(3, 5), zarr_format=zarr_format, **codecs)
    ref = zarr.create_array(str(tmp_path / "ref.zarr"), shape=data.shape, dtype=data.dtype, **kw)
    ref[...] = data
    lz.save(tmp_path / "saved.zarr", data, **kw)
    lz.create(tmp_path / "made.zarr", shape=data.shape, dtype=data.dtype, **kw)
    want = _zarr_docs(tmp_path / "ref.zarr")
    assert _zarr_docs(tmp_path / "saved.zarr") == want
    assert _zarr_docs(tmp_path / "made.zarr") == want
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "saved.zarr"))[...], data)
    if codecs.get("compressors", "auto") is None:
        # stored raw: each chunk file is exactly the chunk's bytes
        first = "0.0" if zarr_format == 2 else "c/0/0"
        assert (tmp_path / "saved.zarr" / first).stat().st_size == 3 * 5 * 4


def test_rechunk_checks_a_node_local_destination_on_its_node(tmp_path: Path) -> None:
    """A destination on another node's local disk is checked there as well (the driver
    cannot see it); a disjoint one is re-chunked as before."""
    pytest.importorskip("ray")
    from _ray_helpers import local_cluster

    from lsio_ray.ray import Coordinator
    from lsio_ray.ray.rechunk.driver import check_disjoint_on

    with local_cluster(tmp_path / "cluster", workers=1) as lc:
        other = lc.nodes[1]
        src = lc.disks[other] / "in.zarr"
        data = _source(src)
        with pytest.raises(ValueError, match=f"on node {other}: .*inside the source"):
            check_disjoint_on(other, str(src), str(src / "out"))
        check_disjoint_on(other, str(src), str(lc.disks[other] / "out.zarr"))
        coord = Coordinator(roots=lc.roots)
        res = lsio_ray.rechunk(
            src, lc.disks[other] / "out.zarr", chunks=(16, 64, 64), coordinator=coord
        )
        assert res.blocks >= 1
        out = zarr.open_array(str(lc.disks[other] / "out.zarr"))
        assert out.chunks == (16, 64, 64)
        np.testing.assert_array_equal(out[...], data)
