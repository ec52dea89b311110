"""The lab's exception types for a user's mistakes: entry points show their message alone, no traceback (utils/cli.py).

UserError is the base; DataError names the bad uid or file, UsageError the bad flag, config key or option. Both are
also ValueErrors, so code that catches ValueError keeps catching them.
"""


class UserError(Exception):
    """A mistake in what the user gave (a flag, a config, a path, a uid, a model name): its message names it and the
    fix, and an entry point shows that message alone (exit status 2)."""


class DataError(UserError, ValueError):
    """Bad input data. The message names the uid or file and what is wrong with it."""

    def __init__(self, where: str, problem: str):
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


class UsageError(UserError, ValueError):
    """A command line or config file that cannot run as given: an unknown flag or key, a bad value, options that
    exclude each other."""
