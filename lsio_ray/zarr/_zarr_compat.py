"""The one module that touches zarr-python's internals (``zarr.core.*``).

zarr-python parses and validates metadata documents and fills in the defaults of its
codecs (blosc's ``typesize`` and ``shuffle``, for instance); everything else in
``lsio_ray.zarr`` works on the normalised :class:`ZarrMetadata` built here and on the
codecs' JSON form (the Zarr specification's names, which do not move).  zarr-python's
internal layout changes between minor versions, so the package pins ``zarr>=3.1,<3.2``
and every internal import is made in this file only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:
    import zarr
    from zarr.core.array_spec import ArrayConfig, ArraySpec
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.metadata.v2 import ArrayV2Metadata
    from zarr.core.metadata.v3 import ArrayV3Metadata
    from zarr.storage import MemoryStore
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("lsio_ray.zarr needs zarr-python 3.1 (pip install 'lsio_ray[zarr]')") from exc

from lsio_ray.zarr.errors import ArrayMetadataError, UnsupportedError

__all__ = [
    "ZARR_VERSION",
    "ZarrMetadata",
    "create_metadata_docs",
    "parse_metadata",
    "zarr_bytes_decoder",
]

ZARR_VERSION: str = zarr.__version__


@dataclass(frozen=True)
class ZarrMetadata:
    """Array metadata, parsed and validated by zarr-python, in plain Python/numpy terms.

    ``codecs`` holds each v3 codec's JSON form after zarr-python filled in its defaults;
    ``codec_objects`` the zarr-python codec objects (used only for codecs lsio_ray has
    no fast path for).  For v2 arrays ``filters`` and ``compressor`` are numcodecs codecs.
    """

    zarr_format: int
    shape: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any
    grid_chunks: tuple[int, ...]
    key_encoding: str
    separator: str
    attributes: dict[str, Any]
    dimension_names: tuple[str | None, ...] | None
    codecs: tuple[dict[str, Any], ...] = ()
    codec_objects: tuple[Any, ...] = ()
    order: str = "C"
    filters: tuple[Any, ...] = ()
    compressor: Any = None
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    zdtype: Any = None


def parse_metadata(name: str, documents: Mapping[str, Any]) -> ZarrMetadata:
    """Parse the metadata documents of one array (``zarr.json``, or ``.zarray`` and
    ``.zattrs``) into a :class:`ZarrMetadata`.

    ``name`` (the array's path) only goes into error messages.  Raises
    :class:`ArrayMetadataError` for an invalid document and :class:`UnsupportedError`
    for a valid one lsio_ray cannot read.
    """
    try:
        if "zarr.json" in documents:
            return _parse_v3(name, documents["zarr.json"])
        if ".zarray" in documents:
            return _parse_v2(name, documents[".zarray"], documents.get(".zattrs") or {})
    except ArrayMetadataError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        # a document zarr-python parsed leniently, with a value of the wrong type or
        # range where lsio_ray reads it (e.g. attributes that are not an object)
        raise ArrayMetadataError(name, f"invalid metadata: {_why(exc)}") from exc
    raise ArrayMetadataError(name, "no zarr.json or .zarray metadata document")


def _parse_v3(name: str, doc: Any) -> ZarrMetadata:
    if not isinstance(doc, dict):
        raise ArrayMetadataError(name, "zarr.json is not a JSON object")
    if doc.get("zarr_format") != 3:
        raise ArrayMetadataError(name, f"zarr.json has zarr_format {doc.get('zarr_format')!r}")
    if doc.get("node_type") != "array":
        raise ArrayMetadataError(name, f"node_type is {doc.get('node_type')!r}, not an array")
    try:
        meta = ArrayV3Metadata.from_dict(dict(doc))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ArrayMetadataError(name, f"invalid zarr.json: {_why(exc)}") from exc
    except Exception as exc:  # zarr raises its own error classes too
        raise ArrayMetadataError(name, f"invalid zarr.json: {_why(exc)}") from exc
    grid = meta.chunk_grid.to_dict()
    if grid.get("name") != "regular":
        raise UnsupportedError(name, f"chunk grid {grid.get('name')!r} (only 'regular')")
    if meta.storage_transformers:
        raise UnsupportedError(name, "storage transformers")
    kenc = meta.chunk_key_encoding.to_dict()
    sep = (kenc.get("configuration") or {}).get(
        "separator", "/" if kenc["name"] == "default" else "."
    )
    if not isinstance(meta.attributes, dict):
        raise ArrayMetadataError(name, "attributes is not a JSON object")
    dtype = _native_dtype(name, meta.data_type)
    return ZarrMetadata(
        zarr_format=3,
        shape=tuple(int(s) for s in meta.shape),
        dtype=dtype,
        fill_value=_fill(dtype, meta.fill_value),
        grid_chunks=tuple(int(c) for c in grid["configuration"]["chunk_shape"]),
        key_encoding=str(kenc["name"]),
        separator=str(sep),
        attributes=dict(meta.attributes),
        dimension_names=meta.dimension_names,
        codecs=tuple(_plain(c.to_dict()) for c in meta.codecs),
        codec_objects=tuple(meta.codecs),
        documents={"zarr.json": dict(doc)},
        zdtype=meta.data_type,
    )


def _parse_v2(name: str, doc: Any, attrs: Any) -> ZarrMetadata:
    if not isinstance(doc, dict):
        raise ArrayMetadataError(name, ".zarray is not a JSON object")
    if not isinstance(attrs, dict):
        raise ArrayMetadataError(name, ".zattrs is not a JSON object")
    if doc.get("zarr_format") != 2:
        raise ArrayMetadataError(name, f".zarray has zarr_format {doc.get('zarr_format')!r}")
    try:
        meta = ArrayV2Metadata.from_dict({**doc, "attributes": attrs})
    except Exception as exc:  # zarr raises ValueError, TypeError and its own classes
        raise ArrayMetadataError(name, f"invalid .zarray: {_why(exc)}") from exc
    dtype = _native_dtype(name, meta.dtype)
    fill = meta.fill_value
    if fill is None:
        fill = meta.dtype.default_scalar()
    return ZarrMetadata(
        zarr_format=2,
        shape=tuple(int(s) for s in meta.shape),
        dtype=dtype,
        fill_value=_fill(dtype, fill),
        grid_chunks=tuple(int(c) for c in meta.chunks),
        key_encoding="v2",
        separator=str(meta.dimension_separator),
        attributes=dict(meta.attributes),
        dimension_names=None,
        order=str(meta.order),
        filters=tuple(meta.filters or ()),
        compressor=meta.compressor,
        documents={".zarray": dict(doc), ".zattrs": dict(attrs)},
        zdtype=meta.dtype,
    )


def _native_dtype(name: str, zdtype: Any) -> np.dtype:
    try:
        dtype = np.dtype(zdtype.to_native_dtype())
    except Exception as exc:
        raise UnsupportedError(name, f"data type {zdtype!r}: {_why(exc)}") from exc
    if dtype.kind not in "biufcmM" or dtype.hasobject or dtype.fields is not None:
        raise UnsupportedError(
            name, f"data type {dtype} (lsio_ray reads fixed-size numeric types and bool)"
        )
    return dtype


def _fill(dtype: np.dtype, value: Any) -> np.ndarray:
    """The fill value as a 0-d array of the array's dtype (NaN and NaT survive)."""
    return np.asarray(value, dtype=dtype).reshape(())


def _plain(obj: Any) -> Any:
    """JSON round trip: tuples become lists, enums their values."""
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "value"):
        return obj.value
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialise {obj!r}")


def _why(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def zarr_bytes_decoder(
    codec: Any, chunk_shape: tuple[int, ...], zdtype: Any, fill_value: Any
) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """A (decode, encode) pair running one zarr-python bytes-to-bytes codec synchronously.

    Used for codecs lsio_ray has no direct numcodecs path for (the ``numcodecs.*``
    family zarr-python registers, for instance).  Both take and return uint8 arrays.
    """
    spec = ArraySpec(
        shape=chunk_shape,
        dtype=zdtype,
        fill_value=fill_value,
        config=ArrayConfig(order="C", write_empty_chunks=True),
        prototype=default_buffer_prototype(),
    )
    buffer_cls = default_buffer_prototype().buffer

    def decode(data: np.ndarray) -> np.ndarray:
        out = codec._decode_sync(buffer_cls.from_array_like(data), spec)
        return np.asarray(out.as_numpy_array()).view(np.uint8).reshape(-1)

    def encode(data: np.ndarray) -> np.ndarray:
        out = codec._encode_sync(buffer_cls.from_array_like(data), spec)
        return np.asarray(out.as_numpy_array()).view(np.uint8).reshape(-1)

    if not (hasattr(codec, "_decode_sync") and hasattr(codec, "_encode_sync")):
        raise UnsupportedError("codec", f"{type(codec).__name__} has no synchronous path")
    return decode, encode


def create_metadata_docs(**kwargs: Any) -> dict[str, bytes]:
    """The metadata documents zarr-python would write for ``zarr.create_array(**kwargs)``.

    The array is created in a throw-away in-memory store (no chunk is written); the
    documents come back as ``{name: bytes}``, ready to be written atomically.
    """
    store_dict: dict[str, Any] = {}
    store = MemoryStore(store_dict)
    try:
        zarr.create_array(store, write_data=False, **kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot create the array: {_why(exc)}") from exc
    except Exception as exc:
        raise ValueError(f"cannot create the array: {_why(exc)}") from exc
    return {k: v.to_bytes() for k, v in store_dict.items()}
