"""The HTML summary of an array that notebooks show (``Array._repr_html_``).

Everything shown comes from files anyone may have written (paths, attributes, codec
configurations, dimension names), so every value is escaped with :func:`html.escape`.
The stored size is counted over at most :data:`MAX_FILES` files, so showing an array of
millions of chunks stays quick.
"""

from __future__ import annotations

import html
import json
import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lsio_ray.zarr.array import Array

__all__ = ["MAX_FILES", "array_html"]

MAX_FILES = 10_000
"""Most files whose sizes the summary adds up."""
_ATTRS_CHARS = 200


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def stored_bytes(path: str, limit: int = MAX_FILES) -> tuple[int, int, bool]:
    """``(bytes, files, complete)`` under ``path``, adding up at most ``limit`` files
    (``complete`` is False when it stopped there)."""
    total = files = 0
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    continue
                total += entry.stat(follow_symlinks=False).st_size
            except OSError:  # removed meanwhile
                continue
            files += 1
            if files >= limit:
                return total, files, False
    return total, files, True


def array_html(array: Array) -> str:
    """A small table: path, format, shape, dtype, chunks, shards, codecs, fill value,
    dimension names, attributes, decoded and stored sizes."""
    lay = array.layout
    fill = lay.fill_value[()]
    rows: list[tuple[str, str]] = [
        ("Path", str(lay.path)),
        ("Format", f"Zarr v{lay.zarr_format}"),
        ("Shape", str(tuple(lay.shape))),
        ("Data type", str(lay.dtype)),
        ("Chunks", f"{tuple(lay.chunks)}, grid {tuple(lay.chunk_grid)}"),
    ]
    if lay.shards:
        rows.append(("Shards", f"{tuple(lay.shards)}, grid {tuple(lay.file_grid)}"))
    rows.append(("Codecs", json.dumps(lay.describe_codecs(), default=str)))
    rows.append(("Fill value", str(fill.item() if isinstance(fill, np.generic) else fill)))
    if lay.meta.dimension_names:
        rows.append(("Dimensions", str(list(lay.meta.dimension_names))))
    if lay.attrs:
        attrs = json.dumps(lay.attrs, default=str)
        if len(attrs) > _ATTRS_CHARS:
            attrs = attrs[:_ATTRS_CHARS] + " ..."
        rows.append(("Attributes", attrs))
    stored, files, complete = stored_bytes(str(lay.path))
    more = "" if complete else "at least "
    ratio = f", ratio {array.nbytes / stored:.2f}" if complete and stored else ""
    rows.append(("Size", f"{_size(array.nbytes)} decoded ({array.nbytes} bytes)"))
    rows.append(("Stored", f"{more}{_size(stored)} in {more}{files} files{ratio}"))
    body = "".join(
        f'<tr><th style="text-align:left">{html.escape(k)}</th>'
        f'<td style="text-align:left">{html.escape(v)}</td></tr>'
        for k, v in rows
    )
    return f"<table><caption>lsio_ray.zarr.Array</caption>{body}</table>"
