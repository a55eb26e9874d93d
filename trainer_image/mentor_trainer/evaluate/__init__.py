"""The `mentor-trainer evaluate` stage: suites, comparison, gates, report."""
