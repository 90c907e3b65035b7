"""A process forked while another thread holds the IO service's process lock still gets
an IO service of its own (the child has no thread to release the copied lock); an
array read before a fork reads in the child."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import lsio_ray.zarr as lz
from lsio_ray.engine import Engine, OpGroup
from lsio_ray.io import service
from lsio_ray.io.ops import get_ranges


def _wait(pid: int, seconds: float) -> int | None:
    """The child's exit status; None when it was still running after ``seconds`` (it is
    then killed and reaped)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def test_fork_while_another_thread_holds_the_service_lock(tmp_path: Path) -> None:
    f = tmp_path / "data"
    payload = np.arange(4096, dtype=np.uint8).tobytes()
    f.write_bytes(payload)
    service.default_service()  # the parent's service exists, with its threads
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with service._default_lock:
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(10)
        pid = os.fork()
        if pid == 0:  # the child: read the file through its own service, then leave
            code = 1
            try:
                with Engine() as eng:
                    chunks = list(eng.submit(OpGroup([get_ranges(str(f))])))
                    code = 0 if bytes(chunks[0].data) == payload else 2
                    for c in chunks:
                        c.release()
            finally:
                os._exit(code)
        status = _wait(pid, 60)
        assert status == 0, "the forked child hung or failed on the copied service lock"
    finally:
        release.set()
        t.join()


@pytest.mark.parametrize("call_files", [8, 0])
def test_an_array_read_before_a_fork_reads_in_the_child(tmp_path: Path, call_files: int) -> None:
    """An array opened and read in the parent (a user's Dataset holding it, forked into
    DataLoader workers) reads in the child through the child's own service, small calls
    on the calling thread (``call_files`` 8) or all through the IO thread (0): before,
    its reads waited for the parent's IO thread, which the child does not have."""
    import zarr

    data = np.arange(4 * 32 * 32, dtype=np.float32).reshape(4, 32, 32)
    path = str(tmp_path / "a.zarr")
    zarr.create_array(path, shape=data.shape, chunks=(1, 16, 16), dtype="float32")[...] = data
    a = lz.open(path)
    parent = a.loader
    np.testing.assert_array_equal(a[0:2, 0:16, 0:32], data[0:2, 0:16, 0:32])
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            assert a.loader is not parent and not a.loader.closed and parent.closed
            with pytest.raises(ValueError, match="belongs to the process that forked"):
                parent.start(parent._tasks.get(0))  # type: ignore[arg-type]
            a.loader.call_files = call_files
            small = a[1:3, 16:32, 0:32]  # 4 chunks
            whole = a[...]  # 16 chunks: through the IO thread either way
            ok = np.array_equal(small, data[1:3, 16:32, 0:32]) and np.array_equal(whole, data)
            code = 0 if ok else 2
        finally:
            os._exit(code)
    status = _wait(pid, 60)
    assert status == 0, f"the forked child hung or failed (status {status})"
    assert not parent.closed  # the parent's service is the parent's still
    np.testing.assert_array_equal(a[2:4], data[2:4])
