"""The Ray layer on a 3-node cluster on this machine: ordered streams, locality, errors,
write-back, the task pipeline, and an IO actor killed mid-stream."""

from __future__ import annotations

import collections
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")
numcodecs = pytest.importorskip("numcodecs")

from _ray_helpers import LocalCluster, local_cluster, write_file  # noqa: E402

from lsio_ray import ByteRange, OpGroup, get_ranges, put_file, put_ranges  # noqa: E402
from lsio_ray.ray import Coordinator, InputError, io_actor, tasks  # noqa: E402

NFILES = 24  # per node

# the reduce function below runs in Ray workers, which cannot import this test module
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tmp = tmp_path_factory.mktemp("ray-stream")
    with local_cluster(tmp, workers=2) as c:
        files: dict[str, bytes] = {}
        owner: dict[str, str] = {}
        for k, node in enumerate(c.nodes):
            for i in range(NFILES):
                p = c.disks[node] / f"d{i % 3}" / f"f{i:03d}"
                files[str(p)] = write_file(p, 1000 * k + i, 5_000 + 997 * i)
                owner[str(p)] = node
        c.extra.update(files=files, owner=owner)
        yield c


@pytest.fixture(scope="module")
def coord(lc: LocalCluster) -> Coordinator:
    return Coordinator(roots=lc.roots, batch_bytes=40_000, record_paths=True)


def _interleaved(lc: LocalCluster, ngroups: int, per: int) -> list[list[str]]:
    """Groups whose files come from every node, in an interleaved order."""
    paths = sorted(lc.extra["files"])
    rng = np.random.default_rng(7)
    return [[paths[j] for j in rng.choice(len(paths), per, replace=False)] for _ in range(ngroups)]


def test_groups_arrive_in_order(lc: LocalCluster, coord: Coordinator) -> None:
    files = lc.extra["files"]
    plan = _interleaved(lc, 12, 9)
    groups = [
        OpGroup([get_ranges(p, metadata=[(g, j)]) for j, p in enumerate(ps)], metadata=g)
        for g, ps in enumerate(plan)
    ]
    seen = []
    for stream in coord.stream(groups, window=4):
        seen.append(stream.metadata)
        assert len(set(stream.nodes)) > 1  # really split over nodes
        got = list(stream.chunks())
        assert [m for m, _ in got] == [(stream.metadata, j) for j in range(9)]
        assert [v.tobytes() for _, v in got] == [files[p] for p in plan[stream.metadata]]
    assert seen == list(range(12))


def test_every_byte_read_by_its_node(lc: LocalCluster, coord: Coordinator) -> None:
    files, owner = lc.extra["files"], lc.extra["owner"]
    coord.reset_stats()
    plan = _interleaved(lc, 6, 12)
    for stream in coord.stream([OpGroup([get_ranges(p) for p in ps]) for ps in plan]):
        for bref in stream:
            batch = ray.get(bref.ref)
            assert batch.node_id == bref.node_id
            for i in range(len(batch)):
                assert owner[batch.path(i)] == batch.node_id
    expect_bytes: dict[str, int] = collections.Counter()
    expect_files: dict[str, int] = collections.Counter()
    for ps in plan:
        for p in ps:
            expect_bytes[owner[p]] += len(files[p])
            expect_files[owner[p]] += 1
    stats = coord.stats()
    read = coord.paths_read()
    for node in lc.nodes:
        assert stats[node]["bytes_read"] == expect_bytes[node]
        assert stats[node]["ranges_read"] == expect_files[node]
        assert all(owner[p] == node for p in read[node])
        assert stats[node]["engine"]["buffers_out"] == 0


def test_errors_travel_in_the_index(lc: LocalCluster, coord: Coordinator) -> None:
    node = lc.nodes[1]
    good = next(p for p, n in lc.extra["owner"].items() if n == node)
    data = lc.extra["files"][good]
    missing = str(lc.disks[node] / "no-such-file")
    group = OpGroup(
        [
            get_ranges(good, [ByteRange(0, 100), ByteRange(len(data) - 10, len(data) + 5)]),
            get_ranges(missing),
            get_ranges(good, [ByteRange.last(7)]),
        ]
    )
    (stream,) = list(coord.stream([group]))
    batches = list(stream.batches())
    chunks = [(b, i) for b in batches for i in range(len(b))]
    assert len(chunks) == 4
    b, i = chunks[0]
    assert b.view(i).tobytes() == data[:100]
    b, i = chunks[1]
    with pytest.raises(InputError, match="past the end"):
        b.view(i)
    b, i = chunks[2]
    with pytest.raises(InputError) as ei:
        b.view(i)
    assert ei.value.path == missing and ei.value.node_id == node
    assert isinstance(ei.value.cause, FileNotFoundError)
    b, i = chunks[3]
    assert b.view(i).tobytes() == data[-7:]


def test_shared_storage_is_spread(lc: LocalCluster) -> None:
    shared = lc.shared / "spread"
    paths = [shared / f"s{i:03d}" for i in range(40)]
    datas = [write_file(p, 5000 + i, 3000) for i, p in enumerate(paths)]
    c = Coordinator(batch_bytes=20_000)
    groups = [OpGroup([get_ranges(p) for p in paths[g * 5 : g * 5 + 5]]) for g in range(8)]
    used = []
    out = []
    for stream in c.stream(groups, window=8):
        assert len(set(stream.nodes)) == 1  # a whole group on one node
        used.append(stream.nodes[0])
        out.extend(v.tobytes() for _, v in stream.chunks())
    assert out == datas
    assert len(set(used)) == len(lc.nodes)


def test_writes_go_to_the_owning_node(lc: LocalCluster, coord: Coordinator) -> None:
    node = lc.nodes[2]
    target = lc.disks[node] / "written" / "a.bin"
    other = lc.disks[node] / "written" / "b.bin"
    group = OpGroup(
        [put_file(target, b"x" * 1000), put_ranges(other, [(0, b"abc"), (10, b"z")], create=True)]
    )
    coord.reset_stats()
    (stream,) = list(coord.stream([group]))
    idx = np.concatenate([b.index for b in stream.batches()])
    assert idx["error"].tolist() == [0, 0, 0]
    assert idx["length"].tolist() == [1000, 3, 1]
    assert target.read_bytes() == b"x" * 1000
    assert other.read_bytes() == b"abc" + b"\0" * 7 + b"z"
    assert coord.stats()[node]["bytes_written"] == 1004


def _make_inputs(
    lc: LocalCluster, name: str, ngroups: int, per: int
) -> tuple[list[OpGroup], list[bytes]]:
    """zstd-compressed inputs on every node; the expected outputs are their concatenation."""
    z = numcodecs.Zstd(level=1)
    groups, expect = [], []
    for g in range(ngroups):
        node = lc.nodes[g % len(lc.nodes)]
        ops, parts = [], []
        for j in range(per):
            raw = np.full(1000 + j, g * 16 + j, dtype=np.uint8).tobytes()
            p = lc.disks[node] / name / f"in{g}_{j}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(z.encode(raw))
            ops.append(get_ranges(p))
            parts.append(raw)
        out = lc.disks[node] / name / f"out{g}"
        groups.append(OpGroup(ops, metadata=str(out)))
        expect.append(b"".join(parts))
    return groups, expect


def _concat(arrays: list[Any], metas: list[Any], group_metadata: Any) -> np.ndarray:
    return np.concatenate([np.frombuffer(a, np.uint8) for a in arrays])


@pytest.mark.parametrize("fuse", [True, False])
def test_pipeline_decode_reduce_encode_write(
    lc: LocalCluster, coord: Coordinator, fuse: bool
) -> None:
    groups, expect = _make_inputs(lc, f"pipe{fuse}", 6, 10)
    z = numcodecs.Zstd(level=3)
    coord.reset_stats()
    results = list(
        tasks.run_pipeline(
            coord,
            groups,
            decode=z.decode,
            reduce=_concat,
            encode=z.encode,
            output=lambda m: m,
            fuse=fuse,
        )
    )
    assert [r.index for r in results] == list(range(6))
    for r, data in zip(results, expect, strict=True):
        assert z.decode(Path(r.path).read_bytes()) == data
    stats = coord.stats()
    for node in lc.nodes:  # each output written by the node that owns its directory
        mine = [r for r in results if r.path.startswith(str(lc.disks[node]))]
        assert stats[node]["bytes_written"] == sum(r.nbytes for r in mine)


def test_pipeline_missing_input_names_file_and_node(lc: LocalCluster, coord: Coordinator) -> None:
    groups, _ = _make_inputs(lc, "pipe-missing", 2, 3)
    victim = groups[1].operations[2].path
    os.unlink(victim)
    z = numcodecs.Zstd(level=3)
    with pytest.raises(InputError) as ei:
        list(
            tasks.run_pipeline(
                coord, groups, decode=z.decode, reduce=_concat, encode=z.encode, output=lambda m: m
            )
        )
    assert ei.value.path == victim
    assert ei.value.node_id == lc.extra["owner"].get(victim, lc.nodes[1])
    assert victim in str(ei.value) and ei.value.node_id in str(ei.value)


def test_actor_killed_mid_stream(lc: LocalCluster) -> None:
    files, owner = lc.extra["files"], lc.extra["owner"]
    node = lc.nodes[1]
    mine = sorted(p for p in files if owner[p] == node)
    c = Coordinator(roots=lc.roots, batch_bytes=6_000, backpressure=2)
    group = OpGroup(
        [
            get_ranges(p, [ByteRange(0, 2000), ByteRange(2000, 4000), ByteRange(4000, 5000)])
            for p in mine * 3
        ]
    )
    expect = [files[p][a:b] for p in mine * 3 for a, b in ((0, 2000), (2000, 4000), (4000, 5000))]
    (stream,) = list(c.stream([group]))
    got: list[bytes] = []
    pid = ray.get(io_actor(node).stats.remote())["pid"]
    killed = False
    try:
        for k, bref in enumerate(stream):
            got.extend(v.tobytes() for _, v in ray.get(bref.ref))
            # after the first batch: the generator, held 2 batches ahead (backpressure),
            # still has batches to make (at k == 3 it could be done on a fast machine,
            # and then nothing needed a retry)
            if k == 0 and not killed:
                ray.kill(io_actor(node), no_restart=False)
                killed = True
        assert killed and c.retries >= 1
        assert got == expect  # nothing lost, nothing repeated
    finally:  # the next tests need the actor back, whatever happened here
        deadline = time.monotonic() + 60
        while True:
            try:
                now = ray.get(io_actor(node).stats.remote())["pid"]
                break
            except ray.exceptions.RayError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    assert now != pid  # it was restarted


def test_actors_hold_no_cpu(lc: LocalCluster, coord: Coordinator) -> None:
    coord.actors()  # one per node, all started
    assert len(coord.actors()) == len(lc.nodes)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]


def test_discovery_treats_files_seen_everywhere_as_shared(lc: LocalCluster) -> None:
    paths = [lc.shared / "disc" / f"x{i}" for i in range(6)]
    datas = [write_file(p, 9000 + i, 1500) for i, p in enumerate(paths)]
    c = Coordinator(discover=True)
    assert c.node_of(str(paths[0])) is None  # every node sees it: shared storage
    (stream,) = list(c.stream([OpGroup([get_ranges(p) for p in paths])]))
    assert len(set(stream.nodes)) == 1
    assert [v.tobytes() for _, v in stream.chunks()] == datas


def test_batches_survive_buffer_reuse(lc: LocalCluster) -> None:
    """The actor reuses a batch buffer after each yield: Ray must have copied it by then."""
    files, owner = lc.extra["files"], lc.extra["owner"]
    mine = sorted(p for p in files if owner[p] == lc.nodes[0])
    c = Coordinator(roots=lc.roots, batch_bytes=12_000, backpressure=64)
    (stream,) = list(c.stream([OpGroup([get_ranges(p) for p in mine])]))
    refs = stream.refs()  # every batch yielded (buffers reused many times) before any get
    assert len(refs) > 8
    got = [v.tobytes() for r in refs for _, v in ray.get(r.ref)]
    assert got == [files[p] for p in mine]


def test_example_ray_convert(lc: LocalCluster) -> None:
    """examples/ray_convert.py, the user's sketch on Ray, runs on this cluster."""
    import subprocess

    script = Path(__file__).resolve().parent.parent / "examples" / "ray_convert.py"
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "--dir",
            str(lc.shared / "example"),
            "--groups",
            "6",
            "--address",
            lc.cluster.address,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "converted 60 chunks into 6" in proc.stdout
