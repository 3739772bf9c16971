"""The one exception type for mistakes a user can make.

The CLI catches :class:`NmrlError`, prints its message on one line and exits with its
``exit_code`` (1 unless a subclass says otherwise); anything else is a bug and keeps its traceback.
"""


class NmrlError(Exception):
    """A user-facing error: bad input, a file that is not ours, missing hardware or software."""

    exit_code: int = 1


class Interrupted(NmrlError):
    """The user stopped the work with a signal after nmrl saved what it had.

    The exit code is the shell's convention, 128 + the signal number (130 for SIGINT, 143 for
    SIGTERM), so ``nmrl train && nmrl export`` does not carry on after an interrupt.
    """

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number


def gist(error: BaseException, lines: int = 2, limit: int = 300) -> str:
    """The first ``lines`` non-empty lines of a library error on one line (torch's state-dict errors
    run to dozens of lines), or its type name when it has no message."""
    text = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return " ".join(text[:lines])[:limit] or type(error).__name__


def printable(text: object, limit: int | None = 300) -> str:
    """``text`` from a file (metadata, tensor names, an env id) safe to print: every character that
    is not printable (escape codes, newlines, carriage returns, bidi controls) written as Python's
    repr writes it (``\\x1b``, ``\\n``), as error messages show such values with ``{value!r}``;
    cut to ``limit`` characters (None: whole). A file can then neither draw over the terminal nor add lines."""
    shown = "".join(char if char.isprintable() else repr(char)[1:-1] for char in str(text))
    return shown if limit is None or len(shown) <= limit else shown[: limit - 3] + "..."
