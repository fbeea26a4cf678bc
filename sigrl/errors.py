"""The error type for mistakes a user can fix (a bad flag value, a wrong file, no server at an address).

It subclasses :class:`ValueError`, so code that catches ``ValueError`` keeps working; the ``sigrl``
command prints it as one line on stderr and exits with status 2. Messages name the flag or file and
say what to do.
"""


class UsageError(ValueError):
    """A mistake in what the user asked for; the message names it and what to do instead."""
