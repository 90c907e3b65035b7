"""Chunk views and the pool: an array taken from ``chunk.data`` keeps its pool buffer
(and the engine's arena) alive, on both backends, whatever the chunk and the engine do."""

from __future__ import annotations

import gc
import subprocess
import sys

import numpy as np
import pytest

from lsio_ray import Engine, OpGroup, get_ranges


def _read_one(eng: Engine, path: object) -> object:
    (chunk,) = eng.submit(OpGroup([get_ranges(path)]))
    return chunk


@pytest.mark.parametrize("how", ["release", "with", "detached"])
def test_view_kept_past_release_never_shows_other_data(make_engine, files, how):
    """Read file A, keep ``chunk.data``, give the chunk back, then read other files into
    the same pool many times: the kept array still holds A's bytes."""
    fs = files(9, 64 << 10)
    (pa, da), others = fs[0], fs[1:]
    eng = make_engine(pool_bytes="256K", depth=8)
    chunk = _read_one(eng, pa)
    kept = chunk.data
    if how == "release":
        chunk.release()
    elif how == "with":
        with chunk:
            pass
    else:
        detached = chunk.detached()
        assert detached.tobytes() == da
    with pytest.raises(ValueError, match="released"):
        chunk.data  # noqa: B018
    for _ in range(12):
        for p, d in others:
            for c in eng.submit(OpGroup([get_ranges(p, [(0, 32 << 10), (32 << 10, None)])])):
                with c:
                    assert c.tobytes() == d[c.offset : c.offset + c.length]
    assert kept.tobytes() == da
    st = eng.stats()
    assert st["buffers_out"] == 1 and st["pool_in_use"] == 64 << 10  # A's buffer, held
    derived = kept[1000:2000].view(np.uint16)  # views of the view count too
    del kept, chunk
    gc.collect()
    assert eng.stats()["buffers_out"] == 1
    assert derived.tobytes() == da[1000:2000]
    del derived
    gc.collect()
    st = eng.stats()
    assert st["buffers_out"] == 0 and st["pool_in_use"] == 0


def test_held_arrays_are_back_pressure(make_engine, files):
    """Arrays taken from released chunks hold the pool like the chunks would: no read
    lands until they are gone (counted, not timed)."""
    ((p, d),) = files(1, 256 << 10)
    eng = make_engine(pool_bytes="64K", depth=16)
    res = eng.submit(OpGroup([get_ranges(p, [(k * 4096, (k + 1) * 4096) for k in range(64)])]))
    arrays = []
    for _ in range(16):  # 16 x 4 KiB fill the pool
        with res.next(timeout=10) as c:
            arrays.append(c.data)
    with pytest.raises(TimeoutError):
        res.next(timeout=0.5)
    st = eng.stats()
    assert st["pool_in_use"] == 64 << 10 and st["buffers_out"] == 16 and st["spilled"] == 0
    assert b"".join(a.tobytes() for a in arrays) == d[: 64 << 10]
    arrays.clear()
    rest = b"".join(c.tobytes() for c in res)
    assert rest == d[64 << 10 :]


_AFTER_CLOSE = r"""
import gc, sys
import numpy as np
from lsio_ray import Engine, OpGroup, get_ranges

backend, a, others = sys.argv[1], sys.argv[2], sys.argv[3:]
want = open(a, "rb").read()


def mapped(addr):
    for line in open("/proc/self/maps"):
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= addr < hi:
            return True
    return False


eng = Engine(backend=backend, pool_bytes="1M", depth=8)
(c,) = eng.submit(OpGroup([get_ranges(a)]))
kept = c.data
with eng.submit(OpGroup([get_ranges(a, [(10, 20)])])).collect()[0] as c2:
    kept2 = c2.data[:]
c.release()
for _ in range(5):
    for p in others:
        for x in eng.submit(OpGroup([get_ranges(p)])):
            x.release()
addr = kept.ctypes.data
eng.close()
del eng, c, c2
gc.collect()
assert kept.tobytes() == want, "kept view changed after close"
assert mapped(addr)
assert kept2.tobytes() == want[10:20]
kept[:] = 7  # writable, and nobody else's memory
assert int(kept.sum()) == 7 * len(want)
del kept, kept2
gc.collect()
assert not mapped(addr), "the arena outlived its last view"
print("ok")
"""


def test_view_kept_past_engine_close_never_crashes(backend, files):
    """In a subprocess, so that a segfault fails the test instead of killing pytest."""
    fs = files(5, 96 << 10)
    r = subprocess.run(
        [sys.executable, "-c", _AFTER_CLOSE, backend, *(str(p) for p, _ in fs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stdout, r.stderr)
