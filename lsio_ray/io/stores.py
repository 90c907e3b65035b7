"""Object stores by URL: the options users give (:func:`configure`), the settings of the
remote backend, one obstore store per bucket or host, and what a store's errors mean.

Ownership: ``_options`` and ``_stores`` are process-wide, each behind its lock; a store
is made once per (bucket or host, retries, timeout) and shared by every backend.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from datetime import timedelta
from typing import Any

from lsio_ray.io import config, url

__all__ = [
    "SETTINGS",
    "apply",
    "configure",
    "configure_url",
    "current_settings",
    "describe",
    "errno_of",
    "exported",
    "store_for",
]

_options: dict[str, dict[str, Any]] = {}  # URL prefix -> obstore options (configure)
_options_lock = threading.Lock()


def configure(prefix: str, **storage_options: Any) -> None:
    """Options for every URL under ``prefix`` (``"s3://bucket"``, or a longer prefix):
    what ``obstore.store.from_url`` takes (``endpoint``, ``region``, ``access_key_id``,
    ``skip_signature``, ``client_options={...}``...), the way zarr-python's and fsspec's
    ``storage_options`` pass them.  Without options, credentials and endpoints come from
    the environment as the cloud SDKs read them (``AWS_ACCESS_KEY_ID``,
    ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_*``...)."""
    prefix = prefix.rstrip("/")
    url.split(prefix)  # a bucket or host is required
    with _options_lock:
        if _options.get(prefix) == storage_options:
            # the same again (shipped with every piece to an IO actor, a Store
            # unpickled or copied): keep the stores made
            return
        _options[prefix] = dict(storage_options)
    with _stores_lock:
        _stores.clear()


def configure_url(path: Any, storage_options: dict[str, Any]) -> None:
    """:func:`configure` the bucket or host of URL ``path`` with ``storage_options``
    (zarr-python's and fsspec's keyword); for a local path they must be empty."""
    p = url.resolve(path)
    if not url.is_remote(p):
        if storage_options:
            raise ValueError(f"{p}: storage_options are for object storage and HTTP URLs")
        return
    configure(url.split(p)[0], **storage_options)


def exported(urls: Any) -> dict[str, dict[str, Any]]:
    """The :func:`configure` options that apply to any of ``urls`` (by prefix), to
    ship to another process: Ray workers get them with the work that names the URLs."""
    with _options_lock:
        return {
            prefix: dict(opts)
            for prefix, opts in _options.items()
            if any(str(u).startswith(prefix) for u in urls)
        }


def apply(options: dict[str, dict[str, Any]] | None) -> None:
    """:func:`configure` each prefix of :func:`exported` options (no-op when unchanged)."""
    for prefix, opts in (options or {}).items():
        configure(prefix, **opts)


_stores: dict[str, Any] = {}
_stores_lock = threading.Lock()


def _options_for(store_url: str) -> dict[str, Any]:
    with _options_lock:
        best = ""
        for prefix in _options:
            if store_url.startswith(prefix) and len(prefix) > len(best):
                best = prefix
        return dict(_options.get(best, {}))


#: the settings a backend takes when it is made (config.set is per thread: they are read
#: on the thread that makes the service, not on the backend's own)
SETTINGS = (
    "remote_inflight",
    "remote_coalesce_gap",
    "remote_max_request",
    "remote_retries",
    "remote_timeout",
    "remote_loop",
)


def current_settings() -> dict[str, Any]:
    """The remote settings in effect on this thread."""
    return {name: config.get(name) for name in SETTINGS}


def store_for(store_url: str, settings: dict[str, Any] | None = None) -> Any:
    """The obstore store for ``scheme://bucket-or-host`` (made once per process and
    retry / timeout settings)."""
    settings = settings or current_settings()
    retries, timeout = int(settings["remote_retries"]), float(settings["remote_timeout"])
    key = f"{store_url} {retries} {timeout}"
    with _stores_lock:
        st = _stores.get(key)
        if st is not None:
            return st
    try:
        from obstore.store import from_url
    except ImportError:
        raise ImportError(
            f"{store_url}: object storage and HTTP need obstore: pip install 'lsio_ray[remote]'"
        ) from None

    opts = _options_for(store_url)
    client = dict(opts.pop("client_options", {}) or {})
    client.setdefault("timeout", timedelta(seconds=timeout))
    client.setdefault("connect_timeout", timedelta(seconds=10))
    scheme = store_url.split("://", 1)[0]
    endpoint = str(opts.get("endpoint") or opts.get("endpoint_url") or "")
    if scheme == "http" or endpoint.startswith("http://"):
        client.setdefault("allow_http", True)
    if scheme == "s3" and "endpoint_url" in opts:
        opts["endpoint"] = opts.pop("endpoint_url")

    if (
        scheme == "s3"
        and "endpoint" not in opts
        and os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://")
    ):
        client.setdefault("allow_http", True)
    retry = opts.pop("retry_config", None) or {
        "max_retries": retries,
        "backoff": {
            "init_backoff": timedelta(milliseconds=50),
            "max_backoff": timedelta(seconds=5),
            "base": 2,
        },
        "retry_timeout": timedelta(seconds=max(60.0, 4 * timeout)),
    }
    st = from_url(store_url, client_options=client, retry_config=retry, **opts)
    with _stores_lock:
        return _stores.setdefault(key, st)


def errno_of(exc: BaseException) -> int:
    """A negative errno for an obstore error (what ``make_error`` turns into an OSError)."""
    try:
        from obstore import exceptions as ox
    except ImportError:  # pragma: no cover - obstore is a dependency of this module
        return -errno.EIO
    if isinstance(exc, (ox.NotFoundError, FileNotFoundError)):
        return -errno.ENOENT
    if isinstance(exc, (ox.PermissionDeniedError, ox.UnauthenticatedError, PermissionError)):
        return -errno.EACCES
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return -errno.ETIMEDOUT
    if isinstance(exc, asyncio.CancelledError):
        return -errno.ECANCELED
    return -errno.EIO


def describe(exc: BaseException) -> str:
    """The store's answer in one line (obstore messages carry the request and status)."""
    if isinstance(exc, FileNotFoundError):
        return "no such object or bucket (404)"
    text = " ".join(str(exc).split())
    if len(text) > 400:
        text = text[:400] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
