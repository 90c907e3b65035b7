"""Errors of the Ray layer: each names the file, the node and what failed.

``InputError`` is raised where a consumer asks for a range that could not be read (the
batch carries the error code, the path and the node in its index); ``NodeLostError``
when the only node holding a file has left the cluster; ``OutputError`` when a write
through an IO actor fails.  All three are :class:`lsio_ray.LsioError` subclasses.
"""

from __future__ import annotations

from lsio_ray.errors import LsioError

__all__ = ["InputError", "NodeLostError", "OutputError", "RayLayerError"]


class RayLayerError(LsioError):
    """Base class of the Ray layer's own errors."""


class InputError(RayLayerError):
    """A range of an input file could not be read on the node that holds it.

    ``cause`` is the exception the local engine would have raised (``FileNotFoundError``,
    ``PermissionError``, :class:`~lsio_ray.RangePastEOFError`, ...); ``errno`` its code
    (negative lsio codes for engine-specific errors)."""

    def __init__(self, path: str, node_id: str, cause: BaseException, errno: int) -> None:
        self.path = path
        self.node_id = node_id
        self.cause = cause
        self.errno = errno
        if isinstance(cause, OSError) and cause.filename is not None:
            why = f"[Errno {cause.errno}] {cause.strerror}"
        else:
            why = str(cause)
        super().__init__(f"{path} on node {node_id}: {why}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.node_id, self.cause, self.errno))


class OutputError(RayLayerError):
    """Writing a file through a node's IO actor failed."""

    def __init__(self, path: str, node_id: str, message: str) -> None:
        self.path = path
        self.node_id = node_id
        self.message = message
        super().__init__(f"{path} (on node {node_id}): {message}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.node_id, self.message))


class NodeLostError(RayLayerError):
    """The node that holds some files has left the cluster, so they cannot be read."""

    def __init__(self, node_id: str, paths: list[str]) -> None:
        self.node_id = node_id
        self.paths = list(paths)
        shown = ", ".join(self.paths[:3]) + (" ..." if len(self.paths) > 3 else "")
        super().__init__(
            f"node {node_id} is no longer in the cluster and holds {len(self.paths)} "
            f"file(s) of this group: {shown}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.node_id, self.paths))
