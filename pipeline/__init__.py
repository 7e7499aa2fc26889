"""Experiment orchestration pipeline for Ultralytics YOLO detectors (see README.md)."""

__version__ = "0.1.0"
