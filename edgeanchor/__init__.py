"""edgeanchor: anchor pruning for one-stage anchor-based detectors, for the edge."""

__version__ = "0.1.0"
