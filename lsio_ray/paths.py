"""Path safety for the code that writes, replaces and removes directory trees.

Two concerns, shared by :class:`lsio_ray.zarr.Store`, :func:`lsio_ray.zarr.save` /
:func:`~lsio_ray.zarr.create` and :func:`lsio_ray.rechunk`:

* :func:`check_disjoint`: a job reading one tree and writing (perhaps first removing)
  another must refuse a destination that is the source, lies inside it, or holds it --
  after symbolic links are resolved, and counting the links inside the destination
  tree, since what is removed or written through them would be the source.  Trees on
  object storage (URLs) are prefixes of a bucket: compared by store (scheme, bucket or
  host) and key, whole segments at a time; a local tree and a URL never overlap.
* :func:`remove_stray_temp_files`: every atomic write of the engine (``put_file``, Zarr
  chunks and metadata) writes ``NAME.lsio-tmp.PID.N[.SUFFIX]`` beside ``NAME`` and
  renames it over ``NAME``.  A process killed (``kill -9``, OOM, power loss) between the
  two leaves that temp file behind, as large as the value it was writing.  Nothing else
  ever removes it, so the writers clean them up: only names carrying the ``.lsio-tmp.``
  marker and a numeric PID field, and (unless told otherwise) only those of processes
  that are no longer alive on this machine and not modified for a while.
"""

from __future__ import annotations

import os
import time

from lsio_ray.io.url import REMOTE_SCHEMES, is_remote, resolve, split

__all__ = [
    "TEMP_MARKER",
    "check_disjoint",
    "is_within",
    "remove_stray_temp_files",
    "temp_file_pid",
]

TEMP_MARKER = ".lsio-tmp."
"""What the engine puts between a file's name and the PID in its temp files' names."""

STRAY_MIN_AGE = 60.0
"""Seconds a dead process's temp file must be left unmodified before it is removed: on
a file system shared by several machines, the PID of a live writer on another machine
may be free on this one, and its temp file is being written (recent)."""


def is_within(path: str, root: str) -> bool:
    """True when the normalised absolute ``path`` is ``root`` or lies under it (no file
    system access: resolve symbolic links first where they matter)."""
    root = os.path.normpath(root)
    path = os.path.normpath(path)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _relation(src: str, dst: str) -> str | None:
    if src == dst:
        return "is"
    if is_within(dst, src):
        return "is inside"
    if is_within(src, dst):
        return "contains"
    return None


def _url_root(u: str) -> tuple[str, str]:
    """``(store, key)`` of a URL as compared: canonical scheme (``s3a`` is ``s3``), host
    or bucket lower-case, no trailing ``/``."""
    store, key = split(u)
    scheme, netloc = store.split("://", 1)
    return f"{REMOTE_SCHEMES.get(scheme, scheme)}://{netloc.lower()}", key.strip("/")


def _check_urls(src: str, dst: str) -> None:
    s_store, s_key = _url_root(src)
    d_store, d_key = _url_root(dst)
    if s_store != d_store:
        return
    # keys as "directories": "a/b" holds "a/b/c" but not "a/bc"; "" is the whole store
    rel = _relation("/" + s_key, "/" + d_key)
    if rel == "is":
        raise ValueError(f"the destination {dst} is the source {src}")
    if rel == "is inside":
        raise ValueError(f"the destination {dst} is inside the source {src}")
    if rel == "contains":
        raise ValueError(
            f"the destination {dst} contains the source {src}: replacing it would remove the source"
        )


def _links_under(root: str) -> list[str]:
    """The symbolic links in the tree under ``root`` (not followed)."""
    out: list[str] = []
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            if os.path.islink(p):
                out.append(p)
    return out


def check_disjoint(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> tuple[str, str]:
    """Refuse a destination tree that overlaps the source tree; returns both absolute.

    Raises :class:`ValueError` naming both paths when ``dst`` is ``src``, lies inside
    it, or contains it -- compared both as written (absolute, normalised) and with
    every symbolic link resolved (:func:`os.path.realpath`) -- or when a symbolic link
    in the existing ``dst`` tree leads to the source, into it, or to a directory
    holding it: removing or writing the destination would then remove or overwrite the
    source.  Call it before anything is removed or written.

    URLs (object storage, :mod:`lsio_ray.io.url`) are returned as resolved, compared by
    store and key prefix (whole segments; ``s3a://`` is ``s3://``); one URL and one
    local path never overlap."""
    src_abs, dst_abs = resolve(src), resolve(dst)
    if is_remote(src_abs) or is_remote(dst_abs):
        if is_remote(src_abs) and is_remote(dst_abs):
            _check_urls(src_abs, dst_abs)
        return src_abs, dst_abs
    src_real = os.path.realpath(src_abs)
    dst_real = os.path.realpath(dst_abs)
    shown_s = src_abs if src_abs == src_real else f"{src_abs} (= {src_real})"
    shown_d = dst_abs if dst_abs == dst_real else f"{dst_abs} (= {dst_real})"
    for s, d in ((src_abs, dst_abs), (src_real, dst_real)):
        rel = _relation(s, d)
        if rel == "is":
            raise ValueError(f"the destination {shown_d} is the source {shown_s}")
        if rel == "is inside":
            raise ValueError(f"the destination {shown_d} is inside the source {shown_s}")
        if rel == "contains":
            raise ValueError(
                f"the destination {shown_d} contains the source {shown_s}: replacing it "
                "would remove the source"
            )
    if os.path.isdir(dst_real):
        for link in _links_under(dst_real):
            target = os.path.realpath(link)
            rel = _relation(src_real, target)
            if rel is not None:
                raise ValueError(
                    f"the destination {shown_d} holds {link}, a symbolic link to {target}, "
                    f"which {rel} the source {shown_s}"
                )
    return src_abs, dst_abs


# -- stray temp files ----------------------------------------------------------------------


def temp_file_pid(name: str) -> int | None:
    """The PID in an engine temp file's name (``NAME.lsio-tmp.PID.N[.SUFFIX...]``), or
    None when ``name`` is not one (no marker, or no positive integer PID after it)."""
    i = name.rfind(TEMP_MARKER)
    if i < 0:
        return None
    fields = name[i + len(TEMP_MARKER) :].split(".")
    if len(fields) < 2 or not fields[0].isdigit() or not fields[1]:
        return None
    pid = int(fields[0])
    return pid if pid > 0 else None


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (any owner)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def remove_stray_temp_files(
    root: str | os.PathLike[str],
    *,
    recursive: bool = True,
    finished: bool = False,
    min_age: float = STRAY_MIN_AGE,
) -> int:
    """Delete the engine's leftover temp files under ``root``; returns how many.

    Only regular files (never links or directories) whose name carries the
    ``.lsio-tmp.`` marker followed by a numeric PID field are candidates (see
    :func:`temp_file_pid`); nothing else is touched.  By default a candidate is removed
    only when its PID is not this process's, no process with that PID is alive on this
    machine, and it has not been modified for ``min_age`` seconds: a write in flight
    is never cut short.  ``finished=True`` is for a writer that knows every write into
    ``root`` is over (a finished :func:`lsio_ray.rechunk` job owning its destination):
    every candidate goes, whatever its PID -- the PIDs of other machines' processes
    cannot be checked here.  ``recursive=False``: ``root``'s own entries only.  A
    missing ``root`` is fine (0)."""
    root = os.fspath(root)
    me = os.getpid()
    horizon = time.time() - min_age
    n = 0
    alive: dict[int, bool] = {}

    def sweep(d: str) -> list[str]:
        nonlocal n
        subdirs: list[str] = []
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            return subdirs
        with it:
            for entry in it:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.path)
                        continue
                    pid = temp_file_pid(entry.name)
                    if pid is None or not entry.is_file(follow_symlinks=False):
                        continue
                    if not finished:
                        if pid == me:
                            continue
                        if pid not in alive:
                            alive[pid] = _alive(pid)
                        if alive[pid] or entry.stat(follow_symlinks=False).st_mtime > horizon:
                            continue
                    os.unlink(entry.path)
                    n += 1
                except FileNotFoundError:  # gone meanwhile (renamed by its writer)
                    continue
        return subdirs

    todo = [root]
    while todo:
        subdirs = sweep(todo.pop())
        if recursive:
            todo.extend(subdirs)
    return n
