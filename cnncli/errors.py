"""The one exception type for errors a user can cause.

The CLI catches `CnnError` and prints its message as one line with a non-zero exit code;
anything else is a bug and keeps its traceback.
"""


class CnnError(Exception):
    """An error the user can fix (missing file, unknown name, offline download, ...)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
