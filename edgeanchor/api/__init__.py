"""The public Python API (``import edgeanchor as ea``), one module per concern.

- :mod:`.loading`: :func:`load`, :func:`wrap`, :func:`inspect`;
- :mod:`.data`: :func:`data` and :class:`Data`;
- :mod:`.workflow`: :func:`evaluate`, :func:`search`, :func:`prune`, :func:`save`, :func:`finetune`;
- :mod:`.deploy`: :func:`export`, :func:`bench`, :func:`prune_and_export`;
- :mod:`.gate`: :func:`regress` (the CI gate; torch-free on an export folder);
- :mod:`.synth`: :func:`synth` (the synthetic data set);
- :mod:`.results`: :class:`SearchResult`, :class:`FrontPoint`, :class:`BenchResult`.

Beside the public names (``edgeanchor.__all__``), the CLI uses a few helpers from here
(:func:`check_save_path`, :func:`check_search_settings`, :func:`check_evaluate_settings`,
:func:`anchors_path_of`, :func:`default_out`), and the steps after those checks
(:func:`~.workflow.search_with_options`, :func:`~.workflow.evaluate_checked`), so a command checks each
setting once.

Importing these modules is light (no torch): each function imports what it needs when called. The CLI
is a thin layer over them.
"""

from .data import Data, data
from .deploy import bench, default_out, export, prune_and_export
from .gate import regress
from .loading import inspect, load, wrap
from .results import BenchResult, FrontPoint, SearchResult
from .synth import synth
from .workflow import (
                       anchors_path_of,
                       check_evaluate_settings,
                       check_save_path,
                       check_search_settings,
                       evaluate,
                       finetune,
                       prune,
                       save,
                       search,
)

__all__ = ["BenchResult", "Data", "FrontPoint", "SearchResult", "bench", "data", "evaluate", "export", "finetune",
           "inspect", "load", "prune", "prune_and_export", "regress", "save", "search", "synth", "wrap"]
