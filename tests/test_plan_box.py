"""The box planner in C (``lsio_plan_box`` through :func:`lsio_ray.io.plan_box`, used by
:func:`lsio_ray.zarr.plan.select_chunks` and every ``BoxRead``) against the numpy planner
it replaced, kept here as the reference: the same chunks in the same order, the same
parts, and decode jobs with the same addresses, offsets and shapes."""

from __future__ import annotations

import numpy as np
import pytest

from lsio_ray.io import DECODE_JOB_DTYPE, plan_box
from lsio_ray.zarr.plan import chunk_count, select_chunks


def reference(lo, hi, chunks):
    """The numpy planner of before (select_chunks up to 6669ada)."""
    ndim = len(lo)
    c0 = [a // c for a, c in zip(lo, chunks, strict=True)]
    counts = [(b - 1) // c + 1 - a0 for b, c, a0 in zip(hi, chunks, c0, strict=True)]
    coords = np.indices(counts, dtype=np.int64).reshape(ndim, -1).T + np.array(c0, np.int64)
    ch = np.array(chunks, dtype=np.int64)
    lo_a, hi_a = np.array(lo, np.int64), np.array(hi, np.int64)
    start = coords * ch
    stop = start + ch
    a = np.maximum(start, lo_a)
    b = np.minimum(stop, hi_a)
    full = ((start >= lo_a) & (stop <= hi_a)).all(axis=1)
    return coords, a - start, b - start, a - lo_a, b - lo_a, full


def test_random_boxes_match_the_numpy_planner():
    rng = np.random.default_rng(3)
    for _ in range(500):
        ndim = int(rng.integers(1, 6))
        chunks = tuple(int(c) for c in rng.integers(1, 9, ndim))
        lo = tuple(int(x) for x in rng.integers(0, 40, ndim))
        hi = tuple(a + int(rng.integers(1, 25)) for a in lo)
        sel = select_chunks(lo, hi, chunks)
        want = reference(lo, hi, chunks)
        got = (sel.coords, sel.src_lo, sel.src_hi, sel.dst_lo, sel.dst_hi, sel.full)
        for g, w, name in zip(
            got, want, ("coords", "src_lo", "src_hi", "dst_lo", "dst_hi", "full"), strict=True
        ):
            np.testing.assert_array_equal(g, w, err_msg=f"{name} of {lo}..{hi} in {chunks}")
        assert len(sel) == chunk_count(lo, hi, chunks)


def test_jobs_follow_the_strides_of_the_output():
    """Jobs for a box read into a C-order output and into a transposed view: each job's
    destination address, source offset, shape and direct flag as computed by hand."""
    rng = np.random.default_rng(4)
    chunks = (3, 5, 4)
    cstr = np.array([5 * 4 * 4, 4 * 4, 4], np.int64)  # a decoded float32 chunk, C order
    for trial in range(200):
        lo = tuple(int(x) for x in rng.integers(0, 20, 3))
        hi = tuple(a + int(rng.integers(1, 12)) for a in lo)
        shape = tuple(b - a for a, b in zip(lo, hi, strict=True))
        out = np.empty(shape, np.float32) if trial % 2 else np.empty(shape[::-1], np.float32).T
        strides = np.array(out.strides, np.int64)
        n = chunk_count(lo, hi, chunks)
        jobs = np.zeros(n, DECODE_JOB_DTYPE)
        origin = 1 << 40
        sel, full = plan_box(lo, hi, chunks, n, jobs, tuple(strides), tuple(cstr), origin, True)
        coords, src_lo, src_hi, dst_lo, dst_hi, want_full = reference(lo, hi, chunks)
        for got, want in zip(sel, (coords, src_lo, src_hi, dst_lo, dst_hi), strict=True):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(full, want_full)
        np.testing.assert_array_equal(jobs["dst"], origin + (dst_lo * strides).sum(axis=1))
        np.testing.assert_array_equal(jobs["src_off"], (src_lo * cstr).sum(axis=1))
        np.testing.assert_array_equal(jobs["shape"][:, :3], src_hi - src_lo)
        assert not jobs["shape"][:, 3:].any()
        np.testing.assert_array_equal(jobs["tag"], np.arange(n))
        np.testing.assert_array_equal(jobs["direct"], want_full)
        # only the fields the planner owns are written
        assert not jobs["src"].any() and not jobs["buf_id"].any() and not jobs["dst_len"].any()


@pytest.mark.parametrize(
    ("lo", "hi", "chunks", "n"),
    [
        ((0, 0), (4, 4), (2, 2), 3),  # n is not the box's count (4)
        ((0, 0), (4, 4), (2, 2), 5),
        ((-1, 0), (4, 4), (2, 2), 4),  # lo < 0
        ((0, 0), (4, 4), (0, 2), 4),  # a chunk of size 0
        ((2, 0), (2, 4), (2, 2), 0),  # an empty box
        ((0,), (2**63 - 1,), (2**63 - 2,), 2),  # its last chunk would end past 2**63
    ],
)
def test_a_box_the_planner_refuses_is_a_value_error(lo, hi, chunks, n):
    with pytest.raises(ValueError, match="cannot plan the box"):
        plan_box(lo, hi, chunks, n)


def test_jobs_of_the_wrong_length_are_refused():
    with pytest.raises(ValueError, match="4 C-contiguous DECODE_JOB_DTYPE rows"):
        plan_box((0, 0), (4, 4), (2, 2), 4, np.zeros(3, DECODE_JOB_DTYPE), (4, 4), (4, 4))


def test_empty_and_zero_dimensional_boxes_plan_in_python():
    assert len(select_chunks((3, 1), (3, 5), (2, 2))) == 0
    sel = select_chunks((), (), ())
    assert len(sel) == 1 and sel.full.all()
