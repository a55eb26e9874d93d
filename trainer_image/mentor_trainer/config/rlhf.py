"""Config of `mentor-trainer rlhf`: preference and reinforcement learning with TRL."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .common import CelRule, Endpoint, Fraction, Hyperparameters, LoraConfig, ModelUri, PositiveInt, Spec, StageRuntime, StorageUri
from .sft import Checkpointing, Distributed, ModelOutput

Algorithm = Literal["dpo", "orpo", "kto", "grpo", "ppo", "reward-model", "distill"]
PREFERENCE_ALGORITHMS = ("dpo", "orpo", "kto")
ONLINE_ALGORITHMS = ("grpo", "ppo")
RewardName = Literal["format", "accuracy", "length", "keywords", "judge", "reward-model"]


class RewardFunction(Spec):
    """One term of the reward for GRPO/PPO; the total is the weighted sum."""

    cel_rules = (
        CelRule(rule="self.name != 'judge' || has(self.judge)", message="the judge reward needs a judge endpoint", field_path=".judge"),
    )

    name: RewardName = Field(
        description=(
            "format: a well-formed <think>...</think> block then an answer; accuracy: the answer matches the "
            "dataset's reference answer (params.match: exact, numeric or f1); length: near params.targetTokens; "
            "keywords: params.keywords (comma-separated) present; judge: score from an LLM judge; "
            "reward-model: the trained reward model in spec.rewardModel."
        )
    )
    weight: float = Field(default=1.0, description="Weight of this term.")
    params: dict[str, str] = Field(default_factory=dict, description="Term-specific parameters (e.g. targetTokens, match).")
    judge: Endpoint | None = Field(default=None, description="Judge endpoint for the judge term.")


class Generation(Spec):
    """Sampling used for online algorithms (GRPO, PPO, on-policy distillation)."""

    num_generations: int = Field(default=4, ge=2, le=64, description="Completions sampled per prompt (a group).")
    max_new_tokens: PositiveInt = Field(default=256, description="Tokens generated per completion.")
    temperature: float = Field(default=0.9, gt=0, le=2, description="Sampling temperature.")


class RewardHeads(Spec):
    """The reward model's two heads on one backbone (the design notes' reward model): the
    reward is quality x qualityWeight + safety x safetyWeight."""

    quality_weight: float = Field(default=0.7, ge=0, description="Weight of the quality head (trained on preference pairs).")
    safety_weight: float = Field(
        default=0.3, ge=0, description="Weight of the safety head (trained on the pairs' chosenSafe/rejectedSafe labels)."
    )


class Distillation(Spec):
    """Knowledge distillation from spec.teacherModel to the policy (TRL's GKD)."""

    temperature: float = Field(default=1.0, gt=0, le=10, description="Softmax temperature of both models' token distributions.")
    divergence: Fraction = Field(
        default=0.5, description="0: forward KL (student covers the teacher), 1: reverse KL (mode seeking), 0.5: JSD."
    )
    on_policy_fraction: Fraction = Field(
        default=0.5, description="Share of batches on the student's own samples; the rest on the dataset's answers (soft labels)."
    )


class Ppo(Spec):
    """PPO's clipped policy update and its value head (a learned baseline of the reward)."""

    clip_range: float = Field(default=0.2, gt=0, le=1, description="Clip of the policy ratio (epsilon).")
    value_loss_coefficient: float = Field(default=0.5, gt=0, description="Weight of the value head's squared error in the loss.")
    updates_per_batch: PositiveInt = Field(default=2, le=16, description="Optimisation passes over each generated batch.")


def model_source_rules(reward_model: str, teacher: str) -> tuple[CelRule, ...]:
    """Rules on where the reward model and the teacher come from; ``reward_model`` and
    ``teacher`` are the CEL tests for "given" (a URI, or also a reference on the resource)."""
    return (
        CelRule(
            rule=f"!(self.algorithm in ['grpo', 'ppo']) || size(self.rewardFunctions) > 0 || {reward_model}",
            message="grpo and ppo need rewardFunctions or a reward model",
            field_path=".rewardFunctions",
        ),
        CelRule(
            rule=f"!self.rewardFunctions.exists(f, f.name == 'reward-model') || {reward_model}",
            message="the reward-model reward function needs a reward model (rewardModel)",
            field_path=".rewardFunctions",
        ),
        CelRule(
            rule=f"self.algorithm != 'distill' || {teacher}",
            message="algorithm distill needs a teacher model (teacherModel)",
            field_path=".algorithm",
        ),
    )


class RLHFOptions(Spec):
    """Everything a user declares about preference / RL training."""

    cel_rules = (
        CelRule(
            rule="self.method != 'lora' || has(self.lora)",
            message="method lora needs a lora block",
            field_path=".lora",
        ),
        CelRule(
            rule=(
                "!(self.algorithm in ['grpo', 'ppo']) || (self.hyperparameters.perDeviceBatchSize "
                "* self.hyperparameters.gradientAccumulationSteps) % self.generation.numGenerations == 0"
            ),
            message="grpo and ppo sample whole groups: perDeviceBatchSize x gradientAccumulationSteps must be a multiple of generation.numGenerations",
            field_path=".generation.numGenerations",
        ),
        CelRule(
            rule="self.algorithm != 'orpo' || !has(self.referenceModel)",
            message="orpo uses no reference model",
            field_path=".referenceModel",
        ),
        CelRule(
            rule="self.algorithm == 'distill' || !has(self.teacherModel)",
            message="teacherModel is used by algorithm distill only",
            field_path=".teacherModel",
        ),
        CelRule(
            rule="self.rewardHeads.qualityWeight + self.rewardHeads.safetyWeight > 0.0",
            message="rewardHeads needs a positive weight",
            field_path=".rewardHeads",
        ),
    )

    algorithm: Algorithm = Field(
        description="dpo, orpo, kto, grpo, ppo, reward-model (trains a reward model) or distill (from teacherModel)."
    )
    method: Literal["lora", "full"] = Field(default="lora", description="Train adapters or all weights.")
    lora: LoraConfig | None = Field(default_factory=LoraConfig, description="Adapter settings when method is lora.")
    beta: float = Field(default=0.1, gt=0, description="Strength of the KL / preference term.")
    reward_functions: list[RewardFunction] = Field(
        default_factory=list, max_length=16, description="Reward terms for grpo/ppo."
    )
    reward_model: ModelUri | None = Field(
        default=None, description="Reward model (an RLHFJob with algorithm reward-model) for ppo and the reward-model term."
    )
    reward_heads: RewardHeads = Field(default_factory=RewardHeads, description="Heads and weights of a reward model.")
    reference_model: ModelUri | None = Field(
        default=None, description="Frozen reference model (defaults to the policy's starting point)."
    )
    teacher_model: ModelUri | None = Field(default=None, description="Teacher model for algorithm distill.")
    distillation: Distillation = Field(default_factory=Distillation, description="Distillation settings.")
    generation: Generation = Field(default_factory=Generation, description="Sampling for online algorithms.")
    ppo: Ppo = Field(default_factory=Ppo, description="PPO's clipping and value head.")
    hyperparameters: Hyperparameters = Field(
        default_factory=lambda: Hyperparameters(learning_rate=5e-6, epochs=1),
        description="Optimisation settings.",
    )
    distributed: Distributed = Field(default_factory=Distributed, description="Multi-GPU / multi-node layout.")
    checkpointing: Checkpointing = Field(default_factory=Checkpointing, description="Checkpoints and resumption.")
    output: ModelOutput = Field(default_factory=ModelOutput, description="Outputs besides the adapter.")
    max_examples: PositiveInt | None = Field(default=None, description="Use at most this many training examples.")
    trust_remote_code: bool = Field(default=False, description="Allow model code from the checkpoint (off: safer).")
    extra: dict[str, Any] = Field(
        default_factory=dict,
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
        description="Further TRL trainer arguments passed through unchanged.",
    )


class RLHFStageConfig(StageRuntime, RLHFOptions):
    """The rendered config `mentor-trainer rlhf` reads."""

    cel_rules = model_source_rules("has(self.rewardModel)", "has(self.teacherModel)")

    policy_model: ModelUri = Field(description="Model the policy starts from.")
    dataset_uri: StorageUri = Field(description="Output URI of the DomainDataset with prompts / preference pairs.")
