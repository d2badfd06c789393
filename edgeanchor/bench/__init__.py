"""Per-stage latency: backbone, head, postprocess (decode + NMS) and end to end, baseline against pruned."""
