"""An ONNX detector's graph: read it, find its head, cut it, prune it (torch-free).

The one import point for the rest of edgeanchor; the work is split by job:

- :mod:`.onnx_file`: reading an untrusted file (:func:`load_onnx`), fixing the input size, shapes and MACs;
- :mod:`.head_match`: the head convolutions found from the spec (:func:`find_head`), and the rows a keep
  set keeps (:func:`kept_rows`);
- :mod:`.surgery`: the backbone and head cut out, and the user's own graph pruned (:func:`prune_graph`).
"""

from .head_match import HeadConv, HeadMatch, find_head, kept_rows
from .onnx_file import conv_macs, fix_input_size, load_onnx
from .surgery import cut_backbone, cut_head, prune_graph

__all__ = ["HeadConv", "HeadMatch", "conv_macs", "cut_backbone", "cut_head", "find_head", "fix_input_size",
           "kept_rows", "load_onnx", "prune_graph"]
