"""torch stays optional: importing lsio_ray (and its Zarr and Ray Data layers) never
imports it, and lsio_ray.torch without torch says how to get it."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_importing_lsio_ray_does_not_import_torch() -> None:
    r = _run(
        "import sys, lsio_ray, lsio_ray.zarr, lsio_ray.data, lsio_ray.interactive\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print('ok')"
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_lsio_ray_torch_without_torch_says_pip_install_torch() -> None:
    r = _run(
        "import sys\n"
        "sys.modules['torch'] = None  # as if torch were not installed\n"
        "try:\n"
        "    import lsio_ray.torch\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert r.returncode == 0, r.stderr
    assert "lsio_ray.torch needs PyTorch" in r.stdout and "pip install torch" in r.stdout
