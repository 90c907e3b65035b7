"""The C core's own tests (csrc/tests/*.c), built with ASan + UBSan and run by make.

``make -C csrc test`` builds every test program with -fsanitize=address,undefined, runs
each under a timeout with leak checking on, prints one PASS/FAIL/SKIP line per test and
a final "N passed, M failed[, K skipped]" line, and exits non-zero on any failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc"
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed(?:, (\d+) skipped)?$")


def _make(target: str, timeout: int) -> subprocess.CompletedProcess[str]:
    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None:
        # scripts/setup installs both: without them the C core's own tests cannot run,
        # and that must fail the suite, not pass it quietly
        pytest.fail("make or a C compiler is missing: run scripts/setup")
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    return subprocess.run(
        ["make", "-C", str(CSRC), target],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.timeout(1200)
def test_c_core_sanitized() -> None:
    """Every C test passes under ASan/UBSan with leak checks (none may fail)."""
    proc = _make("test", timeout=1100)
    out = proc.stdout
    assert proc.returncode == 0, f"make -C csrc test failed (exit {proc.returncode}):\n{out}"
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    summary = next((m for ln in reversed(lines) if (m := SUMMARY.match(ln))), None)
    assert summary is not None, f"no summary line in the output:\n{out}"
    passed, failed = int(summary.group(1)), int(summary.group(2))
    assert failed == 0, out
    assert passed > 0, f"no C test passed:\n{out}"


@pytest.mark.timeout(300)
def test_c_core_warnings() -> None:
    """Every C source of the core (csrc/Makefile CORE) builds with -Wall -Wextra -Werror -O2."""
    proc = _make("check-warnings", timeout=240)
    assert proc.returncode == 0, f"make -C csrc check-warnings failed:\n{proc.stdout}"
