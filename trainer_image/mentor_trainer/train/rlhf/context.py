"""What an algorithm's builder gets from the rlhf stage, and what it gives back.

Each algorithm module (preference, grpo, ppo, reward_model, distill) has one entry point,
``build(run: RlhfRun) -> Built``: it reads its data, builds its TRL trainer from
``run.arguments(...)`` and ``run.callbacks``, and says what it trained on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config.rlhf import RLHFStageConfig
from ...errors import StageError
from ..arguments import training_arguments
from ..methods import apply_lora


@dataclass
class Built:
    trainer: Any  # a transformers/TRL Trainer
    train_examples: int
    eval_examples: int = 0
    # result.json fields: parameter counts, skipped inputs by reason, the reward terms ...
    notes: dict = field(default_factory=dict)
    card_lines: list[str] = field(default_factory=list)  # model card lines on the data and the algorithm
    model_files: dict[str, str] = field(default_factory=dict)  # extra files beside the published weights


@dataclass
class RlhfRun:
    config: RLHFStageConfig
    device: str
    precision: str
    dtype: Any  # torch dtype of the weights
    tokenizer: Any  # the policy's tokenizer (pad token set)
    checkpoint_dir: Path
    callbacks: list  # the stage's TrainerCallbacks (NaN guard, checkpoints, progress); pass them all

    def load(self, uri: str, purpose: str, **kwargs):
        """A model from ``uri`` in the run's dtype (``purpose`` names it in errors: "policy",
        "reference model", "teacher model", "reward model"); kwargs go to
        :func:`mentor_trainer.models.load_model_and_tokenizer` (model_class, model_kwargs)."""
        from ...models import load_model_and_tokenizer

        return load_model_and_tokenizer(
            uri, trust_remote_code=self.config.trust_remote_code, dtype=self.dtype, purpose=purpose, **kwargs
        ).model

    def policy(self, task_type: str = "CAUSAL_LM", **kwargs):
        """The model to train, loaded from policy_model (kwargs as :meth:`load`), with LoRA
        adapters of PEFT ``task_type`` (SEQ_CLS for a reward model) when method is lora."""
        return self.trainable(self.load(self.config.policy_model, "policy", **kwargs), task_type)

    def trainable(self, model, task_type: str = "CAUSAL_LM"):
        """``model`` with spec.method applied (adapters for lora; everything trains for full)."""
        if self.config.method == "lora":
            return apply_lora(model, self.config, use_dora=False, task_type=task_type)
        return model

    def frozen(self, uri: str, purpose: str, **kwargs):
        """A model that only scores (reference, teacher, reward model): eval mode, no gradients."""
        model = self.load(uri, purpose, **kwargs)
        model.eval()
        model.requires_grad_(False)
        return model

    def arguments(self, config_class, **specific):
        """A TRL config (``config_class``, e.g. trl.DPOConfig) of the shared settings, then the
        algorithm's ``specific`` ones, then spec.extra (the user's last word). An argument the
        TRL config does not take is a clear error naming spec.extra."""
        kwargs = {**training_arguments(self.config, self.checkpoint_dir, self.precision, self.device), **specific}
        unknown = sorted(set(self.config.extra) - set(config_class.__dataclass_fields__))
        if unknown:
            raise StageError(f"spec.extra has {unknown}, which {config_class.__name__} (TRL) does not take")
        return config_class(**{**kwargs, **self.config.extra})
