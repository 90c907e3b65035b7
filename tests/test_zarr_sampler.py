"""The decode-aware sampler gives exactly random_crops' crops (same seed, same offsets),
decodes fewer chunks, and shuffles only within a block."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import lsio_ray.zarr as lz
from lsio_ray.zarr.sampler import expected_decode_saving


@pytest.fixture(scope="module", params=[False, True], ids=["chunks", "shards"])
def arr(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("s") / "a.zarr"
    shards = (8, 64, 64) if request.param else None
    z = zarr.create_array(
        path,
        shape=(24, 96, 80),
        chunks=(2, 16, 16),
        shards=shards,
        dtype="float32",
        compressors=zarr.codecs.ZstdCodec(level=1),
    )
    ref = np.random.default_rng(0).random((24, 96, 80), dtype=np.float32)
    z[...] = ref
    a = lz.open(path)
    yield a, ref
    a.close()


@pytest.mark.parametrize("block", [1, 7, 64])
def test_same_crops_as_random_crops(arr, block):
    a, ref = arr
    plain = [c.copy() for c in a.random_crops((3, 20, 17), 50, seed=5)]
    aware = [c.copy() for c in a.decode_aware_crops((3, 20, 17), 50, seed=5, block=block)]
    key = lambda c: c.tobytes()  # noqa: E731 - a sort key
    assert sorted(map(key, plain)) == sorted(map(key, aware))
    if block == 1:
        assert all(np.array_equal(p, q) for p, q in zip(plain, aware, strict=True))
    # and every crop is a real region of the array
    for c in aware[:5]:
        hits = [
            (z, y, x)
            for z in range(24 - 2)
            for y in range(96 - 19)
            for x in range(80 - 16)
            if ref[z, y, x] == c[0, 0, 0]
        ]
        assert any(np.array_equal(ref[z : z + 3, y : y + 20, x : x + 17], c) for z, y, x in hits)


def test_blocks_are_shuffled_but_seeded(arr):
    a, _ = arr
    one = [c.tobytes() for c in a.decode_aware_crops((2, 16, 16), 40, seed=9, block=40)]
    two = [c.tobytes() for c in a.decode_aware_crops((2, 16, 16), 40, seed=9, block=40)]
    plain = [c.tobytes() for c in a.random_crops((2, 16, 16), 40, seed=9)]
    assert one == two  # reproducible
    assert one != plain and sorted(one) == sorted(plain)  # a permutation of the same draws


def test_bad_arguments(arr):
    a, _ = arr
    with pytest.raises(ValueError):
        next(a.decode_aware_crops((2, 16, 16), 5, block=0))
    with pytest.raises(ValueError):
        next(a.decode_aware_crops((99, 16, 16), 5))


def test_expected_saving_formula():
    assert expected_decode_saving(8192, 36, 1) == pytest.approx(1.0, rel=0.01)
    assert 2.3 < expected_decode_saving(8192, 36, 512) < 2.7
    assert 4.0 < expected_decode_saving(8192, 36, 1000) < 4.8
