"""Conformance suite of the local engine: every test runs on io_uring and on pread
threads, and (where reads are involved) buffered and O_DIRECT."""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import content, open_fds

from lsio_ray import (
    ByteRange,
    GroupCancelledError,
    OpGroup,
    RangePastEOFError,
    get_ranges,
    put_file,
    put_ranges,
)
from lsio_ray.io._core import COMPLETION_DTYPE

# ---------------------------------------------------------------------------- reads


def test_range_kinds(make_engine, files, direct):
    """Whole file, start:end, offset to end, last n bytes; unaligned for O_DIRECT."""
    ((path, data),) = files(1, 100_003)
    eng = make_engine(pool_bytes="4M")
    rs = [
        ByteRange.whole("w"),
        ByteRange(5, 4101, "s"),
        ByteRange.from_offset(99_000, "o"),
        ByteRange.last(777, "l"),
        ByteRange(4096, 8192, "a"),
        ByteRange(10, 10, "empty"),
    ]
    want = [data, data[5:4101], data[99_000:], data[-777:], data[4096:8192], b""]
    chunks = list(eng.submit(OpGroup([get_ranges(path, rs, direct=direct)])))
    assert [c.metadata for c in chunks] == ["w", "s", "o", "l", "a", "empty"]
    for c, w in zip(chunks, want, strict=True):
        assert c.tobytes() == w
        assert c.path == str(path)
        c.release()
    assert eng.stats()["buffers_out"] == 0


def test_operation_order_across_files(make_engine, files, direct):
    """order='operation' yields ops in order and each op's ranges in order."""
    fs = files(12, [3000 + 1000 * i for i in range(12)])
    eng = make_engine(pool_bytes="1M", depth=8)
    rng = np.random.default_rng(1)
    ops, want = [], []
    for i, (p, d) in enumerate(fs):
        starts = rng.integers(0, len(d) - 100, 20)
        ends = starts + rng.integers(1, 100, 20)
        ops.append(
            get_ranges(
                p, starts=starts, ends=ends, metadata=[(i, j) for j in range(20)], direct=direct
            )
        )
        want += [((i, j), d[s:e]) for j, (s, e) in enumerate(zip(starts, ends, strict=True))]
    got = [(c.metadata, c.tobytes()) for c in eng.submit(OpGroup(ops))]
    assert got == want


def test_completion_order_yields_each_once(make_engine, files, direct):
    fs = files(8, 50_000)
    eng = make_engine()
    ops = [
        get_ranges(
            p, [ByteRange(k * 4096, k * 4096 + 4096, (i, k)) for k in range(12)], direct=direct
        )
        for i, (p, _) in enumerate(fs)
    ]
    seen = {}
    for c in eng.submit(OpGroup(ops), order="completion"):
        with c:
            i, k = c.metadata
            assert c.tobytes() == fs[i][1][k * 4096 : (k + 1) * 4096]
            assert c.metadata not in seen
            seen[c.metadata] = True
    assert len(seen) == 8 * 12


def test_groups_stream_in_submission_order(make_engine, files):
    """Groups come back in submission order with their metadata, several in flight."""
    fs = files(40, 2048)
    eng = make_engine(pool_bytes="256K")
    groups = (
        OpGroup([get_ranges(p) for p, _ in fs[i : i + 4]], metadata=f"out{i // 4}")
        for i in range(0, 40, 4)
    )
    order = []
    for res in eng.stream(groups, window=3):
        chunks = list(res)
        order.append(res.metadata)
        k = int(res.metadata[3:]) * 4
        assert [c.tobytes() for c in chunks] == [d for _, d in fs[k : k + 4]]
        for c in chunks:
            c.release()
    assert order == [f"out{i}" for i in range(10)]


def test_many_ranges_in_one_call(make_engine, tmp_path, direct):
    """100,000+ ranges in one submission, built from arrays (no object per range)."""
    n = 120_000
    data = content(7, 8 << 20)
    p = tmp_path / "big"
    p.write_bytes(data)
    arr = np.frombuffer(data, np.uint8)
    rng = np.random.default_rng(3)
    starts = rng.integers(0, len(data) - 512, n)
    lens = rng.integers(1, 512, n)
    eng = make_engine(pool_bytes="2M", depth=128)
    res = eng.submit(OpGroup([get_ranges(p, starts=starts, ends=starts + lens, direct=direct)]))
    count = 0
    for c in res:
        i = c.index
        assert c.offset == starts[i] and c.length == lens[i]
        assert np.array_equal(c.data, arr[starts[i] : starts[i] + lens[i]])
        c.release()
        count += 1
    assert count == n
    st = eng.stats()
    assert st["pool_peak"] <= st["pool_bytes"]
    assert st["buffers_out"] == 0 and st["pool_in_use"] == 0


def test_twenty_thousand_small_files(make_engine, tmp_path):
    n, size = 20_000, 16 << 10
    base = content(0, size + n)
    for i in range(n):
        (tmp_path / f"c{i}").write_bytes(base[i : i + size])
    eng = make_engine(pool_bytes="8M", depth=64)
    res = eng.submit(
        OpGroup([get_ranges(tmp_path / f"c{i}") for i in range(n)]), order="completion"
    )
    seen = np.zeros(n, bool)
    for c in res:
        i = int(Path(c.path).name[1:])
        assert c.length == size and c.data[:64].tobytes() == base[i : i + 64]
        assert c.data[-1] == base[i + size - 1]
        seen[i] = True
        c.release()
    assert seen.all()


def test_big_read_over_two_gib_is_split(make_engine, tmp_path):
    """A read larger than 2 GiB (Linux caps one read at 2 GiB - 4 KiB) arrives whole."""
    p = tmp_path / "sparse"
    size = (2 << 30) + 12345
    with open(p, "wb") as f:
        f.truncate(size)
        f.seek(size - 5)
        f.write(b"tail!")
        f.seek(1 << 31)
        f.write(b"mid")
    eng = make_engine(pool_bytes="4G")
    (c,) = eng.get(p)
    assert c.length == size
    assert c.data[-5:].tobytes() == b"tail!"
    assert c.data[1 << 31 : (1 << 31) + 3].tobytes() == b"mid"
    assert not c.data[:4096].any()
    c.release()


def test_a_read_that_lands_after_many_empty_reaps_is_not_lost(make_engine, files, monkeypatch):
    """The IO thread calls a group's completions lost after 50 empty reaps with nothing
    pending in the engine.  A read that completes between an empty reap and that look at
    the engine is ready, not lost: it must arrive.  (Under heavy load a 2 GiB pread once
    took those 50 reaps and landed in that window: "lsio engine lost 1 completions".)
    Here each of the first 60 reaps waits until the read has landed and then reports
    nothing, as a reap that timed out just before it did."""
    ((p, d),) = files(1, 100_000)
    eng = make_engine()
    engines = eng._service.engine
    real_reap = engines.reap
    empty = {"n": 0}

    def late_reap(max_n: int = 4096, min_n: int = 1, timeout_ms: int = -1) -> np.ndarray:
        if empty["n"] < 60:
            empty["n"] += 1
            for _ in range(1000):  # at most 10 s
                if engines.raw.stats()["completions_ready"]:
                    break
                threading.Event().wait(0.01)
            return np.empty(0, COMPLETION_DTYPE)
        return real_reap(max_n, min_n, timeout_ms)

    monkeypatch.setattr(engines, "reap", late_reap)
    (c,) = eng.get(p)
    assert empty["n"] == 60
    assert c.tobytes() == d
    c.release()


# ---------------------------------------------------------------------------- errors


def test_missing_file_is_one_error_and_others_arrive(make_engine, files, direct):
    ((p, d),) = files(1, 10_000)
    missing = p.parent / "nope"
    eng = make_engine()
    g = OpGroup(
        [
            get_ranges(missing, [(0, 10), (10, 20), (30, None)], direct=direct),
            get_ranges(p, [(0, 100)], direct=direct),
        ]
    )
    chunks = eng.submit(g, errors="return").collect()
    assert len(chunks) == 2
    assert isinstance(chunks[0].error, FileNotFoundError)
    assert chunks[0].error.filename == str(missing)
    assert chunks[1].tobytes() == d[:100]
    # errors="raise": the error is raised where it stands, and iteration goes on
    res = eng.submit(g)
    with pytest.raises(FileNotFoundError, match="nope"):
        next(res)
    assert next(res).tobytes() == d[:100]
    with pytest.raises(StopIteration):
        next(res)


def test_range_past_eof_fails_alone(make_engine, files, direct):
    ((p, d),) = files(1, 10_000)
    eng = make_engine()
    op = get_ranges(
        p,
        [(0, 10), (9_990, 10_010), (20_000, 20_001), (100, 200), ByteRange.last(20_000)],
        direct=direct,
    )
    chunks = eng.submit(OpGroup([op]), errors="return").collect()
    assert [c.ok for c in chunks] == [True, False, False, True, False]
    assert chunks[0].tobytes() == d[:10] and chunks[3].tobytes() == d[100:200]
    err = chunks[1].error
    assert isinstance(err, RangePastEOFError) and isinstance(err, EOFError)
    assert (err.path, err.start, err.end, err.file_size) == (str(p), 9_990, 10_010, 10_000)
    assert "9990..10010" in str(err) and "10000 bytes" in str(err) and str(p) in str(err)
    assert chunks[2].error.file_size == 10_000
    assert isinstance(chunks[4].error, RangePastEOFError)


def test_directory_and_not_a_directory(make_engine, tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    eng = make_engine()
    chunks = eng.submit(
        OpGroup([get_ranges(tmp_path, [(0, 10)]), get_ranges(tmp_path / "file" / "child")]),
        errors="return",
    ).collect()
    assert isinstance(chunks[0].error, IsADirectoryError)
    assert chunks[0].error.filename == str(tmp_path)
    assert isinstance(chunks[1].error, NotADirectoryError)


def test_range_bigger_than_pool(make_engine, files):
    ((p, _),) = files(1, 300_000)
    eng = make_engine(pool_bytes="64K")
    (c,) = eng.submit(OpGroup([get_ranges(p)]), errors="return").collect()
    assert isinstance(c.error, ValueError) and "buffer pool" in str(c.error)


def test_bad_arguments():
    with pytest.raises(ValueError):
        ByteRange(10, 5)
    with pytest.raises(ValueError):
        ByteRange(-5, 10)
    with pytest.raises(ValueError):
        get_ranges("x", starts=[5], ends=[3])
    with pytest.raises(ValueError):
        get_ranges("x", [(0, 1)], metadata=[1, 2])
    with pytest.raises(ValueError):
        get_ranges("")
    with pytest.raises(TypeError):
        OpGroup(["not an op"])


_AS_NOBODY = r"""
import os, sys
from lsio_ray import Engine, OpGroup, get_ranges, put_file
os.setgid(65534); os.setuid(65534)  # after the imports: /root is not readable by nobody
d = sys.argv[1]
with Engine(backend=sys.argv[2]) as eng:
    try:
        eng.put(os.path.join(d, "out"), b"data")
    except PermissionError as e:
        assert e.filename == os.path.join(d, "out"), e
        print("put-denied")
    (c,) = eng.submit(OpGroup([get_ranges(os.path.join(d, "secret"))]), errors="return").collect()
    assert isinstance(c.error, PermissionError) and c.error.filename.endswith("secret"), c.error
    print("read-denied")
"""


def test_permission_denied(backend, tmp_path):
    """Run as an unprivileged user (root bypasses permissions)."""
    import subprocess
    import sys

    d = tmp_path / "locked"
    d.mkdir()
    (d / "secret").write_bytes(b"s")
    os.chmod(d / "secret", 0o000)
    os.chmod(d, 0o555)
    os.chmod(tmp_path, 0o755)
    r = subprocess.run(
        [sys.executable, "-c", _AS_NOBODY, str(d), backend],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["put-denied", "read-denied"]
    assert os.listdir(d) == ["secret"]  # no temp file left behind


def test_enospc_on_put(make_engine, tmp_path):
    """A full file system: a clear error naming the path, and nothing left behind."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        eng = make_engine()
        with pytest.raises(OSError) as ei:
            eng.put(mnt / "big", np.zeros(1 << 20, np.uint8), fsync=True)
        assert ei.value.errno == 28 and ei.value.filename == str(mnt / "big")
        assert os.listdir(mnt) == []
        res = eng.submit(OpGroup([put_ranges("/dev/full", [(0, b"abc")])]), errors="return")
        (c,) = res.collect()
        assert c.error.errno == 28 and c.error.filename == "/dev/full"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# ---------------------------------------------------------------------------- writes


def test_put_file_and_ranges(make_engine, tmp_path):
    eng = make_engine()
    target = tmp_path / "w"
    payload = content(3, 1_000_001)
    res = eng.submit(OpGroup([put_file(target, payload, fsync=True, metadata="m")]))
    (c,) = list(res)
    assert c.metadata == "m" and c.length == len(payload)
    assert target.read_bytes() == payload
    eng.submit(OpGroup([put_ranges(target, [(0, b"HEAD"), (999_997, b"TAIL")])])).collect()
    b = target.read_bytes()
    assert b[:4] == b"HEAD" and b[-4:] == b"TAIL" and b[4:999_997] == payload[4:999_997]
    eng.submit(OpGroup([put_ranges(tmp_path / "new", [(10, b"x")], create=True)])).collect()
    assert (tmp_path / "new").read_bytes() == b"\0" * 10 + b"x"
    (res,) = eng.submit(OpGroup([put_ranges(tmp_path / "absent", [(0, b"x")])]), errors="return")
    assert isinstance(res.error, FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        _ = res.data
    with pytest.raises(FileNotFoundError):
        eng.put(tmp_path / "no" / "dir" / "f", b"x")
    assert sorted(os.listdir(tmp_path)) == ["new", "w"]


def test_put_is_atomic_for_readers(make_engine, tmp_path):
    """A reader polling the file while it is replaced never sees a half-written file."""
    eng = make_engine()
    target = tmp_path / "atomic"
    size = 4 << 20
    versions = [np.full(size, v, np.uint8) for v in range(1, 9)]
    eng.put(target, versions[0])
    stop = threading.Event()
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            b = np.frombuffer(target.read_bytes(), np.uint8)
            if b.size != size or (b != b[0]).any():
                bad.append(f"size={b.size} values={np.unique(b)[:5]}")

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(3):
            for v in versions:
                eng.put(target, v)
    finally:
        stop.set()
        t.join()
    assert bad == []
    assert os.listdir(tmp_path) == ["atomic"]


# ---------------------------------------------------------------------------- pool, cancel


def test_pool_bound_is_backpressure(make_engine, files):
    """Held chunks stop new reads (counted, not timed); releasing them resumes."""
    ((p, d),) = files(1, 1 << 20)
    eng = make_engine(pool_bytes="64K", depth=32)
    res = eng.submit(OpGroup([get_ranges(p, [(k * 4096, (k + 1) * 4096) for k in range(256)])]))
    held = [res.next(timeout=10) for _ in range(16)]  # 16 x 4 KiB fill the pool
    with pytest.raises(TimeoutError):
        res.next(timeout=0.5)
    st = eng.stats()
    assert st["pool_in_use"] == 64 << 10 and st["buffers_out"] == 16
    assert st["starved"] >= 1
    assert eng.stats()["spilled"] == 0  # holding chunks is back-pressure, not a deadlock
    for c in held:
        c.release()
    rest = []
    for c in res:
        with c:
            rest.append(c.tobytes())
    assert len(rest) == 240
    assert rest[-1] == d[-4096:]
    st = eng.stats()
    assert st["pool_peak"] <= 64 << 10 and st["spilled"] == 0


def test_chunks_released_by_gc(make_engine, files):
    ((p, _),) = files(1, 1 << 20)
    eng = make_engine(pool_bytes="64K")
    res = eng.submit(OpGroup([get_ranges(p, [(k * 4096, (k + 1) * 4096) for k in range(256)])]))
    n = 0
    for c in res:  # never released explicitly: each goes back when collected
        assert c.data.size == 4096
        n += 1
    del c
    gc.collect()
    assert n == 256 and eng.stats()["buffers_out"] == 0


def test_ordered_delivery_cannot_deadlock_the_pool(make_engine, files):
    """Whole-file reads (size first) behind explicit ranges: later chunks that landed are
    spilled out of the pool so the earlier read can get a buffer."""
    fs = files(64, 8192)
    eng = make_engine(pool_bytes="64K", depth=64)
    ops = [get_ranges(p) if i % 2 else get_ranges(p, [(0, 8192)]) for i, (p, _) in enumerate(fs)]
    got = []
    for c in eng.submit(OpGroup(ops)):
        with c:
            got.append(c.tobytes())
    assert got == [d for _, d in fs]


def test_cancel_mid_flight(make_engine, files):
    fs = files(20, 256 << 10)
    eng = make_engine(pool_bytes="256K", depth=16)
    fds = open_fds()  # the engine's own: ring and eventfd (or none for pread)
    ops = [get_ranges(p, [(k * 4096, (k + 1) * 4096) for k in range(64)]) for p, _ in fs]
    res = eng.submit(OpGroup(ops))
    first = [next(res) for _ in range(5)]
    res.cancel()
    with pytest.raises(GroupCancelledError):
        next(res)
    for c in first:  # chunks handed out before the cancel stay valid
        assert c.data.size == 4096
        c.release()
    st = eng.stats()
    for _ in range(200):  # the driver may be filing rows it reaped just before the cancel
        st = eng.stats()
        if st["files_pending"] == 0 and st["buffers_out"] == 0:
            break
        threading.Event().wait(0.05)
    assert st["files_pending"] == 0 and st["buffers_out"] == 0 and st["pool_in_use"] == 0
    assert open_fds() == fds  # every file opened for the group is closed
    # still usable
    assert eng.read(fs[0][0], 0, 10) == fs[0][1][:10]


def test_abandoned_group_is_cancelled(make_engine, files):
    fs = files(4, 256 << 10)
    eng = make_engine(pool_bytes="128K")
    res = eng.submit(
        OpGroup([get_ranges(p, [(k * 4096, (k + 1) * 4096) for k in range(64)]) for p, _ in fs])
    )
    next(res).release()
    del res
    gc.collect()
    assert eng.read(fs[1][0], 4096, 4100) == fs[1][1][4096:4100]
    assert eng.stats()["groups_live"] == 0


def test_close_mid_flight_keeps_held_chunks(backend, files):
    from lsio_ray import Engine

    fs = files(8, 512 << 10)
    fds = open_fds()
    eng = Engine(backend=backend, pool_bytes="1M")
    res = eng.submit(
        OpGroup([get_ranges(p, [(k * 8192, (k + 1) * 8192) for k in range(64)]) for p, _ in fs])
    )
    held = [next(res) for _ in range(3)]
    eng.close()
    for i, c in enumerate(held):  # still readable after close; the arena lives on
        assert c.tobytes() == fs[0][1][i * 8192 : (i + 1) * 8192]
        c.release()
    assert open_fds() <= fds
    with pytest.raises(ValueError):
        eng.submit(OpGroup([get_ranges(fs[0][0])]))


# ---------------------------------------------------------------------------- fallback

_SECCOMP = r"""
import ctypes, errno, struct, sys
# A seccomp filter like a container runtime's: io_uring_setup (425) fails with EPERM.
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
insns = [
    (0x20, 0, 0, 0),                        # ld [nr]
    (0x15, 0, 1, 425),                      # jeq #425, deny, allow
    (0x06, 0, 0, 0x00050000 | errno.EPERM), # ret ERRNO(EPERM)
    (0x06, 0, 0, 0x7FFF0000),               # ret ALLOW
]
buf = b"".join(struct.pack("HBBI", *i) for i in insns)
arr = ctypes.create_string_buffer(buf)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
prog = struct.pack("HxxxxxxQ", len(insns), ctypes.addressof(arr))
pbuf = ctypes.create_string_buffer(prog)
assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
assert libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(pbuf), 0, 0) == 0, \
    ctypes.get_errno()
from lsio_ray import Engine
with Engine(backend="auto") as eng:
    print(eng.backend, eng.read(sys.argv[1], 0, 4).decode())
try:
    Engine(backend="uring")
except OSError as e:
    print("uring-refused", e.errno == errno.EPERM)
"""


def test_auto_falls_back_when_io_uring_is_refused(tmp_path):
    import subprocess
    import sys

    f = tmp_path / "x"
    f.write_bytes(b"abcdefgh")
    r = subprocess.run(
        [sys.executable, "-c", _SECCOMP, str(f)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["pread", "abcd", "uring-refused", "True"]


def test_backend_from_environment(tmp_path):
    import subprocess
    import sys

    code = "from lsio_ray import Engine; e = Engine(); print(e.backend); e.close()"
    for want in ("pread", "uring"):
        r = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, "LSIO_BACKEND": want},
            timeout=60,
        )
        assert r.stdout.strip() == want, r.stderr
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "LSIO_BACKEND": "bogus"},
        timeout=60,
    )
    assert r.returncode != 0 and "LSIO_BACKEND" in r.stderr


def test_uring_features_probed():
    from lsio_ray import Engine

    with Engine(backend="uring") as e:
        assert {"fixed_files", "linked_open", "statx", "rename"} <= e.features
    with Engine(backend="uring", fixed_files=False) as e:
        assert "fixed_files" not in e.features and "linked_open" not in e.features
    with Engine(backend="uring", register_buffers=True, pool_bytes="16M") as e:
        assert "registered_buffers" in e.features


@pytest.mark.parametrize(
    "settings",
    [
        {"fixed_files": False},
        {"link_open": False},
        {"register_buffers": True},
    ],
    ids=["plain-fds", "no-link", "registered-buffers"],
)
def test_uring_variants_read_the_same(settings, files, direct):
    """Every io_uring feature path (and its fallback) gives the same bytes."""
    from lsio_ray import Engine

    fs = files(6, 70_000)
    with Engine(backend="uring", pool_bytes="1M", **settings) as eng:
        ops = [
            get_ranges(p, [(0, 100), (4000, 9000), ByteRange.last(10), ByteRange()], direct=direct)
            for p, _ in fs
        ]
        got = [c.tobytes() for c in eng.submit(OpGroup(ops))]
    want = []
    for _, d in fs:
        want += [d[:100], d[4000:9000], d[-10:], d]
    assert got == want


def test_whole_files_of_changing_sizes(make_engine, files):
    """Whole-file reads guess each length from the previous file: smaller, larger, empty
    and much larger files must all arrive exactly."""
    sizes = [16384, 16384, 100, 0, 200_000, 1, 70_000, 3 << 20, 4096, 0, 65_536, 65_537]
    fs = files(len(sizes), sizes)
    eng = make_engine(pool_bytes="16M")
    for order in ("operation", "completion"):
        got = {}
        for c in eng.submit(OpGroup([get_ranges(p) for p, _ in fs]), order=order):
            with c:
                got[c.path] = c.tobytes()
        assert got == {str(p): d for p, d in fs}
    st = eng.stats()
    assert st["buffers_out"] == 0 and st["pool_in_use"] == 0


@pytest.mark.timeout(60)
def test_collect_a_group_larger_than_the_pool(make_engine, files):
    """``collect`` holds every chunk of the group: past half the pool they are copies, so
    a group of 2.5x the pool finishes (it used to wait forever on buffers its own
    chunks held) and the pool keeps room for reads."""
    eng = make_engine(pool_bytes="1M")
    fs = files(40, 64 << 10)
    chunks = eng.submit(OpGroup([get_ranges(p) for p, _ in fs])).collect()
    assert [c.tobytes() for c in chunks] == [data for _, data in fs]
    st = eng.stats()
    assert 0 < st["pool_in_use"] <= st["pool_bytes"] // 2 + (64 << 10)
    del chunks
    gc.collect()
    assert eng.stats()["pool_in_use"] == 0
