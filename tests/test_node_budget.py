"""One buffer-pool budget per node (lsio_ray.io.budget): the ledger, and a local Ray
cluster whose reading workers share their node's budget."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _ray_helpers import local_cluster

from lsio_ray import config
from lsio_ray.io import budget

ray = pytest.importorskip("ray")
# the task below runs in Ray workers, which cannot import this test module
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

MIB = 1 << 20


def test_reservations_share_the_budget(tmp_path: Path) -> None:
    """Pools are granted from what is left (powers of two), never below the floor, and
    come back on release."""
    with config.set(node_budget_dir=str(tmp_path), node_pool_bytes=384 * MIB):
        a = budget.reserve(256 * MIB)
        b = budget.reserve(256 * MIB)
        c = budget.reserve(256 * MIB)
        assert (a.nbytes, b.nbytes, c.nbytes) == (256 * MIB, 128 * MIB, budget.FLOOR_BYTES)
        assert sorted(budget.node_usage(str(tmp_path)).values()) == sorted(
            [256 * MIB, 128 * MIB, budget.FLOOR_BYTES]
        )
        explicit = budget.reserve(1 << 30, capped=False)  # an explicit pool_bytes: as asked
        assert explicit.nbytes == 1 << 30
        for r in (a, b, c, explicit):
            r.release()
        assert budget.node_usage(str(tmp_path)) == {}
        assert budget.reserve(256 * MIB).nbytes == 256 * MIB


def test_dead_processes_leave_no_budget_behind(tmp_path: Path) -> None:
    """A process killed while holding a pool (no release) does not keep its bytes: its
    ledger entry is dropped when the next pool is reserved."""
    env = {
        **os.environ,
        "LSIO_NODE_BUDGET_DIR": str(tmp_path),
        "LSIO_NODE_POOL_BYTES": "256M",
    }
    code = (
        "import os, signal\n"
        "from lsio_ray.io.service import default_service\n"
        "print(default_service().pool_bytes, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == -9, r.stderr
    assert int(r.stdout.split()[0]) == 256 * MIB
    assert len(os.listdir(tmp_path)) == 2  # its entry and the lock file: it never released
    assert budget.node_usage(str(tmp_path)) == {}  # the entry's pid is gone
    with config.set(node_budget_dir=str(tmp_path), node_pool_bytes=256 * MIB):
        r2 = budget.reserve(256 * MIB)
        assert r2.nbytes == 256 * MIB  # the dead process's 256 MiB came back
        r2.release()


def test_process_service_takes_its_pool_from_the_budget(tmp_path: Path) -> None:
    """The process's own service asks for pool_bytes and gets what the node has left; an
    engine made with an explicit pool_bytes gets it and is counted."""
    env = {
        **os.environ,
        "LSIO_NODE_BUDGET_DIR": str(tmp_path),
        "LSIO_NODE_POOL_BYTES": "384M",
        "LSIO_POOL_BYTES": "256M",
    }
    code = (
        "from lsio_ray import Engine\n"
        "from lsio_ray.io import budget\n"
        "from lsio_ray.io.service import default_service\n"
        "big = Engine(pool_bytes='256M')\n"
        "print(big.pool_bytes, default_service().pool_bytes, Engine().pool_bytes)\n"
        "print(sum(budget.node_usage().values()))\n"
        "big.close()\n"
        "print(sum(budget.node_usage().values()))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    lines = r.stdout.split("\n")
    assert [int(x) for x in lines[0].split()] == [256 * MIB, 128 * MIB, 128 * MIB]
    assert int(lines[1]) == 384 * MIB
    assert int(lines[2]) == 128 * MIB


def _hold_a_pool(ledger: str, want: int, timeout: float) -> tuple[int, str, int, dict[str, int]]:
    """A Ray task: make this worker's IO service, then wait until ``want`` pools are in
    the node's ledger (every task of the node holds one at once) and report."""
    import ray

    from lsio_ray.io import budget
    from lsio_ray.io.service import default_service

    svc = default_service()
    deadline = time.monotonic() + timeout
    usage = budget.node_usage(ledger)
    while len(usage) < want and time.monotonic() < deadline:
        time.sleep(0.05)
        usage = budget.node_usage(ledger)
    return os.getpid(), ray.get_runtime_context().get_node_id(), svc.pool_bytes, usage


@pytest.mark.timeout(600)
def test_reading_workers_share_their_nodes_budget(tmp_path: Path) -> None:
    """Four workers per node, each with its IO service, on a 3-node local cluster: each
    node's ledger holds its four pools, their sum stays within the node's budget but for
    the floor given to workers that came after it was spent, and one node's pools never
    count against another's."""
    budget_bytes, pool = 512 * MIB, 256 * MIB
    with local_cluster(tmp_path / "cluster", workers=2) as lc:
        ledgers = {n: str(tmp_path / f"ledger-{k}") for k, n in enumerate(lc.nodes)}
        refs = []
        for k, node in enumerate(lc.nodes):
            env = {
                "LSIO_NODE_BUDGET_DIR": ledgers[node],
                "LSIO_NODE_POOL_BYTES": str(budget_bytes),
                "LSIO_POOL_BYTES": str(pool),
            }
            task = ray.remote(_hold_a_pool).options(
                num_cpus=0, resources={f"node{k}": 0.25}, runtime_env={"env_vars": env}
            )
            refs += [task.remote(ledgers[node], 4, 120.0) for _ in range(4)]
        results = ray.get(refs, timeout=300)
    by_node: dict[str, list[tuple[int, int, dict[str, int]]]] = {}
    for pid, node, granted, usage in results:
        by_node.setdefault(node, []).append((pid, granted, usage))
    assert set(by_node) == set(lc.nodes)
    for node, rows in by_node.items():
        pids = {pid for pid, _, _ in rows}
        assert len(pids) == 4, rows  # four processes, four services
        full = max((u for _, _, u in rows), key=len)
        assert {int(name.split("-")[0]) for name in full} == pids, (node, full)
        grants = sorted(full.values(), reverse=True)
        assert grants == sorted((g for _, g, _ in rows), reverse=True)
        # within the budget, but for the floor of those that came after it was spent
        floors = sum(1 for g in grants if g == budget.FLOOR_BYTES)
        assert sum(grants) <= budget_bytes + floors * budget.FLOOR_BYTES, grants
        assert grants[0] == pool and grants[-1] < pool, grants  # the budget binds
        assert sum(g for g in grants if g > budget.FLOOR_BYTES) <= budget_bytes
