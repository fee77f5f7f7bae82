"""A shim for Dataflow's ``--setup_file``: everything about the package lives in pyproject.toml.

Beam stages the project for the workers by building an sdist from the folder of this file
(``python -m build --sdist`` when ``build`` is installed, else ``python setup.py sdist``); setuptools
reads the name, version, dependencies, packages and package data from ``[project]`` and
``[tool.setuptools]`` in pyproject.toml, so there is one list of dependencies (docs/operations.md,
"Dataflow").
"""

from setuptools import setup

setup()
