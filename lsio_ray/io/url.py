"""Where data lives: a local path or a URL, told apart once, the same way everywhere.

Every entry point that takes a path (op groups, the Zarr reader and Store, the Ray
readers, the conversion job, the CLI) passes it through :func:`resolve`:

* a plain path, or a ``file://`` URL: the absolute local path;
* ``s3://bucket/key`` (``s3a://``), ``gs://bucket/key`` (``gcs://``), ``az://container/key``
  (``azure://``, ``abfs://``, ``abfss://``), ``http://host/path``, ``https://host/path``:
  kept as the URL, read and written by the object-storage backend
  (:mod:`lsio_ray.io.remote`);
* any other ``scheme://``: :class:`UnsupportedURLError` naming the scheme -- never a local
  directory called ``scheme:`` (``Store("s3://b/x")`` used to write ``./s3:/b/x``).

A URL is split into its *store* (``s3://bucket``, ``https://host:port``) and its *key*
(the object's path in that store) by :func:`split`.  Keys are hostile: a key with ``..``
or empty segments is refused (:func:`check_key`), so a key never names an object outside
the prefix it was built under.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = [
    "REMOTE_SCHEMES",
    "UnsupportedURLError",
    "check_key",
    "is_remote",
    "join",
    "local_path",
    "resolve",
    "split",
]

#: schemes the object-storage backend reads and writes, by their canonical name
REMOTE_SCHEMES: dict[str, str] = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gs",
    "gcs": "gs",
    "az": "az",
    "azure": "az",
    "abfs": "abfs",
    "abfss": "abfs",
    "http": "http",
    "https": "https",
}

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


class UnsupportedURLError(ValueError):
    """A URL whose scheme lsio_ray cannot read or write (never taken as a local path)."""


def scheme_of(path: str) -> str | None:
    """The lower-case scheme of ``path`` (``"s3"``), or None for a plain path."""
    m = _SCHEME.match(path)
    return m.group(1).lower() if m else None


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True for a URL of object storage or HTTP (after :func:`resolve`)."""
    if not isinstance(path, str):
        return False
    s = scheme_of(path)
    return s is not None and s in REMOTE_SCHEMES


def resolve(path: Any) -> str:
    """A path or URL as the IO layer keeps it: local paths absolute, URLs checked.

    Raises :class:`UnsupportedURLError` for an unknown scheme, ``ValueError`` for an empty
    path, a NUL byte, or a URL without a bucket / host."""
    p = os.fspath(path)
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    if not p:
        raise ValueError("empty path")
    if "\0" in p:
        raise ValueError(f"path contains a NUL byte: {p!r}")
    s = scheme_of(p)
    if s is None:
        return os.path.abspath(p)
    if s == "file":
        parts = urlsplit(p)
        if parts.netloc not in ("", "localhost"):
            raise UnsupportedURLError(
                f"{p}: file:// URLs name a local path, not host {parts.netloc!r}"
            )
        local = unquote(parts.path)
        if not local:
            raise ValueError(f"{p}: no path in the file:// URL")
        return os.path.abspath(local)
    if s not in REMOTE_SCHEMES:
        known = ", ".join(sorted(set(REMOTE_SCHEMES) | {"file"}))
        raise UnsupportedURLError(f"{p}: unknown URL scheme {s!r} (lsio_ray reads {known})")
    store, key = split(p)
    del store
    if key:
        check_key(key, p)
    return p


def split(url: str) -> tuple[str, str]:
    """``(store, key)``: ``s3://bucket/a/b`` -> ``("s3://bucket", "a/b")``;
    ``https://host:8080/x/y`` -> ``("https://host:8080", "x/y")``."""
    parts = urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"{url}: no bucket or host in the URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{url}: query strings and fragments are not supported in data URLs")
    scheme = parts.scheme.lower()
    return f"{scheme}://{parts.netloc}", parts.path.lstrip("/")


def check_key(key: str, url: str = "") -> str:
    """``key`` when it is a plain object key: no ``..`` or ``.`` segment, no empty
    segment (``a//b``), no backslash; else ``ValueError`` naming the URL."""
    segs = key.split("/")
    if key.endswith("/"):
        segs = segs[:-1]
    for seg in segs:
        if seg in ("", ".", "..") or "\\" in seg:
            raise ValueError(f"{url or key}: key {key!r} has an empty, '.' or '..' segment")
    return key


def join(base: str, *names: str) -> str:
    """``base`` (a local path or URL) joined with relative ``names`` ('/'-separated);
    a name that would climb out of ``base`` is refused."""
    for name in names:
        check_key(name, name)
    if is_remote(base):
        return "/".join([base.rstrip("/"), *names])
    return os.path.join(base, *names)


def local_path(path: Any, what: str) -> str:
    """``path`` as an absolute local path for ``what`` (e.g. "a Zarr array"): an
    unknown scheme is :class:`UnsupportedURLError`, and so is an object-storage or HTTP
    URL where ``what`` is not read or written through the remote backend yet (op groups
    -- ``get_ranges``, ``put_file`` -- are) -- never a local directory named ``s3:``."""
    p = resolve(path)
    if is_remote(p):
        raise UnsupportedURLError(
            f"{p}: {what} on object storage or HTTP is not supported yet; "
            "read and write URLs with op groups (lsio_ray.get_ranges, lsio_ray.put_file)"
        )
    return p
