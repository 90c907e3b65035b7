"""Zarr groups (v2 and v3): the arrays and groups inside a hierarchy, by name.

>>> import lsio_ray.zarr as lz
>>> g = lz.open("dataset.zarr")                 # a Group when the path holds a group
>>> print(g)                                    # a tree: shapes, dtypes, chunks, codecs, sizes
>>> t = g["temperature"][0:8]                   # members are lsio_ray.zarr.Array
>>> x = g["sub/x"]                              # paths through nested groups
>>> [name for name, _ in g.arrays()], list(g.keys()), g.attrs

Members come from the group's consolidated metadata when it has some (v2 ``.zmetadata``,
v3 ``consolidated_metadata`` in ``zarr.json``, as zarr-python writes them:
:func:`consolidate_metadata`), otherwise from listing its directory.

A group may be a URL (``s3://``, ``gs://``, ``az://``, ``http(s)://``, with
``storage_options=`` as arrays take them): object storage lists the prefixes under the
group; an HTTP server lists nothing, so there the members come from the consolidated
metadata only -- without it the group opens (format, attributes), a member named
explicitly opens by its own documents, and listing raises :class:`GroupError` saying
why (:mod:`lsio_ray.zarr.group_access`).  Member arrays are read over the same URL.

Every member name is treated as hostile: a name or a path in the metadata is split on
``/`` and refused if it is empty, absolute, or has a ``.`` or ``..`` part, and each
member's directory is resolved (symbolic links followed) and refused unless it lies
inside the directory of the group that was opened (the *root*), and is not the group
itself or one of its parents (a cycle); on a URL, a member's key must be a plain key
under the group's prefix (:func:`lsio_ray.io.url.check_key`).  Refusals raise
:class:`GroupError` naming the member.  (The chunk files inside an array are the array
reader's business, as for an array opened on its own.)
"""

from __future__ import annotations

import errno
import inspect
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import zarr
from zarr.storage import LocalStore

from lsio_ray.io import url
from lsio_ray.zarr import group_access
from lsio_ray.zarr.array import Array, open_array
from lsio_ray.zarr.errors import ArrayMetadataError, GroupError
from lsio_ray.zarr.group_meta import (
    V2_DOCS,
    Member,
    check_attrs,
    is_group,
    read_group,
    split_member_path,
)
from lsio_ray.zarr.info import MAX_WALK, array_summary, format_group_info
from lsio_ray.zarr.layout import layout_from_docs
from lsio_ray.zarr.loader import Loader

#: members of a group on object storage probed at once when it is listed
PROBE_THREADS = 16

__all__ = [
    "Group",
    "consolidate_metadata",
    "is_group",
    "open_group",
    "open_node",
    "split_member_path",
]

#: members shown by ``str(group)`` (and in IPython) before it says how many more there are
_REPR_MEMBERS = 200


@dataclass
class _Context:
    """What every group of one opened hierarchy shares."""

    root: str  # the real path (or the URL) of the group that was opened
    use_consolidated: bool | None  # as asked when it was opened, for every group below
    options: dict[str, Any]  # Array keyword options (direct, coalesce_gap, ...)
    wrap_array: Callable[[Array], Any] | None
    loader: Loader | None
    backend: str | None
    own_loader: Loader | None = field(default=None)

    def array_loader(self) -> Loader | None:
        """The loader member arrays read through (one of the group's own, made on first
        use, when a ``backend`` was asked for)."""
        if self.loader is not None:
            return self.loader
        if self.backend is not None:
            if self.own_loader is None or self.own_loader.closed:
                self.own_loader = Loader(backend=self.backend)
            return self.own_loader
        return None


class Group:
    """A Zarr group (v2 or v3) read through lsio_ray.

    ``g["name"]`` or ``g["sub/name"]`` returns the member: a :class:`Group` or a
    :class:`~lsio_ray.zarr.Array` opened with the group's array options (``direct``,
    ``coalesce_gap``... as :func:`~lsio_ray.zarr.open_array` takes them).  ``keys()``,
    ``iter(g)``, ``len(g)`` and ``in`` cover the direct members, sorted by name;
    :meth:`arrays`, :meth:`groups` and :meth:`members` yield ``(name, node)`` pairs like
    zarr-python's.  :meth:`tree`, ``print(g)`` and IPython's display draw the hierarchy;
    ``repr(g)`` is one line.

    ``use_consolidated``: None (default) reads the consolidated metadata when there is
    some and lists the directory otherwise; False always lists; True requires it.
    ``backend`` gives the group's arrays one loader of their own with that engine
    backend (closed by :meth:`close`); ``loader`` shares one.  ``wrap_array`` is applied
    to every array the group hands out (``lsio_ray.open`` wraps them for notebooks).
    ``path`` may be an object-storage or HTTP URL; ``storage_options`` are then its
    store's options (:func:`lsio_ray.io.stores.configure`), else they come from the
    environment.  Raises ``FileNotFoundError`` when ``path`` holds no group and
    :class:`GroupError` when its metadata is invalid or names a member outside it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        use_consolidated: bool | None = None,
        loader: Loader | None = None,
        backend: str | None = None,
        wrap_array: Callable[[Array], Any] | None = None,
        storage_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        try:
            inspect.signature(Array).bind_partial(**options)
        except TypeError as exc:
            raise TypeError(f"Group: an option arrays do not take: {exc}") from None
        real = group_access.locate(path, storage_options)
        ctx = _Context(real, use_consolidated, dict(options), wrap_array, loader, backend)
        self._setup(ctx, real, "", (real,))

    def _setup(
        self,
        ctx: _Context,
        real: str,
        name: str,
        ancestors: tuple[str, ...],
        consolidated: tuple[int, Member, dict[str, Member]] | None = None,
    ) -> None:
        """Set the group up from its directory, or, for a member of a group with
        consolidated metadata, from ``(zarr_format, its entry, its members)`` there."""
        self._ctx = ctx
        self.path = real
        """The group's directory (symbolic links resolved), or its URL."""
        self.name = name
        """The group's path below the group that was opened ("" for that one)."""
        self._ancestors = ancestors
        if consolidated is not None:
            fmt, entry, members = consolidated
            attrs = check_attrs(real, entry.attrs())
        else:
            fmt, attrs, members = read_group(real)
            if ctx.use_consolidated is False:
                members = None
            elif ctx.use_consolidated is True and members is None:
                raise GroupError(real, "has no consolidated metadata (use_consolidated=True)")
        self.zarr_format: int = fmt
        """2 or 3."""
        self.attrs: dict[str, Any] = attrs
        """The group's user attributes."""
        self._consolidated = members
        self._children: dict[str, Member] | None = None

    @property
    def consolidated(self) -> bool:
        """Whether the members come from consolidated metadata (else from listing)."""
        return self._consolidated is not None

    @property
    def root(self) -> str:
        """The directory (or URL) of the group that was opened: no member is read
        outside it."""
        return self._ctx.root

    @property
    def listable(self) -> bool:
        """Whether the members can be listed: from consolidated metadata, or from the
        directory or object-storage prefix (an HTTP server lists nothing)."""
        return self._consolidated is not None or group_access.can_list(self.path)

    # -- members -------------------------------------------------------------------------
    def _entries(self) -> dict[str, Member]:
        """The direct members by name, sorted (cached)."""
        if self._children is None:
            if self._consolidated is not None:
                self._children = {k: e for k, e in self._consolidated.items() if "/" not in k}
            else:
                self._children = self._list()
        return self._children

    def _list(self) -> dict[str, Member]:
        """The direct members found by listing: subdirectories (object-storage prefixes)
        holding the metadata of this group's Zarr format.  On object storage the
        members' documents are read :data:`PROBE_THREADS` at a time (a request each: one
        after another, a 50-member group at 20 ms was a second of round trips)."""
        names = list(group_access.list_children(self.path))
        if group_access.is_remote(self.path) and len(names) > 1:
            with ThreadPoolExecutor(min(PROBE_THREADS, len(names))) as pool:
                entries = list(pool.map(self._probe, names))  # the first error re-raised
        else:
            entries = [self._probe(name) for name in names]
        return {n: e for n, e in zip(names, entries, strict=True) if e is not None}

    def _probe(self, name: str) -> Member | None:
        """The member ``name`` from its own documents (None: it has none of this
        group's Zarr format)."""
        real = self._resolve(name)
        docs: dict[str, Any] = {}
        if self.zarr_format == 3:
            doc = group_access.read_doc(real, "zarr.json")
            if doc is None:
                return None
            kind = doc.get("node_type") if isinstance(doc, dict) else None
            if kind not in ("array", "group"):
                raise GroupError(self._where(name), f"node_type {kind!r} in zarr.json")
            docs["zarr.json"] = doc
        else:  # .zarray, else .zgroup, then .zattrs: no request for what cannot matter
            for doc_name in V2_DOCS:
                if doc_name == ".zgroup" and ".zarray" in docs:
                    continue
                if doc_name == ".zattrs" and not docs:
                    return None
                doc = group_access.read_doc(real, doc_name)
                if doc is not None:
                    docs[doc_name] = doc
            kind = "array" if ".zarray" in docs else "group"
        return Member(kind, docs)

    def _entry(self, name: str) -> Member | None:
        """The direct member ``name``: from the listing, or, where there is none (HTTP
        without consolidated metadata), from the member's own documents."""
        if self._children is None and not self.listable:
            return self._probe(name)
        return self._entries().get(name)

    def _where(self, name: str) -> str:
        """The member ``name`` as errors name it: its directory (or URL) below the group."""
        if group_access.is_remote(self.path):
            return f"{self.path}/{name}"
        return os.path.join(self.path, name)

    def _rel(self, name: str) -> str:
        return f"{self.name}/{name}" if self.name else name

    def _resolve(self, name: str) -> str:
        """The real directory (or URL) of the direct member ``name``, refused
        (:class:`GroupError`) unless it lies inside the root and is not this group or one
        of its parents."""
        return group_access.child(self._ctx.root, self.path, name, self._rel(name), self._ancestors)

    def _member_dir(self, name: str) -> str:
        """The member's directory, checked, and present on disk (consolidated metadata
        may list members that are gone: ``FileNotFoundError`` naming it)."""
        real = self._resolve(name)
        if not group_access.present(real):
            raise FileNotFoundError(
                errno.ENOENT,
                f"member {self._rel(name)!r} is listed in the consolidated metadata of "
                f"{self.root} but is not on disk",
                self._where(name),
            )
        return real

    def _child(self, name: str) -> Array | Group:
        entry = self._entry(name)
        if entry is None:
            raise KeyError(f"{self.path}: no member {self._rel(name)!r}")
        real = self._member_dir(name)
        if entry.kind == "array":
            layout = layout_from_docs(real, entry.docs)
            return Array(layout, self._ctx.array_loader(), **self._ctx.options)
        inherited = None
        if self._consolidated is not None:
            prefix = f"{name}/"
            below = {
                k[len(prefix) :]: e for k, e in self._consolidated.items() if k.startswith(prefix)
            }
            inherited = (self.zarr_format, entry, below)
        group = Group.__new__(Group)
        group._setup(self._ctx, real, self._rel(name), (*self._ancestors, real), inherited)
        return group

    def _wrap(self, node: Array | Group) -> Any:
        if isinstance(node, Array) and self._ctx.wrap_array is not None:
            return self._ctx.wrap_array(node)
        return node

    def __getitem__(self, key: str) -> Any:
        """The member at ``key`` (a name, or a path through nested groups): an
        :class:`~lsio_ray.zarr.Array` (or what ``wrap_array`` makes of it) or a
        :class:`Group`.  ``KeyError`` when there is none."""
        parts = split_member_path(self.path, key)
        node: Array | Group = self
        for i, part in enumerate(parts):
            if not isinstance(node, Group):
                raise KeyError(f"{self.path}: {'/'.join(parts[:i])!r} is an array, not a group")
            node = node._child(part)
        return self._wrap(node)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` (a name or a path) names a member (as the consolidated metadata
        says, when there is some); hostile paths raise :class:`GroupError`."""
        parts = split_member_path(self.path, key)
        if self._consolidated is not None:
            return "/".join(parts) in self._consolidated
        entry = self._entry(parts[0])
        if entry is None or len(parts) == 1:
            return entry is not None
        if entry.kind != "group":
            return False
        child = self._child(parts[0])
        assert isinstance(child, Group)
        return "/".join(parts[1:]) in child

    def keys(self) -> Iterator[str]:
        """The direct members' names, sorted."""
        return iter(list(self._entries()))

    def __iter__(self) -> Iterator[str]:
        return self.keys()

    def __len__(self) -> int:
        return len(self._entries())

    def arrays(self) -> Iterator[tuple[str, Any]]:
        """``(name, array)`` for each direct member that is an array."""
        for name, entry in list(self._entries().items()):
            if entry.kind == "array":
                yield name, self._wrap(self._child(name))

    def groups(self) -> Iterator[tuple[str, Group]]:
        """``(name, group)`` for each direct member that is a group."""
        for name, entry in list(self._entries().items()):
            if entry.kind == "group":
                child = self._child(name)
                assert isinstance(child, Group)
                yield name, child

    def members(self, max_depth: int | None = 0) -> tuple[tuple[str, Any], ...]:
        """``(path, node)`` for the members, depth first: the direct ones for
        ``max_depth=0`` (as zarr-python counts), all descendants for None."""
        out: list[tuple[str, Any]] = []
        for name in self._entries():
            node = self._child(name)
            out.append((name, self._wrap(node)))
            if isinstance(node, Group) and (max_depth is None or max_depth > 0):
                deeper = None if max_depth is None else max_depth - 1
                out.extend((f"{name}/{p}", n) for p, n in node.members(deeper))
        return tuple(out)

    def _walk(self, prefix: str = "") -> Iterator[tuple[str, Member, str | None]]:
        """``(path, entry, directory or None when missing)`` for every member, depth first,
        without opening the arrays.  Hostile members raise."""
        for name, entry in self._entries().items():
            real = self._resolve(name)
            present = group_access.present(real)
            yield f"{prefix}{name}", entry, real if present else None
            if entry.kind == "group" and present:
                child = self._child(name)
                assert isinstance(child, Group)
                yield from child._walk(f"{prefix}{name}/")

    # -- summaries -----------------------------------------------------------------------
    def info(self, max_members: int | None = None) -> dict[str, Any]:
        """A JSON-able summary: format, attributes and, depth first, every member (arrays
        with shape, dtype, chunks, shards, codecs and stored size; ``max_members`` caps
        how many are described, ``truncated`` says how many were left out)."""
        members: list[dict[str, Any]] = []
        truncated = 0
        for path, entry, real in self._walk():
            if max_members is not None and len(members) >= max_members:
                truncated += 1
                continue
            if entry.kind == "array":
                summary = array_summary(real, entry.docs, max_files=MAX_WALK)
            else:
                summary = {
                    "node_type": "group",
                    "missing": real is None,
                    "attributes": entry.attrs(),
                }
            members.append({"path": path, **summary})
        return {
            "path": self.path,
            "node_type": "group",
            "zarr_format": self.zarr_format,
            "consolidated": self.consolidated,
            "attributes": self.attrs,
            "members": members,
            "truncated": truncated,
        }

    def tree(self, max_members: int | None = None) -> str:
        """The hierarchy drawn as a tree, one member a line (:meth:`info`)."""
        return format_group_info(self.info(max_members))

    def __repr__(self) -> str:
        if not self.listable:
            return (
                f"<lsio_ray.zarr.Group {self.path!r} v{self.zarr_format}, members not listed "
                "(HTTP, no consolidated metadata)>"
            )
        kind = "consolidated" if self.consolidated else "listed"
        return (
            f"<lsio_ray.zarr.Group {self.path!r} v{self.zarr_format} {kind}, {len(self)} members>"
        )

    def __str__(self) -> str:
        """The tree (:meth:`tree`) of at most 200 members."""
        return self.tree(_REPR_MEMBERS)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython and Jupyter show the tree."""
        printer.text(repr(self) if cycle else str(self))

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        """Close the loader the group made for its arrays (``backend=...``)."""
        if self._ctx.own_loader is not None:
            self._ctx.own_loader.close()

    def __enter__(self) -> Group:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_group(path: str | os.PathLike[str], **options: Any) -> Group:
    """Open the Zarr group at ``path``; options as :class:`Group` takes them."""
    return Group(path, **options)


def open_node(
    path: str | os.PathLike[str],
    *,
    use_consolidated: bool | None = None,
    wrap_array: Callable[[Array], Any] | None = None,
    loader: Loader | None = None,
    backend: str | None = None,
    **options: Any,
) -> Any:
    """Open the array or group at ``path`` (``lsio_ray.zarr.open``): an array as
    :func:`~lsio_ray.zarr.open_array` opens it (passed through ``wrap_array`` when
    given), a group as a :class:`Group` whose arrays take the same options."""
    try:
        arr = open_array(path, loader=loader, backend=backend, **options)
    except ArrayMetadataError:
        if not is_group(path):
            raise
    except FileNotFoundError as exc:
        if url.is_remote(exc.filename):  # load_layout found no .zgroup either
            raise FileNotFoundError(
                errno.ENOENT,
                "no Zarr array or group here (no zarr.json, .zarray or .zgroup)",
                exc.filename,
            ) from None
        if not os.path.isdir(path):
            raise
        raise FileNotFoundError(
            errno.ENOENT,
            "no Zarr array or group here (no zarr.json, .zarray or .zgroup)",
            os.path.abspath(path),
        ) from None
    else:
        return wrap_array(arr) if wrap_array is not None else arr
    return Group(
        path,
        use_consolidated=use_consolidated,
        loader=loader,
        backend=backend,
        wrap_array=wrap_array,
        **options,
    )


def consolidate_metadata(path: str | os.PathLike[str]) -> Group:
    """Write the consolidated metadata of the group at ``path`` (and everything below)
    the way zarr-python does -- zarr-python's own ``zarr.consolidate_metadata`` writes
    it: v2 ``.zmetadata``, v3 ``consolidated_metadata`` inside ``zarr.json`` (zarr-python
    warns that the latter is not part of the v3 specification yet).

    The hierarchy is first walked by listing, refusing members outside the group, so
    zarr-python never follows a hostile link.  Returns the group, reopened.  A local
    directory only (``UnsupportedURLError`` for a URL)."""
    path = url.local_path(path, "writing consolidated metadata")
    group = Group(path, use_consolidated=False)
    for _ in group._walk():
        pass
    try:
        zarr.consolidate_metadata(LocalStore(group.path), zarr_format=group.zarr_format)
    except Exception as exc:  # zarr-python raises its own error classes too
        raise GroupError(group.path, f"zarr-python could not consolidate it: {exc}") from exc
    return Group(group.path)
