"""What a read benchmark run is asked (:class:`ReadSpec`) and what it measured
(:class:`ReadResult`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PATTERNS = ("random", "sequential", "whole-file")
"""The access patterns :func:`~lsio_ray.bench.run_read` knows."""


# ---------------------------------------------------------------------------------------
# read benchmark


@dataclass
class ReadSpec:
    """Parameters of one read benchmark run (see ``lsio-ray bench read --help``)."""

    dir: str
    pattern: str = "random"
    block_size: int = 4096
    direct: bool = False
    depth: int = 64
    threads: int = 1
    backend: str = "auto"
    duration_s: float = 10.0
    passes: int = 0  # stop after this many passes over the data (0: duration only)
    pool_bytes: int | None = None  # per engine; None: chosen from depth and block size
    io_threads: int | None = None  # pread backend workers per engine; None: config default
    batch: int | None = None  # ranges per submit; None: chosen from depth and block size
    run: int | None = None  # random: ranges per file op; None: max(1024, 4 x depth)
    known_size: bool = False  # whole-file: ask for the listed size instead of -1 (to EOF)
    ring_thread: bool = False  # io_uring: a C thread drives the ring (reap only collects)
    max_files: int | None = None  # use only the first N files
    seed: int | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` for impossible settings."""
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {PATTERNS}, not {self.pattern!r}")
        for name in ("block_size", "depth", "threads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if self.direct and self.pattern != "whole-file" and self.block_size % 512:
            raise ValueError("--direct needs a block size that is a multiple of 512")
        if self.duration_s <= 0 and self.passes <= 0:
            raise ValueError("give a positive duration or a number of passes")
        for name in ("batch", "run"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, not {value}")


@dataclass
class ReadResult:
    """What :func:`run_read` measured.  ``to_dict`` is the ``--json`` object."""

    backend: str
    pattern: str
    block_size: int
    depth: int
    threads: int
    direct: bool
    ops: int
    bytes: int
    files: int
    wall_s: float
    cpu_user_s: float
    cpu_sys_s: float
    features: list[str]
    nfiles: int
    dataset_bytes: int
    batch: int
    pool_bytes: int
    io_threads: int | None
    ring_thread: bool = False
    engine: dict[str, Any] = field(default_factory=dict)

    @property
    def ops_per_s(self) -> float:
        """Completed reads per second of wall time."""
        return self.ops / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def mib_per_s(self) -> float:
        """MiB delivered per second of wall time."""
        return self.bytes / (1 << 20) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def files_per_s(self) -> float:
        """File ops (open, reads, close) completed per second of wall time."""
        return self.files / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the rates included."""
        d = asdict(self)
        d.update(ops_per_s=self.ops_per_s, mib_per_s=self.mib_per_s, files_per_s=self.files_per_s)
        return d
