"""The package version: the one source (pyproject.toml reads it; the facade re-exports it)."""

__version__ = "0.1.0"
