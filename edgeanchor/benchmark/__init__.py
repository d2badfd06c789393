"""Measuring an export on the target: per-stage latency, baseline against pruned, and the deployed graph's
mAP (torch-free except the eager PyTorch runner)."""
