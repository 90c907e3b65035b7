"""Shared fixtures: real files on disk, and engines for every backend x access mode."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from lsio_ray import Engine

BACKENDS = ["uring", "pread"]

# tests/torch_only/ needs PyTorch, which the package does not depend on: scripts/test-torch
# runs it (LSIO_TEST_TORCH=1); the default run does not collect it
collect_ignore_glob = [] if os.environ.get("LSIO_TEST_TORCH") else ["torch_only/*"]


def content(seed: int, size: int) -> bytes:
    """Deterministic incompressible bytes for file number ``seed``."""
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def open_fds() -> int:
    """How many descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each engine backend in turn."""
    return request.param


@pytest.fixture(params=[False, True], ids=["buffered", "direct"])
def direct(request: pytest.FixtureRequest) -> bool:
    """Buffered IO, then O_DIRECT."""
    return request.param


@pytest.fixture
def make_engine(backend: str) -> Iterator[Callable[..., Engine]]:
    """Engines on the current backend, closed at the end of the test."""
    made: list[Engine] = []

    def make(**kw: object) -> Engine:
        eng = Engine(backend=backend, **kw)
        assert eng.backend == backend  # the io_uring path must run for real, never skipped
        made.append(eng)
        return eng

    yield make
    for e in made:
        e.close()


@pytest.fixture
def files(tmp_path: Path) -> Callable[..., list[tuple[Path, bytes]]]:
    """Write ``count`` files of ``size`` bytes (or sizes) and return (path, bytes) pairs."""

    def make(count: int, size: int | list[int], prefix: str = "f") -> list[tuple[Path, bytes]]:
        out = []
        for i in range(count):
            n = size[i] if isinstance(size, list) else size
            p = tmp_path / f"{prefix}{i:06d}"
            data = content(i, n)
            p.write_bytes(data)
            out.append((p, data))
        return out

    return make
