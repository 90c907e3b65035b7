"""Where a group is read from: a local directory or a URL (object storage, HTTP).

The group code (:mod:`lsio_ray.zarr.group`, :mod:`lsio_ray.zarr.group_meta`) reads a
hierarchy through these few calls, the same for a directory and for a URL prefix:

* :func:`locate` -- the location of a group as given (a local real path, or the URL
  without its trailing ``/``), its ``storage_options`` applied;
* :func:`read_doc` -- a JSON document of a node (None when there is none);
* :func:`exists` -- whether a node has a document (HEAD on object storage);
* :func:`list_children` -- the names directly under a node: subdirectories, or the
  common prefixes object storage lists (:func:`lsio_ray.io.objects.list_dir`);
* :func:`child` -- a member's location, refused unless it stays inside the root.

HTTP servers list nothing: :func:`can_list` is False there, and a group over HTTP
lists its members only from its consolidated metadata.  Without it the group still
opens (format and attributes) and a member named explicitly (``g["temperature"]``) is
found by reading its own documents; listing (``keys()``, ``len``, ``info``) raises
:class:`~lsio_ray.zarr.errors.GroupError` saying so.
"""

from __future__ import annotations

import os
from typing import Any

from lsio_ray.io import objects, url
from lsio_ray.io.stores import configure_url
from lsio_ray.zarr.errors import GroupError
from lsio_ray.zarr.layout import _parse_json

__all__ = [
    "NO_LISTING",
    "can_list",
    "child",
    "exists",
    "is_remote",
    "list_children",
    "locate",
    "present",
    "read_doc",
]

#: why a group over HTTP without consolidated metadata cannot list its members
NO_LISTING = (
    "an HTTP server lists no objects and this group has no consolidated metadata, so its "
    "members cannot be listed (a member named explicitly, g['name'], still opens; "
    "zarr.consolidate_metadata or lsio_ray.zarr.consolidate_metadata on the source "
    "writes the metadata that lists them)"
)


def is_remote(loc: str) -> bool:
    """Whether ``loc`` is a URL (object storage or HTTP), not a local path."""
    return url.is_remote(loc)


def locate(path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> str:
    """The location of the group at ``path``: a local path absolute with its symbolic
    links resolved, or the URL without a trailing ``/`` (``storage_options`` configure
    its store, :func:`lsio_ray.io.stores.configure_url`).  Unknown schemes raise
    :class:`~lsio_ray.io.url.UnsupportedURLError`."""
    p = url.resolve(path)
    if storage_options is not None:
        configure_url(p, storage_options)
    if url.is_remote(p):
        return p.rstrip("/")
    return os.path.realpath(p)


def read_doc(loc: str, name: str) -> Any:
    """The JSON document ``name`` (``zarr.json``, ``.zgroup``...) of the node at ``loc``,
    or None when there is none.  Invalid JSON raises
    :class:`~lsio_ray.zarr.errors.ArrayMetadataError` naming ``loc``; a store's error
    (403, a timeout) an ``OSError`` naming the URL."""
    if url.is_remote(loc):
        raw = objects.read_object(f"{loc}/{name}")
    else:
        try:
            with open(os.path.join(loc, name), "rb") as fh:
                raw = fh.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
    if raw is None:
        return None
    return _parse_json(raw, name, loc)


def exists(loc: str, name: str) -> bool:
    """Whether the node at ``loc`` has the document ``name`` (not read)."""
    if url.is_remote(loc):
        return objects.object_size(f"{loc}/{name}") is not None
    return os.path.exists(os.path.join(loc, name))


def can_list(loc: str) -> bool:
    """Whether the members under ``loc`` can be listed (everywhere but HTTP)."""
    return url.scheme_of(loc) not in ("http", "https")


def list_children(loc: str) -> list[str]:
    """The names directly under ``loc`` that may be members, sorted: subdirectories of
    a directory, common prefixes of object storage.  Over HTTP: :class:`GroupError`
    (:data:`NO_LISTING`)."""
    if not can_list(loc):
        raise GroupError(loc, NO_LISTING)
    if url.is_remote(loc):
        _, prefixes = objects.list_dir(loc)
        return sorted(p.rstrip("/") for p in prefixes)
    with os.scandir(loc) as it:
        names = sorted(e.name for e in it)
    return [n for n in names if os.path.isdir(os.path.join(loc, n))]


def child(root: str, loc: str, name: str, rel: str, ancestors: tuple[str, ...]) -> str:
    """The location of the direct member ``name`` of the node at ``loc`` (``rel``: the
    member's path below the root, for errors), refused with :class:`GroupError` unless
    it lies inside ``root`` and is not ``loc`` or one of its ``ancestors`` (a cycle).

    A local directory is resolved (symbolic links followed) before the check; a URL's
    key must be a plain one (:func:`lsio_ray.io.url.check_key`: no ``..``, ``.``, empty
    segment or backslash) under the root's prefix."""
    if url.is_remote(loc):
        u = f"{loc}/{name}"
        try:
            if "/" in name:
                raise ValueError(f"{u}: a member name holds a '/'")
            url.check_key(url.split(u)[1], u)
        except ValueError as exc:
            raise GroupError(root, f"member {rel!r}: {exc}: refused") from None
        if not u.startswith(root + "/"):  # pragma: no cover - check_key rules it out
            raise GroupError(root, f"member {rel!r} is {u}, outside the group: refused")
        return u
    real = os.path.realpath(os.path.join(loc, name))
    if os.path.commonpath([root, real]) != root:
        raise GroupError(root, f"member {rel!r} resolves to {real}, outside the group: refused")
    if real in ancestors:
        raise GroupError(
            root,
            f"member {rel!r} resolves to {real}, the group itself or one of its parents "
            "(a cycle): refused",
        )
    return real


def present(loc: str) -> bool:
    """Whether the member at ``loc`` is there: its directory exists.  Object storage and
    HTTP have no directories: a member consolidated metadata lists is taken as present
    (its arrays' missing chunks read as fill value, as zarr-python reads them)."""
    if url.is_remote(loc):
        return True
    return os.path.isdir(loc)
