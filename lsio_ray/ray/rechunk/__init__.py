"""Cluster-wide Zarr re-chunking and format conversion, resumable.

>>> import lsio_ray
>>> lsio_ray.rechunk("in.zarr", "out.zarr", chunks=(64, 256, 256), shards=(64, 1024, 1024),
...                  codec="zstd:3", zarr_format=3)

Any layout to any other: Zarr v2 or v3, sharded or not, any chunk shape, any codec.
zarr-python parses and writes the metadata documents and its codec objects (numcodecs)
decode and encode; the C decoder decodes raw, zstd and blosc inputs.  The Zarr work
is the Zarr layer's: block decoding in :mod:`lsio_ray.zarr.blocks`, shard indexes in
:mod:`lsio_ray.zarr.shards`, unit encoding in :mod:`lsio_ray.zarr.encode` (the array
writer's own encoder).  This package holds the job: :mod:`.plan` (metadata, blocks,
reads), :mod:`.block` (the task of one block), :mod:`.journal` (the destination's state
for resuming), :mod:`.driver` (:func:`rechunk_array`) and :mod:`.group` (:func:`rechunk`,
arrays and whole groups).

**Plan.**  The output is made in *blocks*: boxes that hold whole output units (chunks,
or shards when sharded) and, where memory allows, whole input files too -- per axis the
least common multiple of the input file and output unit shapes, halved on the axis with
the most units until one block's decoded bytes fit ``block_bytes``, or doubled on the
axis with the most room while they still fit and the array still makes four blocks per
CPU of the cluster (each block costs a Ray task and an op group: several ms of CPU,
which small blocks of one output chunk did not amortise).  Each block is one
op group (every input file it touches, read whole) and one Ray task: decode the inputs
(in C for raw, zstd and blosc chunks, one call per sub-block: the smallest box of whole
units that no input chunk crosses, e.g. one output chunk when chunks are merged;
numcodecs into the whole block for the rest), encode each output unit, and write the
encoded units a few MiB at a time.  Missing input
chunk files are the fill value, as Zarr says; output units that are all fill value are
not written, nor are empty inner chunks of a shard: zarr-python's default
``write_empty_chunks=False`` (its comparison too: NaN equals NaN, and a chunk of -0.0
under a fill value of 0.0 is stored), with the encoder the array writer uses, so a
conversion and ``lz.save`` of the same data store the same files.

**Where the IO runs** (``io=``).  With ``"auto"`` (the default) a block whose input files
are all on one node, or all on shared storage, is read by its own task, on that node,
through the worker's in-process IO service (:func:`~lsio_ray.ray.pieces.process_io`),
and its units are written the same way when the output is on that node or shared
(else through the output node's IO actor): nothing crosses the object store.  Blocks
whose inputs span nodes, and every block with ``"actors"``, are read by the IO actors
of the nodes holding the files (the coordinator's ordered ObjectRef streams) and
written through the output node's IO actor.

**Memory.**  At most one task per core runs; with ``io="actors"`` at most ``window``
more blocks are being read, their batches in the object store.  A task holds its
block's stored inputs, one sub-block decoded (C path; the whole block on the numcodecs
path) and at most ~8 MiB of encoded units not yet written.  What stays resident is
more: each worker is a Python process with numpy and zarr loaded, and keeps its buffers
and IO engine for the next block (released 3 s after its last); the object store keeps
the pages its objects touched.  The driver reads the metadata and keeps the journal
itself when they are on its node (or shared), so a job whose blocks all do their own IO
starts no IO actor.  Measured on the 2 GiB benchmark job (64 MiB blocks, 2 CPUs), the
node's processes peaked ~180 MiB above an idle Ray cluster with ``io="auto"``, ~700 MiB
with ``io="actors"`` (much of it object store pages; ``scripts/bench-rechunk.py``,
benchmarks/results/rechunk.md).

**Resume.**  Each output unit is written atomically (temp file, rename).  When a block's
units are all written, its number is appended to a journal
(``DST/.lsio-rechunk/done``, 16-byte records carrying a check word, so a torn tail is
ignored).  Run again after an interruption, the job skips the blocks in the journal and
redoes the others whole; encoding is deterministic, so the result is byte-identical to
an uninterrupted run.  The metadata documents are written last, so an unfinished
destination is never mistaken for an array; then the journal is removed.  A destination
that exists and is not an unfinished run of the same job is refused unless
``overwrite=True``.  A destination that is the source, lies inside it or holds it
(symbolic links resolved, links inside the destination tree included) is always refused,
before Ray starts and before anything is removed or written.

**Object storage.**  ``src`` and ``dst`` may each be a local path or an object-storage
URL (``s3://bucket/prefix``, configured with :func:`lsio_ray.io.stores.configure`).
Objects have no node: their blocks are read by their own tasks, spread round-robin
over the nodes; output units are objects written whole (``put_file``) by the tasks;
the journal is one object rewritten whole at each flush (objects are never appended
to); ``overwrite=True`` deletes every object under the destination prefix.  URLs are
compared by store and key prefix (a local path and a URL never overlap).

**Groups.**  On a Zarr group (v2 or v3, nested; a directory or a prefix of object
storage), :func:`rechunk` converts every array (:func:`rechunk_group`, :mod:`.group`):
``chunks`` (and ``shards``) one shape for all or a mapping of array paths to shapes
(``"*"``: the arrays not named), checked whole
before Ray starts (:mod:`.group_plan`, a rule that does not fit an array is refused
naming it); attributes and the hierarchy kept, consolidated metadata written when the
source had it, as zarr-python writes it; one Ray connection and coordinator, the
arrays one after another; resumable array by array, byte-identical.
"""

from __future__ import annotations

from lsio_ray.ray.rechunk.driver import RechunkError, RechunkResult, rechunk_array
from lsio_ray.ray.rechunk.group import GroupRechunkResult, rechunk, rechunk_group
from lsio_ray.ray.rechunk.journal import STATE_DIR
from lsio_ray.ray.rechunk.plan import block_shape, parse_codec

__all__ = [
    "STATE_DIR",
    "GroupRechunkResult",
    "RechunkError",
    "RechunkResult",
    "block_shape",
    "parse_codec",
    "rechunk",
    "rechunk_array",
    "rechunk_group",
]
