"""The README's main job must run: `lsio-ray demo --quick` end to end (it verifies itself:
crops and the re-chunked array against zarr-python)."""

from __future__ import annotations

import subprocess
import sys


def test_demo_quick(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "lsio_ray.cli", "demo", "--quick", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for line in (
        "== io",
        "lsio uring",
        "lsio pread",
        "== zarr",
        "equal to zarr-python",
        "clustered crops (16 per cell",
        "the same crops with direct=True",
        "== ray",
        "equals the source, element for element",
        "demo done",
    ):
        assert line in r.stdout, (line, r.stdout)
