"""Config of `mentor-trainer rlhf`: preference and reinforcement learning with TRL."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .common import CelRule, Endpoint, Hyperparameters, LoraConfig, ModelUri, PositiveInt, Spec, StageRuntime, StorageUri
from .sft import Distributed

Algorithm = Literal["dpo", "orpo", "kto", "grpo", "ppo", "reward-model"]


class RewardFunction(Spec):
    """One term of the reward for GRPO/PPO; the total is the weighted sum."""

    name: Literal["format", "accuracy", "length", "keywords", "judge"] = Field(
        description="format: well-formed <think> block; accuracy: matches the reference answer; length: near a target length; keywords: domain terms present; judge: score from an LLM judge."
    )
    weight: float = Field(default=1.0, description="Weight of this term.")
    params: dict[str, str] = Field(default_factory=dict, description="Term-specific parameters (e.g. targetLength).")
    judge: Endpoint | None = Field(default=None, description="Judge endpoint for the judge term.")


class Generation(Spec):
    """Sampling used for online algorithms (GRPO, PPO)."""

    num_generations: PositiveInt = Field(default=4, le=64, description="Completions sampled per prompt.")
    max_new_tokens: PositiveInt = Field(default=256, description="Tokens generated per completion.")
    temperature: float = Field(default=0.9, gt=0, le=2, description="Sampling temperature.")


class RLHFOptions(Spec):
    """Everything a user declares about preference / RL training."""

    cel_rules = (
        CelRule(
            rule="!(self.algorithm in ['grpo', 'ppo']) || size(self.rewardFunctions) > 0 || has(self.rewardModel)",
            message="grpo and ppo need rewardFunctions or a rewardModel",
            field_path=".rewardFunctions",
        ),
        CelRule(
            rule="self.method != 'lora' || has(self.lora)",
            message="method lora needs a lora block",
            field_path=".lora",
        ),
    )

    algorithm: Algorithm = Field(description="dpo, orpo, kto, grpo, ppo or reward-model (trains a reward model).")
    method: Literal["lora", "full"] = Field(default="lora", description="Train adapters or all weights.")
    lora: LoraConfig | None = Field(default_factory=LoraConfig, description="Adapter settings when method is lora.")
    beta: float = Field(default=0.1, gt=0, description="Strength of the KL / preference term.")
    reward_functions: list[RewardFunction] = Field(
        default_factory=list, max_length=16, description="Reward terms for grpo/ppo."
    )
    reward_model: ModelUri | None = Field(default=None, description="Trained reward model for ppo/grpo.")
    reference_model: ModelUri | None = Field(
        default=None, description="Frozen reference model (defaults to the policy's starting point)."
    )
    generation: Generation = Field(default_factory=Generation, description="Sampling for online algorithms.")
    hyperparameters: Hyperparameters = Field(
        default_factory=lambda: Hyperparameters(learning_rate=5e-6, epochs=1),
        description="Optimisation settings.",
    )
    distributed: Distributed = Field(default_factory=Distributed, description="Multi-GPU / multi-node layout.")
    extra: dict[str, Any] = Field(
        default_factory=dict,
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
        description="Further TRL trainer arguments passed through unchanged.",
    )


class RLHFStageConfig(StageRuntime, RLHFOptions):
    """The rendered config `mentor-trainer rlhf` reads."""

    policy_model: ModelUri = Field(description="Model the policy starts from.")
    dataset_uri: StorageUri = Field(description="Output URI of the DomainDataset with prompts / preference pairs.")
