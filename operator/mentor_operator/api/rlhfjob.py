"""RLHFJob: preference optimisation or RL of a policy (DPO, ORPO, KTO, GRPO, PPO, reward model)."""

from __future__ import annotations

from mentor_trainer.config.common import ModelUri, exactly_one
from mentor_trainer.config.rlhf import RLHFOptions
from mentor_trainer.config.sft import TrainingResult
from .common import JobSpecBase, KindApi, KindInfo, ModelRef, PrinterColumn, ResourceRef, immutable
from .finetunejob import TrainingStatus, training_columns
from .references import DatasetReference, ModelReference


class RLHFJobSpec(JobSpecBase, RLHFOptions):
    """A preference / RL training run (the `mentor-trainer rlhf` stage)."""

    cel_rules = (exactly_one("policyRef", "policyModel"),)

    policy_ref: ModelRef | None = immutable("Resource whose model the policy starts from.", default=None, name="policyRef")
    policy_model: ModelUri | None = immutable("Model URI the policy starts from.", default=None, name="policyModel")
    dataset_ref: ResourceRef = immutable("DomainDataset with preference pairs or prompts.", name="datasetRef")


KIND = KindApi(
    info=KindInfo(
        kind="RLHFJob",
        plural="rlhfjobs",
        singular="rlhfjob",
        short_names=["rlhf"],
        stage="rlhf",
        description="Aligns a policy model with preferences or rewards: DPO, ORPO, KTO, GRPO, PPO or a reward model.",
        columns=[
            training_columns()[0],
            PrinterColumn(name="Algorithm", json_path=".spec.algorithm"),
            *training_columns()[1:],
        ],
    ),
    spec=RLHFJobSpec,
    status=TrainingStatus,
    result=TrainingResult,
    references=(ModelReference("policyRef", "policyModel", into="policy_model"), DatasetReference()),
    output_field="modelUri",
)
