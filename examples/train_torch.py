"""Train a small PyTorch model on random crops of a Zarr array, fed by Ray Data.

    python examples/train_torch.py                    # makes its own data in a temp dir
    python examples/train_torch.py --path vol.zarr --crop 8 32 32 --crops 4096

``lsio_ray.data.read_zarr_crops`` plans the crops from the seed and reads them through
the lsio engine in Ray read tasks; ``iter_torch_batches`` hands them to the training
loop as float tensors.  The model (a 3-D convolution, pooling, a linear head) learns to
predict each crop's mean brightness -- a task it can learn quickly, so the loss must
fall: the script checks that and exits non-zero if it does not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

import numpy as np


def make_volume(path: str, shape: tuple[int, ...], seed: int = 0) -> None:
    """A noisy (z, y, x) volume saved as sharded Zarr v3."""
    import lsio_ray.zarr as lz

    rng = np.random.default_rng(seed)
    vol = rng.gamma(2.0, 500.0, shape).astype(np.float32)
    lz.save(path, vol, chunks=(8, 64, 64), shards=(16, 128, 128))


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, report; 0 when the loss fell."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--path", help="a Zarr array (default: make one in a temp dir)")
    p.add_argument("--crop", type=int, nargs="+", default=[8, 32, 32])
    p.add_argument("--crops", type=int, default=1024, help="crops per epoch")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parallelism", type=int, default=2, help="Ray Data read tasks")
    args = p.parse_args(argv)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    import lsio_ray.data

    tmp = None
    path = args.path
    if path is None:
        tmp = tempfile.mkdtemp(prefix="lsio-torch-")
        path = os.path.join(tmp, "train.zarr")
        make_volume(path, (32, 256, 256), args.seed)
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    torch.manual_seed(args.seed)
    model = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, kernel_size=3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool3d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 1),
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses: list[float] = []
    try:
        for epoch in range(args.epochs):
            ds = lsio_ray.data.read_zarr_crops(
                path,
                args.crop,
                args.crops,
                seed=args.seed + epoch,
                override_num_blocks=args.parallelism,
            )
            total, rows = 0.0, 0
            dtypes = {"crop": torch.float32, "index": torch.int64, "lo": torch.int64}
            for batch in ds.iter_torch_batches(batch_size=args.batch, dtypes=dtypes):
                x = batch["crop"].unsqueeze(1) / 1000.0  # (n, 1, z, y, x)
                y = x.mean(dim=(1, 2, 3, 4)).unsqueeze(1)
                loss = torch.nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss) * len(x)
                rows += len(x)
            losses.append(total / max(1, rows))
            print(f"epoch {epoch}: {rows} crops, mean squared error {losses[-1]:.5f}")
    finally:
        ray.shutdown()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    ok = len(losses) >= 2 and losses[-1] < losses[0]
    print(f"loss {losses[0]:.5f} -> {losses[-1]:.5f}: {'learned' if ok else 'did NOT learn'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
