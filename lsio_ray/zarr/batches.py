"""File ops and their ranges as numpy batches, submitted a few thousand ranges at a time.

A :class:`FilePlan` holds the FILE_DTYPE / RANGE_DTYPE arrays and the fixed-width paths
blob of many file ops, hands them to the loader's IO thread in batches of whole files
(:meth:`FilePlan.next_batch`), and keeps track of which ranges have completed so a
file-level error (one completion standing for all of a file's unfinished ranges) can be
mapped back to the ranges it covers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lsio_ray.io import C_FILE_ERROR, FILE_DTYPE, OP_READ, RANGE_DTYPE

__all__ = ["INDEX_TAG", "FilePlan", "file_plan"]

INDEX_TAG = 1 << 63
_FILE_ERROR = C_FILE_ERROR


@dataclass
class FilePlan:
    """File ops and their ranges, submitted in batches of whole files.

    ``files['path_off']`` indexes ``blob`` (fixed ``width`` records); ``file_r0`` and
    ``file_nr`` give each file's ranges; ``range_file`` maps a range to its file."""

    files: np.ndarray
    ranges: np.ndarray
    blob: bytes
    width: int
    file_r0: np.ndarray
    file_nr: np.ndarray
    range_file: np.ndarray
    cursor: int = 0

    def __post_init__(self) -> None:
        self.seen = np.zeros(len(self.ranges), dtype=bool)
        self._cum = np.cumsum(self.file_nr)

    def has_batches(self) -> bool:
        """True while files remain to be submitted."""
        return self.cursor < len(self.files)

    def next_batch(self, budget: int) -> tuple[np.ndarray, np.ndarray, bytes] | None:
        """The next whole files holding about ``budget`` ranges (at least one file)."""
        fa = self.cursor
        nf = len(self.files)
        if fa >= nf:
            return None
        base = int(self._cum[fa - 1]) if fa else 0
        fb = int(np.searchsorted(self._cum, base + max(budget, 1), side="right"))
        fb = min(max(fb, fa + 1), nf)
        files = self.files[fa:fb].copy()
        files["path_off"] -= np.uint32(fa * self.width)
        r0 = int(self.file_r0[fa])
        r1 = int(self._cum[fb - 1])
        self.cursor = fb
        return files, self.ranges[r0:r1], self.blob[fa * self.width : fb * self.width]

    def path(self, f: int) -> str:
        """The path of file ``f``."""
        raw = self.blob[f * self.width : (f + 1) * self.width]
        return raw.rstrip(b"\0").decode(errors="surrogateescape")

    def resolve(self, comps: np.ndarray) -> tuple[np.ndarray, int, list[tuple[np.ndarray, int]]]:
        """Mark completed ranges; returns (ok mask, ranges resolved, [(ranges, error)])."""
        err = comps["error"]
        tags = (comps["tag"] & np.uint64(INDEX_TAG - 1)).astype(np.int64)
        ok = err == 0
        if ok.all():  # the common case
            self.seen[tags] = True
            return ok, len(tags), []
        self.seen[tags[ok]] = True
        resolved = int(ok.sum())
        failures: list[tuple[np.ndarray, int]] = []
        for k in np.flatnonzero(~ok).tolist():
            r = int(tags[k])
            if int(comps["flags"][k]) & _FILE_ERROR:
                f = int(self.range_file[r])
                rs = np.arange(self.file_r0[f], self.file_r0[f] + self.file_nr[f])
                rs = rs[~self.seen[rs]]
            else:
                rs = np.array([r]) if not self.seen[r] else np.zeros(0, np.int64)
            self.seen[rs] = True
            resolved += len(rs)
            if len(rs):
                failures.append((rs, k))
        return ok, resolved, failures


def file_plan(
    group: int,
    blob: bytes,
    width: int,
    file_nr: np.ndarray | int,
    offsets: np.ndarray | int,
    lengths: np.ndarray | int,
    tag_base: int = 0,
    *,
    kind: int = OP_READ,
    flags: int = 0,
    data: np.ndarray | None = None,
) -> FilePlan:
    """Build a plan: ``file_nr[f]`` consecutive ranges per file, file ``f``'s path at
    ``blob[f * width:]``; range ``r`` gets tag ``tag_base | r`` (and, for writes, the
    address ``data[r]``).  ``file_nr`` a number: that many files of one range each (the
    common case of a call's chunks: no per-file arithmetic), whose offsets and lengths
    may then be single numbers."""
    if isinstance(file_nr, (int, np.integer)):
        nf = nr = int(file_nr)
        one = np.arange(nf, dtype=np.int64)
        file_r0, range_file = one, one
        file_nr = np.ones(nf, np.int64)
    else:
        nf, nr = len(file_nr), len(offsets)  # type: ignore[arg-type]
        file_r0 = np.zeros(nf, dtype=np.int64)
        if nf:
            file_r0[1:] = np.cumsum(file_nr)[:-1]
        range_file = np.repeat(np.arange(nf, dtype=np.int64), file_nr)
    files = np.zeros(nf, dtype=FILE_DTYPE)
    files["group"] = group
    files["path_off"] = np.arange(0, nf * width, width, dtype=np.int64)
    files["kind"] = kind
    files["flags"] = flags
    files["nranges"] = file_nr
    ranges = np.zeros(nr, dtype=RANGE_DTYPE)
    ranges["offset"] = offsets
    ranges["length"] = lengths
    ranges["tag"] = np.arange(nr, dtype=np.uint64) | np.uint64(tag_base)
    if data is not None:
        ranges["data"] = data
    return FilePlan(files, ranges, blob, width, file_r0, np.asarray(file_nr, np.int64), range_file)
