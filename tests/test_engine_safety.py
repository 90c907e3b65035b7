"""Hardening of the C core against hostile input: special files (FIFOs, devices, /proc),
failed writes that must leave nothing behind, temp-file names that cannot be
pre-planted, modes kept on replace, and absurd engine settings.

Tests that could hang on a regression (a FIFO read blocking forever) run in a
subprocess under a timeout, so they fail instead of hanging the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_py(code: str, *args: str, timeout: float = 60, env: dict[str, str] | None = None) -> str:
    """Run ``code`` in a fresh interpreter; fail (not hang) when it does not exit in time.
    Returns its stdout; a non-zero exit fails with its stderr."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            cwd=ROOT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hung: no exit within {timeout} s\nstdout: {exc.stdout}\nstderr: {exc.stderr}")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


# ---------------------------------------------------------------------------- settings

_ABSURD = """
import resource, sys, time
from lsio_ray.io._core import RawEngine
name, value, backend = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.monotonic()
try:
    RawEngine(backend=backend, **{name: value})
except (ValueError, OSError) as exc:
    print(type(exc).__name__, exc)
else:
    raise SystemExit(f"{name}={value} accepted")
dt = time.monotonic() - t0
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
assert dt < 2, f"{name}={value}: refused after {dt:.1f} s"
assert grew < 64 * 1024, f"{name}={value}: max RSS grew by {grew} KiB"
"""


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_open", 10**9),
        ("depth", 10**9),
        ("threads", 10**9),
        ("pool_bytes", 1 << 50),
        ("max_open", 65537),
    ],
)
def test_absurd_settings_refused(backend, name, value):
    """Absurd sizes are refused at once, with an error naming the setting, before any
    memory is allocated for them (max_open=10**9 used to take 3.8 GiB)."""
    out = run_py(_ABSURD, name, str(value), backend, timeout=30)
    assert name in out, out


def test_pool_larger_than_memory_refused(backend):
    """A pool bound larger than the machine's memory is no bound: refused."""
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGESIZE")
    if ram + (1 << 30) > 1 << 40:
        pytest.skip("more than 1 TiB of memory: the 1 TiB bound is the one that applies")
    out = run_py(_ABSURD, "pool_bytes", str(ram + (1 << 30)), backend, timeout=30)
    assert "pool_bytes" in out, out


# ---------------------------------------------------------------------------- temp names


def test_put_over_planted_temp_names(make_engine, tmp_path):
    """Temp names cannot be guessed: symlinks planted at the names the old scheme used
    (``key.lsio-tmp.PID.N``) and at many more do not make ``put`` fail, and the file they
    point to is never written."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"do not touch")
    d = tmp_path / "data"
    d.mkdir()
    key = d / "key"
    names = {f"key.lsio-tmp.{os.getpid()}.{n}" for n in range(1, 257)}
    for n in range(2000):
        names.add(f"key.lsio-tmp.{os.getpid()}.{n:016x}")
        names.add(f"key.lsio-tmp.{(n * 0x9E3779B97F4A7C15) % (1 << 64):016x}")
    planted = [d / n for n in sorted(names)]
    for p in planted:
        p.symlink_to(victim)
    eng = make_engine()
    for i in range(20):
        eng.put(key, f"version {i}".encode())
        assert key.read_bytes() == f"version {i}".encode()
        assert not key.is_symlink()
    assert victim.read_bytes() == b"do not touch"
    assert all(p.is_symlink() for p in planted)
    assert sum(".lsio-tmp." in n for n in os.listdir(d)) == len(planted)


# ---------------------------------------------------------------------------- special files

_FIFO_READ = """
import os, sys, time
from lsio_ray import Engine
d, backend, kind, writer = sys.argv[1:5]
fifo = os.path.join(d, "fifo")
os.mkfifo(fifo)
if writer == "held":  # a writer that never writes: a read would wait for it forever
    wfd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
regular = os.path.join(d, "regular")
with open(regular, "wb") as f:
    f.write(b"x" * 5000)
eng = Engine(backend=backend)
assert eng.backend == backend
t0 = time.monotonic()
try:
    if kind == "whole":
        eng.get(fifo)
    elif kind == "range":
        eng.read(fifo, 0, 100)
    else:
        eng.read(fifo, 100, 200)
except OSError as exc:
    assert exc.filename == fifo, exc
    assert "not a regular file" in str(exc), exc
    print("refused", type(exc).__name__, exc)
else:
    raise SystemExit("a FIFO was read")
assert time.monotonic() - t0 < 10, time.monotonic() - t0
assert eng.read(regular, 10, 20) == b"x" * 10  # the engine is fine
t0 = time.monotonic()
eng.close()
assert time.monotonic() - t0 < 10
print("closed")
"""


@pytest.mark.parametrize("kind", ["whole", "range", "offset-range"])
@pytest.mark.parametrize("writer", ["none", "held"])
def test_fifo_read_refused(backend, tmp_path, kind, writer):
    """A FIFO read (whole file or range, with or without a writer holding it open) fails
    at once with an error naming the path; Engine.close() and interpreter exit return.
    It used to block in open()/read() for ever on both backends (only SIGKILL ended it)."""
    out = run_py(_FIFO_READ, str(tmp_path), backend, kind, writer, timeout=60)
    assert "refused" in out and "closed" in out, out


_ZARR_FIFO = """
import os, sys, time
import numpy as np
import lsio_ray.zarr as lz
d = sys.argv[1]
path = os.path.join(d, "a.zarr")
data = np.arange(32 * 32, dtype="int32").reshape(32, 32)
lz.save(path, data, chunks=(8, 8), compressors=None)
chunk = os.path.join(path, "c", "1", "2")
assert os.path.isfile(chunk), os.listdir(os.path.join(path, "c"))
os.unlink(chunk)
os.mkfifo(chunk)
wfd = None
if sys.argv[2] == "held":
    wfd = os.open(chunk, os.O_RDWR | os.O_NONBLOCK)
arr = lz.open(path)
t0 = time.monotonic()
try:
    arr[...]
except OSError as exc:
    assert exc.filename == chunk, (exc.filename, chunk)
    assert "not a regular file" in str(exc), exc
    print("refused", exc)
else:
    raise SystemExit("a FIFO chunk was read")
assert time.monotonic() - t0 < 10
assert (arr[:8, :8] == data[:8, :8]).all()  # the other chunks still read
print("done")
# the process-wide loader is closed at exit (atexit): that must return too
"""


@pytest.mark.parametrize("writer", ["none", "held"])
def test_zarr_chunk_fifo(backend, tmp_path, writer):
    """A chunk file of an untrusted Zarr array replaced by a FIFO: the read raises an
    error naming the chunk's path, the rest of the array still reads, and the process
    exits (the default loader's atexit close used to hang)."""
    out = run_py(_ZARR_FIFO, str(tmp_path), writer, timeout=90, env={"LSIO_BACKEND": backend})
    assert "refused" in out and "done" in out, out


def test_devices_and_directories_refused(make_engine, tmp_path):
    """Reads of a character device or a directory fail naming the path: /dev/zero used to
    'read' as an empty file (size 0), a range of it as zeros."""
    from lsio_ray import ByteRange, OpGroup, get_ranges

    eng = make_engine()
    for path, ranges in [
        ("/dev/zero", None),
        ("/dev/zero", [ByteRange(0, 4096)]),
        ("/dev/urandom", [ByteRange(0, 16)]),
        (str(tmp_path), None),
    ]:
        res = eng.submit(OpGroup([get_ranges(path, ranges)]), errors="return")
        (c,) = res.collect()
        assert isinstance(c.error, OSError), (path, c.error)
        assert c.error.filename == path
        if path == str(tmp_path):
            assert isinstance(c.error, IsADirectoryError), c.error
        else:
            assert "not a regular file" in str(c.error), c.error


def test_proc_file_whole_read(make_engine):
    """/proc/self/status reports size 0 but has data: a whole-file read must not return
    0 bytes as if it were empty.  It is refused with an error saying so (an explicit byte
    range reads it); a really empty file still reads as b""."""
    from lsio_ray import ByteRange, OpGroup, get_ranges

    eng = make_engine()
    res = eng.submit(OpGroup([get_ranges("/proc/self/status")]), errors="return")
    (c,) = res.collect()
    assert isinstance(c.error, OSError), c.error
    assert c.error.filename == "/proc/self/status"
    assert "size 0" in str(c.error), c.error
    (c,) = eng.submit(OpGroup([get_ranges("/proc/self/status", [ByteRange(0, 5)])]))
    assert c.tobytes() == b"Name:"
    c.release()


def test_empty_file_whole_read(make_engine, tmp_path):
    """A real empty file still reads whole as b"" (no error)."""
    p = tmp_path / "empty"
    p.write_bytes(b"")
    eng = make_engine()
    (c,) = eng.get(p)
    assert c.length == 0 and c.tobytes() == b""
    c.release()
    assert eng.stats()["buffers_out"] == 0


# ---------------------------------------------------------------------------- failed writes


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs (we run as root): unmounted at the end even when the test fails."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        if os.geteuid() != 0 or "permission denied" in proc.stderr.lower():
            pytest.skip(f"mounting a tmpfs was refused (EPERM): {proc.stderr.strip()}")
        pytest.fail(f"mount failed: {proc.stderr}")
    yield mnt
    if os.path.ismount(mnt):
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def _files(root) -> list[str]:
    out = []
    for d, _, names in os.walk(root):
        out.extend(os.path.join(d, n) for n in names)
    return sorted(out)


def test_failed_save_leaves_nothing_pending(backend, small_fs):
    """lsio_ray.zarr.save of an array larger than the file system: the ENOSPC reaches the
    caller only once every write of the task has been drained or cancelled -- no temp
    file, no file appearing afterwards, no descriptor holding the mount (umount works
    while the loader lives).  The io_uring loader used to stop driving its ring: cancelled
    writes stayed in flight with their temp files, and umount said busy."""
    import numpy as np

    import lsio_ray.zarr as lz
    from lsio_ray.zarr.loader import Loader

    loader = Loader(backend=backend)
    try:
        assert loader.engine.backend == backend
        data = np.random.default_rng(0).integers(0, 255, (256, 64, 512), dtype=np.uint8)
        with pytest.raises(OSError) as ei:
            lz.save(small_fs / "a", data, chunks=(2, 64, 256), compressors=None, loader=loader)
        assert ei.value.errno == 28, ei.value
        st = loader.engine.stats()
        assert st["files_pending"] == 0 and st["inflight"] == 0 and st["open_files"] == 0, st
        before = _files(small_fs)
        assert not [f for f in before if ".lsio-tmp." in f]
        loader.engine.wake()
        threading.Event().wait(0.3)
        assert _files(small_fs) == before  # nothing lands after the exception
        shutil.rmtree(small_fs / "a")
        proc = subprocess.run(["umount", str(small_fs)], capture_output=True, text=True)
        assert proc.returncode == 0, f"umount: {proc.stderr}"
    finally:
        loader.close()


# ---------------------------------------------------------------------------- modes


def test_put_keeps_mode_and_owner(make_engine, tmp_path):
    """``put`` over an existing file keeps its permission bits exactly (a 0600 file used to
    come back 0644: readable by everyone), whatever the umask, and -- run as root -- its
    owner and group.  setuid/setgid bits are not carried over to the new content.  A new
    file gets 0644 minus the umask, as before; a symlink is replaced, not written through."""
    eng = make_engine()
    old_umask = os.umask(0o022)
    try:
        for mode in (0o600, 0o640, 0o664, 0o666, 0o755, 0o400, 0o4755):
            p = tmp_path / f"m{mode:o}"
            p.write_bytes(b"old contents")
            os.chmod(p, mode)
            eng.put(p, b"new")
            st = os.stat(p)
            assert p.read_bytes() == b"new"
            assert st.st_mode & 0o7777 == mode & 0o777, (oct(mode), oct(st.st_mode))
        if os.geteuid() == 0:
            p = tmp_path / "owned"
            p.write_bytes(b"old")
            os.chown(p, 65534, 65534)
            os.chmod(p, 0o600)
            eng.put(p, b"new")
            st = os.stat(p)
            assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (65534, 65534, 0o600), st
        fresh = tmp_path / "fresh"
        eng.put(fresh, b"x")
        assert os.stat(fresh).st_mode & 0o7777 == 0o644
        victim = tmp_path / "victim"
        victim.write_bytes(b"secret")
        os.chmod(victim, 0o600)
        link = tmp_path / "link"
        link.symlink_to(victim)
        eng.put(link, b"replaced")
        assert not link.is_symlink() and link.read_bytes() == b"replaced"
        assert os.stat(link).st_mode & 0o7777 == 0o644
        assert victim.read_bytes() == b"secret" and os.stat(victim).st_mode & 0o7777 == 0o600
        assert not [n for n in os.listdir(tmp_path) if ".lsio-tmp." in n]
    finally:
        os.umask(old_umask)


def test_killed_writer_temp_file_is_found_by_its_pid(tmp_path) -> None:
    """A writer killed mid-put leaves ``key.lsio-tmp.PID.RANDOM``: the stray-temp cleanup
    reads the dead writer's PID from the name the engine really makes (a live writer's
    temp file is kept) and removes it once the writer is gone."""
    import signal
    import time

    from lsio_ray.paths import remove_stray_temp_files, temp_file_pid

    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        from lsio_ray import Engine
        data = np.ones(256 << 20, np.uint8)
        with Engine(backend="pread") as eng:
            for i in range(1000):
                eng.put(sys.argv[1], data)
        """
    )
    key = tmp_path / "key"
    child = subprocess.Popen([sys.executable, "-c", code, str(key)])
    try:
        temps: list[str] = []
        deadline = time.monotonic() + 60
        while not temps and time.monotonic() < deadline and child.poll() is None:
            temps = [n for n in os.listdir(tmp_path) if ".lsio-tmp." in n]
            time.sleep(0.01)
        assert temps, "the writer made no temp file"
        assert temp_file_pid(temps[0]) == child.pid
        # alive: its temp file is kept
        assert remove_stray_temp_files(tmp_path, min_age=0) == 0
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
    left = [n for n in os.listdir(tmp_path) if ".lsio-tmp." in n]
    assert left and all(temp_file_pid(n) == child.pid for n in left)
    assert remove_stray_temp_files(tmp_path, min_age=0) == len(left)
    assert not [n for n in os.listdir(tmp_path) if ".lsio-tmp." in n]
