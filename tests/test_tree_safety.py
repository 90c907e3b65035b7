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
    missing chunks as fill and exit 0.  Now: exit 1, a message naming both paths, the
    source untouched, and Ray never imported."""
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
    assert proc.returncode == 1, proc.stderr
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
    assert rc == 1
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
