"""A bounded, seeded fuzz of the Zarr read path against zarr-python.

Arrays written by zarr-python (v2 and v3; raw, zstd, blosc, gzip; sharded with the index
at either end) are copied and mutated one way per case: a metadata value replaced by a
hostile one (huge, negative, wrapping, wrong type, nested), a key dropped, a shard index
entry rewritten (with or without a matching checksum), chunk bytes flipped, truncated or
extended.  Each case is then read (a bounded corner) by zarr-python, by
``lsio_ray.zarr.open`` and by zarr-python with ``use_lsio_pipeline()``.

The rule: where zarr-python raises, lsio raises a clean Python exception (never a crash
or heap bytes).  Where zarr-python succeeds, lsio returns equal values, or refuses:
metadata it cannot read or that breaks the spec where zarr-python is lenient
(``ArrayMetadataError`` naming the array); a shard index entry pointing into the index
itself (``ShardIndexError``); corrupt chunk bytes whose codec header fails validation
(``ChunkCorruptError``).  Flipped compressed bytes without a checksum may go unnoticed
by one zstd version and not by another: there lsio may return an array of the right
shape where zarr-python raised (the C decoder's own safety is csrc/tests/fuzz-decode.c's).

Each case runs in a fresh directory (no cache can hold an earlier case's layout).
LSIO_FUZZ_CASES / LSIO_FUZZ_SEED set the run (defaults: 600 cases, seed 0, about 15 s
on 2 cores).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

import lsio_ray.zarr as lz
from lsio_ray.zarr.errors import ArrayMetadataError, ChunkCorruptError, ShardIndexError

CASES = int(os.environ.get("LSIO_FUZZ_CASES", "600"))
SEED = int(os.environ.get("LSIO_FUZZ_SEED", "0"))

HOSTILE_INTS = [0, -1, 1, 3, 2**31, 2**32 + 1, 2**57 + 1, 2**62, 2**63 - 1, 2**63, 2**64 + 5]
HOSTILE = [*HOSTILE_INTS, None, "", "x", 1.5, True, [], {}, [[1]], [-1, 2], {"a": [1, {"b": 2}]}]


def _bases(root: Path) -> dict[str, str]:
    """The arrays every case starts from (small: a case copies one)."""
    rng = np.random.default_rng(7)
    data = rng.integers(0, 50, (9, 10, 7)).astype("int32")
    out = {}
    specs: dict[str, dict[str, Any]] = {
        "v3-raw": {"compressors": None},
        "v3-zstd": {"compressors": ZstdCodec(level=1)},
        "v3-blosc": {"compressors": BloscCodec(cname="lz4", shuffle="shuffle")},
        "v3-gzip": {"compressors": GzipCodec(level=1)},
        "v3-shard-end": {"shards": (8, 10, 4), "compressors": ZstdCodec(level=1)},
        "v3-shard-start": {"shards": (8, 10, 4), "compressors": None},
        "v2-zstd": {"zarr_format": 2, "compressors": numcodecs.Zstd(level=1)},
        "v2-raw": {"zarr_format": 2, "compressors": None},
    }
    for name, kw in specs.items():
        path = str(root / f"{name}.zarr")
        zarr.create_array(path, shape=data.shape, chunks=(4, 5, 2), dtype="int32", **kw)
        if name == "v3-shard-start":  # the index at the start: set before any data
            meta_path = os.path.join(path, "zarr.json")
            with open(meta_path) as fh:
                meta = json.load(fh)
            meta["codecs"][0]["configuration"]["index_location"] = "start"
            with open(meta_path, "w") as fh:
                json.dump(meta, fh)
        zarr.open_array(path, mode="r+")[:8] = data[:8]  # the last row stays fill
        out[name] = path
    return out


def _meta_file(path: str) -> str:
    v3 = os.path.join(path, "zarr.json")
    return v3 if os.path.exists(v3) else os.path.join(path, ".zarray")


def _slots(doc: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document (dict keys and list items), as key paths."""
    out = [at] if at else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _slots(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _slots(v, (*at, i))
    return out


def _mutate_metadata(path: str, rng: np.random.Generator) -> str:
    meta_path = _meta_file(path)
    with open(meta_path) as fh:
        doc = json.load(fh)
    slots = _slots(doc)
    at = slots[int(rng.integers(len(slots)))]
    parent = doc
    for k in at[:-1]:
        parent = parent[k]
    how = int(rng.integers(4))
    if how == 0 and isinstance(parent, dict):
        del parent[at[-1]]
        what = f"drop {at}"
    elif how == 1 and isinstance(parent[at[-1]], int) and not isinstance(parent[at[-1]], bool):
        parent[at[-1]] = HOSTILE_INTS[int(rng.integers(len(HOSTILE_INTS)))]
        what = f"{at} = {parent[at[-1]]}"
    elif how == 2 and isinstance(parent[at[-1]], list):
        parent[at[-1]] = [
            HOSTILE_INTS[int(rng.integers(len(HOSTILE_INTS)))] for _ in parent[at[-1]]
        ]
        what = f"{at} = {parent[at[-1]]}"
    else:
        parent[at[-1]] = copy.deepcopy(HOSTILE[int(rng.integers(len(HOSTILE)))])
        what = f"{at} = {parent[at[-1]]!r}"
    with open(meta_path, "w") as fh:
        json.dump(doc, fh)
    return "metadata: " + what


def _files(path: str) -> list[str]:
    out = []
    for d, _, names in os.walk(path):
        out += [os.path.join(d, n) for n in names if not n.startswith((".z", "zarr.json"))]
    return sorted(out)


def _mutate_chunk(path: str, rng: np.random.Generator) -> str:
    files = _files(path)
    f = files[int(rng.integers(len(files)))]
    raw = bytearray(Path(f).read_bytes())
    how = int(rng.integers(3))
    if how == 0 and raw:
        for _ in range(int(rng.integers(1, 5))):
            raw[int(rng.integers(len(raw)))] ^= int(rng.integers(1, 256))
    elif how == 1:
        raw = raw[: int(rng.integers(len(raw) + 1))]
    else:
        raw += rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    Path(f).write_bytes(bytes(raw))
    return f"chunk bytes ({how}) of {os.path.relpath(f, path)}"


def _mutate_index(path: str, rng: np.random.Generator) -> str:
    """Rewrite one (offset, nbytes) entry of a shard's index, with a matching crc32c
    or not."""
    with open(_meta_file(path)) as fh:
        cfg = json.load(fh)["codecs"][0]["configuration"]
    n = int(np.prod([s // c for s, c in zip((8, 10, 4), cfg["chunk_shape"], strict=True)]))
    size = 16 * n + 4
    files = _files(path)
    f = files[int(rng.integers(len(files)))]
    raw = bytearray(Path(f).read_bytes())
    at = 0 if cfg.get("index_location") == "start" else len(raw) - size
    if at < 0 or len(raw) < size:
        return "index: shard too short to hold one"
    i = int(rng.integers(n))
    big = [2**64 - 1, 2**63, 2**62, len(raw), len(raw) + 1, 0, 1, 7, 2**32]
    off = big[int(rng.integers(len(big)))] if rng.integers(2) else int(rng.integers(len(raw) + 8))
    nb = big[int(rng.integers(len(big)))] if rng.integers(2) else int(rng.integers(4096))
    raw[at + 16 * i : at + 16 * i + 16] = struct.pack("<QQ", off, nb)
    fixed = bool(rng.integers(2))
    if fixed:
        crc = google_crc32c.value(bytes(raw[at : at + 16 * n]))
        raw[at + 16 * n : at + size] = struct.pack("<I", crc)
    Path(f).write_bytes(bytes(raw))
    return f"index entry {i} = ({off}, {nb}), crc {'fixed' if fixed else 'stale'}"


def _outcome(read: Callable[[], np.ndarray]) -> tuple[str, Any]:
    try:
        return "ok", np.asarray(read())
    except (RecursionError, MemoryError) as exc:  # never acceptable from lsio
        return "bad", exc
    except Exception as exc:  # zarr and numcodecs raise many classes
        return "raise", exc


def _corner(a: Any) -> np.ndarray:
    """At most 16 along each axis from the origin: what the fixture holds, and a
    bounded read however large a mutated shape says the array is."""
    return np.asarray(a[tuple(slice(0, min(16, n)) for n in a.shape)])


def _zarr_read(path: str) -> np.ndarray:
    return _corner(zarr.open_array(path, mode="r"))


def _lsio_read(path: str) -> np.ndarray:
    return _corner(lz.open(path))


def _pipeline_read(path: str) -> np.ndarray:
    with lz.use_lsio_pipeline():
        return _corner(zarr.open_array(path, mode="r"))


def _run(tmp_path: Path, seed: int, cases: int) -> dict[str, int]:
    """Run ``cases`` cases of ``seed``; returns how often each outcome pair was seen."""
    bases = _bases(tmp_path / "bases")
    names = sorted(bases)
    rng = np.random.default_rng(seed)
    seen: dict[str, int] = {}
    for case in range(cases):
        name = names[int(rng.integers(len(names)))]
        path = str(tmp_path / f"case{case}.zarr")
        shutil.copytree(bases[name], path)
        kinds = ["metadata", "chunk"] + (["index", "index"] if "shard" in name else [])
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "metadata":
            what = _mutate_metadata(path, rng)
        elif kind == "chunk":
            what = _mutate_chunk(path, rng)
        else:
            what = _mutate_index(path, rng)
        where = f"case {case} (seed {seed}) {name}: {what}"
        want = _outcome(lambda p=path: _zarr_read(p))
        want_shape = (9, 10, 7)
        for label, reader in (("lz.open", _lsio_read), ("pipeline", _pipeline_read)):
            got = _outcome(lambda p=path, r=reader: r(p))
            assert got[0] != "bad", f"{where}: {label} raised {got[1]!r}"
            key = f"{label}: zarr {want[0]}, lsio {got[0]}"
            seen[key] = seen.get(key, 0) + 1
            if want[0] == "raise" and got[0] == "ok" and kind == "chunk":
                # corrupt compressed bytes without a checksum: whether a codec notices
                # depends on its version (numcodecs bundles zstd 1.5.6, the C decoder
                # links the system's 1.5.4, which decodes some flipped frames quietly);
                # the decoder's own safety is csrc/tests/fuzz-decode.c's job
                assert got[1].shape == want_shape and got[1].dtype == np.int32, where
            elif want[0] == "raise":
                assert got[0] == "raise", (
                    f"{where}: zarr-python raised {want[1]!r}, {label} returned values"
                )
            elif got[0] == "raise" and kind == "index" and isinstance(got[1], ShardIndexError):
                # an entry zarr-python follows into the index itself (index at the
                # start): it decodes index bytes as data, lsio refuses the index
                assert "points into the index" in str(got[1]) and path in str(got[1]), where
            elif got[0] == "raise" and kind == "chunk":
                # corrupt bytes a codec happened to decode: lsio checks the codec's own
                # header before trusting it (blosc_cbuffer_validate) and may refuse
                assert isinstance(got[1], ChunkCorruptError) and path in str(got[1]), (
                    f"{where}: zarr-python read it, {label} raised {got[1]!r}"
                )
            elif got[0] == "raise":
                # lsio may refuse metadata it cannot read or that breaks the spec where
                # zarr-python is lenient (a clean ArrayMetadataError naming the array),
                # never fail on data zarr-python reads
                assert isinstance(got[1], ArrayMetadataError) and path in str(got[1]), (
                    f"{where}: zarr-python read it, {label} raised {got[1]!r}"
                )
            else:
                assert got[1].shape == want[1].shape and got[1].dtype == want[1].dtype, where
                np.testing.assert_array_equal(got[1], want[1], err_msg=where)
        shutil.rmtree(path)
    return seen


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # zarr-python's own index arithmetic
def test_fuzz_reads_match_zarr_python(tmp_path: Path) -> None:
    """LSIO_FUZZ_CASES cases of LSIO_FUZZ_SEED; the run reaches both sides of the rule."""
    seen = _run(tmp_path, SEED, CASES)
    assert seen.get("lz.open: zarr ok, lsio ok", 0) > CASES // 10, seen
    assert seen.get("lz.open: zarr raise, lsio raise", 0) > CASES // 10, seen


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("seed", [11, 12])
def test_fuzz_other_seeds(tmp_path: Path, seed: int) -> None:
    """A few cases of two other seeds, so the suite does not always walk one path."""
    _run(tmp_path, seed, 60)
