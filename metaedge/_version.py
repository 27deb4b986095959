"""The one place metaedge's version is written: pyproject.toml reads it (dynamic version), ``metaedge.__version__``
re-exports it, bundles and galleries record it. Bump it together with a CHANGELOG.md entry."""
__version__ = "0.1.0"
