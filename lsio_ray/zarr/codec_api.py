"""The Zarr layer's interface for code that converts arrays block by block, outside an
:class:`~lsio_ray.zarr.Array` (the cluster conversion job, :mod:`lsio_ray.ray.rechunk`).

Everything here is also used by the array reader and writer, so a conversion and
``lz.save`` of the same data store the same files:

* layouts and metadata: :class:`ArrayLayout`, :func:`layout_from_docs`,
  :func:`metadata_docs`, :func:`docs_from_files`, :data:`METADATA_FILES`;
* chunk selection: :func:`select_chunks`;
* decoding stored files into a block: :class:`CBlock` (the C decoder),
  :func:`c_decodable`, :func:`decode_block` (numcodecs for other codecs);
* encoding one output unit (a chunk or a whole shard): :func:`encode_unit`;
* :func:`supports_direct`: whether a directory's files open with ``O_DIRECT``;
* whole groups: :func:`is_group`; :func:`group_documents`, the groups' documents and
  consolidated metadata of a new hierarchy as zarr-python writes them, and
  :data:`GROUP_FILES`, their names.

The layers above Zarr import these from here or from :mod:`lsio_ray.zarr`, never from
the modules that define them (``tests/test_layers.py``).
"""

from __future__ import annotations

from lsio_ray.zarr.array import supports_direct
from lsio_ray.zarr.blocks import CBlock, c_decodable, decode_block
from lsio_ray.zarr.encode import encode_unit
from lsio_ray.zarr.group_meta import is_group
from lsio_ray.zarr.hierarchy import GROUP_FILES, group_documents
from lsio_ray.zarr.layout import (
    METADATA_FILES,
    ArrayLayout,
    docs_from_files,
    layout_from_docs,
    metadata_docs,
)
from lsio_ray.zarr.plan import select_chunks

__all__ = [
    "GROUP_FILES",
    "METADATA_FILES",
    "ArrayLayout",
    "CBlock",
    "c_decodable",
    "decode_block",
    "docs_from_files",
    "encode_unit",
    "group_documents",
    "is_group",
    "layout_from_docs",
    "metadata_docs",
    "select_chunks",
    "supports_direct",
]
