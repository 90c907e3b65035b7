"""The benchmark's files: :func:`make_files` writes them, :func:`list_files` finds them,
:func:`drop_caches` makes the next read cold."""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lsio_ray.io import config

_NAME_RE = re.compile(r"^f(\d{6,})$")


def drop_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches`` for cold-cache runs (root only).

    Returns False, changing nothing, where that is not allowed."""
    import subprocess

    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except (OSError, subprocess.CalledProcessError):
        return False


def file_name(index: int) -> str:
    """The benchmark's name for file number ``index``: ``f000042``."""
    return f"f{index:06d}"


def _pow2ceil(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def _progress_bar(enabled: bool, **kw: Any) -> Any:
    """A tqdm bar on stderr, or ``None`` when disabled."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(file=None, dynamic_ncols=True, leave=False, **kw)


# ---------------------------------------------------------------------------------------
# make-files


@dataclass
class MakeFilesResult:
    """What :func:`make_files` did."""

    dir: str
    count: int
    size: int
    written: int
    skipped: int
    bytes_written: int
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return asdict(self)


def make_files(
    directory: str | os.PathLike[str],
    count: int,
    size: int | str,
    *,
    seed: int = 0,
    progress: bool = False,
    fsync: bool = False,
) -> MakeFilesResult:
    """Write ``count`` files of ``size`` random bytes as ``directory/f000000`` ....

    Idempotent: a file that already exists with the right size is left alone (a partly
    written file has the wrong size and is rewritten).  The bytes come from a PCG64
    generator (incompressible, different in every file).  ``progress`` shows a tqdm bar
    on stderr (bytes).  ``fsync`` flushes each file before closing it.
    """
    size = config.parse_size(size)
    if count < 0:
        raise ValueError(f"count must not be negative, not {count}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    gen = np.random.PCG64(np.random.SeedSequence([seed, count, size]))
    words = (size + 7) // 8
    written = skipped = nbytes = 0
    bar = _progress_bar(
        progress,
        total=count * size,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="make-files",
    )
    # big files are written in pieces so memory stays bounded
    piece_words = min(words, (16 << 20) // 8) if words else 0
    try:
        for i in range(count):
            path = root / file_name(i)
            try:
                if path.stat().st_size == size:
                    skipped += 1
                    if bar is not None:
                        bar.update(size)
                    continue
            except FileNotFoundError:
                pass
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                left = size
                while left > 0:
                    n = min(left, piece_words * 8)
                    buf = gen.random_raw((n + 7) // 8).view(np.uint8)[:n]
                    mv = memoryview(buf)
                    while mv:
                        k = os.write(fd, mv)
                        mv = mv[k:]
                    left -= n
                    if bar is not None:
                        bar.update(n)
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            written += 1
            nbytes += size
    finally:
        if bar is not None:
            bar.close()
    return MakeFilesResult(
        str(root), count, size, written, skipped, nbytes, time.perf_counter() - t0
    )


# ---------------------------------------------------------------------------------------
# the file set


@dataclass
class FileSet:
    """The benchmark files of a directory, with a paths blob ready for ``submit``."""

    paths: list[str]
    sizes: np.ndarray  # int64, one per file
    blob: bytes  # NUL-terminated paths, back to back
    offs: np.ndarray  # uint32, each path's offset in ``blob``

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def total_bytes(self) -> int:
        """Sum of the file sizes."""
        return int(self.sizes.sum())


def list_files(directory: str | os.PathLike[str], limit: int | None = None) -> FileSet:
    """The ``f000000``-style files in ``directory`` (sorted by number; at most ``limit``)."""
    root = Path(directory)
    found: list[tuple[int, str]] = []
    with os.scandir(root) as it:
        for ent in it:
            m = _NAME_RE.match(ent.name)
            if m and ent.is_file():
                found.append((int(m.group(1)), ent.name))
    found.sort()
    if limit is not None:
        found = found[:limit]
    if not found:
        raise FileNotFoundError(
            f"no benchmark files (f000000, f000001, ...) in {root}; "
            "create them with `lsio-ray bench make-files`"
        )
    paths = [os.path.join(os.path.abspath(root), name) for _, name in found]
    sizes = np.fromiter((os.stat(p).st_size for p in paths), dtype=np.int64, count=len(paths))
    encoded = [p.encode() + b"\0" for p in paths]
    lens = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
    offs = np.concatenate(([0], np.cumsum(lens)[:-1])).astype(np.uint32)
    if lens.sum() >= 1 << 32:
        raise ValueError("too many paths for one batch")
    return FileSet(paths, sizes, b"".join(encoded), offs)
