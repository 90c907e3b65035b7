"""cffi build script (API mode): compiles csrc/ against the system liburing, zstd and blosc.

Run by setuptools through ``cffi_modules`` in setup.py, which names :func:`make_builder`
(importing this module probes nothing and compiles nothing).  The cdef is the public headers
themselves, csrc/lsio.h then csrc/decode.h (which lsio.h includes at its end), with
preprocessor lines dropped and each ``#define NAME value`` turned into
``#define NAME ...`` so the compiler supplies the value (negative codes included).

Before anything is compiled, each library is probed with a small program built by the
same compiler (``CC``, ``CPPFLAGS``, ``CFLAGS``, ``LDFLAGS`` honoured, as setuptools does):

* zstd and blosc are required (the chunk decoder needs them): without them the build
  stops with a message naming the package to install, not with a compiler error;
* liburing is optional: without it (or with ``LSIO_NO_URING=1``) the core is built with
  ``-DLSIO_NO_URING`` -- the pread thread backend only -- and a warning says so.  At run
  time ``lsio_ray.io.HAVE_URING`` tells which build this is.
* ``LSIO_STATIC_URING=1`` links liburing.a into the extension (scripts/build-wheel sets
  it: the wheel then needs no liburing.so).  zstd and blosc stay shared libraries (the
  Debian libblosc.a is not position independent, and libblosc.so needs libzstd.so
  anyway): ``auditwheel repair`` copies them into the wheel.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
#: the public headers, in cdef order (decode.h needs lsio.h's lsio_engine)
HEADERS = ("lsio.h", "decode.h")
#: the C core's sources (csrc/Makefile's CORE lists the same files for the C tests)
SOURCES = (
    "engine.c",
    "engine_sched.c",
    "engine_complete.c",
    "engine_pread.c",
    "engine_uring.c",
    "pool.c",
    "decode.c",
)


class Library:
    """A system library the C core links: how to probe it and what to install for it."""

    def __init__(self, name: str, lib: str, program: str, debian: str, fedora: str) -> None:
        self.name, self.lib, self.program = name, lib, program
        self.debian, self.fedora = debian, fedora

    def hint(self) -> str:
        """The install line a user needs, by distribution."""
        return (
            f"Debian/Ubuntu: apt-get install {self.debian}; Fedora/RHEL: dnf install {self.fedora}"
        )


URING = Library(
    "liburing",
    "uring",
    "#include <liburing.h>\n"
    "int main(void) { struct io_uring r; return io_uring_queue_init(1, &r, 0) < 0; }\n",
    "liburing-dev",
    "liburing-devel",
)
ZSTD = Library(
    "zstd",
    "zstd",
    "#include <zstd.h>\n#include <zstd_errors.h>\n"
    "int main(void) { ZSTD_freeDCtx(ZSTD_createDCtx()); return 0; }\n",
    "libzstd-dev",
    "libzstd-devel",
)
BLOSC = Library(
    "blosc",
    "blosc",
    '#include <blosc.h>\nint main(void) { return blosc_compname_to_compcode("lz4") < 0; }\n',
    "libblosc-dev",
    "blosc-devel",
)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _compiler() -> list[str]:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shlex.split(cc)


def probe(lib: Library, extra: list[str] | None = None) -> tuple[bool, str]:
    """Compile and link ``lib.program`` against ``-l<lib.lib>``: (ok, the compiler's output).

    ``extra`` replaces ``-l<lib.lib>`` (e.g. a static archive's path).
    """
    env_flags = [
        *shlex.split(os.environ.get("CPPFLAGS", "")),
        *shlex.split(os.environ.get("CFLAGS", "")),
    ]
    ldflags = shlex.split(os.environ.get("LDFLAGS", ""))
    with tempfile.TemporaryDirectory(prefix="lsio-probe-") as tmp:
        src = Path(tmp) / f"probe_{lib.lib}.c"
        src.write_text(lib.program)
        cmd = [
            *_compiler(),
            *env_flags,
            str(src),
            "-o",
            str(Path(tmp) / "probe"),
            *ldflags,
            *(extra if extra is not None else [f"-l{lib.lib}"]),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except FileNotFoundError:
            raise SystemExit(
                f"lsio_ray: cannot build the C core: no C compiler ({cmd[0]!r} not found); "
                "install gcc (Debian/Ubuntu: apt-get install gcc) or a prebuilt lsio_ray wheel"
            ) from None
    return proc.returncode == 0, (proc.stderr + proc.stdout).strip()


def _first_error(output: str) -> str:
    for line in output.splitlines():
        if "error" in line or "cannot find" in line:
            return line.strip()
    return output.splitlines()[0].strip() if output else "(no output)"


def _static_archive(lib: Library) -> str:
    """The path of ``lib<name>.a`` as the compiler finds it, or SystemExit."""
    out = subprocess.run(
        [*_compiler(), f"-print-file-name=lib{lib.lib}.a"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if not os.path.isabs(out) or not os.path.exists(out):
        raise SystemExit(
            f"lsio_ray: LSIO_STATIC_URING=1 but the compiler finds no lib{lib.lib}.a "
            f"({lib.hint()}); unset LSIO_STATIC_URING to link the shared {lib.name}"
        )
    return out


def configure() -> dict[str, list[str]]:
    """Probe the libraries and return the extension's ``libraries``, ``extra_objects``,
    ``extra_link_args`` and ``define_macros`` (as ``NAME`` strings), or SystemExit with a
    message naming what to install."""
    for lib in (ZSTD, BLOSC):
        ok, out = probe(lib)
        if not ok:
            raise SystemExit(
                f"lsio_ray: cannot build the C core: {lib.name} (its headers or lib{lib.lib}) "
                f"was not found -- the chunk decoder needs it.  Install its development files "
                f"({lib.hint()}) and try again, or install a prebuilt lsio_ray wheel.\n"
                f"  compiler said: {_first_error(out)}"
            )
    libraries = ["zstd", "blosc", "pthread"]
    objects: list[str] = []
    link_args: list[str] = []
    macros: list[str] = []
    if _flag("LSIO_NO_URING"):
        print("lsio_ray: LSIO_NO_URING=1: building without io_uring (pread backend only)")
        macros.append("LSIO_NO_URING")
    elif _flag("LSIO_STATIC_URING"):
        archive = _static_archive(URING)
        ok, out = probe(URING, [archive])
        if not ok:
            raise SystemExit(
                f"lsio_ray: LSIO_STATIC_URING=1 but linking {archive} failed: {_first_error(out)}"
            )
        print(f"lsio_ray: linking liburing statically ({archive})")
        objects.append(archive)
        link_args.append("-Wl,--exclude-libs,liburing.a")  # keep its symbols private
    else:
        ok, out = probe(URING)
        if ok:
            libraries.insert(0, "uring")
        else:
            print(
                "lsio_ray: WARNING: liburing was not found (" + _first_error(out) + "): "
                "building the C core WITHOUT the io_uring backend -- every engine will use "
                "the pread thread backend.  For io_uring, install liburing's headers "
                f"({URING.hint()}) and reinstall lsio_ray.",
                file=sys.stderr,
            )
            macros.append("LSIO_NO_URING")
    return {
        "libraries": libraries,
        "extra_objects": objects,
        "extra_link_args": link_args,
        "define_macros": macros,
    }


def _cdef_text() -> str:
    out = []
    text = "\n".join((CSRC / h).read_text() for h in HEADERS)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    for line in text.splitlines():
        m = re.match(r"#define\s+(LSIO_\w+)\s+\S+", line)
        if m:
            out.append(f"#define {m.group(1)} ...")
        elif line.startswith("#"):
            continue
        else:
            out.append(line)
    return "\n".join(out)


def make_builder() -> FFI:
    """The configured FFI builder (probes the system libraries first)."""
    conf = configure()
    builder = FFI()
    builder.cdef(_cdef_text())
    builder.set_source(
        "lsio_ray._lsio",
        '#include "lsio.h"',
        # setuptools wants paths relative to setup.py (the build runs from there)
        sources=[os.path.relpath(CSRC / n) for n in SOURCES],
        include_dirs=[os.path.relpath(CSRC)],
        libraries=conf["libraries"],
        extra_objects=conf["extra_objects"],
        extra_link_args=conf["extra_link_args"],
        define_macros=[(m, None) for m in conf["define_macros"]],
        extra_compile_args=["-O2", "-std=gnu11"],
    )
    return builder


if __name__ == "__main__":
    make_builder().compile(verbose=True)
