"""The ground floor: the only code that talks to the C core.

* :mod:`lsio_ray.io._core` -- the binding (``RawEngine``, the request/completion/decode
  array layouts, error codes);
* :mod:`lsio_ray.io.ops` -- the user's vocabulary (byte ranges, operations, op groups);
* :mod:`lsio_ray.io.config` -- every setting and environment variable;
* :mod:`lsio_ray.io.service` -- the one IO service per process: one thread owns submit,
  reap and cancel of one engine; tasks plug into it; it runs the decode pool;
* :mod:`lsio_ray.io.ordered` -- ordered delivery of op groups, with the one deadlock
  breaker, used by :class:`lsio_ray.Engine` and the Ray IO actor.

Everything above (the ``Engine`` facade, the Zarr reader and writer, the IO actor, Ray
tasks, Ray Data read tasks, the conversion job) is an adapter over these.
"""
