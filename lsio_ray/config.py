"""The engine settings; they live in :mod:`lsio_ray.io.config` (this name stays for users:
``from lsio_ray import config`` and ``import lsio_ray.config`` give that same module)."""

import sys

from lsio_ray.io import config as _config

sys.modules[__name__] = _config
