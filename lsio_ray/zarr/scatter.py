"""Reading many equal-shaped boxes as one task: each chunk under them read and decoded
once, and copied into every box that needs it (:class:`ScatterTask`).

Used by the box streams (:func:`lsio_ray.zarr.stream.same_shape_boxes`: crops read a
group at a time), the decode-aware sampler (:mod:`lsio_ray.zarr.sampler`: a block of
crops at a time) and, through :meth:`lsio_ray.zarr.Array.start_boxes`, Ray Data's read
tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lsio_ray.io import DECODE_JOB_DTYPE, extent
from lsio_ray.zarr.loader import Loader
from lsio_ray.zarr.plan import Selection
from lsio_ray.zarr.read import BoxRead, origin_address

if TYPE_CHECKING:
    from lsio_ray.zarr.array import Array

__all__ = ["ScatterTask", "scatterable"]


def scatterable(array: Array) -> bool:
    """Whether :class:`ScatterTask` reads this array (the C decoder's codecs, 1 to 8
    dimensions)."""
    return array.layout.codec.c_codec is not None and 0 < array.ndim <= 8


class ScatterTask(BoxRead):
    """Read each distinct chunk under a block of equal-shaped boxes once, decode it once,
    and copy it into every box that needs it -- all in ``lsio_decode_batch`` (the jobs of
    one chunk are consecutive, so C decodes it into its scratch buffer once and copies
    from there).  ``los``: the ``(B, ndim)`` corners.  The boxes go into ``out``, of shape
    ``(B, *box)``, or, given ``boxes``, into those B arrays of the box's shape (all with
    the same strides; ``out`` is then None).

    Only for arrays whose codec the C decoder handles (``layout.codec.c_codec``)."""

    def __init__(
        self,
        array: Array,
        loader: Loader,
        out: np.ndarray | None,
        los: np.ndarray,
        boxes: Sequence[np.ndarray] | None = None,
    ) -> None:
        if (out is None) == (boxes is None):
            raise ValueError("give either out or boxes")
        outs = list(boxes) if boxes is not None else list(out)  # type: ignore[arg-type]
        if outs and any(
            b.shape != outs[0].shape or b.strides != outs[0].strides or b.dtype != array.dtype
            for b in outs
        ):
            raise ValueError("the boxes must share one shape, dtype and strides")
        self._outs = outs
        self._bases = np.array([origin_address(b) for b in outs], dtype=np.int64)
        # each box's memory: the C decoder refuses a job reaching outside its own box
        self._extents = np.array([extent(b) for b in outs], dtype=np.uint64).reshape(-1, 2)
        self._los = np.asarray(los, dtype=np.int64).reshape(len(outs), array.ndim)
        super().__init__(array, loader, out, None, None)  # type: ignore[arg-type]
        if self._jobs is None and self.remaining:
            raise ValueError(f"{array.path}: ScatterTask needs the C decoder's codecs")

    @property
    def boxes(self) -> list[np.ndarray]:
        """The B boxes, in the order of ``los`` (views of ``out``, or the ``boxes``)."""
        return self._outs

    def _select(self, lo: Any, hi: Any) -> Selection:
        lay = self.layout
        nd = lay.ndim
        chunk = np.asarray(lay.chunks, dtype=np.int64)
        box = np.asarray(self._outs[0].shape if self._outs else (), dtype=np.int64)
        los = self._los
        his = los + box
        first, last = los // chunk, (his - 1) // chunk
        span = (box - 1) // chunk + 2  # the most chunks a box can touch along each axis
        offs = np.indices(tuple(span)).reshape(nd, -1).T
        coords = first[:, None, :] + offs[None, :, :]
        valid = (coords <= last[:, None, :]).all(axis=2)
        k = np.nonzero(valid)[0]
        coords = coords[valid]
        grid = lay.chunk_grid
        lin = np.ravel_multi_index(tuple(coords.T), grid)
        uniq, inv = np.unique(lin, return_inverse=True)
        inv = inv.reshape(-1)
        order = np.argsort(inv, kind="stable")  # the boxes of one chunk together
        k, coords, inv = k[order], coords[order], inv[order]
        count = np.bincount(inv, minlength=len(uniq))
        self._pair_count = count
        self._pair_start = np.cumsum(count) - count
        self._pair_k = k
        c_lo = coords * chunk
        self._pair_a = np.maximum(los[k], c_lo)  # the part of chunk and box in common
        self._pair_b = np.minimum(his[k], c_lo + chunk)
        self._pair_src = self._pair_a - c_lo
        self._pair_chunk = inv
        chunk_coords = np.stack(np.unravel_index(uniq, grid), axis=1).astype(np.int64)
        z = np.zeros_like(chunk_coords)
        return Selection(chunk_coords, z, z, z, z, np.zeros(len(uniq), bool))

    def _units(self) -> int:
        return len(self._pair_k)

    def _dst(self) -> np.ndarray:
        return self._outs[0]  # every box has these strides (the jobs add each box's base)

    def _template(self, strides: np.ndarray, cstr: np.ndarray) -> np.ndarray:
        k = self._pair_k
        jobs = np.zeros(len(k), DECODE_JOB_DTYPE)
        jobs["dst"] = self._bases[k] + ((self._pair_a - self._los[k]) * strides).sum(axis=1)
        jobs["dst_lo"] = self._extents[k, 0]
        jobs["dst_len"] = self._extents[k, 1]
        jobs["src_off"] = (self._pair_src * cstr).sum(axis=1)
        jobs["shape"][:, : self.layout.ndim] = self._pair_b - self._pair_a
        jobs["tag"] = self._pair_chunk
        return jobs  # never direct: the chunk is decoded once into scratch, then copied

    def _fill_run(self, chunks: np.ndarray) -> None:
        assert self._pair_start is not None and self._pair_count is not None
        n = 0
        try:
            fill = self.layout.fill_value
            for i in chunks.tolist():
                a0 = int(self._pair_start[i])
                for r in range(a0, a0 + int(self._pair_count[i])):
                    n += 1
                    if self.error is None:
                        k = int(self._pair_k[r])
                        lo = self._los[k]
                        box = tuple(
                            slice(int(x), int(y))
                            for x, y in zip(self._pair_a[r] - lo, self._pair_b[r] - lo, strict=True)
                        )
                        self._outs[k][box] = fill
        except Exception as exc:
            self.fail(exc)
        finally:
            total = int(self._pair_count[chunks].sum())
            self.release_hold(total)
