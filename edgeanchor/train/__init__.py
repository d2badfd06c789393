"""Training and fine-tuning of wrapped detectors (from scratch or after pruning)."""
