"""The examples answer "what would user code look like?": they must run, and verify."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("backend", ["uring", "pread"])
@pytest.mark.parametrize(
    ("script", "args", "expect"),
    [
        (
            "convert_rechunk.py",
            ["--groups", "30", "--per-group", "10", "--pool", "1M"],
            "converted 300 chunks into 30",
        ),
        ("timeseries.py", ["--rows", "6", "--cols", "40"], "6 rows x 40 chunks delivered in order"),
        (
            "many_ranges.py",
            ["--ranges", "200000", "--size", str(16 << 20)],
            "200,000 x 4 KiB reads",
        ),
    ],
)
def test_example_runs_and_verifies(script, args, expect, backend, tmp_path):
    extra = ["--dir", str(tmp_path)] if script == "convert_rechunk.py" else []
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args, *extra, "--backend", backend],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert expect in r.stdout, r.stdout
    if script == "many_ranges.py":
        assert f"({backend})" in r.stdout


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["uring", "pread"])
def test_image_label_example_reads_aligned_crops(backend, tmp_path):
    """examples/image_label.py: aligned image + label crops through Ray Data (a local
    Ray of its own), every label crop checked against its image crop."""
    r = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "image_label.py"),
            "--crops",
            "200",
            "--dir",
            str(tmp_path),
            "--backend",
            backend,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "200 aligned crops: image (2, 8, 48, 48) float32 + label (8, 48, 48) uint8" in r.stdout
    assert "every label crop matches its image crop" in r.stdout, r.stdout
