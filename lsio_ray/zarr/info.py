"""A summary of an array: metadata, chunk and shard grids, codecs, stored size."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lsio_ray.zarr.array import Array

__all__ = ["array_info", "format_info", "stored_size"]


def stored_size(path: str) -> tuple[int, int]:
    """(bytes, files) stored under ``path``, metadata included."""
    total = files = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                total += os.stat(os.path.join(root, name)).st_size
                files += 1
            except FileNotFoundError:  # a temp file renamed meanwhile
                continue
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
    rows.append(
        (
            "size",
            f"{_size(info['nbytes'])} decoded, {_size(info['stored_bytes'])} "
            f"stored in {info['stored_files']} files" + (f" (ratio {ratio:.2f})" if ratio else ""),
        )
    )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
