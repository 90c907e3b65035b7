"""Engine settings: a default, an environment variable and a context manager for each.

>>> from lsio_ray import config
>>> config.get("depth")
64
>>> with config.set(backend="pread"):
...     ...   # engines made here use the pread thread backend

| setting           | env variable            | default                          |
| ----------------- | ----------------------- | -------------------------------- |
| backend           | LSIO_BACKEND            | "auto" (io_uring, else pread)    |
| depth             | LSIO_DEPTH              | 64 ops in flight                 |
| pool_bytes        | LSIO_POOL_BYTES         | 256 MiB (accepts 64M, 1G, ...)   |
| threads           | LSIO_THREADS            | 4 (pread backend workers)        |
| max_open          | LSIO_MAX_OPEN           | 1024 files open at once          |
| register_buffers  | LSIO_REGISTER_BUFFERS   | False                            |
| fixed_files       | LSIO_FIXED_FILES        | True (when the kernel has them)  |
| link_open         | LSIO_LINK_OPEN          | True (open linked to first read) |
| direct            | LSIO_DIRECT             | False (zarr chunk reads O_DIRECT) |
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["get", "parse_size", "set"]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int) -> int:
    """Parse ``4K``, ``64M``, ``1G``, ``4KiB`` or a plain integer into bytes."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    unit = s[-1] if s and s[-1] in _UNITS else ""
    num = s[: len(s) - len(unit)] if unit else s
    try:
        value = float(num)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 4K, 64M, 1G)") from None
    if value < 0:
        raise ValueError(f"size must not be negative: {text!r}")
    return int(value * _UNITS[unit])


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _backend(text: str) -> str:
    t = text.strip().lower()
    if t not in ("auto", "uring", "pread"):
        raise ValueError(f"backend must be auto, uring or pread, not {text!r}")
    return t


_SPEC: dict[str, tuple[str, Any, Any]] = {
    "backend": ("LSIO_BACKEND", "auto", _backend),
    "depth": ("LSIO_DEPTH", 64, int),
    "pool_bytes": ("LSIO_POOL_BYTES", 256 << 20, parse_size),
    "threads": ("LSIO_THREADS", 4, int),
    "max_open": ("LSIO_MAX_OPEN", 1024, int),
    "register_buffers": ("LSIO_REGISTER_BUFFERS", False, _bool),
    "fixed_files": ("LSIO_FIXED_FILES", True, _bool),
    "link_open": ("LSIO_LINK_OPEN", True, _bool),
    "direct": ("LSIO_DIRECT", False, _bool),
}

_local = threading.local()


def _overrides() -> list[dict[str, Any]]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def get(name: str) -> Any:
    """The value in force: innermost ``set`` block, else the environment, else the default."""
    if name not in _SPEC:
        raise KeyError(f"unknown setting {name!r}; known: {sorted(_SPEC)}")
    for layer in reversed(_overrides()):
        if name in layer:
            return layer[name]
    env, default, conv = _SPEC[name]
    raw = os.environ.get(env)
    if raw is None or raw == "":
        return default
    try:
        return conv(raw)
    except ValueError as exc:
        raise ValueError(f"{env}={raw!r}: {exc}") from None


@contextlib.contextmanager
def set(**values: Any) -> Iterator[None]:
    """Override settings for engines created inside the ``with`` block (this thread)."""
    layer = {}
    for k, v in values.items():
        if k not in _SPEC:
            raise KeyError(f"unknown setting {k!r}; known: {sorted(_SPEC)}")
        conv = _SPEC[k][2]
        layer[k] = conv(v) if isinstance(v, str) else v
    _overrides().append(layer)
    try:
        yield
    finally:
        _overrides().pop()
