"""Anchor-subset search: cost models, strategies, the Pareto front."""
