"""Shared helpers of the issue-4/5 benchmarks (bench-rechunk, bench-cluster, bench-datasource).

* :func:`zarr_dataset`: the array of ``scripts/bench-zarr.py`` (made there once, reused);
* :class:`TreeMemory`: peak memory of a process tree, sampled from /proc (sum of RSS and
  sum of PSS over the root process and all its descendants; PSS splits shared pages such
  as Ray's object store between the processes mapping them, so it is the honest sum);
* :func:`drop_caches`, :func:`summary` (min/median/max) and :func:`md_table`;
* :func:`zarrs_pipeline`: zarr-python with the zarrs codec pipeline, the peer the Zarr
  benchmarks call ``zarrs``.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from lsio_ray.bench import drop_caches as drop_caches  # re-exported for the scripts

HERE = Path(__file__).resolve().parent


def bench_zarr() -> ModuleType:
    """``scripts/bench-zarr.py`` as a module (its dataset maker and settings)."""
    spec = importlib.util.spec_from_file_location("bench_zarr", HERE / "bench-zarr.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def zarrs_pipeline() -> Any:
    """A context (``with``) in which zarr-python arrays opened use the zarrs codec
    pipeline (``pip install zarrs``, in the ``bench`` extra); zarr picks its pipeline
    when an array is opened."""
    import zarr

    return zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})


def zarr_dataset(layout: str = "v3-chunks") -> str:
    """Path of the bench-zarr array in ``layout`` (written once by bench-zarr's code).

    Shape and directory follow ``LSIO_ZARR_BENCH_SHAPE`` / ``LSIO_ZARR_BENCH_DIR``."""
    return bench_zarr().dataset(layout)


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as fh:
                st = fh.read()
        except OSError:
            continue
        ppid = int(st[st.rfind(b")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants."""
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def _rss_pss(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) << 10
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) << 10
    except OSError:
        pass
    return rss, pss


def tree_memory(root: int) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in bytes over ``root``'s process tree, now."""
    rss = pss = 0
    for p in tree_pids(root):
        r, s = _rss_pss(p)
        rss += r
        pss += s
    return rss, pss


class TreeMemory:
    """Samples a process tree's summed RSS and PSS every ``interval`` seconds in a thread;
    ``peak_rss`` / ``peak_pss`` after :meth:`stop`.  ``root`` may be set later (a child
    started after the sampler)."""

    def __init__(self, root: int | None = None, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.peak_rss = self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        if self.root is None:
            return
        rss, pss = tree_memory(self.root)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def start(self) -> TreeMemory:
        self._thread.start()
        return self

    def stop(self) -> TreeMemory:
        self._stop.set()
        self._thread.join()
        return self


def init_local_ray(cpus: int = 2) -> None:
    """Start the benchmarks' local Ray cluster in this process: ``cpus`` CPUs, no
    dashboard, worker logs kept out of the output; ``$LSIO_BENCH_OBJECT_STORE`` (e.g.
    ``1G``) sets the object store's size (Ray's default: 30% of the memory)."""
    import ray

    from lsio_ray.config import parse_size

    store = os.environ.get("LSIO_BENCH_OBJECT_STORE")
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        object_store_memory=parse_size(store) if store else None,
    )


def summary(values: list[float]) -> tuple[float, float, float]:
    """(min, median, max)."""
    return min(values), statistics.median(values), max(values)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table (first column left-aligned, the others right-aligned)."""
    out = ["| " + " | ".join(header) + " |"]
    out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    out.extend("| " + " | ".join(r) + " |" for r in rows)
    return "\n".join(out)


def now() -> float:
    return time.perf_counter()
