"""Property tests: random regions read through lsio_ray equal zarr-python's read."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zarr
from _zarr_helpers import BACKENDS, LAYOUTS, Spec, check_equal, write_fixture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lsio_ray.zarr as lz
from lsio_ray.zarr.loader import Loader
from lsio_ray.zarr.stream import random_boxes

PICKED = [
    "v3-shard-end",
    "v3-shard-start",
    "v3-transpose",
    "v2-F-blosc-slash",
    "v3-zstd-crc32c",
    "v3-4d-sharded",
]
SPECS = [s for s in LAYOUTS if s.name in PICKED]


@pytest.fixture(scope="module", params=BACKENDS)
def loader(request: pytest.FixtureRequest) -> Iterator[Loader]:
    ld = Loader(backend=request.param)
    yield ld
    ld.close()


@pytest.fixture(scope="module")
def arrays(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, np.ndarray]]:
    root = str(tmp_path_factory.mktemp("zarr-prop"))
    out = {}
    for spec in SPECS:
        path, _ = write_fixture(root, spec)
        out[spec.name] = (path, zarr.open_array(path, mode="r")[...])
    return out


@st.composite
def keys(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[Any, ...]:
    """A numpy-style key of integers and slices (any step, negative bounds)."""
    key = []
    for n in shape:
        if draw(st.integers(0, 5)) == 0:
            key.append(draw(st.integers(-n, n - 1)))
            continue
        start = draw(st.none() | st.integers(-n, n))
        stop = draw(st.none() | st.integers(-n, n))
        step = draw(st.sampled_from([None, 1, 1, 1, 2, 3, -1, -2]))
        key.append(slice(start, stop, step))
    return tuple(key)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_regions(spec: Spec, data: st.DataObject, arrays: dict, loader: Loader) -> None:
    path, full = arrays[spec.name]
    a = lz.open(path, loader=loader)
    key = data.draw(keys(full.shape))
    want = full[key]
    check_equal(np.asarray(a[key]), np.asarray(want), f"{spec.name} {key}")
    if all(isinstance(k, int) or k.step in (None, 1) for k in key):
        ref = zarr.open_array(path, mode="r")
        check_equal(np.asarray(a[key]), np.asarray(ref[key]), f"{spec.name} {key} vs zarr")


@pytest.mark.parametrize("spec", SPECS[:3], ids=[s.name for s in SPECS[:3]])
@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_crops_batches(
    spec: Spec, data: st.DataObject, arrays: dict, loader: Loader
) -> None:
    """Many crops in flight at once, each equal to the reference."""
    path, full = arrays[spec.name]
    a = lz.open(path, loader=loader)
    crop = tuple(data.draw(st.integers(1, n)) for n in full.shape)
    seed = data.draw(st.integers(0, 2**32 - 1))
    prefetch = data.draw(st.integers(1, 8))
    rng_boxes = list(random_boxes(full.shape, crop, 6, seed))
    got = list(a.random_crops(crop, 6, seed=seed, prefetch=prefetch))
    for (lo, hi), g in zip(rng_boxes, got, strict=True):
        want = full[tuple(slice(x, y) for x, y in zip(lo, hi, strict=True))]
        check_equal(g, want, f"{spec.name} crop {lo}")
