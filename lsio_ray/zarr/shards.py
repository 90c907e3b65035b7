"""Shard indexes: decoding and checking them, and a bounded cache.

Every reader of a shard index goes through :func:`decode_index` (verify, parse, check
the entries against the file's size): the array reader, which reads the index alone
(one small range at its start or end), and the block decoder
(:mod:`lsio_ray.zarr.blocks`), which has the whole shard (:func:`shard_index`).  A bad
index is a :class:`~lsio_ray.zarr.errors.ShardIndexError` naming the shard either way.

The reader keeps decoded indexes in an LRU cache bounded in bytes, so reading inner
chunks of a shard costs only the chunk reads.  The cache belongs to one opened array:
writes through that array drop the entries of the shards they replace; an array
rewritten by another process needs re-opening.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from lsio_ray.io import config
from lsio_ray.zarr.codecs import CorruptData, ShardIndexCodec
from lsio_ray.zarr.errors import ShardIndexError
from lsio_ray.zarr.layout import ArrayLayout

__all__ = ["EMPTY", "ShardIndexCache", "check_index", "decode_index", "shard_index"]

EMPTY = np.uint64(2**64 - 1)


def _default_cache_bytes() -> int:
    return int(config.get("index_cache_bytes"))


class ShardIndexCache:
    """Decoded shard indexes keyed by shard number, least recently used evicted first.

    Thread-safe.  ``max_bytes`` defaults to 64 MiB (env ``LSIO_ZARR_INDEX_CACHE``).
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = _default_cache_bytes() if max_bytes is None else int(max_bytes)
        self._lock = threading.Lock()
        self._items: OrderedDict[int, np.ndarray] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: np.ndarray) -> list[np.ndarray | None]:
        """The cached tables of ``keys`` (None where not cached)."""
        out: list[np.ndarray | None] = []
        with self._lock:
            for k in keys.tolist():
                table = self._items.get(k)
                if table is None:
                    self.misses += 1
                else:
                    self.hits += 1
                    self._items.move_to_end(k)
                out.append(table)
        return out

    def put(self, key: int, table: np.ndarray) -> None:
        """Cache one table (dropped at once if larger than the whole cache)."""
        if table.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._items[key] = table
            self.nbytes += table.nbytes
            while self.nbytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.nbytes -= dropped.nbytes

    def invalidate(self, keys: np.ndarray | list[int]) -> None:
        """Forget the tables of ``keys`` (shards that were rewritten)."""
        with self._lock:
            for k in np.asarray(keys, dtype=np.int64).reshape(-1).tolist():
                old = self._items.pop(k, None)
                if old is not None:
                    self.nbytes -= old.nbytes

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._items.clear()
            self.nbytes = 0


def check_index(table: np.ndarray, codec: ShardIndexCodec, file_size: int) -> str | None:
    """Why an index table cannot be right for a shard of ``file_size`` bytes (-1 if not
    known), or None if it is plausible."""
    off, nb = table[:, 0], table[:, 1]
    used = (off != EMPTY) | (nb != EMPTY)  # empty: both all ones, as zarr-python reads it
    if not used.any():
        return None
    off, nb = off[used], nb[used]
    if np.any(off > (np.uint64(1) << np.uint64(62))) or np.any(
        nb > (np.uint64(1) << np.uint64(62))
    ):
        return "an entry has an impossible offset or length"
    end = off + nb
    if codec.location == "start":
        if np.any(off < np.uint64(codec.nbytes)):
            return "an entry points into the index"
        limit = file_size
    else:
        limit = file_size - codec.nbytes if file_size >= 0 else -1
    if limit >= 0 and np.any(end > np.uint64(limit)):
        bad = int(np.flatnonzero(end > np.uint64(limit))[0])
        return (
            f"an entry ends at byte {int(end[bad])}, past the data region "
            f"({limit} bytes of a {file_size}-byte file)"
        )
    return None


def decode_index(codec: ShardIndexCodec, raw: np.ndarray, file_size: int) -> np.ndarray:
    """The ``(offset, nbytes)`` table (native uint64, one row per inner chunk) of the
    index bytes ``raw`` of a shard of ``file_size`` bytes (-1 if not known).  Raises
    :class:`~lsio_ray.zarr.codecs.CorruptData` (a ``ValueError``) saying why when they
    do not verify (e.g. the crc32c) or cannot be right for the file."""
    table = codec.decode(raw)
    why = check_index(table, codec, file_size)
    if why is not None:
        raise CorruptData(why)
    return table


def shard_index(layout: ArrayLayout, shard: np.ndarray, key: str) -> np.ndarray:
    """The decoded index (:func:`decode_index`) of one whole stored shard of ``layout``
    whose bytes are ``shard``; a shard shorter than its index or a bad index raises
    :class:`~lsio_ray.zarr.errors.ShardIndexError` naming ``key``."""
    idx = layout.index
    assert idx is not None, "not a sharded array"
    nb = shard.nbytes
    if nb < idx.nbytes:
        raise ShardIndexError(
            layout.path, key, f"the file ({nb} bytes) is shorter than its {idx.nbytes}-byte index"
        )
    raw = shard[: idx.nbytes] if idx.location == "start" else shard[nb - idx.nbytes :]
    try:
        return decode_index(idx, raw, nb)
    except CorruptData as exc:
        raise ShardIndexError(layout.path, key, str(exc)) from None
