"""The one exception type for mistakes a user can make.

The CLI catches :class:`NmrlError`, prints its message on one line and exits non-zero;
anything else is a bug and keeps its traceback.
"""


class NmrlError(Exception):
    """A user-facing error: bad input, a file that is not ours, missing hardware or software."""
