"""Which node holds a file: declared roots, discovery, or shared storage.

* **Declared roots** (node-local disks): ``{node_id: ["/data/node1", ...]}``.  A path
  belongs to the node whose root is its longest prefix (whole path components).
* **Discovery**: paths under no declared root are looked up by asking every node's IO
  actor whether the file exists there; the answer is cached per directory.  A file
  found on exactly one node belongs to it; found on several (shared storage) or none,
  it belongs to no node in particular.
* **Shared storage**: files that belong to no node go to whichever node is least busy,
  a whole group at a time (so its compute tasks find every batch on one node).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["Locality", "alive_nodes"]


def alive_nodes() -> list[str]:
    """Ids of the cluster's live nodes (in Ray's order)."""
    import ray

    return [n["NodeID"] for n in ray.nodes() if n.get("Alive")]


class Locality:
    """Maps paths to the node that must read them (None: any node will do)."""

    def __init__(self, roots: Mapping[str, Iterable[str]] | None = None) -> None:
        pairs: list[tuple[str, str]] = []
        for node, dirs in (roots or {}).items():
            if isinstance(dirs, (str, os.PathLike)):
                dirs = [dirs]  # type: ignore[list-item]
            for d in dirs:
                root = os.path.abspath(os.fspath(d)).rstrip(os.sep) or os.sep
                pairs.append((root, node))
        # longest root first, so nested roots win over their parents
        self._roots = sorted(pairs, key=lambda p: -len(p[0]))
        self._found: dict[str, str | None] = {}

    @property
    def roots(self) -> list[tuple[str, str]]:
        """``(root directory, node id)`` pairs, longest root first."""
        return list(self._roots)

    @property
    def nodes_with_roots(self) -> set[str]:
        """Nodes that declared at least one root."""
        return {n for _, n in self._roots}

    def declared(self, path: str) -> str | None:
        """The node whose declared root holds ``path``, or None."""
        for root, node in self._roots:
            if path == root or path.startswith(root + os.sep) or root == os.sep:
                return node
        return None

    def cached(self, path: str) -> tuple[bool, str | None]:
        """``(known, node)`` from the discovery cache of ``path``'s directory."""
        d = os.path.dirname(path)
        if d in self._found:
            return True, self._found[d]
        return False, None

    def remember(self, path: str, holders: Sequence[str]) -> str | None:
        """Record which nodes have ``path`` (discovery) and return its node, if unique."""
        node = holders[0] if len(holders) == 1 else None
        self._found[os.path.dirname(path)] = node
        return node
