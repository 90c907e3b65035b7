"""The ordered-delivery deadlock breaker: bounded copies, then drop-and-read-again.

A consumer waiting for a result whose read cannot get a buffer, because landed results it
has not reached yet fill the pool, is the one wait cycle a bounded pool can have.  The
engine breaks it by moving the results it will hand out last out of the pool: copied
while the copies held stay within one pool's worth (``stats()["spill_limit"]``), dropped
and read again after that.  Every test counts bytes, none times anything.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from lsio_ray import ByteRange, Engine, OpGroup, get_ranges


def _spill_held(eng: Engine) -> int:
    """Bytes of spilled copies the engine holds now, counted from its groups."""
    return sum(a.nbytes for s in list(eng._live.values()) for a in list(s.spilled.values()))


def _wait_landed(res: object) -> None:
    """Wait until every result of a group has been filed by the driver (not consumed)."""
    state = res._task
    for _ in range(6000):
        if state.landed >= state.total:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{res!r} did not land")


def _settled(eng: Engine) -> dict[str, int]:
    """The engine's stats once its last file ops have closed: a file's last completion
    is handed out before the file is closed and retired."""
    st = eng.stats()
    for _ in range(3000):
        if st["files_pending"] == 0:
            break
        threading.Event().wait(0.01)
        st = eng.stats()
    return st


def _groups(paths: list, per: int) -> list[OpGroup]:
    return [
        OpGroup([get_ranges(p, [(0, None)]) for p in paths[i : i + per]])
        for i in range(0, len(paths), per)
    ]


@pytest.mark.parametrize("order", ["operation", "completion"])
def test_groups_consumed_in_reverse_stay_within_the_bound(make_engine, files, order):
    """Six groups of one pool each, consumed last group first: every group ahead of the
    consumed one lands and fills the pool, so the breaker runs again and again.  The
    copies it holds never exceed one pool; the rest is read again; all bytes are right."""
    fs = files(24, 64 << 10)
    eng = make_engine(pool_bytes="256K", depth=16)
    results = [eng.submit(g, order=order) for g in _groups([p for p, _ in fs], 4)]
    want = {str(p): d for p, d in fs}
    peak = 0
    for res in reversed(results):
        got = {}
        for c in res:
            with c:
                got[c.path] = c.tobytes()
            peak = max(peak, _spill_held(eng))
        assert got == {p: want[p] for p in got} and len(got) == 4
    assert peak <= eng.pool_bytes, f"spilled copies held {peak} bytes at once"
    st = eng.stats()
    assert st["spill_limit"] == st["pool_bytes"] == 256 << 10
    assert peak <= st["spill_limit"] and st["spill_peak"] <= st["spill_limit"]
    assert st["spill_held"] == 0 and _spill_held(eng) == 0
    assert st["spilled"] >= 1 and st["evicted"] >= 1  # both mechanisms ran
    assert st["spilled_bytes"] == st["spilled"] * (64 << 10)
    st = _settled(eng)
    assert st["buffers_out"] == 0 and st["files_pending"] == 0 and st["groups_live"] == 0


def test_without_copies_everything_is_read_again(make_engine, files):
    """spill limit 0: the breaker only drops and re-reads, and still delivers in order,
    including ranges given as last-n and to-the-end (re-read at their resolved offsets)."""
    fs = files(16, 48 << 10)
    eng = make_engine(pool_bytes="256K", depth=16)
    eng.service.spill_limit = 0
    results = [
        eng.submit(
            OpGroup(
                [
                    get_ranges(p, [ByteRange.last(40_000), (100, 8_292), ByteRange(9_000)])
                    for p, _ in fs[i : i + 4]
                ]
            )
        )
        for i in range(0, 16, 4)
    ]
    for k, res in reversed(list(enumerate(results))):
        got = [c.tobytes() for c in res]
        exp = []
        for _, d in fs[4 * k : 4 * k + 4]:
            exp += [d[-40_000:], d[100:8_292], d[9_000:]]
        assert got == exp
    st = eng.stats()
    assert st["evicted"] >= 1 and st["spilled"] == 0 and st["spill_peak"] == 0
    st = _settled(eng)
    assert st["buffers_out"] == 0 and st["files_pending"] == 0


def test_reread_of_a_deleted_file_fails_that_range_only(make_engine, files):
    """A dropped result whose file is gone when it is read again fails alone: the other
    range of that file, which stayed in the pool, is neither skipped nor failed."""
    fs = files(5, 64 << 10)
    eng = make_engine(pool_bytes="256K", depth=16)
    eng.service.spill_limit = 0
    first = eng.submit(
        OpGroup([get_ranges(p, [(0, 32 << 10), (32 << 10, 64 << 10)]) for p, _ in fs[:4]]),
        errors="return",
    )
    _wait_landed(first)  # its 8 results fill the pool
    (p4, d4) = fs[4]
    assert eng.read(p4, 0, 32 << 10) == d4[: 32 << 10]  # needs room: first's last is dropped
    assert eng.stats()["evicted"] == 1
    fs[3][0].unlink()
    chunks = first.collect()
    assert [(c.path, c.offset) for c in chunks] == [
        (str(p), off) for p, _ in fs[:4] for off in (0, 32 << 10)
    ]
    assert [c.ok for c in chunks] == [True] * 7 + [False]
    assert isinstance(chunks[7].error, FileNotFoundError)
    assert chunks[7].error.filename == str(fs[3][0])
    for c, (_, d) in zip(chunks[:7], [f for f in fs[:4] for _ in (0, 1)], strict=False):
        assert c.tobytes() == d[c.offset : c.offset + c.length]
        c.release()
    assert eng.stats()["buffers_out"] == 0


_STRESS = r"""
import hashlib, sys
from lsio_ray import ByteRange, Engine, OpGroup, get_ranges

backend, reverse, paths = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
want = {p: open(p, "rb").read() for p in paths}


def hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1])


def ops(chunk):
    out = []
    for j, p in enumerate(chunk):
        if j % 3 == 0:
            out.append(get_ranges(p))  # whole file: a size lookup first
        elif j % 3 == 1:
            out.append(get_ranges(p, [(0, len(want[p]))]))  # explicit: issued at once
        else:
            out.append(get_ranges(p, [ByteRange.last(len(want[p]) // 2), (0, len(want[p]) // 2)]))
    return out


groups = [OpGroup(ops(paths[i : i + 6]), metadata=i) for i in range(0, len(paths), 6)]
want_hwm = hwm_kib()
with Engine(backend=backend, pool_bytes="8M", depth=32) as eng:
    if reverse:
        results = reversed([eng.submit(g) for g in groups])
    else:
        results = eng.stream(groups, window=8)
    n = 0
    for res in results:
        for c in res:
            with c:
                d = want[c.path]
                assert c.tobytes() == d[c.offset : c.offset + c.length], c
                n += 1
    st = eng.stats()
grew = hwm_kib() - want_hwm
print(n, st["spilled"], st.get("spill_limit", -1), st.get("spill_peak", -1), grew)
"""


@pytest.mark.parametrize("reverse", [False, True], ids=["stream", "reverse"])
def test_many_large_groups_in_a_small_pool_complete(backend, files, reverse):
    """Many groups of 2 MiB files (whole, explicit, last-n) through an 8 MiB pool in
    operation order: the run must finish (in a subprocess, so a deadlock fails by timeout)
    and its memory high-water mark stays within the pool plus the spill bound."""
    fs = files(48, 2 << 20)
    r = subprocess.run(
        [sys.executable, "-c", _STRESS, backend, "1" if reverse else "0", *(str(p) for p, _ in fs)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, textwrap.shorten(r.stderr, 2000)
    n, spilled, limit, spill_peak, grew_kib = (int(x) for x in r.stdout.split())
    assert n == 8 * 8  # 8 groups of 6 files: 2 whole, 2 explicit, 2 with two ranges
    # the pool (8 MiB) + at most one pool of copies + interpreter slack
    assert grew_kib <= (8 + 8 + 24) << 10, (grew_kib, spilled)
    assert limit == 8 << 20 and 0 <= spill_peak <= limit
