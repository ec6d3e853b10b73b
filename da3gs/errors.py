"""Exception base for errors caused by user input (files, arguments, checkpoints).

The CLI prints these as one line, without a traceback, and exits with status 2.
"""


class Da3gsError(ValueError):
    """Base class of every user-facing error raised by da3gs."""


class ConfigError(Da3gsError):
    """An invalid preset, configuration or option value (unknown name, bad YAML, out of range)."""


class ModelSourceError(Da3gsError):
    """A model source (hub id, folder, checkpoint file) cannot be resolved or read."""


class ModelUnavailableError(ModelSourceError):
    """A hub model is neither in the local cache nor fetchable (offline, or the hub failed)."""
