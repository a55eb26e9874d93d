"""The `mentor-trainer evaluate` stage: suites, comparison, gates, report."""

from .stage import main

__all__ = ["main"]
