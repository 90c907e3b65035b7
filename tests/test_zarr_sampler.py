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


def _ranges_read(loader, fn) -> int:
    """Run fn() and count the byte ranges the loader's engine was asked to read."""
    eng = loader.engine
    seen = [0]
    orig = eng.submit

    def submit(files, ranges, paths):
        seen[0] += len(ranges)
        return orig(files, ranges, paths)

    eng.submit = submit
    try:
        fn()
    finally:
        del eng.submit
    return seen[0]


def test_each_chunk_read_once_per_block(tmp_path):
    from lsio_ray.zarr.loader import Loader
    from lsio_ray.zarr.plan import select_chunks
    from lsio_ray.zarr.stream import random_box_starts

    path = tmp_path / "a.zarr"
    ref = np.random.default_rng(1).random((16, 64, 64), dtype=np.float32)
    zarr.create_array(path, data=ref, chunks=(2, 16, 16), compressors=zarr.codecs.ZstdCodec())
    with Loader(decode_threads=2) as loader:
        a = lz.open(path, loader=loader)
        assert a.layout.codec.c_codec == "zstd"  # the ScatterTask path
        crop, n = (3, 20, 20), 40
        starts = random_box_starts(a.shape, crop, n, 3)
        touched = [
            tuple(c)
            for lo in starts
            for c in select_chunks(lo, lo + np.asarray(crop), a.chunks).coords.tolist()
        ]
        got: list[np.ndarray] = []

        def run() -> None:
            got.extend(c.copy() for c in a.decode_aware_crops(crop, n, seed=3, block=n))

        reads = _ranges_read(loader, run)
        assert reads == len(set(touched)) < len(touched)
        want = sorted(ref[z : z + 3, y : y + 20, x : x + 20].tobytes() for z, y, x in starts)
        assert sorted(c.tobytes() for c in got) == want
        assert loader.engine.stats()["buffers_out"] == 0


@pytest.mark.parametrize(
    "compressors",
    [zarr.codecs.ZstdCodec(), [zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()]],
    ids=["c-decoder", "python-fallback"],
)
def test_missing_chunks_and_both_paths(tmp_path, compressors):
    path = tmp_path / "a.zarr"
    z = zarr.create_array(
        path,
        shape=(8, 48, 48),
        chunks=(2, 16, 16),
        dtype="f4",
        fill_value=-1.5,
        compressors=compressors,
    )
    ref = np.full((8, 48, 48), -1.5, np.float32)
    ref[2:6, 8:40] = np.random.default_rng(2).random((4, 32, 48), dtype=np.float32)
    z[2:6, 8:40] = ref[2:6, 8:40]  # chunks outside stay unwritten (the fill value)
    a = lz.open(path)
    plain = sorted(c.tobytes() for c in a.random_crops((2, 20, 20), 30, seed=4))
    for ahead in (0, 2):
        aware = [
            c.tobytes() for c in a.decode_aware_crops((2, 20, 20), 30, seed=4, block=8, ahead=ahead)
        ]
        assert sorted(aware) == plain
    a.close()


def test_corrupt_chunk_fails_the_block_and_frees_buffers(tmp_path):
    import os

    from lsio_ray.zarr.loader import Loader

    path, clean = tmp_path / "a.zarr", tmp_path / "b.zarr"
    ref = np.random.default_rng(1).random((4, 32, 32), dtype=np.float32)
    for p in (path, clean):
        zarr.create_array(p, data=ref, chunks=(2, 16, 16), compressors=zarr.codecs.ZstdCodec())
    with open(os.path.join(path, "c", "1", "1", "0"), "wb") as fh:
        fh.write(b"\x28\xb5\x2f\xfd garbage")
    with Loader(decode_threads=2) as loader:
        a = lz.open(path, loader=loader)
        with pytest.raises(lz.ChunkCorruptError, match="c/1/1/0"):
            list(a.decode_aware_crops((4, 32, 32), 3, seed=0, block=2))
        assert loader.engine.stats()["buffers_out"] == 0
        b = lz.open(clean, loader=loader)
        stream = b.decode_aware_crops((2, 16, 16), 64, seed=0, block=4, ahead=3)
        next(stream)
        stream.close()  # closing early cancels the blocks ahead and waits for them
        assert loader.engine.stats()["buffers_out"] == 0


# -- clustered crops ------------------------------------------------------------------------


def test_clustered_starts_are_uniform_per_crop() -> None:
    """Each crop's corner is uniform over all valid corners (cells weighted by their
    size, the short last cell included): a chi-square test over 60,000 corners of a 1-D
    array and of each axis of a 2-D one.  Weighting the cells equally instead puts ~30%
    too many corners in the short last cell and fails."""
    from lsio_ray.zarr.stream import clustered_box_starts

    def uniform(counts: np.ndarray) -> bool:
        """Chi-square against uniform, below its mean + 6 standard deviations."""
        e = counts.sum() / len(counts)
        stat = float(((counts - e) ** 2 / e).sum())
        dof = len(counts) - 1
        return stat < dof + 6 * (2 * dof) ** 0.5

    starts = clustered_box_starts((50,), (5,), 60_000, 1, per_cell=4, cell=(8,))
    counts = np.bincount(starts[:, 0], minlength=46)
    assert len(counts) == 46 and counts.min() > 0
    assert uniform(counts)
    two = clustered_box_starts((37, 29), (4, 6), 60_000, 2, per_cell=7, cell=(5, 9))
    for d, span in enumerate((34, 24)):
        c = np.bincount(two[:, d], minlength=span)
        assert len(c) == span and uniform(c)
    # the crops of a cell are within one cell of corners of each other
    cells = two[: len(two) // 7 * 7].reshape(-1, 7, 2)  # the last cell is cut short
    assert ((cells.max(axis=1) - cells.min(axis=1)) < np.array([5, 9])).all()
    assert (cells // np.array([5, 9]) == cells[:, :1] // np.array([5, 9])).all()


def test_clustered_crops_read_right(arr) -> None:
    """The crops are the array's boxes at the planned corners, in plan order, seeded; a
    count that is not a multiple of ``per_cell`` ends with a short cell."""
    from lsio_ray.zarr.stream import clustered_box_starts

    a, want = arr
    crop = (3, 20, 17)
    for reuse in (False, True):
        got = [
            c.copy()
            for c in a.clustered_crops(crop, 23, seed=9, per_cell=5, prefetch=6, reuse=reuse)
        ]
        cell = tuple(max(c, k) for c, k in zip(crop, a.chunks, strict=True))  # the default
        starts = clustered_box_starts(a.shape, crop, 23, 9, 5, cell)
        np.testing.assert_array_equal(starts, a.clustered_starts(crop, 23, seed=9, per_cell=5))
        assert len(got) == 23
        for g, s in zip(got, starts, strict=True):
            np.testing.assert_array_equal(
                g, want[tuple(slice(int(x), int(x) + n) for x, n in zip(s, crop, strict=True))]
            )
    again = list(a.clustered_crops(crop, 23, seed=9, per_cell=5))
    assert all(np.array_equal(x, y) for x, y in zip(again, got, strict=True))
    with pytest.raises(ValueError, match="per_cell"):
        next(a.clustered_crops(crop, 4, seed=1, per_cell=0))
    with pytest.raises(ValueError, match="cell"):
        next(a.clustered_crops(crop, 4, seed=1, cell=(0, 1, 1)))


def test_start_boxes_public_api(arr, tmp_path):
    """Array.start_boxes / box_group / abandon: what Ray Data's read tasks use."""
    a, ref = arr
    assert a.decodes_in_c
    crop = (3, 20, 17)
    starts = lz.random_box_starts(a.shape, crop, 10, 4)
    out = np.empty((len(starts), *crop), dtype=a.dtype)
    task = a.start_boxes(starts, out)
    task.wait()
    for lo, box in zip(starts, task.boxes, strict=True):
        sl = tuple(slice(int(x), int(x) + c) for x, c in zip(lo, crop, strict=True))
        assert np.array_equal(box, ref[sl])
    rows = [np.empty(crop, dtype=a.dtype) for _ in range(3)]
    a.start_boxes(starts[:3], boxes=rows).wait()
    assert all(np.array_equal(r, o) for r, o in zip(rows, out[:3], strict=True))
    assert 1 <= a.box_group(crop, 16) <= 8
    assert a.box_group((24, 96, 80), 2) == 1  # big boxes: one by one
    with pytest.raises(IndexError):
        a.start_boxes(np.array([[22, 0, 0]]), np.empty((1, *crop), dtype=a.dtype))
    with pytest.raises(ValueError, match="either out or boxes"):
        a.start_boxes(starts, out, boxes=rows)
    pending = [a.start_boxes(starts, np.empty_like(out)) for _ in range(4)]
    a.abandon(pending)
    assert all(t.done for t in pending)
    path = tmp_path / "gzip.zarr"
    zarr.create_array(path, data=ref[:4], chunks=(2, 16, 16), compressors=zarr.codecs.GzipCodec())
    assert not lz.open(path).decodes_in_c
    assert lz.open(path).box_group(crop, 16) == 1
