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

import re

_TERMINAL_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# a line that only says where in a library's C++ source the error was raised (OpenVINO stacks several)
_SOURCE_LOCATION = re.compile(r"(Exception from )?\S+\.(c|cc|cpp|h|hpp):\d+:?")


class EdgeAnchorError(Exception):
    """A mistake in the user's input; the message says what and how to fix it."""


class CheckFailed(Exception):
    """A check on valid input failed (parity, a diverging loss); the message says what was measured."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of a library's exception text, for quoting inside one of our lines.

    Terminal escapes are removed (torch colours its advice), lines that only name a C++ source location
    are skipped, and a line longer than ``limit`` is cut at a word boundary with "..." rather than
    mid-word. An exception without text gives its type's name.
    """
    text = _TERMINAL_ESCAPE.sub("", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = next((ln for ln in lines if not _SOURCE_LOCATION.fullmatch(ln)), lines[0] if lines else type(exc).__name__)
    if len(line) <= limit:
        return line
    cut = line[:limit + 1].rsplit(" ", 1)[0].rstrip(" ,;:")  # + 1: a word that ends at the limit stays whole
    return f"{cut}..."


# One wording wherever a fine-tune of an ONNX source is asked for (docs/onnx-head-spec.md, "Fine-tuning").
ONNX_NOT_TRAINABLE = ("ONNX models are pruned without retraining (their backbone runs in ONNX Runtime, not as "
                      "trainable modules)")
ONNX_NO_FINETUNE = f"{ONNX_NOT_TRAINABLE}; drop `finetune_epochs`"
# A model loaded as onnx:PATH is saved as its own graph, pruned (api.save, edgeanchor prune).
ONNX_OUT = ("an ONNX model is saved as its own graph, pruned: give `out` as PATH.onnx (its head spec and priors are "
            "written beside it)")
