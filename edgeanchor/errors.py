"""The project's error type for user mistakes.

A user mistake (bad path, malformed file, a model and data that do not fit)
raises :class:`EdgeAnchorError`. The CLI prints its message as one line,
``error: ...``, and exits with code 2. Bugs raise ordinary exceptions.
"""


class EdgeAnchorError(Exception):
    """A mistake in the user's input; the message says what and how to fix it."""
