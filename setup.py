"""setuptools reads everything from pyproject.toml; cffi_modules is a setup() keyword that
cffi adds, so it is the one thing said here: build refattn._native with build.py."""

from setuptools import setup

setup(cffi_modules=["build.py:ffibuilder"])
