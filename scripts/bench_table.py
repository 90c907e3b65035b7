#!/usr/bin/env python3
"""Summarise a ``scripts/bench-io.sh`` result directory as a table (stdlib only).

The directory holds ``meta.tsv`` (one line per workload: id, metric, title) and one JSON
file per run named ``<workload>__<tool>__<rep>.json``: fio's ``--output-format=json``
output for tools named ``fio-*``, ``lsio-ray bench read --json`` output otherwise.

For every workload and tool the table gives min / median / max of the workload's
metric over the repetitions, the ratio of the tool's median to the reference fio
median (``lsio-pread`` is compared with ``fio-psync`` when that ran, everything else
with ``fio-io_uring``) and the median CPU use, in cores (CPU seconds per second of
wall time) and in microseconds of CPU per op.

fio's CPU numbers are its own: ``usr_cpu + sys_cpu`` per job (getrusage of each job
thread, so io_uring io-wq workers are not included) times ``numjobs``.  lsio's are
``getrusage(RUSAGE_SELF)`` of the whole process (io-wq workers and pread threads
included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["Run", "load_fio", "load_lsio", "main", "render"]

METRICS = {
    "iops": ("kIOPS", 1e-3),
    "mibs": ("MiB/s", 1.0),
    "files": ("files/s", 1.0),
}
"""Metric id -> (column label, scale applied to the per-second value)."""


class Run:
    """One run's numbers, whichever tool made it."""

    def __init__(
        self, ops: float, nbytes: float, wall_s: float, cpu_s: float, files: float
    ) -> None:
        self.ops, self.bytes, self.files = ops, nbytes, files
        self.wall_s, self.cpu_s = wall_s, cpu_s

    def value(self, metric: str) -> float:
        """The run's rate for ``metric`` (``iops``, ``mibs`` or ``files``), unscaled."""
        if self.wall_s <= 0:
            return 0.0
        if metric == "iops":
            return self.ops / self.wall_s
        if metric == "mibs":
            return self.bytes / (1 << 20) / self.wall_s
        return self.files / self.wall_s

    @property
    def cores(self) -> float:
        """CPU seconds per second of wall time."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def us_per_op(self) -> float:
        """CPU microseconds per op."""
        return 1e6 * self.cpu_s / self.ops if self.ops else 0.0


def _json(path: Path) -> dict[str, Any]:
    text = path.read_text()
    start = text.find("{")  # fio may print a warning line before the JSON
    if start < 0:
        raise ValueError(f"{path}: no JSON object")
    return json.loads(text[start:])


def load_fio(path: Path) -> Run:
    """A fio JSON result (one job group, ``--group_reporting``)."""
    data = _json(path)
    jobs = data["jobs"]
    ops = nbytes = 0.0
    wall = cpu = 0.0
    for job in jobs:
        rd = job["read"]
        ops += rd["total_ios"]
        nbytes += rd["io_bytes"]
        runtime = rd["runtime"] / 1000.0
        wall = max(wall, runtime)
        numjobs = int(job.get("job options", {}).get("numjobs", 1))
        if len(jobs) > 1:
            numjobs = 1
        cpu += (job["usr_cpu"] + job["sys_cpu"]) / 100.0 * runtime * numjobs
        if job.get("error"):
            raise ValueError(f"{path}: fio job error {job['error']}")
    # one IO per file in the whole-file workload (bs == file size)
    return Run(ops, nbytes, wall, cpu, ops)


def load_lsio(path: Path) -> Run:
    """An ``lsio-ray bench read --json`` result."""
    d = _json(path)
    return Run(d["ops"], d["bytes"], d["wall_s"], d["cpu_user_s"] + d["cpu_sys_s"], d["files"])


def _load(path: Path) -> Run:
    tool = path.name.split("__")[1]
    return load_fio(path) if tool.startswith("fio") else load_lsio(path)


def _reference(tool: str, tools: list[str]) -> str | None:
    if tool.startswith("fio"):
        return None
    if tool.startswith("lsio-pread") and "fio-psync" in tools:
        return "fio-psync"
    return "fio-io_uring" if "fio-io_uring" in tools else None


def render(result_dir: Path) -> str:
    """The table (markdown) for one result directory."""
    meta: list[tuple[str, str, str]] = []
    header_lines: list[str] = []
    for line in (result_dir / "meta.tsv").read_text().splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            header_lines.append(line[1:].strip())
            continue
        wid, metric, title = line.split("\t", 2)
        meta.append((wid, metric, title))
    runs: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    order: dict[str, list[str]] = defaultdict(list)
    for path in sorted(result_dir.glob("*__*__*.json")):
        wid, tool, _rep = path.stem.split("__")
        try:
            runs[wid][tool].append(_load(path))
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            print(f"warning: skipping {path.name}: {exc}", file=sys.stderr)
            continue
        if tool not in order[wid]:
            order[wid].append(tool)
    out = [*header_lines, ""]
    out.append(
        "| workload | tool | unit | min | median | max | ratio vs fio | CPU cores | CPU us/op | n |"
    )
    out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for wid, metric, title in meta:
        label, scale = METRICS[metric]
        tools = order.get(wid, [])
        medians = {t: statistics.median(r.value(metric) for r in runs[wid][t]) for t in tools}
        for tool in tools:
            rs = runs[wid][tool]
            vals = sorted(r.value(metric) * scale for r in rs)
            ref = _reference(tool, tools)
            ratio = f"{medians[tool] / medians[ref]:.2f}" if ref and medians[ref] else "-"
            if ref and ref != "fio-io_uring":
                ratio += f" ({ref.removeprefix('fio-')})"
            cores = statistics.median(r.cores for r in rs)
            us = statistics.median(r.us_per_op for r in rs)
            out.append(
                f"| {wid} {title} | {tool} | {label} | {_num(vals[0])} | "
                f"{_num(statistics.median(vals))} | {_num(vals[-1])} | {ratio} | "
                f"{cores:.2f} | {us:.2f} | {len(rs)} |"
            )
    return "\n".join(out)


def _num(x: float) -> str:
    return f"{x:,.1f}" if x < 1000 else f"{x:,.0f}"


def main(argv: list[str] | None = None) -> int:
    """Print the table of the result directory given on the command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result_dir", type=Path)
    args = ap.parse_args(argv)
    print(render(args.result_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
