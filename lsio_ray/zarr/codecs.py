"""Chunk codecs: stored bytes <-> one chunk's array, with numcodecs doing the work.

A :class:`ChunkCodec` is built once per array from the metadata zarr-python parsed.  It
runs the codec chain the Zarr specification describes (array-to-array codecs, one
array-to-bytes codec, bytes-to-bytes codecs; or v2's filters and compressor) with the
numcodecs codec objects directly, so that the last decompressor writes straight into the
caller's buffer (the output array, when the chunk lies wholly inside the region) and no
zarr ``Buffer`` is made per chunk.  Codecs without a numcodecs fast path run through
zarr-python's own codec object (:func:`lsio_ray.zarr._zarr_compat.zarr_bytes_decoder`).

Decompressors are told the exact size to produce; where a codec would silently write
fewer bytes than asked (blosc, zstd and lz4 decoding into a larger buffer do), the size
stored in its header is checked first, so a corrupt chunk raises instead of leaving
stale bytes in the output.  ``crc32c`` checksums are always verified.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import google_crc32c
import numcodecs
import numpy as np

from lsio_ray.io import blosc_supports
from lsio_ray.zarr import _zarr_compat
from lsio_ray.zarr.errors import UnsupportedError

__all__ = ["ChunkCodec", "CorruptData", "ShardIndexCodec", "build_chunk_codec"]


class CorruptData(ValueError):
    """Raised by a codec stage for bytes that cannot be what they claim to be."""


# -- bytes-to-bytes stages ---------------------------------------------------------------


class _Stage:
    """One bytes-to-bytes codec.  ``exact`` stages can decode straight into a buffer."""

    name = "stage"
    exact = False

    def decode(self, src: np.ndarray) -> np.ndarray:
        """Decode ``src`` (uint8) into a new uint8 array."""
        raise CorruptData(f"{self.name}: cannot decode")

    def decode_into(self, src: np.ndarray, out: np.ndarray) -> None:
        """Decode ``src`` into ``out`` (uint8, exactly the decoded size)."""
        got = self.decode(src)
        if got.nbytes != out.nbytes:
            raise CorruptData(f"{self.name}: decoded to {got.nbytes} bytes, expected {out.nbytes}")
        out[...] = got

    def encode(self, src: np.ndarray) -> np.ndarray:
        """Encode ``src`` (uint8, contiguous) into a new uint8 array."""
        raise CorruptData(f"{self.name}: cannot encode")


def _u8(buf: Any) -> np.ndarray:
    return (
        np.frombuffer(buf, dtype=np.uint8)
        if not isinstance(buf, np.ndarray)
        else (buf.reshape(-1).view(np.uint8))
    )


class _Numcodec(_Stage):
    """A numcodecs codec; ``header`` names the size check done before decoding into a
    caller's buffer (``blosc``, ``zstd``, ``lz4``) or ``None`` (decode, check, copy)."""

    def __init__(self, codec: Any, header: str | None) -> None:
        self.codec = codec
        self.name = str(codec.codec_id)
        self.header = header
        self.exact = header is not None

    def decode(self, src: np.ndarray) -> np.ndarray:
        return _u8(self.codec.decode(src))

    def decode_into(self, src: np.ndarray, out: np.ndarray) -> None:
        if self.header is None:
            super().decode_into(src, out)
            return
        declared = _declared_size(self.header, src)
        if declared is None:  # e.g. a zstd frame without its content size
            super().decode_into(src, out)
            return
        if declared != out.nbytes:
            raise CorruptData(
                f"{self.name}: header says {declared} decoded bytes, expected {out.nbytes}"
            )
        self.codec.decode(src, out=out)

    def encode(self, src: np.ndarray) -> np.ndarray:
        return _u8(self.codec.encode(src))


def _declared_size(kind: str, src: np.ndarray) -> int | None:
    """The decoded size a compressed buffer's header declares (raises if truncated)."""
    n = src.nbytes
    if kind == "blosc":
        if n < 16:
            raise CorruptData(f"blosc: {n} bytes is shorter than the 16-byte header")
        nbytes, _, cbytes = (int(v) for v in src[4:16].view("<u4"))
        if cbytes > n:  # bytes after the buffer are ignored, as numcodecs does
            raise CorruptData(f"blosc: header says {cbytes} compressed bytes, got {n}")
        return nbytes
    if kind == "lz4":
        if n < 4:
            raise CorruptData(f"lz4: {n} bytes is shorter than the 4-byte header")
        return int(src[:4].view("<u4")[0])
    if kind == "zstd":
        return _zstd_content_size(src)
    return None


def _zstd_content_size(src: np.ndarray) -> int | None:
    """Frame_Content_Size of the first zstd frame (RFC 8878 3.1.1.1), or None if absent."""
    head = src[:18].tobytes()
    if len(head) < 6 or head[:4] != b"\x28\xb5\x2f\xfd":
        raise CorruptData("zstd: not a zstd frame (bad magic number)")
    fhd = head[4]
    fcs_flag, single = fhd >> 6, (fhd >> 5) & 1
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]
    size = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if size == 0:
        return None
    if len(head) < pos + size:
        raise CorruptData("zstd: truncated frame header")
    value = int.from_bytes(head[pos : pos + size], "little")
    return value + 256 if size == 2 else value


class _Crc32c(_Stage):
    """The v3 ``crc32c`` codec: a little-endian CRC-32C of the bytes appended."""

    name = "crc32c"

    def decode(self, src: np.ndarray) -> np.ndarray:
        if src.nbytes < 4:
            raise CorruptData(f"crc32c: {src.nbytes} bytes is shorter than the checksum")
        body = src[:-4]
        stored = int(src[-4:].view("<u4")[0])
        computed = google_crc32c.value(body)
        if computed != stored:
            raise CorruptData(
                f"crc32c checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            )
        return body

    def encode(self, src: np.ndarray) -> np.ndarray:
        out = np.empty(src.nbytes + 4, np.uint8)
        out[:-4] = src
        out[-4:] = np.array([google_crc32c.value(src)], "<u4").view(np.uint8)
        return out


class _ZarrStage(_Stage):
    """A bytes-to-bytes codec run through zarr-python's codec object."""

    def __init__(
        self,
        name: str,
        decode: Callable[[np.ndarray], np.ndarray],
        encode: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        self.name = name
        self._decode, self._encode = decode, encode

    def decode(self, src: np.ndarray) -> np.ndarray:
        return self._decode(src)

    def encode(self, src: np.ndarray) -> np.ndarray:
        return self._encode(src)


_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


def _blosc(cfg: dict[str, Any]) -> Any:
    kwargs = {
        "cname": cfg.get("cname", "zstd"),
        "clevel": int(cfg.get("clevel", 5)),
        "shuffle": _SHUFFLE[cfg.get("shuffle", "shuffle")],
        "blocksize": int(cfg.get("blocksize", 0)),
    }
    try:
        return numcodecs.Blosc(**kwargs, typesize=int(cfg.get("typesize", 1)))
    except TypeError:  # numcodecs < 0.16 takes the type size from the buffer
        return numcodecs.Blosc(**kwargs)


def _v3_stage(
    array: str,
    spec: dict[str, Any],
    codec_obj: Any,
    chunk_shape: tuple[int, ...],
    meta: _zarr_compat.ZarrMetadata,
) -> _Stage:
    name = spec["name"]
    cfg = spec.get("configuration") or {}
    if name == "zstd":
        return _Numcodec(
            numcodecs.Zstd(level=int(cfg.get("level", 0)), checksum=bool(cfg.get("checksum"))),
            "zstd",
        )
    if name == "gzip":
        return _Numcodec(numcodecs.GZip(level=int(cfg.get("level", 5))), None)
    if name == "blosc":
        return _Numcodec(_blosc(cfg), "blosc")
    if name == "crc32c":
        return _Crc32c()
    try:
        dec, enc = _zarr_compat.zarr_bytes_decoder(
            codec_obj, chunk_shape, meta.zdtype, meta.fill_value
        )
    except UnsupportedError:
        raise UnsupportedError(array, f"codec {name!r}") from None
    return _ZarrStage(name, dec, enc)


def _v2_stage(codec: Any) -> _Stage:
    cid = codec.codec_id
    header = {"blosc": "blosc", "zstd": "zstd", "lz4": "lz4"}.get(cid)
    return _Numcodec(codec, header)


# -- the chunk codec ---------------------------------------------------------------------


class ChunkCodec:
    """Decode and encode one chunk of ``shape`` and ``dtype``.

    ``direct`` says the stored layout equals the output's (C order, same byte order, no
    filters), so :meth:`decode_into` may write straight into a C-contiguous region of
    the output array.
    """

    def __init__(
        self,
        *,
        shape: tuple[int, ...],
        dtype: np.dtype,
        stored_dtype: np.dtype,
        stages: list[_Stage],
        perm: tuple[int, ...] | None = None,
        order: str = "C",
        filters: tuple[Any, ...] = (),
    ) -> None:
        self.shape = shape
        self.dtype = dtype
        self.stored_dtype = stored_dtype
        self.stages = stages  # in encoding order
        self.perm = perm if perm is not None and perm != tuple(range(len(shape))) else None
        self.order = order
        self.filters = filters
        self.nbytes = math.prod(int(x) for x in shape) * dtype.itemsize
        self.stored_shape = tuple(shape[i] for i in self.perm) if self.perm else shape
        self.inverse = tuple(int(i) for i in np.argsort(self.perm)) if self.perm else None
        self.direct = (
            self.perm is None
            and (order == "C" or sum(s > 1 for s in shape) <= 1)
            and stored_dtype == dtype
            and not filters
            and (not stages or stages[0].exact)
        )
        self.c_codec = self._c_codec()
        itemsize = dtype.itemsize
        if not shape:
            strides: Any = ()
        elif order == "F":
            strides = np.cumprod((itemsize, *shape[:-1]), dtype=np.int64)
        else:
            strides = np.cumprod((itemsize, *shape[::-1][:-1]), dtype=np.int64)[::-1]
        #: byte strides of a decoded chunk in its stored order (C, or F for v2 order F)
        self.chunk_strides: tuple[int, ...] = tuple(int(x) for x in strides)

    def _c_codec(self) -> str | None:
        """The C decoder (``lsio_decode_batch``) that can decode these chunks on its own,
        or None: raw bytes, one zstd or one blosc stage (with an inner compressor the
        linked c-blosc has), no transpose, filters, byte swap or checksum."""
        if self.perm is not None or self.filters or self.stored_dtype != self.dtype:
            return None
        if len(self.shape) > 8:
            return None
        if not self.stages:
            return "raw"
        if len(self.stages) != 1 or not isinstance(self.stages[0], _Numcodec):
            return None
        stage = self.stages[0]
        if stage.header == "zstd":
            return "zstd"
        if stage.header == "blosc":
            cname = str(getattr(stage.codec, "cname", b"") or "")
            cname = cname.decode() if isinstance(cname, bytes) else cname
            if blosc_supports(cname):
                return "blosc"
        return None

    # decoding ----------------------------------------------------------------------
    def _unwrap(self, src: np.ndarray) -> np.ndarray:
        """Run every bytes stage but the last (the innermost one) over ``src``."""
        data = src
        for stage in reversed(self.stages[1:]):
            data = stage.decode(data)
        return data

    def decode_into(self, src: np.ndarray, dest: np.ndarray) -> None:
        """Decode ``src`` straight into ``dest`` (C-contiguous, chunk shape and dtype).

        Only valid when :attr:`direct` is true."""
        out = dest.reshape(-1).view(np.uint8)
        if not self.stages:
            if src.nbytes != self.nbytes:
                raise CorruptData(f"chunk has {src.nbytes} bytes, expected {self.nbytes}")
            out[...] = src
            return
        self.stages[0].decode_into(self._unwrap(src), out)

    def decode(self, src: np.ndarray, scratch: np.ndarray) -> np.ndarray:
        """Decode ``src`` into an array of the chunk's shape (logical order).

        The result may be a view of ``scratch`` (uint8, at least :attr:`nbytes`) or of
        ``src`` itself: copy what you need before ``src``'s buffer is released.
        """
        if self.filters:
            return self._decode_v2_filters(src)
        if not self.stages:
            if src.nbytes != self.nbytes:
                raise CorruptData(f"chunk has {src.nbytes} bytes, expected {self.nbytes}")
            flat = src
        else:
            flat = scratch[: self.nbytes]
            self.stages[0].decode_into(self._unwrap(src), flat)
        return self._as_array(flat)

    def _as_array(self, flat: np.ndarray) -> np.ndarray:
        arr = flat.view(self.stored_dtype)
        if self.order == "F":
            return arr.reshape(self.shape, order="F")
        arr = arr.reshape(self.stored_shape)
        return arr.transpose(self.inverse) if self.inverse else arr

    def _decode_v2_filters(self, src: np.ndarray) -> np.ndarray:
        data: Any = self._unwrap(src)
        if self.stages:
            data = self.stages[0].decode(data)
        for f in reversed(self.filters):
            data = f.decode(data)
        arr = np.asarray(data)
        if arr.nbytes != self.nbytes:
            raise CorruptData(f"filters decoded to {arr.nbytes} bytes, expected {self.nbytes}")
        arr = arr.reshape(-1, order="A").view(self.stored_dtype)
        return arr.reshape(self.shape, order=self.order)

    # encoding ------------------------------------------------------------------------
    def encode(self, chunk: np.ndarray) -> np.ndarray:
        """Encode a full chunk (logical order, chunk shape) into its stored bytes."""
        if chunk.shape != self.shape:
            raise ValueError(f"chunk of shape {chunk.shape}, expected {self.shape}")
        if self.perm:
            chunk = chunk.transpose(self.perm)
        data: Any = np.asarray(chunk, dtype=self.stored_dtype, order=self.order)
        if self.order == "F":
            data = data.reshape(-1, order="F")
        data = np.ascontiguousarray(data)
        for f in self.filters:
            data = f.encode(data)
        flat = _u8(np.ascontiguousarray(data))
        for stage in self.stages:
            flat = stage.encode(np.ascontiguousarray(flat))
        return flat


class ShardIndexCodec:
    """A shard's index: ``(offset, nbytes)`` uint64 pairs per inner chunk, all ones for
    an empty chunk, encoded with the ``bytes`` codec and (usually) ``crc32c``."""

    EMPTY = np.uint64(2**64 - 1)

    def __init__(
        self,
        array: str,
        specs: list[dict[str, Any]],
        chunks_per_shard: tuple[int, ...],
        location: str,
    ) -> None:
        self.chunks_per_shard = chunks_per_shard
        self.location = location
        endian = "little"
        self.stages: list[_Stage] = []
        seen_bytes = False
        for spec in specs:
            name = spec["name"]
            if name == "bytes" and not seen_bytes:
                endian = (spec.get("configuration") or {}).get("endian") or "little"
                seen_bytes = True
            elif name == "crc32c" and seen_bytes:
                self.stages.append(_Crc32c())
            else:
                raise UnsupportedError(array, f"shard index codec {name!r}")
        self.dtype = np.dtype("<u8" if endian == "little" else ">u8")
        n = math.prod(int(x) for x in chunks_per_shard)
        self.nbytes = 16 * n + 4 * len(self.stages)

    def decode(self, src: np.ndarray) -> np.ndarray:
        """Verify and parse an index; returns a native uint64 array of shape (n, 2)."""
        if src.nbytes != self.nbytes:
            raise CorruptData(f"index has {src.nbytes} bytes, expected {self.nbytes}")
        data = src
        for stage in reversed(self.stages):
            data = stage.decode(data)
        return data.view(self.dtype).reshape(-1, 2).astype(np.uint64)

    def encode(self, table: np.ndarray) -> np.ndarray:
        """Encode an (n, 2) table of (offset, nbytes)."""
        data = _u8(np.ascontiguousarray(table, dtype=self.dtype))
        for stage in self.stages:
            data = stage.encode(data)
        return data


def build_chunk_codec(
    array: str,
    meta: _zarr_compat.ZarrMetadata,
    specs: list[dict[str, Any]] | None = None,
    objects: list[Any] | None = None,
    chunk_shape: tuple[int, ...] | None = None,
) -> ChunkCodec:
    """The :class:`ChunkCodec` of an array's (inner) chunks.

    For v3, ``specs``/``objects`` are the codec chain (default: the array's own) and
    ``chunk_shape`` the shape it encodes (default: the chunk grid's)."""
    shape = chunk_shape if chunk_shape is not None else meta.grid_chunks
    if meta.zarr_format == 2:
        stages = [_v2_stage(meta.compressor)] if meta.compressor is not None else []
        return ChunkCodec(
            shape=shape,
            dtype=meta.dtype,
            stored_dtype=meta.dtype,
            stages=stages,
            order=meta.order,
            filters=tuple(meta.filters),
        )
    specs = list(meta.codecs if specs is None else specs)
    objects = list(meta.codec_objects if objects is None else objects)
    perm = tuple(range(len(shape)))
    i = 0
    while i < len(specs) and specs[i]["name"] == "transpose":
        order = tuple(int(o) for o in specs[i]["configuration"]["order"])
        perm = tuple(perm[o] for o in order)
        i += 1
    if i >= len(specs):
        raise UnsupportedError(array, "codec chain without an array-to-bytes codec")
    ab = specs[i]
    if ab["name"] == "sharding_indexed":
        raise UnsupportedError(array, "sharding_indexed not as the only codec (nested sharding)")
    if ab["name"] != "bytes":
        raise UnsupportedError(array, f"codec {ab['name']!r}")
    endian = (ab.get("configuration") or {}).get("endian")
    stored = meta.dtype
    if meta.dtype.itemsize > 1 and endian is not None:
        stored = meta.dtype.newbyteorder("<" if endian == "little" else ">")
    stored_shape = tuple(shape[p] for p in perm)
    stages = [
        _v3_stage(array, s, o, stored_shape, meta)
        for s, o in zip(specs[i + 1 :], objects[i + 1 :], strict=True)
    ]
    return ChunkCodec(shape=shape, dtype=meta.dtype, stored_dtype=stored, stages=stages, perm=perm)
