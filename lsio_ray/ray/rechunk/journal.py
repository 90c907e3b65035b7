"""The re-chunk job's state in its destination: the job's identity and its journal.

``DST/.lsio-rechunk/job.json`` holds what the job is (source, both arrays' metadata,
the block shape); ``DST/.lsio-rechunk/done`` the numbers of the blocks whose units are
all written, appended as 16-byte records (the number and a check word), so a torn tail
is ignored.  A run finding the same ``job.json`` resumes: it skips the blocks in the
journal.  Any other non-empty destination is refused unless ``overwrite``.  Every
access goes through ``call(method, *args, **kwargs)``: an IO service method
(:class:`~lsio_ray.ray.IOActor`) run where the destination is.

On object storage (a destination URL) objects are written whole, never appended to:
each flush writes the whole journal again as one object (atomic: a reader sees the
old records or the new ones), 16 bytes per finished block.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lsio_ray.io.url import is_remote
from lsio_ray.ray.rechunk.plan import Plan

__all__ = ["JOB_VERSION", "STATE_DIR", "Journal", "decode_journal", "job_identity"]

STATE_DIR = ".lsio-rechunk"
JOB_VERSION = 1
_MAGIC = np.uint64(0x6C73696F72636B31)  # "lsiorck1"


def job_identity(src_root: str, plan: Plan) -> bytes:
    """``job.json``: what must match for a run to resume another."""
    doc = {
        "version": JOB_VERSION,
        "src": src_root,
        "src_docs": plan.src_docs,
        "dst_docs": plan.dst_docs,
        "block": list(plan.block),
    }
    return json.dumps(doc, sort_keys=True).encode()


def decode_journal(raw: bytes | None, nblocks: int) -> np.ndarray:
    """Which of ``nblocks`` blocks the journal's bytes ``raw`` say are done (records
    with a bad check word or a block number out of range are ignored)."""
    done = np.zeros(nblocks, bool)
    if not raw:
        return done
    n = len(raw) // 16
    rec = np.frombuffer(raw[: n * 16], dtype="<u8").reshape(-1, 2)
    ok = (rec[:, 1] == (rec[:, 0] ^ _MAGIC)) & (rec[:, 0] < nblocks)
    done[rec[ok, 0].astype(np.int64)] = True
    return done


class Journal:
    """Appends finished block numbers to the destination's journal through ``call``."""

    def __init__(self, call: Callable[..., Any], path: str, size: int, fsync: bool) -> None:
        self.call = call  # call(method, *args, **kwargs) where the destination is
        self.path = path
        self.size = size - size % 16
        self.fsync = fsync
        self.pending: list[int] = []
        self.last = time.monotonic()
        self.remote = is_remote(path)
        self.records = b""  # a URL's journal: every record so far, written whole

    @classmethod
    def open(
        cls,
        call: Callable[..., Any],
        dst_root: str,
        job: bytes,
        nblocks: int,
        *,
        overwrite: bool,
        fsync: bool,
    ) -> tuple[Journal, np.ndarray]:
        """Start the job ``job`` (:func:`job_identity`) in ``dst_root``, or resume it
        there: returns the journal and which blocks are done already.  A destination
        neither empty nor an unfinished run of this job raises ``FileExistsError``
        unless ``overwrite``, which removes it first."""
        state = os.path.join(dst_root, STATE_DIR)
        listing = call("listdir", dst_root)
        prev = call("read_files", [os.path.join(state, "job.json"), os.path.join(state, "done")])
        resuming = prev[0] is not None and prev[0] == job
        if listing and not resuming:
            if not overwrite:
                names = set(listing)
                what = (
                    "an unfinished conversion with other settings"
                    if prev[0] is not None
                    else "a Zarr array"
                    if ".zarray" in names
                    else "a Zarr group"
                    if ".zgroup" in names
                    else "a Zarr array or group"
                    if "zarr.json" in names
                    else "a non-empty directory"
                )
                raise FileExistsError(
                    errno.EEXIST,
                    f"the destination holds {what}; "
                    "pass overwrite=True (--overwrite) to replace it",
                    dst_root,
                )
            call("remove_tree", dst_root)
        if not resuming:
            call("write_files", [os.path.join(state, "job.json")], [np.frombuffer(job, np.uint8)])
            prev = [job, None]
        done = decode_journal(prev[1], nblocks)
        journal = cls(call, os.path.join(state, "done"), len(prev[1] or b""), fsync)
        if journal.remote:
            journal.records = bytes(prev[1] or b"")[: journal.size]
        return journal, done

    def add(self, bid: int) -> None:
        """Note a finished block (written at the next flush)."""
        self.pending.append(bid)

    def flush(self, force: bool = False) -> None:
        """Append the noted blocks (every 256 blocks or 0.5 s, or now if ``force``)."""
        if not self.pending or (
            not force and len(self.pending) < 256 and time.monotonic() - self.last < 0.5
        ):
            return
        ids = np.array(self.pending, dtype="<u8")
        rec = np.stack([ids, ids ^ _MAGIC], axis=1).astype("<u8").reshape(-1).view(np.uint8)
        if self.remote:
            self.records += rec.tobytes()
            whole = np.frombuffer(self.records, np.uint8)
            self.call("write_files", [self.path], [whole], fsync=self.fsync)
        else:
            self.call("write_ranges", self.path, [self.size], [rec], create=True, fsync=self.fsync)
        self.size += rec.nbytes
        self.pending = []
        self.last = time.monotonic()

    def remove(self) -> None:
        """The job is finished: remove its state (job and journal)."""
        self.call("remove_tree", os.path.dirname(self.path))
