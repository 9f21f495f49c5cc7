"""The one base class of every error a user can fix: the CLI prints its message and exits 1.

It lives in a leaf module that imports nothing, so `hone` can catch every such error without importing
the (heavy) modules that raise them.
"""


class HoneError(Exception):
    """A problem with the user's config, data, model, cluster or run dir; the message says where and how to fix it."""


class DataError(HoneError, ValueError):
    """A data problem the user must fix; the message names the file, the row and the fix."""
