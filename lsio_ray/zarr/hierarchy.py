"""The metadata documents of a new Zarr hierarchy, as zarr-python writes them.

A conversion of a whole group (:mod:`lsio_ray.ray.rechunk`) writes its arrays' chunks
itself and each array's metadata documents as zarr-python makes them
(:func:`~lsio_ray.zarr.codec_api.metadata_docs`); the groups' documents -- ``zarr.json``
or ``.zgroup``/``.zattrs`` of every group, and the consolidated metadata (v2
``.zmetadata``, v3 ``consolidated_metadata`` inside the root's ``zarr.json``) -- come
from :func:`group_documents`, made by zarr-python's public API (``zarr.create_group``,
``zarr.consolidate_metadata``) on a scratch copy of the hierarchy's metadata only, so
they are the bytes zarr-python would write into the destination itself.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any

import zarr

from lsio_ray.zarr.errors import GroupError
from lsio_ray.zarr.group_meta import split_member_path

__all__ = ["GROUP_FILES", "group_documents"]

GROUP_FILES = {3: ("zarr.json",), 2: (".zattrs", ".zgroup", ".zmetadata")}
"""The documents a group may have, per Zarr format (v2 ``.zmetadata``: the root only)."""


def group_documents(
    groups: Mapping[str, Mapping[str, Any]],
    arrays: Mapping[str, Mapping[str, bytes]],
    *,
    zarr_format: int,
    consolidated: bool,
) -> dict[str, bytes]:
    """The documents of every group of a hierarchy, by path below its root
    (``"zarr.json"``, ``"sub/zarr.json"``; v2 ``".zgroup"``, ``"sub/.zattrs"``...).

    ``groups``: each group's path ("" for the root, ``"sub/deeper"``) to its attributes;
    ``arrays``: each array's path to its metadata documents as they will be written
    (file name to bytes).  Every array's and group's parent must be in ``groups``.
    ``consolidated``: the root also gets the consolidated metadata of everything below
    it, as ``zarr.consolidate_metadata`` writes it.  Raises :class:`GroupError` naming
    the member for a path that is not relative and clean, or a missing parent."""
    if "" not in groups:
        raise GroupError("<new hierarchy>", "no root group ('') among the groups")
    for path in [*groups, *arrays]:
        if path:
            split_member_path("<new hierarchy>", path)
            parent = path.rpartition("/")[0]
            if parent not in groups:
                raise GroupError("<new hierarchy>", f"{path!r} has no parent group {parent!r}")
    with tempfile.TemporaryDirectory(prefix="lsio-hierarchy-") as tmp:
        # parents before children: zarr-python checks what is above a new node
        for path in sorted(groups, key=lambda p: (p.count("/") + bool(p), p)):
            zarr.create_group(
                tmp, path=path or None, zarr_format=zarr_format, attributes=dict(groups[path])
            )
        for path, docs in arrays.items():
            os.makedirs(os.path.join(tmp, path), exist_ok=True)
            for name, raw in docs.items():
                with open(os.path.join(tmp, path, name), "wb") as f:
                    f.write(raw)
        if consolidated:
            with warnings.catch_warnings():
                # zarr-python's notice that v3 consolidated metadata is not in the
                # specification yet: the source had it, the copy keeps it
                warnings.filterwarnings("ignore", message="Consolidated metadata is currently")
                zarr.consolidate_metadata(tmp, zarr_format=zarr_format)
        out: dict[str, bytes] = {}
        for path in groups:
            for name in GROUP_FILES[zarr_format]:
                file = os.path.join(tmp, path, name)
                if os.path.exists(file):
                    with open(file, "rb") as f:
                        out[f"{path}/{name}" if path else name] = f.read()
        return out
