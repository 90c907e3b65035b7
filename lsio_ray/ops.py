"""The operation vocabulary; it lives in :mod:`lsio_ray.io.ops` (this name stays for users:
``import lsio_ray.ops`` gives that same module)."""

import sys

from lsio_ray.io import ops as _ops

sys.modules[__name__] = _ops
