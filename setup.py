"""Only here to hand cffi_modules to setuptools (cffi has no pyproject-only hook)."""

from setuptools import setup

setup(cffi_modules=["lsio_ray/_build.py:make_builder"])
