"""Deployment helpers: a real multi-node Ray cluster on one machine for tests and demos.

The cluster configs for real machines (Ray cluster launcher, KubeRay, Dockerfile) live in
the repository's ``deploy/`` directory; this package holds the Python side,
:mod:`lsio_ray.deploy.local_cluster` (imported on demand, so that ``python -m
lsio_ray.deploy.local_cluster`` runs it cleanly)::

    from lsio_ray.deploy.local_cluster import LocalCluster
"""
