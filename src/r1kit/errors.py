"""User-facing errors.

Anything a user can cause (a missing file, a corrupt checkpoint, an unsupported architecture) raises
`R1kitError` with a one-line message naming the file and the problem. The CLI prints that line and exits
non-zero without a traceback; library callers can catch it. It subclasses ValueError so callers that
validate input with `except ValueError` keep working.
"""


class R1kitError(ValueError):
    """A problem with the user's input, described in one line."""


def file_error(path, problem: str) -> R1kitError:
    """`R1kitError("<path>: <problem>")`, the one format every file error uses."""
    return R1kitError(f"{path}: {problem}")
