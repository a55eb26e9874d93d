"""Fixtures the trainer tests share: one torch thread and the tiny Qwen2 model."""

from __future__ import annotations

from pathlib import Path

import pytest

from mentor_trainer.models import build_tiny_model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # 2 shared cores: one intra-op thread is several times faster than two fighting
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
