"""Write the notebooks in notebooks/ (outputs cleared) from the cells below.

python scripts/make-notebooks.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parent.parent / "notebooks"

EXPLORE = [
    (
        "md",
        "# Exploring a Zarr array with lsio_ray\n\n"
        "Open an array, see what it is (shape, chunks, shards, codecs, stored size, where it "
        "lives), read regions -- with a progress bar for long reads -- and take a quick look. "
        "The notebook makes its own data in a temporary directory.",
    ),
    (
        "code",
        "import os\n"
        "import tempfile\n\n"
        "import numpy as np\n"
        "import zarr\n\n"
        "import lsio_ray\n"
        "import lsio_ray.zarr as lz\n\n"
        "%matplotlib inline",
    ),
    ("md", "## Some data: a 3-D volume of smooth blobs, sharded Zarr v3"),
    (
        "code",
        "tmp = tempfile.mkdtemp(prefix='lsio-explore-')\n"
        "path = os.path.join(tmp, 'volume.zarr')\n"
        "z, y, x = np.mgrid[0:48, 0:192, 0:192].astype(np.float32)\n"
        "rng = np.random.default_rng(0)\n"
        "vol = np.zeros(z.shape, np.float32)\n"
        "for cz, cy, cx in rng.uniform([0, 0, 0], [48, 192, 192], (12, 3)):\n"
        "    vol += np.exp(-((z - cz) ** 2 / 60 + (y - cy) ** 2 / 300 + (x - cx) ** 2 / 300))\n"
        "vol = (vol / vol.max() * 60000).astype(np.uint16)\n"
        "lz.save(path, vol, chunks=(8, 64, 64), shards=(16, 192, 192))\n"
        "vol.shape, vol.dtype",
    ),
    ("md", "## Open it: the summary tells what it is and where it lives"),
    ("code", "a = lsio_ray.open(path)\na"),
    ("md", "## Read regions (numpy-style keys); long reads show a progress bar"),
    (
        "code",
        "plane = a[24]                       # one z plane\n"
        "patch = a[10:20, 50:150, 60:160]    # a box\n"
        "strided = a[::4, ::8, 100]          # steps and integers work too\n"
        "plane.shape, patch.shape, strided.shape, float(patch.mean())",
    ),
    (
        "code",
        "whole = a.read(..., progress=True)  # the bar advances slab by slab\n"
        "assert np.array_equal(whole, vol)\n"
        "assert np.array_equal(patch, zarr.open(path, mode='r')[10:20, 50:150, 60:160])\n"
        "whole.nbytes",
    ),
    ("md", "## Quick look at a 2-D slice"),
    ("code", "ax = a.quicklook(24)\nax.get_title()"),
    ("md", "## Random crops, as a training loader would take them"),
    (
        "code",
        "crops = list(a.array.random_crops((8, 32, 32), 16, seed=0, prefetch=8))\n"
        "len(crops), crops[0].shape, [round(float(c.mean())) for c in crops[:4]]",
    ),
    ("code", "import shutil\n\nshutil.rmtree(tmp)"),
]

TRAINING = [
    (
        "md",
        "# A Ray Data training pipeline on Zarr crops\n\n"
        "`lsio_ray.data.read_zarr_crops` turns random crops of a Zarr array into a Ray "
        "dataset (rows: `crop`, `index`, `lo`); the crops are planned from the seed alone, "
        "so a run is reproducible whatever the number of read tasks. Here a tiny numpy model "
        "learns to predict each crop's brightness from a 4x4 pooled view of it (no torch "
        "needed). The notebook makes its own data and its own local Ray.",
    ),
    (
        "code",
        "import os\n"
        "import tempfile\n\n"
        "os.environ.setdefault('RAY_AUTH_MODE', 'disabled')\n\n"
        "import numpy as np\n"
        "import ray\n\n"
        "import lsio_ray.data\n"
        "import lsio_ray.zarr as lz\n\n"
        "ray.init(address='local', num_cpus=2, include_dashboard=False, log_to_driver=False)\n"
        "ray.data.DataContext.get_current().enable_progress_bars = False",
    ),
    ("md", "## Data: a noisy volume, sharded Zarr v3"),
    (
        "code",
        "tmp = tempfile.mkdtemp(prefix='lsio-training-')\n"
        "path = os.path.join(tmp, 'train.zarr')\n"
        "rng = np.random.default_rng(0)\n"
        "vol = rng.gamma(2.0, 500.0, (32, 256, 256)).astype(np.float32)\n"
        "lz.save(path, vol, chunks=(8, 64, 64), shards=(16, 128, 128))\n"
        "lz.open(path)",
    ),
    ("md", "## The dataset: 1,024 random 8x32x32 crops"),
    (
        "code",
        "CROP = (8, 32, 32)\n"
        "ds = lsio_ray.data.read_zarr_crops(path, CROP, 1024, seed=42, override_num_blocks=2)\n"
        "ds.schema()",
    ),
    ("md", "## A linear model on pooled crops, trained with SGD from `iter_batches`"),
    (
        "code",
        "def features(crops):\n"
        "    n = crops.shape[0]\n"
        "    pooled = crops.reshape(n, 8, 4, 8, 4, 8).mean(axis=(1, 3, 5))  # 4x4 view\n"
        "    return pooled.reshape(n, -1) / 1000.0\n\n"
        "w = np.zeros(16, np.float64)\n"
        "b = 0.0\n"
        "lr = 0.05\n"
        "losses = []\n"
        "for epoch in range(2):\n"
        "    total, rows = 0.0, 0\n"
        "    for batch in ds.iter_batches(batch_size=128, batch_format='numpy'):\n"
        "        x = features(batch['crop'].astype(np.float64))\n"
        "        y = batch['crop'].mean(axis=(1, 2, 3)) / 1000.0\n"
        "        err = x @ w + b - y\n"
        "        w -= lr * 2 * x.T @ err / len(y)\n"
        "        b -= lr * 2 * err.mean()\n"
        "        total += float((err**2).sum())\n"
        "        rows += len(y)\n"
        "    losses.append(total / rows)\n"
        "    print(f'epoch {epoch}: mean squared error {losses[-1]:.5f} over {rows} crops')\n"
        "assert losses[-1] < losses[0]",
    ),
    ("md", "## The same seed gives the same crops, whatever the parallelism (1 or 3 tasks)"),
    (
        "code",
        "def by_index(d):\n"
        "    rows = {}\n"
        "    for batch in d.iter_batches(batch_size=None, batch_format='numpy'):\n"
        "        for i, lo in zip(batch['index'], batch['lo'], strict=True):\n"
        "            rows[int(i)] = lo.tolist()\n"
        "    return rows\n\n"
        "crops = lsio_ray.data.read_zarr_crops\n"
        "one = by_index(crops(path, CROP, 64, seed=7, override_num_blocks=1))\n"
        "four = by_index(crops(path, CROP, 64, seed=7, override_num_blocks=3))\n"
        "assert one == four\n"
        "len(one)",
    ),
    (
        "md",
        "## Faster, with a stated trade-off: clustered crops\n\n"
        "When the decoder is the bottleneck, `per_cell=16` draws the crops 16 at a time from "
        "one small cell of positions and decodes the cell's chunks once for all 16. Each "
        "crop's position is still uniform over the array, but the 16 crops of a cell are "
        "neighbours: a minibatch of B crops holds about B/16 independent places. On the "
        "2-core benchmark machine this read 3x tensorstore's crop rate through Ray Data "
        "(BENCHMARKS.md). Below: the 16 crops of the first cell start close together.",
    ),
    (
        "code",
        "clustered = by_index(\n"
        "    lsio_ray.data.read_zarr_crops(\n"
        "        path, CROP, 64, seed=7, override_num_blocks=2, per_cell=16\n"
        "    )\n"
        ")\n"
        "first = np.array([clustered[i] for i in range(16)])\n"
        "spread = first.max(axis=0) - first.min(axis=0)\n"
        "cell = np.maximum(CROP, lz.open(path).chunks)  # the default cell\n"
        "assert len(clustered) == 64 and (spread < cell).all()\n"
        "spread",
    ),
    ("code", "import shutil\n\nray.shutdown()\nshutil.rmtree(tmp)"),
]

RECHUNK = [
    (
        "md",
        "# Re-chunking on a local Ray cluster\n\n"
        "`lsio_ray.rechunk` cuts the array in blocks, one Ray task each: the task reads the "
        "block's input files on the node that holds them, decodes, re-encodes and writes "
        "the new chunks (or shards) -- itself when the output is on its node, else through "
        "the IO actor of the node that owns the output -- resumably. Here: time-major chunks "
        "of a (t, y, x) stack become pixel-major chunks (long time series per chunk). The "
        "notebook makes its own data and its own local Ray.",
    ),
    (
        "code",
        "import os\n"
        "import tempfile\n\n"
        "os.environ.setdefault('RAY_AUTH_MODE', 'disabled')\n\n"
        "import numpy as np\n"
        "import ray\n\n"
        "import lsio_ray\n"
        "import lsio_ray.zarr as lz\n\n"
        "ray.init(address='local', num_cpus=2, include_dashboard=False, log_to_driver=False)",
    ),
    (
        "code",
        "tmp = tempfile.mkdtemp(prefix='lsio-rechunk-')\n"
        "src = os.path.join(tmp, 'frames.zarr')\n"
        "dst = os.path.join(tmp, 'pixels.zarr')\n"
        "rng = np.random.default_rng(0)\n"
        "stack = rng.integers(0, 4096, (64, 128, 128), dtype=np.uint16)\n"
        "lz.save(src, stack, chunks=(1, 128, 128))\n"
        "lsio_ray.open(src)",
    ),
    ("md", "## Re-chunk, with a progress bar"),
    (
        "code",
        "result = lsio_ray.rechunk(\n"
        "    src, dst, chunks=(64, 16, 16), shards=(64, 64, 64),\n"
        "    block_bytes=1 << 20, progress=True,\n"
        ")\n"
        "result",
    ),
    ("md", "## Check the result"),
    (
        "code",
        "out = lsio_ray.open(dst)\n"
        "assert out.chunks == (64, 16, 16) and out.shards == (64, 64, 64)\n"
        "assert np.array_equal(out[...], stack)\n"
        "series = out[:, 40, 77]  # one pixel's time series: a single chunk read\n"
        "assert np.array_equal(series, stack[:, 40, 77])\n"
        "out",
    ),
    ("code", "import shutil\n\nray.shutdown()\nshutil.rmtree(tmp)"),
]


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A notebook of the given (kind, source) cells, with no outputs."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, src) in enumerate(cells):
        cell = new_markdown_cell(src) if kind == "md" else new_code_cell(src)
        cell["id"] = f"cell-{i}"
        nb.cells.append(cell)
    return nb


def main() -> None:
    """Write the three notebooks."""
    OUT.mkdir(exist_ok=True)
    for name, cells in [("explore", EXPLORE), ("training", TRAINING), ("rechunk", RECHUNK)]:
        nbformat.write(build(cells), OUT / f"{name}.ipynb")


if __name__ == "__main__":
    main()
