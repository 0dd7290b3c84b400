"""The one exception type that the CLI turns into a one-line message and exit code 2, and the
one-line form of any other library error."""

INTERRUPTED = 130  # the exit status of a run stopped by Ctrl-C (128 + SIGINT), whenever it comes


class UsageError(ValueError):
    """Bad input from the user: a missing file, an invalid shape, an unsupported model.

    The message must name the problem and the fix in one line; the CLI prints it without a traceback.
    """


def first_line(err: BaseException) -> str:
    """A library's error in one line (transformers' and pandas' messages run to paragraphs)."""
    lines = str(err).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(err).__name__
