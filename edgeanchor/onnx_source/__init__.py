"""Detectors held only as ONNX: a head spec (preset or file), the head found in the graph, surgery.

- :mod:`.spec`: the head spec schema, its presets, and the anchors and priors it implies (torch-free).
- :mod:`.graph`: reading an untrusted ONNX file, finding the head convolutions, cutting the backbone, and
  pruning the user's own graph (torch-free).
- :mod:`.detector`: the three stages over an ONNX graph (ONNX Runtime backbone, the head convolutions as
  modules), so that cache, search, slicing and export work as for every model.
"""
