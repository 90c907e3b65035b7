"""A process forked while another thread holds the IO service's process lock still gets
an IO service of its own (the child has no thread to release the copied lock)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

from lsio_ray.engine import Engine, OpGroup
from lsio_ray.io import service
from lsio_ray.io.ops import get_ranges


def _wait(pid: int, seconds: float) -> int | None:
    """The child's exit status, or None when it is still running after ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
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
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert status == 0, "the forked child hung or failed on the copied service lock"
    finally:
        release.set()
        t.join()
