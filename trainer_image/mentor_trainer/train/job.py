"""One prepared training run (sft or rlhf): the trainer and what the result and the model card report about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any



@dataclass
class Job:
    config: Any  # SftStageConfig | RLHFStageConfig
    device: str
    precision: str
    trainer: Any
    model: Any
    tokenizer: Any
    checkpoint_dir: Path
    resume_from: str | None
    train_examples: int
    eval_examples: int
    dataset_hash: str | None
    base_uri: str
    notes: dict = field(default_factory=dict)  # extra result.json fields: trained blocks, parameter counts, best checkpoint
    stage: str = "sft"  # the mentor-trainer stage, named in the model card
    card_lines: list[str] = field(default_factory=list)  # the model card's description of the data and method
    model_files: dict[str, str] = field(default_factory=dict)  # extra files (name -> text) written beside the weights
