"""Engine settings: a default, an environment variable and a context manager for each.

>>> from lsio_ray.io import config
>>> config.get("depth")
64
>>> with config.set(backend="pread"):
...     ...   # engines made here use the pread thread backend

| setting          | env variable          | default                      | allowed          |
| ---------------- | --------------------- | ---------------------------- | ---------------- |
| backend          | LSIO_BACKEND          | "auto" (io_uring, else pread) | auto/uring/pread |
| depth            | LSIO_DEPTH            | 64 ops in flight             | 1..4096          |
| pool_bytes       | LSIO_POOL_BYTES       | 256 MiB (accepts 64M, 1G...) | 4 KiB.. (1)      |
| threads          | LSIO_THREADS          | 4 (pread backend workers)    | 1..1024          |
| max_open         | LSIO_MAX_OPEN         | 1024 files open at once (2)  | 1..2**20 (2)     |
| register_buffers | LSIO_REGISTER_BUFFERS | False                        | boolean (3)      |
| fixed_files      | LSIO_FIXED_FILES      | True (when the kernel has them) | boolean (3)   |
| link_open        | LSIO_LINK_OPEN        | True (open linked to 1st read) | boolean (3)    |
| direct           | LSIO_DIRECT           | "auto" (zarr reads O_DIRECT) (6) | auto/boolean (3) |
| decode_threads   | LSIO_ZARR_THREADS     | the cores (decode pool)      | 1..1024          |
| max_inflight     | LSIO_ZARR_MAX_INFLIGHT | 4096 ranges queued         | 1..2**20         |
| call_files       | LSIO_ZARR_CALL_FILES  | 8 chunk files (7)           | 0..1024          |
| index_cache_bytes | LSIO_ZARR_INDEX_CACHE | 64 MiB of shard indexes     | 0..physical memory |
| coalesce_gap     | LSIO_ZARR_COALESCE_GAP | 0 (bytes; -1: never merge) | -1..2**30        |
| batch_bytes      | LSIO_RAY_BATCH_BYTES  | 16 MiB (Ray batch objects)   | 4 KiB..physical memory |
| node_pool_bytes  | LSIO_NODE_POOL_BYTES  | memory/16, 256M..8G (4)     | 4 KiB..phys. memory |
| node_budget_dir  | LSIO_NODE_BUDGET_DIR  | /dev/shm/lsio-pools-<uid> (4) | an absolute path |
| remote_inflight  | LSIO_REMOTE_INFLIGHT  | 64 requests per process (5)  | 1..4096          |
| remote_coalesce_gap | LSIO_REMOTE_COALESCE_GAP | 256 KiB (5)            | 0..1 GiB         |
| remote_max_request | LSIO_REMOTE_MAX_REQUEST | 16 MiB per coalesced GET (5) | 4 KiB..1 GiB  |
| remote_retries   | LSIO_REMOTE_RETRIES   | 10 (5)                       | 0..100           |
| remote_timeout   | LSIO_REMOTE_TIMEOUT   | 30 s per request (5)         | 0.1..3600 s      |
| remote_loop      | LSIO_REMOTE_LOOP      | "auto": uvloop if installed (5) | auto/uvloop/asyncio |

"uring" fails with ``OSError`` when the kernel refuses io_uring, or when this build has
no io_uring backend (built without liburing: ``lsio_ray.io.HAVE_URING`` is False).
(1) The pool is rounded up to a power of two, which must not exceed physical memory (nor
1 TiB).  (2) And at most the process's open-file limit (``RLIMIT_NOFILE``, soft).
(3) ``True``/``False``, 1/0, or in the environment and ``set``: 1/true/yes/on, 0/false/no/off.
(4) The pool budget shared by the IO services of one node's processes, and its ledger
(:mod:`lsio_ray.io.budget`).
(5) Object storage and HTTP (:mod:`lsio_ray.io.remote`): requests in flight at once per
process, the gap between two ranges of one object below which they are fetched by one
GET, the largest such GET, retries of a throttled (503), failed (5xx) or timed-out
request (with exponential backoff), each request's timeout, and the event loop that
drives the requests (``"auto"``: uvloop when it is installed, else asyncio's own).
(6) ``"auto"``: each Zarr array decides from its file system and its size against the
page cache (:mod:`lsio_ray.zarr.direct`); True / False force it for every array.
(7) A Zarr read of at most this many chunk files reads them on the calling thread when
they are all in the page cache (:mod:`lsio_ray.io.cached`), without a hand-over to the
IO thread; 0 sends every read through the IO thread.  Measured (aligned crops of 8 whole
chunks, and 8 parts of chunks) 1.2-1.4x the calls/s; 16 files about even, 32 slower:
the engine reads many files in parallel and decodes the first while the last are read.

Every value is checked -- given to an engine, to :func:`set`, or read from the
environment -- before anything is allocated: a wrong type raises ``TypeError``, a value
out of range or an unparsable environment variable ``ValueError``; the message names
the setting (and the variable) and what is allowed.  Every environment variable lsio_ray
reads is a setting here (the local cluster's own ``LSIO_CLUSTER_*`` excepted);
:func:`env_int` and :func:`env_size` give scripts the same checks.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import re
import resource
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "env_int",
    "env_size",
    "get",
    "max_open_limit",
    "overridden",
    "parse_duration",
    "parse_size",
    "physical_memory",
    "set",
    "validate",
]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}

MAX_DEPTH = 4096  # the C core's ceiling on ops in flight
MAX_THREADS = 1024
MAX_OPEN = 1 << 20
MIN_POOL = 4096
MAX_POOL = 1 << 40


def parse_duration(text: str | float | int) -> float:
    """Parse ``10s``, ``500ms``, ``2m``, ``1h`` or a plain number of seconds."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|)\s*", str(text).lower())
        if not m:
            raise ValueError(f"not a duration: {text!r} (use e.g. 10s, 500ms, 2m)")
        scale = {"ms": 1e-3, "s": 1.0, "": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
        value = float(m.group(1)) * scale
    if value < 0:
        raise ValueError(f"duration must not be negative: {text!r}")
    return value


def parse_size(text: str | int) -> int:
    """Parse ``4K``, ``64M``, ``1G``, ``4KiB``, ``1.5G`` or a plain integer into bytes.

    Raises ``ValueError`` for anything else, negative or not finite sizes included."""
    if isinstance(text, bool):
        raise TypeError(f"not a size: {text!r} (use e.g. 4K, 64M, 1G or an integer)")
    if isinstance(text, numbers.Integral):
        value = int(text)
        if value < 0:
            raise ValueError(f"size must not be negative: {text!r}")
        return value
    if not isinstance(text, str):
        raise TypeError(
            f"not a size: {type(text).__name__} {text!r} (use e.g. 4K, 64M, 1G or an integer)"
        )
    s = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = s[-1] if s and s[-1] in _UNITS else ""
    num = s[: len(s) - len(unit)] if unit else s
    try:
        value_f = float(num)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 4K, 64M, 1G)") from None
    if not math.isfinite(value_f):
        raise ValueError(f"not a size: {text!r} (use e.g. 4K, 64M, 1G)")
    if value_f < 0:
        raise ValueError(f"size must not be negative: {text!r}")
    return int(value_f * _UNITS[unit])


def physical_memory() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def max_open_limit() -> int:
    """The largest ``max_open`` allowed: the open-file limit in force (``RLIMIT_NOFILE``,
    soft), at most 2**20 -- io_uring refuses a larger table of direct descriptors, and
    the pread backend could not open that many files anyway."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return MAX_OPEN
    return min(int(soft), MAX_OPEN)


def _human(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def _check_int(name: str, value: Any, lo: int, hi: int, why: str = "") -> int:
    """``value`` as an int in ``lo..hi``; strings are parsed (environment, ``set``)."""
    allowed = f"{lo}..{hi}{why}"
    if isinstance(value, str):
        try:
            v = int(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be an integer in {allowed}, not {value!r}") from None
    elif isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an integer in {allowed}, not {type(value).__name__} {value!r}"
        )
    else:
        v = int(value)
    if not lo <= v <= hi:
        raise ValueError(f"{name}={v} is out of range: allowed {allowed}")
    return v


def _check_size(name: str, value: Any, lo: int, hi: int, why: str = "") -> int:
    """``value`` (bytes, or ``64M``...) in ``lo..hi``."""
    allowed = f"{_human(lo) if lo else 0}..{_human(hi)}{why}"
    try:
        v = parse_size(value)
    except TypeError:
        raise TypeError(
            f"{name} must be a size in {allowed} (bytes, or e.g. 64M), "
            f"not {type(value).__name__} {value!r}"
        ) from None
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}; allowed {allowed}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name}={value!r} is out of range: allowed {allowed}")
    return v


def _check_direct(name: str, value: Any) -> bool | str:
    """``"auto"`` (the rule of :mod:`lsio_ray.zarr.direct`) or a flag."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return _check_flag(name, value)
    except ValueError:
        raise ValueError(
            f"{name} must be auto or a boolean (1/true/yes/on or 0/false/no/off), not {value!r}"
        ) from None
    except TypeError:
        raise TypeError(
            f"{name} must be 'auto' or a bool (True or False), not {type(value).__name__} {value!r}"
        ) from None


def _check_flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, str):
        t = value.strip().lower()
        if t in ("1", "true", "yes", "on"):
            return True
        if t in ("0", "false", "no", "off"):
            return False
        raise ValueError(
            f"{name} must be a boolean (1/true/yes/on or 0/false/no/off), not {value!r}"
        )
    raise TypeError(f"{name} must be a bool (True or False), not {type(value).__name__} {value!r}")


def _check_loop(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be a str (auto, uvloop or asyncio), not {type(value).__name__} {value!r}"
        )
    t = value.strip().lower()
    if t not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"{name} must be auto, uvloop or asyncio, not {value!r}")
    return t


def _check_backend(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be a str (auto, uring or pread), not {type(value).__name__} {value!r}"
        )
    t = value.strip().lower()
    if t not in ("auto", "uring", "pread"):
        raise ValueError(f"{name} must be auto, uring or pread, not {value!r}")
    return t


def _pool_bytes(name: str, value: Any) -> int:
    cap = min(MAX_POOL, 1 << (physical_memory().bit_length() - 1))
    why = f" (rounded up to a power of two, within physical memory: {_human(physical_memory())})"
    v = _check_size(name, value, MIN_POOL, cap, why)
    rounded = 1 << (v - 1).bit_length()
    if rounded > cap:
        raise ValueError(
            f"{name}={value!r} rounds up to {_human(rounded)}: allowed "
            f"{_human(MIN_POOL)}..{_human(cap)}{why}"
        )
    return v


def _max_open(name: str, value: Any) -> int:
    return _check_int(
        name, value, 1, max_open_limit(), " (the open-file limit RLIMIT_NOFILE, at most 2**20)"
    )


def _node_pool_default() -> int:
    """One sixteenth of the node's memory, within 256 MiB..8 GiB."""
    return min(max(physical_memory() // 16, 256 << 20), 8 << 30)


def _budget_dir_default() -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return os.path.join(base, f"lsio-pools-{os.getuid()}")


def _check_timeout(name: str, value: Any) -> float:
    try:
        t = parse_duration(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a duration (e.g. 30, 30s, 500ms), not {value!r}"
        ) from None
    if not 0.1 <= t <= 3600:
        raise ValueError(f"{name} must be in 0.1 s..3600 s, not {value!r}")
    return t


def _check_dir(name: str, value: Any) -> str:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise TypeError(f"{name} must be a directory path, not {value!r}")
    path = os.fspath(value)
    if not os.path.isabs(path):
        raise ValueError(f"{name} must be an absolute path, not {path!r}")
    return path


_SPEC: dict[str, tuple[str, Callable[[], Any], Callable[[str, Any], Any]]] = {
    "backend": ("LSIO_BACKEND", lambda: "auto", _check_backend),
    "depth": ("LSIO_DEPTH", lambda: 64, lambda n, v: _check_int(n, v, 1, MAX_DEPTH)),
    "pool_bytes": ("LSIO_POOL_BYTES", lambda: 256 << 20, _pool_bytes),
    "threads": ("LSIO_THREADS", lambda: 4, lambda n, v: _check_int(n, v, 1, MAX_THREADS)),
    "max_open": ("LSIO_MAX_OPEN", lambda: min(1024, max_open_limit()), _max_open),
    "register_buffers": ("LSIO_REGISTER_BUFFERS", lambda: False, _check_flag),
    "fixed_files": ("LSIO_FIXED_FILES", lambda: True, _check_flag),
    "link_open": ("LSIO_LINK_OPEN", lambda: True, _check_flag),
    "direct": ("LSIO_DIRECT", lambda: "auto", _check_direct),
    # the IO service and the layers above it
    "decode_threads": (
        "LSIO_ZARR_THREADS",
        lambda: os.cpu_count() or 1,
        lambda n, v: _check_int(n, v, 1, MAX_THREADS),
    ),
    "max_inflight": (
        "LSIO_ZARR_MAX_INFLIGHT",
        lambda: 4096,
        lambda n, v: _check_int(n, v, 1, 1 << 20),
    ),
    "call_files": (
        "LSIO_ZARR_CALL_FILES",
        lambda: 8,
        lambda n, v: _check_int(n, v, 0, 1024),
    ),
    "index_cache_bytes": (
        "LSIO_ZARR_INDEX_CACHE",
        lambda: 64 << 20,
        lambda n, v: _check_size(n, v, 0, physical_memory(), " (physical memory)"),
    ),
    "coalesce_gap": (
        "LSIO_ZARR_COALESCE_GAP",
        lambda: 0,
        lambda n, v: _check_int(n, v, -1, 1 << 30),
    ),
    "remote_inflight": (
        "LSIO_REMOTE_INFLIGHT",
        lambda: 64,
        lambda n, v: _check_int(n, v, 1, 4096),
    ),
    "remote_coalesce_gap": (
        "LSIO_REMOTE_COALESCE_GAP",
        lambda: 256 << 10,
        lambda n, v: _check_size(n, v, 0, 1 << 30),
    ),
    "remote_max_request": (
        "LSIO_REMOTE_MAX_REQUEST",
        lambda: 16 << 20,
        lambda n, v: _check_size(n, v, 4096, 1 << 30),
    ),
    "remote_retries": (
        "LSIO_REMOTE_RETRIES",
        lambda: 10,
        lambda n, v: _check_int(n, v, 0, 100),
    ),
    "remote_timeout": (
        "LSIO_REMOTE_TIMEOUT",
        lambda: 30.0,
        _check_timeout,
    ),
    "remote_loop": ("LSIO_REMOTE_LOOP", lambda: "auto", _check_loop),
    "node_pool_bytes": (
        "LSIO_NODE_POOL_BYTES",
        _node_pool_default,
        lambda n, v: _check_size(n, v, MIN_POOL, physical_memory(), " (physical memory)"),
    ),
    "node_budget_dir": ("LSIO_NODE_BUDGET_DIR", _budget_dir_default, _check_dir),
    "batch_bytes": (
        "LSIO_RAY_BATCH_BYTES",
        lambda: 16 << 20,
        lambda n, v: _check_size(n, v, 4096, physical_memory(), " (physical memory)"),
    ),
}


def decode_threads() -> int:
    """Decode threads of an IO service (``LSIO_ZARR_THREADS``; default: the cores)."""
    return int(get("decode_threads"))


def max_inflight() -> int:
    """Ranges an IO service keeps queued in its engine at most
    (``LSIO_ZARR_MAX_INFLIGHT``; default 4096)."""
    return int(get("max_inflight"))


_local = threading.local()


def _overrides() -> list[dict[str, Any]]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def overridden() -> bool:
    """True inside a :func:`set` block (this thread): engines made here differ from the
    process's defaults, so they get a service of their own."""
    return any(_overrides())


def _spec(name: str) -> tuple[str, Callable[[], Any], Callable[[str, Any], Any]]:
    if name not in _SPEC:
        raise KeyError(f"unknown setting {name!r}; known: {sorted(_SPEC)}")
    return _SPEC[name]


def validate(name: str, value: Any) -> Any:
    """``value`` checked (and normalised: ``"64M"`` -> bytes, ``"on"`` -> True) for
    setting ``name``; raises ``TypeError``/``ValueError`` naming the setting and what is
    allowed, ``KeyError`` for an unknown setting."""
    return _spec(name)[2](name, value)


def get(name: str) -> Any:
    """The value in force: innermost ``set`` block, else the environment, else the default.

    An environment variable that does not pass :func:`validate` raises ``ValueError``
    naming the variable, its value, the setting and what is allowed."""
    env, default, check = _spec(name)
    for layer in reversed(_overrides()):
        if name in layer:
            return layer[name]
    raw = os.environ.get(env)
    if raw is None or raw.strip() == "":
        return default()
    try:
        return check(name, raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{env}={raw!r}: {exc}") from None


@contextlib.contextmanager
def set(**values: Any) -> Iterator[None]:
    """Override settings for engines created inside the ``with`` block (this thread).

    Every value is checked first (:func:`validate`): nothing is overridden if one fails."""
    layer = {k: validate(k, v) for k, v in values.items()}
    _overrides().append(layer)
    try:
        yield
    finally:
        _overrides().pop()


def env_int(env: str, default: int, lo: int, hi: int) -> int:
    """Integer environment variable ``env`` in ``lo..hi`` (``default`` when unset or
    blank); ``ValueError`` naming the variable, its value and the range otherwise."""
    raw = os.environ.get(env, "")
    if not raw.strip():
        return default
    try:
        return _check_int(env, raw, lo, hi)
    except ValueError as exc:
        raise ValueError(f"{env}={raw!r}: {exc}") from None


def env_size(env: str, default: int, lo: int, hi: int | None = None) -> int:
    """Size environment variable ``env`` (bytes, or ``64M``...) in ``lo..hi`` bytes
    (``hi`` None: physical memory); ``default`` when unset or blank; ``ValueError``
    naming the variable, its value and the range otherwise."""
    raw = os.environ.get(env, "")
    if not raw.strip():
        return default
    why = ""
    if hi is None:
        hi, why = physical_memory(), " (physical memory)"
    try:
        return _check_size(env, raw, lo, hi, why)
    except ValueError as exc:
        raise ValueError(f"{env}={raw!r}: {exc}") from None
