"""The package version: one source, read by ``pyproject.toml`` (setuptools ``attr:``),
``ctxcompress.__version__``, saved compressors and the service."""

__version__ = "0.1.0"
