"""Image + label pairs: aligned random crops of two Zarr arrays, fed by Ray Data.

    python examples/image_label.py                # makes a small dataset in a temp dir

Writes a group ``ds.zarr`` holding ``image``, (2, 32, 128, 128) float32 (two channels),
and ``label``, (32, 128, 128) uint8 in other chunks: 1 where channel 0 is bright.
``read_zarr_crops("ds.zarr", crop, count, arrays=["image", "label"])`` reads crops of
both at the same places: each row has an ``image`` column ((2, 8, 48, 48): the crop
covers the last three axes, the channel axis comes whole), a ``label`` column ((8, 48,
48)), and ``lo``, where the crop lies.  The script checks every label crop against its
image crop (the label is computable from the image), and exits non-zero if one differs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import numpy as np

THRESHOLD = 1.0


def make_dataset(path: str, seed: int = 0) -> None:
    """A Zarr v3 group: ``image`` (2 channels of smooth noise) and its ``label``."""
    import zarr

    import lsio_ray.zarr as lz

    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((2, 32, 128, 128)).astype(np.float32)
    image = sum(np.roll(noise, s, axis=a) for a in (1, 2, 3) for s in (-1, 0, 1)) / 3
    label = (image[0] > THRESHOLD).astype(np.uint8)
    zarr.open_group(path, mode="w", zarr_format=3)  # the group's metadata
    lz.save(f"{path}/image", image, chunks=(2, 8, 64, 64))
    lz.save(f"{path}/label", label, chunks=(16, 32, 32), shards=(16, 64, 64))


def main(argv: list[str] | None = None) -> int:
    """Make the dataset, read aligned crops through Ray Data, check them; 0 when all
    label crops match their image crops."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--crops", type=int, default=512)
    p.add_argument("--crop", type=int, nargs=3, default=[8, 48, 48])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", help="where to write ds.zarr (default: a temp dir, removed)")
    p.add_argument("--backend", default=None, choices=["auto", "uring", "pread"])
    args = p.parse_args(argv)
    if args.backend:
        os.environ["LSIO_BACKEND"] = args.backend  # Ray's workers inherit it
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    import lsio_ray.data

    tmp = None if args.dir else tempfile.mkdtemp(prefix="lsio-image-label-")
    path = os.path.join(args.dir or tmp, "ds.zarr")
    try:
        make_dataset(path, args.seed)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = lsio_ray.data.read_zarr_crops(
            path, args.crop, args.crops, arrays=["image", "label"], seed=args.seed
        )
        rows = bad = 0
        for batch in ds.iter_batches(batch_size=64, batch_format="numpy"):
            image, label = batch["image"], batch["label"]
            rows += len(label)
            bad += int((label != (image[:, 0] > THRESHOLD)).any(axis=(1, 2, 3)).sum())
        print(
            f"{rows} aligned crops: image {tuple(image.shape[1:])} {image.dtype} + label "
            f"{tuple(label.shape[1:])} {label.dtype}; {bad} label crops differ from their "
            "image crops"
        )
        ok = rows == args.crops and bad == 0
        print("every label crop matches its image crop" if ok else "MISMATCH")
        return 0 if ok else 1
    finally:
        ray.shutdown()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
