"""The one error type rlhfkit raises for what a user can fix: a bad option, file, record or request. The command
line prints it as one line; any other exception is a bug and keeps its traceback."""


class UsageError(ValueError):
    """Something the user asked for that cannot be done, said so that they can fix it."""
