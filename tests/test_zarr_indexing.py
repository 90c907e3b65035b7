"""Index arrays, masks, ``np.newaxis`` and ``np.asarray`` on lsio_ray.zarr arrays equal
zarr-python's (``oindex``, ``vindex``, ``a[key]``) and numpy's where zarr-python
refuses a key numpy reads; reads touch only the chunks the selection needs, and the
HTML summary escapes what the metadata says.

Arrays are written by zarr-python: v2 and v3, sharded or not, several dtypes, edge
chunks (shapes are not multiples of the chunks) and missing chunks (fill values).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from typing import Any

import numcodecs
import numpy as np
import pytest
import zarr
from _zarr_helpers import SHARDS, Spec, check_equal, v2, v3, write_fixture
from packaging.version import Version
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

import lsio_ray.zarr as lz
from lsio_ray.zarr import gather
from lsio_ray.zarr.errors import ChunkCorruptError
from lsio_ray.zarr.html import stored_bytes
from lsio_ray.zarr.info import stored_size

SPECS = [
    Spec("v3-zstd-i4", "int32", v3(compressors=[ZstdCodec(level=1)])),
    Spec("v3-shard-f4", "float32", v3(shards=SHARDS, compressors=[BloscCodec()])),
    Spec("v3-shard-c8", "complex64", v3(shards=SHARDS, compressors=None)),
    Spec("v3-gzip-f8", "float64", v3(compressors=[GzipCodec(level=1)])),  # Python decode
    Spec("v3-bool", "bool", v3()),
    Spec("v2-blosc-u2", "uint16", v2(compressors=numcodecs.Blosc(cname="lz4"))),
    Spec("v2-F-zstd-i8", ">i8", v2(compressors=numcodecs.Zstd(), order="F")),
    Spec("v2-gzip-u1", "uint8", v2(compressors=numcodecs.GZip(level=1))),
    Spec("v3-1d-i2", "int16", v3(), shape=(1000,), chunks=(64,)),
    Spec("v3-2d-tiny-shard-f2", "float16", v3(shards=(2, 4)), shape=(7, 9), chunks=(1, 2)),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("zarr-indexing"))


@pytest.fixture(scope="module", params=SPECS, ids=[s.name for s in SPECS])
def pair(request: pytest.FixtureRequest, root: str) -> tuple[lz.Array, zarr.Array, np.ndarray]:
    """(lsio array, zarr-python array, all its data as zarr-python reads it)."""
    path, _ = write_fixture(root, request.param)
    z = zarr.open_array(path, mode="r")
    return lz.open(path), z, z[...]


# zarr 3.1.4 and 3.1.5 raise in their own codec pipeline on orthogonal selections of
# sharded arrays ("shape mismatch ... could not be broadcast", zarr/core/buffer/cpu.py):
# the reference is wrong there, not lsio_ray.  scripts/test-versions runs these tests on
# the oldest supported zarr, so those comparisons are skipped on it, saying why.
ZARR_SHARD_OINDEX_BROKEN = Version(zarr.__version__) < Version("3.1.6")


def skip_broken_reference(z: zarr.Array) -> None:
    if ZARR_SHARD_OINDEX_BROKEN and getattr(z, "shards", None) is not None:
        pytest.skip(f"zarr {zarr.__version__} mis-reads orthogonal selections of shards")


def rng_for(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def copied(sel: Any) -> Any:
    """``sel`` with fresh copies of its arrays: zarr-python wraps negative indices in
    the caller's array."""
    if isinstance(sel, tuple):
        return tuple(copied(s) for s in sel)
    return sel.copy() if isinstance(sel, np.ndarray) else sel


# -- random selections --------------------------------------------------------------------
def axis_sel(rng: np.random.Generator, n: int) -> Any:
    """One axis of an orthogonal selection zarr-python reads."""
    kind = int(rng.integers(0, 8))
    if kind == 0:
        return int(rng.integers(-n, n))
    if kind == 1:
        start = None if rng.random() < 0.3 else int(rng.integers(-n, n))
        stop = None if rng.random() < 0.3 else int(rng.integers(-n, n + 1))
        return slice(start, stop, int(rng.integers(1, 4)))
    if kind == 2:  # unsorted, repeated, negative; sometimes empty
        return rng.integers(-n, n, int(rng.integers(0, 2 * n)))
    if kind == 3:  # sorted, distinct
        return np.sort(rng.choice(n, int(rng.integers(1, n + 1)), replace=False))
    if kind == 4:
        return rng.random(n) < rng.choice([0.0, 0.1, 0.5, 1.0])
    if kind == 5:
        return slice(None)
    if kind == 6:  # far apart
        return np.array([n - 1, 0, -1])
    return [int(i) for i in rng.integers(0, n, 3)]  # a list


def points_sel(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[Any, ...]:
    """A coordinate selection: arrays broadcast together, some axes an integer."""
    form = [(int(rng.integers(0, 40)),), (int(rng.integers(1, 6)), int(rng.integers(1, 6))), (0,)]
    pshape = form[int(rng.integers(0, len(form)))]
    out: list[Any] = []
    for n in shape:
        r = rng.random()
        if r < 0.15:
            out.append(int(rng.integers(-n, n)))
        elif r < 0.3 and len(pshape) == 2:
            out.append(rng.integers(-n, n, (pshape[0], 1)))  # broadcast along one axis
        else:
            out.append(rng.integers(-n, n, pshape))
    if all(isinstance(o, int) for o in out):
        out[0] = rng.integers(-shape[0], shape[0], pshape)
    return tuple(out)


def mask_sel(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Empty, sparse, dense, full or clustered (one box) masks."""
    kind = int(rng.integers(0, 5))
    if kind < 4:
        return rng.random(shape) < [0.0, 0.01, 0.6, 1.0][kind]
    m = np.zeros(shape, bool)
    lo = [int(rng.integers(0, n)) for n in shape]
    m[tuple(slice(a, a + int(rng.integers(1, 4))) for a in lo)] = True
    return m


def test_orthogonal_matches_zarr(pair: tuple[lz.Array, zarr.Array, np.ndarray]) -> None:
    a, z, _ = pair
    skip_broken_reference(z)
    rng = rng_for("oindex" + a.path)
    for i in range(25):
        sel = tuple(axis_sel(rng, n) for n in a.shape)
        want = z.oindex[copied(sel)]
        check_equal(a.oindex[sel], want, f"oindex[{sel}]")
        if i < 5:
            check_equal(a.get_orthogonal_selection(sel), want, f"get_orthogonal_selection {i}")


def test_coordinates_match_zarr(pair: tuple[lz.Array, zarr.Array, np.ndarray]) -> None:
    a, z, _ = pair
    rng = rng_for("vindex" + a.path)
    for i in range(25):
        sel = points_sel(rng, a.shape)
        want = z.vindex[copied(sel)]
        check_equal(a.vindex[sel], want, f"vindex[{sel}]")
        check_equal(a[sel], z[copied(sel)], f"a[{sel}]")
        if i < 5:
            check_equal(a.get_coordinate_selection(sel), want, f"get_coordinate_selection {i}")


def test_masks_match_zarr(pair: tuple[lz.Array, zarr.Array, np.ndarray]) -> None:
    a, z, _ = pair
    rng = rng_for("mask" + a.path)
    for i in range(10):
        m = mask_sel(rng, a.shape)
        want = z.vindex[m]
        check_equal(a.vindex[m], want, f"vindex[mask {i}]")
        check_equal(a[m], z[m], f"a[mask {i}]")
        check_equal(a.get_mask_selection(m), want, f"get_mask_selection {i}")


def test_getitem_matches_zarr(pair: tuple[lz.Array, zarr.Array, np.ndarray]) -> None:
    """The keys zarr-python's ``__getitem__`` reads as index arrays: a list or array on
    one axis (the others integers or slices), or one per axis."""
    a, z, _ = pair
    skip_broken_reference(z)
    rng = rng_for("getitem" + a.path)
    nd = a.ndim
    for i in range(15):
        axis = int(rng.integers(0, nd))
        key: list[Any] = [
            int(rng.integers(-n, n)) if rng.random() < 0.3 else slice(None) for n in a.shape
        ]
        key[axis] = axis_sel(rng, a.shape[axis])
        if not isinstance(key[axis], (list, np.ndarray)):
            key[axis] = rng.integers(-a.shape[axis], a.shape[axis], 4)
        tkey = tuple(key)
        check_equal(a[tkey], z[copied(tkey)], f"a[{tkey}] ({i})")
    per_axis = tuple(rng.random(n) < 0.5 for n in a.shape)
    check_equal(a[per_axis], z[per_axis], "a[one mask per axis]")


def test_asarray(pair: tuple[lz.Array, zarr.Array, np.ndarray]) -> None:
    a, z, full = pair
    check_equal(np.asarray(a), full, "np.asarray")
    check_equal(np.array(a), np.array(z), "np.array")
    as_f8 = np.asarray(a, dtype="f8") if a.dtype.kind != "c" else np.asarray(a, dtype="c16")
    check_equal(as_f8, np.asarray(z, dtype=as_f8.dtype), "np.asarray(dtype=)")
    with pytest.raises(ValueError, match="copy=False"):
        if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
            np.asarray(a, copy=False)
        else:  # numpy 1.26 (the oldest numpy allowed) has no copy=: the protocol itself
            a.__array__(copy=False)


# -- numpy's semantics where zarr-python refuses -----------------------------------------
def test_newaxis(pair: tuple[lz.Array, zarr.Array, np.ndarray]) -> None:
    a, _, full = pair
    keys: list[Any] = [None, (Ellipsis, None), (None, Ellipsis, None), (0, None), (None, -1)]
    if a.ndim >= 2:
        keys += [(1, None, slice(None, None, 2), None), (None, 0, Ellipsis, None, 1)]
        keys += [([0, 2, 1], None), (None, slice(None), [1, 0])]
    for key in keys:
        check_equal(a[key], full[key], f"a[{key}]")
    check_equal(a.oindex[[0, -1], None], full[[0, -1]][:, None], "oindex with None")
    with pytest.raises(IndexError, match="coordinate"):
        a.vindex[(0,) * a.ndim + (None,)]


def test_numpy_keys_zarr_refuses(pair: tuple[lz.Array, zarr.Array, np.ndarray]) -> None:
    """One index array with ``...`` or a first-axis mask reads as numpy does; negative
    steps in oindex too."""
    a, _, full = pair
    n0, nl = a.shape[0], a.shape[-1]
    m0 = np.arange(n0) % 3 == 1
    cases: list[Any] = [
        ([2, 0, 2], Ellipsis),
        (Ellipsis, [nl - 1, 0]),
        m0,
        list(m0),
        [],
        (np.array([], dtype=np.uint8), Ellipsis),
        (np.uint64(n0 - 1),),
    ]
    for key in cases:
        check_equal(a[key], full[key], f"a[{key}]")
    key = (slice(None, None, -2),) + (np.array([0, 0]),) * (a.ndim - 1)
    ref = full[np.ix_(*(np.arange(n)[k] for k, n in zip(key, a.shape, strict=True)))]
    check_equal(a.oindex[key], ref, f"oindex[{key}]")


def test_mixed_index_arrays_refused(tmp_path) -> None:
    path, _ = write_fixture(str(tmp_path), Spec("three", "int32", v3()))
    a = lz.open(path)
    with pytest.raises(IndexError, match=r"a\.oindex.*a\.vindex"):
        a[[0, 1], [1, 2], :]
    with pytest.raises(IndexError, match="boolean index"):
        a[np.ones((11, 13), bool)]


# -- errors ---------------------------------------------------------------------------------
def test_errors_like_numpy_and_zarr(tmp_path) -> None:
    path, _ = write_fixture(str(tmp_path), Spec("err", "int32", v3()))
    a, z = lz.open(path), zarr.open_array(path, mode="r")
    bad: list[tuple[Callable[[Any], Any], Any, str]] = [
        (lambda x: x.oindex[:, [0, 13]], None, "index 13 is out of bounds for axis 1 with size 13"),
        (lambda x: x.oindex[[-12]], None, "index -12 is out of bounds for axis 0 with size 11"),
        (
            lambda x: x.vindex[[0], [0], [17]],
            None,
            "index 17 is out of bounds for axis 2 with size 17",
        ),
        (lambda x: x[[0, 1], 20], None, "out of bounds for axis 1 with size 13"),
        (lambda x: x[[11]], None, "index 11 is out of bounds for axis 0 with size 11"),
        (lambda x: x.oindex[:, np.ones(12, bool)], None, "along axis 1; size of axis is 13 but"),
        (lambda x: x.vindex[np.ones((11, 13, 16), bool)], None, "along axis 2; size of axis is 17"),
        (lambda x: x.oindex[[[0, 1]]], None, "must be 1-d"),
        (lambda x: x.oindex[[0.5]], None, "integer or boolean"),
        (lambda x: x.vindex[[0, 1], :, 0], None, "coordinate"),
        (lambda x: x.vindex[[0, 1], [0, 1, 2], 0], ValueError, "shape mismatch"),
    ]
    for read, also, msg in bad:
        with pytest.raises(IndexError, match=msg):
            read(a)
        with pytest.raises(IndexError if also is None else also):
            read(z)  # zarr-python refuses it too
        if also is not None:
            with pytest.raises(also):
                read(a)
    with pytest.raises(IndexError, match="unsupported index"):
        a[1.5]
    idx = np.array([-1, -2])
    a.oindex[idx]
    a.vindex[idx, idx, idx]
    assert idx.tolist() == [-1, -2]  # the caller's arrays are left alone


# -- reads touch only the chunks the selection needs ----------------------------------------
def corrupt_all_but(path: str, keep: set[str]) -> int:
    """Overwrite every chunk file not in ``keep`` (keys like ``c/0/3``) with garbage."""
    n = 0
    for dirpath, _, names in os.walk(os.path.join(path, "c")):
        for name in names:
            full = os.path.join(dirpath, name)
            if os.path.relpath(full, path) not in keep:
                with open(full, "wb") as fh:
                    fh.write(b"not a chunk at all" * 4)
                n += 1
    return n


@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", ["zstd", "gzip"])  # C decode path, Python decode path
def test_only_touched_chunks_are_read(tmp_path, codec: str) -> None:
    comp = ZstdCodec(level=1) if codec == "zstd" else GzipCodec(level=1)
    path = str(tmp_path / "sparse.zarr")
    data = np.arange(2000 * 30, dtype="f4").reshape(2000, 30)
    zarr.create_array(path, data=data, chunks=(10, 10), compressors=[comp])
    far = np.array([1995, 3, 3])  # two far-apart rows: chunks 199 and 0, never 1..198
    many = np.arange(0, 2000, 20)  # 100 rows in every other chunk row: > SPARSE_BOXES
    keep = {f"c/{i // 10}/{j}" for i in [*far.tolist(), *many.tolist()] for j in range(3)}
    assert corrupt_all_but(path, keep) > 100
    a = lz.open(path)
    check_equal(a.oindex[far], data[far], "two far rows")
    check_equal(a[far, 5:25], data[far, 5:25], "two far rows, sliced")
    check_equal(a.oindex[many, [29, 0]], data[np.ix_(many, [29, 0])], "every other chunk row")
    check_equal(a.vindex[far, [0, 29, 15]], data[far, [0, 29, 15]], "points")
    m = np.zeros(data.shape, bool)
    m[far, 7] = True
    m[40:50, :] = True  # a dense block
    check_equal(a[m], data[m], "sparse and dense mask")  # one slab: read as points
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gather, "BUDGET", 10 * 30 * 4)  # a slab per chunk row: blocks as boxes
        check_equal(a[m], data[m], "sparse and dense mask, slab by slab")
    with pytest.raises(ChunkCorruptError):
        a.oindex[[15]]  # chunk 1 is garbage: the read above never touched it


@pytest.mark.timeout(120)
@pytest.mark.parametrize("spec", SPECS[:4], ids=[s.name for s in SPECS[:4]])
def test_buffers_bounded(tmp_path, monkeypatch: pytest.MonkeyPatch, spec: Spec) -> None:
    """With a tiny budget every buffer read to gather from is at most the budget or one
    chunk, and results still equal zarr-python's."""
    budget = 512
    monkeypatch.setattr(gather, "BUDGET", budget)
    path, _ = write_fixture(str(tmp_path), spec)
    a, z = lz.open(path), zarr.open_array(path, mode="r")
    skip_broken_reference(z)
    sizes: list[int] = []
    start_read, start_boxes = a.start_read, a.start_boxes

    def read(lo: Any, hi: Any, out: Any = None) -> Any:
        if out is None:
            sizes.append(a.dtype.itemsize * int(np.prod(np.subtract(hi, lo))))
        return start_read(lo, hi, out)

    def boxes(starts: Any, out: Any = None, **kw: Any) -> Any:
        sizes.append(out.nbytes)
        return start_boxes(starts, out, **kw)

    monkeypatch.setattr(a, "start_read", read)
    monkeypatch.setattr(a, "start_boxes", boxes)
    rng = rng_for("budget" + spec.name)
    for _ in range(10):
        sel = tuple(axis_sel(rng, n) for n in a.shape)
        check_equal(a.oindex[sel], z.oindex[copied(sel)], f"oindex[{sel}]")
        p = points_sel(rng, a.shape)
        check_equal(a.vindex[p], z.vindex[copied(p)], f"vindex[{p}]")
        m = mask_sel(rng, a.shape)
        check_equal(a[m], z.vindex[m], "mask")
    assert sizes
    assert max(sizes) <= max(budget, a.layout.chunk_nbytes), max(sizes)


# -- HTML ----------------------------------------------------------------------------------
def test_repr_html_escapes(tmp_path) -> None:
    hostile = "</td><script>alert('x')</script>"
    path = str(tmp_path / "<script>evil.zarr")
    z = zarr.create_array(
        path,
        shape=(11, 13, 17),
        chunks=(4, 5, 6),
        shards=(8, 10, 12),
        dtype="int32",
        dimension_names=["<b>t</b>", "y", "x"],
        attributes={"note": hostile, "<img src=x onerror=alert(1)>": 1},
    )
    z[:4] = 1
    a = lz.open(path)
    html = a._repr_html_()
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;evil.zarr" in html
    assert "&lt;/td&gt;&lt;script&gt;" in html
    assert html.count("<tr>") == html.count("</tr>") and html.count("<td") == html.count("</td>")
    for shown in ("(11, 13, 17)", "int32", "(4, 5, 6)", "(8, 10, 12)", "Zarr v3", "sharding"):
        assert shown in html, shown
    stored, files = stored_size(path)
    assert stored_bytes(path) == (stored, files, True)
    assert stored_bytes(path, limit=2)[1:] == (2, False)
    a2 = lz.open(write_fixture(str(tmp_path), Spec("plain", "uint8", v2()))[0])
    html2 = a2._repr_html_()
    assert "Zarr v2" in html2 and "Shards" not in html2
