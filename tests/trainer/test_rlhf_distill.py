"""`mentor-trainer rlhf` with algorithm distill (TRL's GKD): the tiny student moves towards a
teacher of the same family (the tiny model with other random weights) on held-out answers, and a
teacher with another vocabulary is a clear error naming teacherModel."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from mentor_trainer.config.rlhf import RLHFStageConfig
from mentor_trainer.errors import StageError
from mentor_trainer.tiny_model import build_tiny_model

from .rlhf_config import rlhf_config, run


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """The tiny model's tokenizer with other random weights: a teacher whose distributions differ."""
    return build_tiny_model(tmp_path_factory.mktemp("teacher") / "model", seed=1)


def make_config(tiny: Path, teacher: Path, dataset: Path, out_dir: Path, **options) -> RLHFStageConfig:
    defaults = {
        "name": "tea-distilled",
        "teacherModel": teacher.as_uri(),
        "algorithm": "distill",
        "method": "full",
        "distillation": {"divergence": 0.5, "onPolicyFraction": 0.0},
    }
    return rlhf_config(tiny, dataset, out_dir, **{**defaults, **options})


def test_distillation_lowers_the_held_out_divergence(tiny, teacher, dataset, tmp_path):
    config = make_config(tiny, teacher, dataset, tmp_path / "out")
    metrics = run(config).metrics
    print(f"held-out JSD to the teacher {metrics['base_eval_loss']:.4f} -> {metrics['eval_loss']:.4f}")
    # the generalized JSD on the validation answers; the rest is what a random teacher does not generalise
    assert metrics["eval_loss"] < 0.6 * metrics["base_eval_loss"], metrics
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["teacherModel"] == teacher.as_uri() and result["distillation"]["divergence"] == 0.5
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()


def test_teacher_with_another_vocabulary_is_a_clear_error(tiny, dataset, tmp_path):
    other = build_tiny_model(tmp_path / "other", vocab_size=2048)
    config = make_config(tiny, other, dataset, tmp_path / "out")
    with pytest.raises(StageError, match=r"spec\.teacherModel .* another tokenizer vocabulary"):
        run(config)
