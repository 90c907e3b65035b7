"""``Array.prefetch``: reads started ahead are taken by the calls that ask for them, give
the same values as reads not prefetched (zarr-python's), stay bounded, and never hand out
data older than a write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import lsio_ray.zarr as lz


@pytest.fixture(params=["chunks", "shards"])
def stored(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, np.ndarray]:
    """A (12, 40, 36) float32 zstd array written by zarr-python (last planes missing)."""
    path = str(tmp_path / "a.zarr")
    shards = (4, 20, 36) if request.param == "shards" else None
    z = zarr.create_array(
        path,
        shape=(12, 40, 36),
        chunks=(2, 10, 12),
        shards=shards,
        dtype="float32",
        fill_value=-1.0,
        compressors=zarr.codecs.ZstdCodec(level=3),
    )
    data = np.random.default_rng(5).standard_normal((12, 40, 36)).astype("float32")
    z[:8] = data[:8]
    data[8:] = -1.0
    return path, data


def test_prefetched_reads_are_taken_and_equal(stored: tuple[str, np.ndarray]) -> None:
    path, data = stored
    a = lz.open(path)
    ref = zarr.open_array(path, mode="r")
    keys = [
        (slice(1, 5), slice(3, 29), slice(0, 36)),
        (slice(6, 12), slice(0, 40), slice(7, 8)),  # reaches the missing planes
        (3, slice(2, 38, 3), slice(None)),  # an integer and a step
        (slice(0, 12, 5), Ellipsis),
    ]
    a.prefetch(keys)
    a.prefetch(keys[:2])  # a region prefetched twice is read once
    assert len(a._prefetched) == len(keys)
    for key in reversed(keys):  # any order
        got = a[key]
        np.testing.assert_array_equal(got, ref[key])
        np.testing.assert_array_equal(got, data[key])
    assert a._prefetched.taken == len(keys) and len(a._prefetched) == 0
    # not prefetched: read as usual, nothing taken
    np.testing.assert_array_equal(a[2:4, 5:6, 7:30], data[2:4, 5:6, 7:30])
    assert a._prefetched.taken == len(keys)


def test_prefetch_is_bounded_oldest_dropped(stored: tuple[str, np.ndarray]) -> None:
    path, data = stored
    a = lz.open(path)
    keys = [(slice(z, z + 1), slice(0, 40), slice(0, 36)) for z in range(12)]
    one = 40 * 36 * 4
    a.prefetch(keys, max_bytes=3 * one)
    pre = a._prefetched
    assert pre is not None and len(pre) == 3 and pre.dropped == 9
    for z, key in enumerate(keys):  # the dropped ones are read again, the last three taken
        np.testing.assert_array_equal(a[key], data[z : z + 1])
    assert pre.taken == 3


def test_write_cancels_prefetch(stored: tuple[str, np.ndarray]) -> None:
    path = stored[0]
    a = lz.open(path)
    key = (slice(0, 2), slice(0, 10), slice(0, 12))
    a.prefetch([key])
    a[key] = 7.0
    np.testing.assert_array_equal(a[key], np.full((2, 10, 12), 7.0, np.float32))
    assert a._prefetched is not None and a._prefetched.taken == 0
    a.prefetch([key])
    a.cancel_prefetch()
    assert len(a._prefetched) == 0 and a._prefetched.dropped == 2


def test_prefetch_bad_region_names_it(stored: tuple[str, np.ndarray]) -> None:
    a = lz.open(stored[0])
    with pytest.raises(IndexError, match="out of bounds for axis 1"):
        a.prefetch([(slice(0, 2), slice(30, 50))])
