"""Fixtures the serving tests share with the trainer tests: one intra-op thread (2 shared
cores) and the tiny Qwen2 model."""

from tests.trainer.conftest import one_thread, tiny  # noqa: F401  (pytest collects imported fixtures)
