"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class UsageError(ValueError):
    """Bad input from the user: a missing file, an invalid shape, an unsupported model.

    The message must name the problem and the fix in one line; the CLI prints it without a traceback.
    """
