"""lsio_ray.open: the notebook face of an array (summary, progress reads, quick looks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import lsio_ray
from lsio_ray.interactive import InteractiveArray

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


@pytest.fixture
def v3(tmp_path: Path) -> tuple[str, np.ndarray]:
    data = np.arange(24 * 30 * 20, dtype="float32").reshape(24, 30, 20)
    z = zarr.create_array(
        str(tmp_path / "vol.zarr"),
        shape=data.shape,
        chunks=(5, 10, 10),
        shards=(10, 30, 20),
        dtype=data.dtype,
        zarr_format=3,
    )
    z[...] = data
    return str(tmp_path / "vol.zarr"), data


def test_repr_shows_what_a_person_wants(v3: tuple[str, np.ndarray]) -> None:
    path, _ = v3
    a = lsio_ray.open(path)
    assert isinstance(a, InteractiveArray)
    text = repr(a)
    for part in (
        "Zarr v3",
        "(24, 30, 20)",
        "float32",
        "(5, 10, 10)",
        "(10, 30, 20)",
        "sharding_indexed(bytes",
        "zstd",
        "decoded",
        "stored in",
        "files",
        path,
    ):
        assert part in text, (part, text)
    s = a.summary()
    assert s["stored_bytes"] > 0 and s["stored_files"] == 3 + 1
    assert a.shape == (24, 30, 20) and a.chunks == (5, 10, 10) and a.shards == (10, 30, 20)


def test_v2_repr(tmp_path: Path) -> None:
    z = zarr.create_array(
        str(tmp_path / "v2.zarr"), shape=(8, 8), chunks=(4, 4), dtype="i2", zarr_format=2
    )
    z[...] = 1
    text = repr(lsio_ray.open(tmp_path / "v2.zarr"))
    assert "Zarr v2" in text
    assert any(line.split()[:2] == ["shards", "none"] for line in text.splitlines())


def test_reads_equal_zarr_python_with_and_without_a_bar(
    v3: tuple[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    path, data = v3
    a = lsio_ray.open(path, progress_bytes=1)
    ref = zarr.open(path, mode="r")
    for key in [
        np.s_[...],
        np.s_[3:21, 5:29, 1:19],
        np.s_[7],
        np.s_[2:23:3, ::2, 4],
        np.s_[0:1],
    ]:
        np.testing.assert_array_equal(a[key], ref[key])
        np.testing.assert_array_equal(a.read(key, progress=False), ref[key])
    assert "100%" in capsys.readouterr().err  # the bar (on stderr) came up for each read
    big = lsio_ray.open(path)  # default threshold: no bar for a small read
    np.testing.assert_array_equal(big[1:5], data[1:5])


def test_progress_bar_is_shown_for_long_reads(
    v3: tuple[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    path, data = v3
    a = lsio_ray.open(path, progress_bytes=1000)
    np.testing.assert_array_equal(a[:], data)
    err = capsys.readouterr().err
    assert "vol.zarr" in err and "100%" in err
    np.testing.assert_array_equal(a.read(np.s_[0:1, 0:1, 0:1]), data[0:1, 0:1, 0:1])
    assert capsys.readouterr().err == ""


def test_quicklook_draws_the_slice(v3: tuple[str, np.ndarray]) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    path, data = v3
    a = lsio_ray.open(path)
    ax = a.quicklook(7)
    assert isinstance(ax, Axes)
    images = ax.get_images()
    assert len(images) == 1
    np.testing.assert_array_equal(np.asarray(images[0].get_array()), data[7])
    assert "vol.zarr[7]" in ax.get_title()
    plt.close(ax.figure)

    fig, given = plt.subplots()
    assert a.quicklook(None, ax=given, cmap="viridis") is given
    np.testing.assert_array_equal(np.asarray(given.get_images()[0].get_array()), data[12])
    with pytest.raises(ValueError, match="2-D"):
        a.quicklook(np.s_[1:3])
    plt.close(fig)


def test_location_names_the_node_a_coordinator_knows(v3: tuple[str, np.ndarray]) -> None:
    path, _ = v3

    class Known:
        def node_of(self, meta: str) -> str | None:
            assert meta.endswith("zarr.json")
            return "abc123"

    class Shared:
        def node_of(self, meta: str) -> str | None:
            return None

    assert "Ray node abc123" in repr(lsio_ray.open(path, coordinator=Known()))  # type: ignore[arg-type]
    assert "any Ray node" in lsio_ray.open(path, coordinator=Shared()).location()  # type: ignore[arg-type]
