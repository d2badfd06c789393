"""Detector adapters: every supported model as three stages plus an anchor set."""

from .base import Detector
from .registry import ARCHS, build_detector, load_checkpoint, model_names, save_checkpoint

__all__ = ["ARCHS", "Detector", "build_detector", "load_checkpoint", "model_names", "save_checkpoint"]
