"""The re-chunk planner's block shapes: whole output units, input files kept whole where
possible, as large as the memory budget allows, yet enough blocks for every CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lsio_ray.ray.rechunk import block_shape


def _nblocks(shape, block) -> int:
    return math.prod(-(-n // b) for n, b in zip(shape, block, strict=True))


@pytest.mark.parametrize(
    ("shape", "src", "dst", "budget", "min_blocks"),
    [
        ((512, 1024, 1024), (1, 256, 256), (16, 256, 256), 64 << 20, 8),
        ((512, 1024, 1024), (1, 256, 256), (16, 256, 256), 64 << 20, 256),
        ((512, 1024, 1024), (32, 1024, 1024), (16, 256, 256), 64 << 20, 8),
        ((100, 70, 33), (7, 10, 11), (5, 20, 3), 40_000, 4),
        ((48, 64, 16), (4, 16, 16), (12, 16, 16), 30_000, 1),
    ],
)
def test_blocks_fit_the_budget_and_cover_the_cpus(shape, src, dst, budget, min_blocks) -> None:
    block = block_shape(shape, src, dst, 4, budget, min_blocks=min_blocks)
    assert all(b % u == 0 for b, u in zip(block, dst, strict=True))  # whole output units
    nbytes = math.prod(block) * 4
    assert nbytes <= budget or block == tuple(dst)  # one unit over the budget: no choice
    assert _nblocks(shape, block) >= min(min_blocks, _nblocks(shape, dst))
    # no axis could have been doubled and still met both conditions
    for d in range(len(block)):
        cap = -(-shape[d] // dst[d]) * dst[d]
        if block[d] >= cap:
            continue
        bigger = (*block[:d], min(block[d] * 2, cap), *block[d + 1 :])
        assert math.prod(bigger) * 4 > budget or _nblocks(shape, bigger) < min_blocks


def test_small_output_chunks_grow_into_big_blocks() -> None:
    # the bench case: (16,256,256) output chunks are 4 MiB; blocks of one chunk each made
    # 512 Ray tasks for 2 GiB, blocks of 64 MiB make 32
    block = block_shape((512, 1024, 1024), (1, 256, 256), (16, 256, 256), 4, 64 << 20, 8)
    assert math.prod(block) * 4 == 64 << 20
    assert _nblocks((512, 1024, 1024), block) == 32
    # and a budget below one lcm block still shrinks to whole output units
    assert block_shape((64, 64), (64, 64), (8, 8), 4, 1024) == (16, 16)
    assert np.prod(block_shape((64, 64), (64, 64), (8, 8), 4, 100)) == 64
