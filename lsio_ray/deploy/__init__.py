"""Deployment helpers: a real multi-node Ray cluster on one machine for tests and demos.

The cluster configs for real machines (Ray cluster launcher, KubeRay, Dockerfile) live in
the repository's ``deploy/`` directory; this package holds the Python side,
the subpackage :mod:`lsio_ray.deploy.local_cluster` (imported on demand; ``python -m
lsio_ray.deploy.local_cluster`` runs its command line)::

    from lsio_ray.deploy.local_cluster import LocalCluster
"""
