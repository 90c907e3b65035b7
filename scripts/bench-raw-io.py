#!/usr/bin/env python3
"""W1 / W2 against fio, interleaved, with the queue depth each one keeps.

    PYTHONPATH=. .venv/bin/python scripts/bench-raw-io.py [--rounds 8] [--duration 5]
        [--dir /tmp/lsio-ab/w-big] [--w1-depth 32] [--w2-depth 32] [--workloads w1,w2]
        [--baseline /path/to/other/checkout]

W1: 4 KiB random O_DIRECT reads; W2: 256 KiB sequential O_DIRECT reads; fio
(``--ioengine=io_uring``, the same arguments as scripts/bench-io.sh) and ``lsio-ray bench
read --backend uring`` on the same files, every run a fresh process, the order rotated
each round so drift on the shared machine falls on every tool alike.  ``--baseline``
adds a third tool: ``lsio-ray bench read`` importing lsio_ray from another checkout
(``PYTHONPATH=<checkout>``; its ``lsio_ray/_lsio*.so`` must be built).

While each run goes, ``iostat -x -y <device> 1`` (sysstat) samples the device: its mean
``aqu-sz`` (requests queued or in service at the device) and ``r/s`` are reported next to
the tool's own view of its depth -- fio's ``iodepth_level`` / ``iodepth_complete`` and
the engine's time-weighted mean in flight (``RawEngine.stats()``), its histogram and its
completions per ``io_uring_enter``.  Printed: one line per run, then a markdown table
with min / median / max per tool and of the per-round ratio lsio / fio, and the load
average at the start and the end.  The data files are made once (``lsio-ray bench
make-files``: 4 x 64 MiB by default).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _device(path: str) -> str:
    """The block device under ``path`` as iostat names it (vda for /dev/vda1 too)."""
    src = subprocess.run(
        ["df", "--output=source", path], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    name = os.path.basename(os.path.realpath(src))
    part = f"/sys/class/block/{name}/partition"
    if os.path.exists(part):  # a partition: iostat's line for its disk is the one to read
        name = os.path.basename(os.path.dirname(os.path.realpath(f"/sys/class/block/{name}")))
    return name


def _iostat_start(dev: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["iostat", "-x", "-y", "-d", dev, "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "LC_ALL": "C", "S_COLORS": "never"},
    )


def _iostat_stop(p: subprocess.Popen[str], dev: str) -> dict[str, float]:
    """Mean aqu-sz, r/s, MiB/s read and r_await (ms) of the samples taken (the first and
    last second are partly outside the run: left out when there are more than two)."""
    p.terminate()
    out, _ = p.communicate(timeout=10)
    cols: list[str] = []
    rows: list[dict[str, float]] = []
    for line in out.splitlines():
        f = line.split()
        if f and f[0].startswith("Device"):
            cols = f
        elif f and f[0] == dev and cols:
            rows.append({c: float(v) for c, v in zip(cols[1:], f[1:], strict=False)})
    if len(rows) > 2:
        rows = rows[1:-1]
    if not rows:
        return {k: float("nan") for k in ("aqu_sz", "r_s", "r_mibs", "r_await")}
    return {
        "aqu_sz": statistics.fmean(r["aqu-sz"] for r in rows),
        "r_s": statistics.fmean(r["r/s"] for r in rows),
        "r_mibs": statistics.fmean(r["rkB/s"] for r in rows) / 1024,
        "r_await": statistics.fmean(r["r_await"] for r in rows),
    }


def _fio(wl: str, files: list[str], depth: int, duration: float) -> dict[str, object]:
    common = [
        "fio",
        f"--name={wl}",
        "--thread",
        "--invalidate=0",
        "--group_reporting",
        "--output-format=json",
        "--filename=" + ":".join(files),
        "--ioengine=io_uring",
        "--direct=1",
        f"--iodepth={depth}",
        "--time_based",
        f"--runtime={duration:g}",
    ]
    if wl == "w1":
        args = ["--rw=randread", "--bs=4k", "--norandommap", "--randrepeat=0"]
    else:
        args = ["--rw=read", "--bs=256k", "--file_service_type=sequential"]
    out = subprocess.run(common + args, capture_output=True, text=True, check=True).stdout
    j = json.loads(out[out.index("{") :])["jobs"][0]
    rd = j["read"]
    return {
        "iops": rd["iops"],
        "mibs": rd["bw_bytes"] / 2**20,
        "depth": j["iodepth_level"],
        "per_call": j["iodepth_complete"],
        "cpu": (j["usr_cpu"] + j["sys_cpu"]) / 100,
    }


def _lsio(wl: str, data: str, depth: int, duration: float, checkout: str) -> dict[str, object]:
    args = ["--pattern", "random", "--bs", "4K"] if wl == "w1" else ["--pattern", "sequential"]
    if wl == "w2":
        args += ["--bs", "256K"]
    cmd = [sys.executable, "-m", "lsio_ray.cli", "bench", "read", "--json", "--dir", data]
    cmd += [*args, "--direct", "--depth", str(depth), "--backend", "uring"]
    cmd += ["--duration", f"{duration:g}s", "--seed", "5"]
    env = {**os.environ, "PYTHONPATH": checkout, "OPENBLAS_NUM_THREADS": "1"}
    # cwd: ``python -m`` puts it first on sys.path, ahead of PYTHONPATH
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, env=env, cwd=checkout
    ).stdout
    j = json.loads(out)
    st = j["engine"]
    calls = st.get("steady_calls") or 0
    return {
        "iops": j["ops_per_s"],
        "mibs": j["mib_per_s"],
        "mean_inflight": st.get("mean_inflight", float("nan")),
        "hist": st.get("inflight_hist"),
        # a baseline checkout may predate these counters: nan then
        "per_call": st["cqes"] / calls if calls else float("nan"),
        "enter": st["enter_ns"] / 1e9 / st["steady_s"] if calls else float("nan"),
        "delay": st["run_delay_s"] / st["steady_s"] if "run_delay_s" in st else float("nan"),
        "cpu": (j["cpu_user_s"] + j["cpu_sys_s"]) / j["wall_s"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per run (5)")
    ap.add_argument("--dir", default="/tmp/lsio-ab/w-big", help="data files (made if missing)")
    ap.add_argument("--count", type=int, default=4, help="64 MiB files to make (4)")
    ap.add_argument("--w1-depth", type=int, default=32)
    ap.add_argument("--w2-depth", type=int, default=32)
    ap.add_argument("--workloads", default="w1,w2")
    ap.add_argument("--baseline", help="another checkout to run as a third tool")
    ap.add_argument("--device", help="block device for iostat (default: the one under --dir)")
    args = ap.parse_args()
    for tool, pkg in (("fio", "fio"), ("iostat", "sysstat")):
        if shutil.which(tool) is None:
            ap.error(f"{tool} is not installed: apt-get install {pkg} (scripts/setup does)")
    env = {**os.environ, "PYTHONPATH": HERE}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lsio_ray.cli",
            "bench",
            "make-files",
            "--dir",
            args.dir,
            "--count",
            str(args.count),
            "--size",
            "64M",
            "--no-progress",
        ],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    files = sorted(os.path.join(args.dir, n) for n in os.listdir(args.dir))[: args.count]
    dev = args.device or _device(args.dir)
    tools = ["fio", "lsio"] + (["lsio-baseline"] if args.baseline else [])
    wls = [w for w in args.workloads.split(",") if w]
    load0 = _load()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, device {dev}, load {load0}")
    got: dict[tuple[str, str], list[dict[str, object]]] = {}
    for rnd in range(args.rounds):
        order = tools[rnd % len(tools) :] + tools[: rnd % len(tools)]
        for wl in wls:
            depth = args.w1_depth if wl == "w1" else args.w2_depth
            for tool in order:
                io = _iostat_start(dev)
                try:
                    if tool == "fio":
                        r = _fio(wl, files, depth, args.duration)
                    else:
                        co = HERE if tool == "lsio" else os.path.abspath(args.baseline or "")
                        r = _lsio(wl, args.dir, depth, args.duration, co)
                finally:
                    dv = _iostat_stop(io, dev)
                r.update(dv, load=_load())
                got.setdefault((wl, tool), []).append(r)
                rate = f"{r['iops'] / 1e3:7.1f} kIOPS" if wl == "w1" else f"{r['mibs']:7.0f} MiB/s"
                own = (
                    f"fio depth {r['depth']} per-getevents {r['per_call']}"
                    if tool == "fio"
                    else f"mean in flight {r['mean_inflight']:.1f} hist {r['hist']} "
                    f"cqes/call {r['per_call']:.1f} in enter {r['enter']:.0%} "
                    f"waiting for a CPU {r['delay']:.0%}"
                )
                print(
                    f"round {rnd} {wl} {tool:13s} {rate} aqu-sz {r['aqu_sz']:5.1f} "
                    f"r/s {r['r_s']:6.0f} ({r['r_mibs']:5.0f} MiB/s) "
                    f"r_await {r['r_await']:.2f} cpu {r['cpu']:.2f} "
                    f"load {r['load']} | {own}",
                    flush=True,
                )
    load1 = _load()
    rows = []
    for wl in wls:
        key = "iops" if wl == "w1" else "mibs"
        scale = 1e3 if wl == "w1" else 1.0
        unit = "kIOPS" if wl == "w1" else "MiB/s"
        fio = [float(r[key]) for r in got[(wl, "fio")]]  # type: ignore[arg-type]
        for tool in tools:
            vals = [float(r[key]) for r in got[(wl, tool)]]  # type: ignore[arg-type]
            aq = [float(r["aqu_sz"]) for r in got[(wl, tool)]]  # type: ignore[arg-type]
            ratio = "-"
            if tool != "fio":
                rs = [v / f for v, f in zip(vals, fio, strict=True)]
                ratio = "{:.2f} / {:.2f} / {:.2f}".format(*bc.summary(rs))
            own = "-"
            if tool != "fio":
                own = f"{statistics.median(float(r['mean_inflight']) for r in got[(wl, tool)]):.1f}"  # type: ignore[arg-type]
            rows.append(
                [
                    wl,
                    tool,
                    "{:.1f} / {:.1f} / {:.1f} {}".format(
                        *(v / scale for v in bc.summary(vals)), unit
                    ),
                    ratio,
                    f"{statistics.median(aq):.1f}",
                    own,
                ]
            )
    print(
        f"\n{args.rounds} rounds of {args.duration:g} s, interleaved; load average "
        f"{load0} at the start, {load1} at the end\n"
    )
    print(
        bc.md_table(
            [
                "workload",
                "tool",
                "min / median / max",
                "ratio to fio (per round) min / median / max",
                "iostat aqu-sz (median)",
                "engine mean in flight (median)",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
