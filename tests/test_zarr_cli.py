"""``lsio-ray info`` and ``lsio-ray bench crops``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from lsio_ray.zarr.cli import main


@pytest.fixture(scope="module")
def array(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("cli") / "a.zarr")
    data = np.arange(16 * 64 * 64, dtype="f4").reshape(16, 64, 64)
    zarr.create_array(
        path, data=data, chunks=(1, 16, 16), shards=(8, 32, 64), attributes={"units": "m"}
    )
    return path


def test_info(array: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", array]) == 0
    out = capsys.readouterr().out
    assert "Zarr v3" in out and "(16, 64, 64)" in out and "float32" in out
    assert "(1, 16, 16)" in out and "(8, 32, 64)" in out and "sharding_indexed" in out
    assert "stored in" in out
    assert main(["info", array, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [16, 64, 64] and info["shards"] == [8, 32, 64]
    assert info["chunk_grid"] == [16, 4, 4] and info["shard_grid"] == [2, 2, 1]
    assert info["attributes"] == {"units": "m"}
    assert info["stored_bytes"] > 0 and info["codecs"][0]["name"] == "sharding_indexed"


def test_info_errors(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path / "nope")]) == 1
    assert "no Zarr array" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["uring", "pread"])
def test_bench_crops_json(array: str, backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "bench",
        "crops",
        array,
        "--shape",
        "4,20,20",
        "--count",
        "30",
        "--seed",
        "3",
        "--prefetch",
        "4",
        "--backend",
        backend,
        "--json",
    ]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("crops_per_s", "mib_per_s", "wall_s", "cpu_user_s", "cpu_sys_s"):
        assert isinstance(res[key], float) and res[key] >= 0, key
    assert res["count"] == 30 and res["backend"] == backend and res["chunks_decoded"] > 30
    assert res["direct"] is False
    assert main([*argv, "--direct"]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert direct["direct"] is True and direct["chunks_decoded"] == res["chunks_decoded"]


def test_bench_crops_text(array: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "crops", array, "--shape", "2,8,8", "--count", "5"]) == 0
    assert "crops/s" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", "crops", array, "--shape", "0,8"])


def test_bench_crops_clustered(array: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--per-cell``: the clustered sampler, counted as one decode per chunk per cell."""
    argv = ["bench", "crops", array, "--shape", "4,20,20", "--count", "32", "--json"]
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*argv, "--per-cell", "8"]) == 0
    clustered = json.loads(capsys.readouterr().out)
    assert plain["sampler"] == "random" and clustered["sampler"] == "clustered"
    assert clustered["per_cell"] == 8 and clustered["count"] == 32
    # 4 cells of 8 neighbouring crops share chunks: far fewer decodes than 32 crops alone
    assert 0 < clustered["chunks_decoded"] < plain["chunks_decoded"] / 2
    small = ["bench", "crops", array, "--shape", "2,8,8", "--count", "5", "--per-cell", "2"]
    assert main(small) == 0
    assert "2 per cell" in capsys.readouterr().out
    assert main([*small, "--direct"]) == 0
    assert "2 per cell, O_DIRECT)" in capsys.readouterr().out
