"""The plan of converting a whole Zarr group: which arrays, with which chunks, and the
groups' documents -- made before Ray starts, so every mistake is found first.

:func:`plan_group` walks the source group (v2 or v3, nested, through its consolidated
metadata when it has some: :class:`lsio_ray.zarr.Group`) -- a directory, or a prefix of
object storage (``s3://bucket/ds.zarr``, read with this process's store options, as
``lsio_ray.zarr`` reads groups) -- resolves the chunk rules of
every array (:func:`resolve_rules`) and plans each array's conversion as the array job
does (:func:`~lsio_ray.ray.rechunk.plan.plan_job`), so a shape that does not fit an
array is refused naming it.  :meth:`GroupPlan.documents` gives the new groups'
documents (attributes, hierarchy, consolidated metadata when the source had it) as
zarr-python writes them.  Pure: no Ray, no writes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lsio_ray.io import url
from lsio_ray.io.objects import read_object
from lsio_ray.io.url import is_remote
from lsio_ray.ray.rechunk.plan import Plan, plan_job
from lsio_ray.zarr import Group
from lsio_ray.zarr.codec_api import METADATA_FILES, docs_from_files, group_documents, is_group

__all__ = [
    "ALL",
    "ArrayJob",
    "GroupPlan",
    "Rules",
    "plan_group",
    "resolve_rules",
    "source_is_group",
]

ALL = "*"
"""The key of a rules mapping whose shape applies to every array it does not name."""

Rules = Sequence[int] | Mapping[str, Sequence[int]]
"""One shape for every array, or a mapping of array paths (``"sub/x"``) to shapes, with
:data:`ALL` for the arrays not named."""

GROUP_JOB_VERSION = 1


@dataclass(frozen=True)
class ArrayJob:
    """One array of the group and how it is converted."""

    path: str
    """Its path below the group (``"sub/temperature"``)."""
    src: str
    """Its source directory (or URL)."""
    dst: str
    """Its destination (directory or URL)."""
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    plan: Plan
    """Its conversion planned for one CPU: the metadata it gets (the block shape is the
    array job's, planned for the cluster)."""


@dataclass(frozen=True)
class GroupPlan:
    """A whole group's conversion: its arrays, in order, and its groups."""

    src: str
    dst: str
    zarr_format: int
    consolidated: bool
    """The source group had consolidated metadata: so does the new one."""
    groups: dict[str, dict[str, Any]]
    """Each group's path ("" for the root) to its attributes."""
    arrays: tuple[ArrayJob, ...]

    def identity(self) -> bytes:
        """The group job's ``job.json``: what must match for a run to resume another."""
        doc = {
            "version": GROUP_JOB_VERSION,
            "kind": "group",
            "src": self.src,
            "zarr_format": self.zarr_format,
            "consolidated": self.consolidated,
            "groups": self.groups,
            "arrays": {a.path: a.plan.dst_docs for a in self.arrays},
        }
        return json.dumps(doc, sort_keys=True).encode()

    def documents(self) -> dict[str, bytes]:
        """The new groups' documents by path below the destination, as zarr-python
        writes them (:func:`~lsio_ray.zarr.codec_api.group_documents`)."""
        return group_documents(
            self.groups,
            {a.path: a.plan.dst_bytes for a in self.arrays},
            zarr_format=self.zarr_format,
            consolidated=self.consolidated,
        )


def source_is_group(src: str | os.PathLike[str]) -> bool:
    """Whether ``src`` holds a Zarr group: a directory with the ``zarr.json`` of a group
    or ``.zgroup`` (:func:`~lsio_ray.zarr.codec_api.is_group`), or an object-storage
    prefix with such objects (read with this process's store options; an error reading
    them: False, the array job then says what is wrong)."""
    path = os.fspath(src)
    if not is_remote(path):
        return os.path.isdir(path) and is_group(path)
    base = path.rstrip("/")
    try:
        raw = read_object(f"{base}/zarr.json")
        if raw is not None:
            doc = json.loads(raw)
            return isinstance(doc, dict) and doc.get("node_type") == "group"
        return read_object(f"{base}/.zarray") is None and read_object(f"{base}/.zgroup") is not None
    except (OSError, ValueError):
        return False


def _shape_text(shape: Sequence[int]) -> str:
    return ",".join(str(int(s)) for s in shape)


def _as_mapping(name: str, rules: Rules | None) -> dict[str, tuple[int, ...]]:
    if rules is None:
        return {}
    if isinstance(rules, Mapping):
        out = {}
        for key, shape in rules.items():
            if not isinstance(key, str):
                raise TypeError(f"{name}: array paths are str, not {type(key).__name__}")
            out[key.strip("/") if key != ALL else key] = tuple(int(s) for s in shape)
        return out
    return {ALL: tuple(int(s) for s in rules)}


def resolve_rules(
    src: str,
    arrays: Mapping[str, Any],
    chunks: Rules,
    shards: Rules | None,
    zarr_format: int,
    flag_prefix: str = "",
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...] | None]]:
    """``(chunks, shards)`` for each array of ``arrays`` (path to its
    :class:`~lsio_ray.zarr.codec_api.ArrayLayout`).

    An array named in a rules mapping gets its shape, else the :data:`ALL` rule (or the
    one shape given for all); an array no chunk rule covers keeps its own chunk shape
    (and its shard shape, when the new array is v3).  Raises :class:`ValueError` naming
    the array and the group ``src`` when a shape has not one size per dimension of the
    array, and naming the path when a rule names no array of the group (``chunks`` and
    ``shards`` called so, after ``flag_prefix``: ``"--"`` for the command line)."""
    crule, srule = _as_mapping("chunks", chunks), _as_mapping("shards", shards)
    for flag, rule in (("chunks", crule), ("shards", srule)):
        unknown = sorted(set(rule) - set(arrays) - {ALL})
        if unknown:
            listed = ", ".join(sorted(arrays)) or "none"
            raise ValueError(
                f"{flag_prefix}{flag} for {unknown[0]!r}: the group {src} has no array of "
                f"that path (its arrays: {listed})"
            )
    out = {}
    for path, lay in arrays.items():
        c = crule.get(path, crule.get(ALL))
        s = srule.get(path, srule.get(ALL))
        if c is None:
            c = tuple(lay.chunks)
            if s is None and zarr_format == 3 and lay.shards is not None:
                s = tuple(lay.shards)
        for flag, shape, rule in (("chunks", c, crule), ("shards", s, srule)):
            if shape is not None and len(shape) != lay.ndim:
                which = f"the rule for {path!r}" if path in rule else "the rule for every array"
                n = len(shape)
                raise ValueError(
                    f"{flag_prefix}{flag} {_shape_text(shape)} ({which}): "
                    f"{n} size{'s' * (n != 1)} for the array {path!r} of the group {src}, "
                    f"which has {lay.ndim} dimensions (shape {_shape_text(lay.shape) or '()'}); "
                    f"give it a rule of its own ({{{path!r}: SHAPE}}, or --{flag} {path}=SHAPE)"
                )
        out[path] = (c, s)
    return out


def _metadata_files(src: str) -> dict[str, bytes | None]:
    """The raw :data:`~lsio_ray.zarr.codec_api.METADATA_FILES` of the array at ``src``
    (a directory or a URL; None: no such file or object).  ``zarr.json`` wins over the
    v2 documents (:func:`~lsio_ray.zarr.codec_api.docs_from_files`), so they are not
    read when it is there: one request per v3 array on object storage."""
    raw: dict[str, bytes | None] = dict.fromkeys(METADATA_FILES)
    for name in sorted(METADATA_FILES, key=lambda n: n != "zarr.json"):  # zarr.json first
        if name != "zarr.json" and raw["zarr.json"] is not None:
            break
        if is_remote(src):
            raw[name] = read_object(url.join(src, name))
            continue
        try:
            with open(os.path.join(src, name), "rb") as f:
                raw[name] = f.read()
        except FileNotFoundError:
            raw[name] = None
    return raw


def plan_group(
    src_root: str,
    dst_root: str,
    *,
    chunks: Rules,
    shards: Rules | None,
    codec: str | None,
    zarr_format: int | None,
    block_bytes: int,
    flag_prefix: str = "",
) -> GroupPlan:
    """The plan of converting the group at ``src_root`` into a new group at
    ``dst_root``.

    The source is a local directory (or shared storage this process sees) or a URL:
    object storage (``s3://``, ``gs://``, ``az://``, with this process's store options,
    :func:`lsio_ray.io.stores.configure`), whose prefixes are listed, or HTTP, which
    lists nothing -- a group there is converted through its consolidated metadata only.
    It is walked by :class:`lsio_ray.zarr.Group`, so every member name is checked as
    the reader checks it (on a URL, a plain key under the group's prefix), and each
    array's metadata documents are then read from the array itself (a file, or an
    object: :func:`lsio_ray.io.objects.read_object`), as its array job reads them.

    Raises :class:`ValueError` naming the array (and the group) whose new layout cannot
    be made -- a shape of the wrong rank, shards for v2, an unknown codec --,
    :class:`~lsio_ray.zarr.GroupError` for an invalid or hostile group or one over HTTP
    without consolidated metadata (its members cannot be listed), and ``OSError``
    naming the URL when the store refuses a read (``flag_prefix``: see
    :func:`resolve_rules`)."""
    group = Group(src_root)
    fmt = int(zarr_format or group.zarr_format)
    if fmt not in (2, 3):
        raise ValueError(f"zarr_format must be 2 or 3, not {fmt}")
    groups: dict[str, dict[str, Any]] = {"": dict(group.attrs)}
    layouts: dict[str, Any] = {}
    for path, node in group.members(max_depth=None):
        if isinstance(node, Group):
            groups[path] = dict(node.attrs)
        else:
            layouts[path] = node.layout
    rules = resolve_rules(src_root, layouts, chunks, shards, fmt, flag_prefix)
    jobs = []
    for path, (c, s) in rules.items():
        src = layouts[path].path
        raw = _metadata_files(src)
        dst = f"{dst_root.rstrip('/')}/{path}"
        try:
            plan = plan_job(
                src,
                dst,
                docs_from_files(raw, src),
                chunks=c,
                shards=s,
                codec=codec,
                zarr_format=fmt,
                block_bytes=block_bytes,
                cpus=1,
            )
        except ValueError as exc:
            given = f"{flag_prefix}chunks {_shape_text(c)}"
            if s:
                given += f", {flag_prefix}shards {_shape_text(s)}"
            raise ValueError(
                f"the array {path!r} of the group {src_root} ({given}) cannot be converted: {exc}"
            ) from None
        jobs.append(ArrayJob(path, src, dst, c, s, plan))
    return GroupPlan(src_root, dst_root, fmt, group.consolidated, groups, tuple(jobs))
