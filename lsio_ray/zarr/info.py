"""Summaries: of an array (metadata, chunk and shard grids, codecs, stored size) and of
a group (a tree of its members with the same facts, :func:`format_group_info`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from lsio_ray.io import objects, url
from lsio_ray.zarr.errors import ZarrError
from lsio_ray.zarr.layout import layout_from_docs

if TYPE_CHECKING:
    from lsio_ray.zarr.array import Array

__all__ = [
    "MAX_WALK",
    "array_info",
    "array_summary",
    "codec_label",
    "count_stored",
    "format_group_info",
    "format_info",
    "stored_size",
]

#: files counted under one array for a group's summary before giving up (a huge array's
#: stored size is then reported as "at least")
MAX_WALK = 200_000


def count_stored(path: str, max_files: int | None = None) -> tuple[int | None, int | None, bool]:
    """``(bytes, files, complete)`` stored under ``path``, metadata included; counting
    stops after ``max_files`` files (``complete`` is then False).  Symbolic links are
    counted as links, never followed.  On object storage the objects under the prefix
    are listed (:func:`lsio_ray.io.objects.list_prefix`); over HTTP, which has no
    listing, the stored size is unknown: ``(None, None, False)``."""
    if url.is_remote(path):
        if url.scheme_of(path) in ("http", "https"):
            return None, None, False
        found = objects.list_prefix(path, max_files)
        done = max_files is None or len(found) < max_files
        return sum(size for _, size in found), len(found), done
    total = files = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # a temp file renamed meanwhile
                continue
            files += 1
            if max_files is not None and files >= max_files:
                return total, files, False
    return total, files, True


def stored_size(path: str) -> tuple[int | None, int | None]:
    """(bytes, files) stored under ``path``, metadata included (None, None: unknown, over
    HTTP)."""
    total, files, _ = count_stored(path)
    return total, files


def array_info(array: Array) -> dict[str, Any]:
    """A JSON-able description of ``array``."""
    lay = array.layout
    stored, files = stored_size(lay.path)
    fill = lay.fill_value[()]
    return {
        "path": lay.path,
        "zarr_format": lay.zarr_format,
        "shape": list(lay.shape),
        "dtype": str(lay.dtype),
        "fill_value": fill.item() if isinstance(fill, np.generic) else fill,
        "chunks": list(lay.chunks),
        "shards": list(lay.shards) if lay.shards else None,
        "chunk_grid": list(lay.chunk_grid),
        "shard_grid": list(lay.file_grid) if lay.shards else None,
        "chunks_per_shard": list(lay.chunks_per_shard) if lay.shards else None,
        "chunk_count": int(np.prod(lay.chunk_grid, dtype=np.int64)),
        "chunk_bytes": lay.chunk_nbytes,
        "key_encoding": lay.meta.key_encoding,
        "separator": lay.meta.separator,
        "index_location": lay.index.location if lay.index else None,
        "codecs": lay.describe_codecs(),
        "dimension_names": list(lay.meta.dimension_names) if lay.meta.dimension_names else None,
        "attributes": lay.attrs,
        "nbytes": array.nbytes,
        "stored_bytes": stored,
        "stored_files": files,
        "compression_ratio": (array.nbytes / stored) if stored else None,
    }


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def format_info(info: dict[str, Any]) -> str:
    """``info`` as aligned human-readable lines."""
    rows = [
        ("path", info["path"]),
        ("format", f"Zarr v{info['zarr_format']}"),
        ("shape", tuple(info["shape"])),
        ("dtype", info["dtype"]),
        ("fill value", info["fill_value"]),
        (
            "chunks",
            f"{tuple(info['chunks'])}  grid {tuple(info['chunk_grid'])} "
            f"= {info['chunk_count']} chunks of {_size(info['chunk_bytes'])}",
        ),
    ]
    if info["shards"]:
        rows.append(
            (
                "shards",
                f"{tuple(info['shards'])}  grid {tuple(info['shard_grid'])}, "
                f"{tuple(info['chunks_per_shard'])} chunks per shard, "
                f"index at the {info['index_location']}",
            )
        )
    rows.append(("chunk keys", f"{info['key_encoding']} (separator {info['separator']!r})"))
    rows.append(("codecs", json.dumps(info["codecs"])))
    if info["dimension_names"]:
        rows.append(("dimensions", info["dimension_names"]))
    rows.append(("attributes", json.dumps(info["attributes"])[:200]))
    ratio = info["compression_ratio"]
    if info["stored_bytes"] is None:  # HTTP: no listing
        stored = "stored size unknown (an HTTP server lists no objects)"
    else:
        stored = f"{_size(info['stored_bytes'])} stored in {info['stored_files']} "
        stored += "objects" if url.is_remote(info["path"]) else "files"
    ratio_text = f" (ratio {ratio:.2f})" if ratio else ""
    rows.append(("size", f"{_size(info['nbytes'])} decoded, {stored}{ratio_text}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# -- groups --------------------------------------------------------------------------------


def codec_label(codec: Mapping[str, Any]) -> str:
    """A codec's short name (``zstd``, ``sharding_indexed(bytes, zstd)``, v2's compressor
    or filter id) from the JSON :meth:`ArrayLayout.describe_codecs` returns."""
    if "name" in codec:
        inner = (codec.get("configuration") or {}).get("codecs")
        if inner:
            return f"{codec['name']}({', '.join(codec_label(c) for c in inner)})"
        return str(codec["name"])
    for kind in ("compressor", "filter"):
        if kind in codec:
            return str(codec[kind].get("id", codec[kind]))
    if "order" in codec:
        return f"order {codec['order']}"
    return str(codec)


def array_summary(
    path: str | None, docs: Mapping[str, Any], *, max_files: int | None = MAX_WALK
) -> dict[str, Any]:
    """A JSON-able summary of the array whose metadata documents are ``docs`` (parsed
    JSON by file name) and whose directory is ``path`` (None: not on disk, ``missing``).

    An array lsio_ray cannot read (a string data type, say) is still described, from
    its raw documents, with the reason in ``error``."""
    out: dict[str, Any] = {"node_type": "array", "error": None}
    name = path or "array"
    try:
        lay = layout_from_docs(name, docs)
        out.update(
            shape=list(lay.shape),
            dtype=str(lay.dtype),
            chunks=list(lay.chunks),
            shards=list(lay.shards) if lay.shards else None,
            codecs=lay.describe_codecs(),
            nbytes=math.prod(lay.shape) * lay.dtype.itemsize,
            attributes=lay.attrs,
        )
    except ZarrError as exc:
        out.update(_raw_summary(docs), error=getattr(exc, "reason", str(exc)))
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        out.update(_raw_summary(docs), error=str(exc))
    if path is None:
        out.update(missing=True, stored_bytes=None, stored_files=None, stored_complete=False)
    else:
        stored, files, complete = count_stored(path, max_files)
        out.update(missing=False, stored_bytes=stored, stored_files=files, stored_complete=complete)
    return out


def _raw_summary(docs: Mapping[str, Any]) -> dict[str, Any]:
    """What can be said of an array from documents lsio_ray could not parse (any field
    may be absent or of the wrong type: nothing here trusts them)."""

    def field(doc: Any, *keys: str) -> Any:
        for key in keys:
            doc = doc.get(key) if isinstance(doc, dict) else None
        return doc

    if "zarr.json" in docs:
        doc = docs["zarr.json"]
        dtype, chunks = field(doc, "data_type"), field(doc, "chunk_grid", "configuration")
        chunks = field(chunks, "chunk_shape")
        codecs = field(doc, "codecs")
        codecs = [c for c in codecs if isinstance(c, dict)] if isinstance(codecs, list) else []
    else:
        doc = docs.get(".zarray")
        dtype, chunks = field(doc, "dtype"), field(doc, "chunks")
        codecs = [{"filter": f} for f in field(doc, "filters") or [] if isinstance(f, dict)]
        if isinstance(field(doc, "compressor"), dict):
            codecs.append({"compressor": field(doc, "compressor")})
    shape = field(doc, "shape")
    attrs = field(doc, "attributes") if "zarr.json" in docs else docs.get(".zattrs")
    return {
        "shape": shape if isinstance(shape, list) else None,
        "dtype": _dtype_name(dtype),
        "chunks": chunks if isinstance(chunks, list) else None,
        "shards": None,
        "codecs": codecs,
        "nbytes": None,
        "attributes": attrs if isinstance(attrs, dict) else {},
    }


def _dtype_name(dtype: Any) -> str:
    """A raw data type as written: v2's string, v3's name or extension object's name."""
    if isinstance(dtype, dict) and isinstance(dtype.get("name"), str):
        return dtype["name"]
    return dtype if isinstance(dtype, str) else json.dumps(dtype, default=str)


def _shown(name: str) -> str:
    """A member name as printed: names with control characters (a newline, a terminal
    escape) are shown as Python literals, never written raw to a terminal."""
    return name if name.isprintable() else repr(name)


def _shape(value: Any) -> str:
    return str(tuple(value)) if isinstance(value, list) else "?"


def _array_cells(m: Mapping[str, Any]) -> list[str]:
    """The columns of an array's line: shape, dtype, chunks, codecs, stored size, and
    why lsio_ray cannot read it (when it cannot)."""
    chunks = f"chunks {_shape(m['chunks'])}"
    if m["shards"]:
        chunks += f" in shards {_shape(m['shards'])}"
    codecs = [c for c in m["codecs"] if c != {"order": "C"}]  # v2's default, noise here
    cells = [
        _shape(m["shape"]),
        _shown(str(m["dtype"])),
        chunks,
        ", ".join(_shown(codec_label(c)) for c in codecs) or "no codecs",
    ]
    if m["missing"]:
        cells.append("MISSING on disk")
    elif m["stored_bytes"] is None:
        cells.append("stored size unknown (HTTP)")
    else:
        more = "" if m["stored_complete"] else "at least "
        stored = f"{more}{_size(m['stored_bytes'])} stored"
        if m["nbytes"] and m["stored_bytes"] and m["stored_complete"]:
            stored += f" (ratio {m['nbytes'] / m['stored_bytes']:.2f})"
        cells.append(stored)
    if m["error"]:
        cells.append(f"[lsio_ray cannot read it: {_shown(m['error'])}]")
    return cells


def format_group_info(info: Mapping[str, Any]) -> str:
    """A group's summary (``Group.info()``) as a header and a tree of its members, one
    line each, in aligned columns: arrays with shape, dtype, chunks (and shards),
    codecs and stored size."""
    members = info["members"]
    arrays = [m for m in members if m["node_type"] == "array"]
    groups = len(members) - len(arrays)
    stored = sum(m["stored_bytes"] or 0 for m in arrays)
    more = "" if all(m["stored_complete"] for m in arrays) else "at least "
    if arrays and all(m["stored_bytes"] is None for m in arrays):
        more, stored_text = "", "stored size unknown (HTTP)"
    else:
        stored_text = f"{more}{_size(stored)} stored"
    head = (
        f"Zarr v{info['zarr_format']} group {_shown(info['path'])}"
        + (" (consolidated metadata)" if info["consolidated"] else "")
        + f": {len(arrays)} array{'s' * (len(arrays) != 1)}, "
        f"{groups} group{'s' * (groups != 1)}, {stored_text}"
    )
    lines = [head]
    if info["attributes"]:
        lines.append(f"attributes {json.dumps(info['attributes'], default=str)[:200]}")
    rows: list[list[str]] = [["/"]]
    for i, m in enumerate(members):
        depth = m["path"].count("/")
        # one guide column per ancestor: "│" while that ancestor has siblings below
        guide = "".join("│   " if _has_next(members, i, lv) else "    " for lv in range(depth))
        branch = "├── " if _has_next(members, i, depth) else "└── "
        name = guide + branch + _shown(m["path"].rsplit("/", 1)[-1])
        if m["node_type"] == "group":
            rows.append([name + "/"] + (["MISSING on disk"] if m["missing"] else []))
        else:
            rows.append([name, *_array_cells(m)])
    lines.extend(_aligned(rows))
    if info.get("truncated"):
        lines.append(f"... and {info['truncated']} more members")
    return "\n".join(lines)


def _aligned(rows: list[list[str]], max_width: int = 40) -> list[str]:
    """The rows with their columns padded to a common width (a cell wider than
    ``max_width`` does not widen its column; the last cell of a row is not padded)."""
    ncol = max(len(r) for r in rows)
    widths = [
        max((len(r[c]) for r in rows if len(r) > c + 1 and len(r[c]) <= max_width), default=0)
        for c in range(ncol)
    ]
    return [
        "  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:-1]))
        + (("  " if len(r) > 1 else "") + r[-1])
        for r in rows
    ]


def _has_next(members: list[Mapping[str, Any]], i: int, level: int) -> bool:
    """Whether the ancestor of ``members[i]`` at ``level`` (its own level: itself) has a
    sibling after it (members are listed depth first)."""
    for m in members[i + 1 :]:
        depth = m["path"].count("/")
        if depth < level:
            return False
        if depth == level:
            return True
    return False
