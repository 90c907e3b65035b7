"""A group's metadata: its own documents, its members' (from consolidated metadata), and
the rule every member path obeys (:func:`split_member_path`).

Nothing here follows a member's path; :mod:`lsio_ray.zarr.group` resolves and checks
each member's location before reading it.  Documents are read through
:mod:`lsio_ray.zarr.group_access`: from a local directory or a URL alike.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any

from lsio_ray.zarr import group_access
from lsio_ray.zarr.errors import GroupError

__all__ = [
    "V2_DOCS",
    "Member",
    "check_attrs",
    "is_group",
    "read_group",
    "split_member_path",
]

#: the v2 documents a member may have (consolidated keys ending in anything else are
#: ignored, like zarr-python does)
V2_DOCS = (".zarray", ".zgroup", ".zattrs")


def split_member_path(group: str, name: Any) -> tuple[str, ...]:
    """The parts of the member path ``name`` (``"sub/x"``), refusing with
    :class:`GroupError` (naming ``group`` and the path) any path that is empty,
    absolute, holds a NUL, or has an empty, ``.`` or ``..`` part."""
    if not isinstance(name, str):
        raise TypeError(f"{group}: member names are str, not {type(name).__name__}")
    why = None
    if not name:
        why = "is empty"
    elif "\x00" in name:
        why = "holds a NUL character"
    elif name.startswith("/"):
        why = "is absolute"
    else:
        for part in name.split("/"):
            if part in ("", ".", ".."):
                why = f"has a {part!r} part" if part else "has an empty part"
                break
    if why is not None:
        raise GroupError(group, f"member path {name!r} {why}: refused")
    return tuple(name.split("/"))


@dataclass(frozen=True)
class Member:
    """One member as its parent knows it: its kind and its metadata documents."""

    kind: str  # "array" or "group"
    docs: dict[str, Any]

    def attrs(self) -> Any:
        """The member's attributes as its documents hold them (not checked)."""
        if "zarr.json" in self.docs:
            return self.docs["zarr.json"].get("attributes", {})
        return self.docs.get(".zattrs", {})


def read_group(path: str) -> tuple[int, dict[str, Any], dict[str, Member] | None]:
    """``(zarr_format, attributes, consolidated members or None)`` of the group at
    ``path`` (a directory or a URL, :func:`lsio_ray.zarr.group_access.locate`)."""
    doc = group_access.read_doc(path, "zarr.json")
    if doc is not None:
        if not isinstance(doc, dict) or doc.get("zarr_format") != 3:
            raise GroupError(path, "zarr.json is not a Zarr v3 metadata document")
        if doc.get("node_type") == "array":
            raise GroupError(path, "is a Zarr array, not a group (lsio_ray.zarr.open_array)")
        if doc.get("node_type") != "group":
            raise GroupError(path, f"node_type is {doc.get('node_type')!r}, not a group")
        return 3, check_attrs(path, doc.get("attributes", {})), _consolidated_v3(path, doc)
    doc = group_access.read_doc(path, ".zgroup")
    if doc is not None:
        if not isinstance(doc, dict) or doc.get("zarr_format") != 2:
            raise GroupError(path, ".zgroup is not a Zarr v2 group document")
        attrs = group_access.read_doc(path, ".zattrs")
        zmeta = group_access.read_doc(path, ".zmetadata")
        cons = _consolidated_v2(path, zmeta) if zmeta is not None else None
        return 2, check_attrs(path, {} if attrs is None else attrs), cons
    if group_access.exists(path, ".zarray"):
        raise GroupError(path, "is a Zarr array, not a group (lsio_ray.zarr.open_array)")
    raise FileNotFoundError(errno.ENOENT, "no Zarr group here (no zarr.json or .zgroup)", path)


def check_attrs(path: str, attrs: Any) -> dict[str, Any]:
    if not isinstance(attrs, dict):
        raise GroupError(path, "the group's attributes are not a JSON object")
    return attrs


def _consolidated_v3(path: str, doc: dict[str, Any]) -> dict[str, Member] | None:
    cons = doc.get("consolidated_metadata")
    if cons is None:
        return None
    if not isinstance(cons, dict) or not isinstance(cons.get("metadata"), dict):
        raise GroupError(path, "consolidated_metadata has no 'metadata' object")
    if cons.get("kind", "inline") != "inline":
        raise GroupError(path, f"consolidated_metadata of kind {cons.get('kind')!r}")
    out: dict[str, Member] = {}

    def add(prefix: str, metadata: dict[str, Any]) -> None:
        for key, member in metadata.items():
            split_member_path(path, key)
            name = f"{prefix}{key}"
            if not isinstance(member, dict) or member.get("node_type") not in ("array", "group"):
                raise GroupError(
                    path, f"consolidated metadata of member {name!r} is not an array or group"
                )
            out.setdefault(name, Member(member["node_type"], {"zarr.json": member}))
            nested = member.get("consolidated_metadata")
            if member["node_type"] == "group" and isinstance(nested, dict):
                inner = nested.get("metadata")
                if isinstance(inner, dict):  # zarr-python writes them flat, read both
                    add(f"{name}/", inner)

    add("", cons["metadata"])
    return _check_parents(path, out)


def _consolidated_v2(path: str, zmeta: Any) -> dict[str, Member]:
    if not isinstance(zmeta, dict) or not isinstance(zmeta.get("metadata"), dict):
        raise GroupError(path, ".zmetadata has no 'metadata' object")
    if zmeta.get("zarr_consolidated_format") != 1:
        fmt = zmeta.get("zarr_consolidated_format")
        raise GroupError(path, f".zmetadata has zarr_consolidated_format {fmt!r}, not 1")
    docs: dict[str, dict[str, Any]] = {}
    for key, doc in zmeta["metadata"].items():
        if not isinstance(key, str):
            raise GroupError(path, f".zmetadata key {key!r} is not a string")
        member, _, name = key.rpartition("/")
        if not member:  # the group's own documents (read from its files)
            continue
        split_member_path(path, member)
        if name in V2_DOCS:
            docs.setdefault(member, {})[name] = doc
    out: dict[str, Member] = {}
    for member, found in docs.items():
        if (".zarray" in found) == (".zgroup" in found):
            what = "both .zarray and .zgroup" if ".zarray" in found else "no .zarray or .zgroup"
            raise GroupError(path, f".zmetadata has {what} for member {member!r}")
        if not all(isinstance(d, dict) for d in found.values()):
            raise GroupError(path, f".zmetadata documents of member {member!r} are not objects")
        kind = "array" if ".zarray" in found else "group"
        out[member] = Member(kind, found)
    return _check_parents(path, out)


def _check_parents(path: str, members: dict[str, Member]) -> dict[str, Member]:
    """Refuse consolidated metadata listing a member under a parent it does not list as
    a group (it could never be reached)."""
    for name in members:
        parent = name.rpartition("/")[0]
        if parent and (parent not in members or members[parent].kind != "group"):
            raise GroupError(
                path, f"consolidated metadata lists {name!r} but not its parent group {parent!r}"
            )
    return dict(sorted(members.items()))


def is_group(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (a directory or a URL) holds a Zarr group (v3 ``zarr.json`` with
    node type ``group``, or v2 ``.zgroup`` and no array metadata).  Unreadable metadata
    (or an unknown URL scheme): False."""
    try:
        root = group_access.locate(path)
        doc = group_access.read_doc(root, "zarr.json")
        if doc is not None:
            return isinstance(doc, dict) and doc.get("node_type") == "group"
        if group_access.exists(root, ".zarray"):
            return False
        return group_access.exists(root, ".zgroup")
    except (OSError, ValueError):
        return False
