"""The PyTorch example trains and its loss falls (run by scripts/test-torch, not by default)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

EXAMPLE = Path(__file__).resolve().parent / "train_torch.py"


def test_train_torch_learns() -> None:
    r = subprocess.run(
        [sys.executable, str(EXAMPLE), "--crops", "512", "--epochs", "3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "epoch 2: 512 crops" in r.stdout, r.stdout
    assert "learned" in r.stdout, r.stdout
