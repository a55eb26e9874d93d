"""RLHFJob: preference optimisation or RL of a policy (DPO, ORPO, KTO, GRPO, PPO, reward model)."""

from __future__ import annotations

from mentor_trainer.config.common import CelRule, ModelUri, exactly_one
from mentor_trainer.config.rlhf import RLHFOptions, model_source_rules
from mentor_trainer.config.sft import TrainingResult
from .common import JobSpecBase, KindApi, KindInfo, ModelRef, PrinterColumn, ResourceRef, immutable
from .finetunejob import TrainingStatus, training_columns
from .references import DatasetReference, ModelReference


class RLHFJobSpec(JobSpecBase, RLHFOptions):
    """A preference / RL training run (the `mentor-trainer rlhf` stage)."""

    cel_rules = (
        exactly_one("policyRef", "policyModel"),
        CelRule(rule="!(has(self.rewardModelRef) && has(self.rewardModel))", message="set rewardModelRef or rewardModel, not both", field_path=".rewardModelRef"),
        CelRule(rule="!(has(self.teacherRef) && has(self.teacherModel))", message="set teacherRef or teacherModel, not both", field_path=".teacherRef"),
        *model_source_rules("(has(self.rewardModel) || has(self.rewardModelRef))", "(has(self.teacherModel) || has(self.teacherRef))"),
    )

    policy_ref: ModelRef | None = immutable("Resource whose model the policy starts from.", default=None, name="policyRef")
    policy_model: ModelUri | None = immutable("Model URI the policy starts from.", default=None, name="policyModel")
    reward_model_ref: ModelRef | None = immutable(
        "RLHFJob (algorithm reward-model) whose model scores completions.", default=None, name="rewardModelRef"
    )
    teacher_ref: ModelRef | None = immutable("Resource whose model is the teacher (algorithm distill).", default=None, name="teacherRef")
    dataset_ref: ResourceRef = immutable("DomainDataset with preference pairs or prompts.", name="datasetRef")


KIND = KindApi(
    info=KindInfo(
        kind="RLHFJob",
        plural="rlhfjobs",
        singular="rlhfjob",
        short_names=["rlhf"],
        stage="rlhf",
        description="Aligns a policy model with preferences or rewards (DPO, ORPO, KTO, GRPO, PPO), trains a reward model, or distils a teacher into it.",
        columns=[
            training_columns()[0],
            PrinterColumn(name="Algorithm", json_path=".spec.algorithm"),
            *training_columns()[1:],
        ],
    ),
    spec=RLHFJobSpec,
    status=TrainingStatus,
    result=TrainingResult,
    references=(
        ModelReference("policyRef", "policyModel", into="policy_model"),
        ModelReference("rewardModelRef", "rewardModel", into="reward_model"),
        ModelReference("teacherRef", "teacherModel", into="teacher_model"),
        DatasetReference(),
    ),
    output_field="modelUri",
)
