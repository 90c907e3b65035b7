"""``python -m lsio_ray.deploy.local_cluster {up,status,down}``: runs the command line."""

from __future__ import annotations

import sys

from lsio_ray.deploy.local_cluster.cli import main

if __name__ == "__main__":
    sys.exit(main())
