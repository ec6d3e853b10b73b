"""User-facing input errors."""

from __future__ import annotations

from da3gs.errors import Da3gsError


class InputError(Da3gsError):
    """Bad user input (file, folder or argument).

    The message is a single line that names the offending file or argument
    and says what is wrong, e.g. ``"photos/a.jpg: truncated or corrupt image"``.
    """
