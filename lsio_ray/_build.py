"""cffi build script (API mode): compiles csrc/ against the system liburing.

Run by setuptools through ``cffi_modules`` in setup.py.  The cdef is the public headers
themselves, csrc/lsio.h then csrc/decode.h (which lsio.h includes at its end), with
preprocessor lines dropped and each ``#define NAME value`` turned into
``#define NAME ...`` so the compiler supplies the value (negative codes included).
"""

from __future__ import annotations

import os
import re
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


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "lsio_ray._lsio",
    '#include "lsio.h"',
    # setuptools wants paths relative to setup.py (the build runs from there)
    sources=[os.path.relpath(CSRC / n) for n in SOURCES],
    include_dirs=[os.path.relpath(CSRC)],
    libraries=["uring", "zstd", "blosc", "pthread"],
    extra_compile_args=["-O2", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
