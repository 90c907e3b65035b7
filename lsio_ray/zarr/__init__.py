"""Zarr v2 and v3 arrays (sharded or not) and groups, read and written through the lsio engine.

>>> import lsio_ray.zarr as lz
>>> a = lz.open("data.zarr")
>>> g = lz.open("dataset.zarr")                        # a group: lz.Group
>>> g, list(g.keys()), g["sub/temperature"][0:8]
>>> a.shape, a.dtype, a.chunks, a.shards
>>> crop = a[0:8, 100:356, 5:261]                      # numpy.ndarray
>>> for crop in a.random_crops((8, 256, 256), 1000, seed=0, prefetch=16): ...
>>> for t0, block in a.time_series((slice(None), slice(0, 256), slice(0, 256))): ...
>>> for s in lz.aligned(g, ["image", "label"]).random_crops((8, 64, 64), 100): ...

zarr-python parses the metadata and numcodecs decodes; lsio_ray plans the IO (chunk
keys, shard indexes, inner-chunk ranges, coalescing), issues it in batches through one
engine, and decodes on threads that release the GIL, straight into the output.
"""

from __future__ import annotations

from lsio_ray.zarr.aligned import AlignedArrays, aligned
from lsio_ray.zarr.array import Array, open_array
from lsio_ray.zarr.creation import create, save
from lsio_ray.zarr.errors import (
    ArrayMetadataError,
    ChunkCorruptError,
    GroupError,
    ShardIndexError,
    UnsupportedError,
    ZarrError,
)
from lsio_ray.zarr.group import Group, consolidate_metadata, open_group, open_node
from lsio_ray.zarr.loader import Loader, default_loader
from lsio_ray.zarr.pipeline import LsioCodecPipeline, use_lsio_pipeline
from lsio_ray.zarr.store import Store
from lsio_ray.zarr.stream import random_box_starts, window_starts

open = open_node  # the package's entry point: lsio_ray.zarr.open(path), array or group

__all__ = [
    "AlignedArrays",
    "Array",
    "ArrayMetadataError",
    "ChunkCorruptError",
    "Group",
    "GroupError",
    "Loader",
    "LsioCodecPipeline",
    "ShardIndexError",
    "Store",
    "UnsupportedError",
    "ZarrError",
    "aligned",
    "consolidate_metadata",
    "create",
    "default_loader",
    "open",
    "open_array",
    "open_group",
    "random_box_starts",
    "save",
    "use_lsio_pipeline",
    "window_starts",
]
