"""Evaluation: run a detector over COCO-format data and compute COCO mAP."""
