"""The project's error types.

A user mistake (bad path, malformed file, a model and data that do not fit)
raises :class:`EdgeAnchorError`. The CLI prints its message as one line,
``error: ...``, and exits with code 2. A check that ran and failed on valid
input (ONNX parity not holding, a loss that became NaN) raises
:class:`CheckFailed`: one line, ``error: ...``, exit code 1. Bugs raise
ordinary exceptions and show a traceback.

Core messages mark each parameter they name with backticks, as the Python API
spells it (`min_map`, `data`); the CLI renders each marked name as the flag
its subcommand's parser defines for that parameter (``--min-map``, ``--data``).
Unmarked words are prose: a stage called end_to_end or a file report_ann.json
stays as it is.
"""


class EdgeAnchorError(Exception):
    """A mistake in the user's input; the message says what and how to fix it."""


class CheckFailed(Exception):
    """A check on valid input failed (parity, a diverging loss); the message says what was measured."""
