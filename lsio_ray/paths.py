"""Path safety for the code that writes, replaces and removes directory trees.

* :func:`check_disjoint`: a job reading one tree and writing (perhaps first removing)
  another must refuse a destination that is the source, lies inside it, or holds it --
  after symbolic links are resolved, and counting the links inside the destination
  tree, since what is removed or written through them would be the source.
"""

from __future__ import annotations

import os

__all__ = ["check_disjoint", "is_within"]


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
    source.  Call it before anything is removed or written."""
    src_abs = os.path.abspath(os.fspath(src))
    dst_abs = os.path.abspath(os.fspath(dst))
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
