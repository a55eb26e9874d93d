"""Config of `mentor-trainer sft`: supervised fine-tuning and continued pre-training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import (
    CelRule,
    Fraction,
    Hyperparameters,
    LoraConfig,
    ModelUri,
    NonNegativeInt,
    PositiveInt,
    Spec,
    StageResult,
    StageRuntime,
    StorageUri,
)

Method = Literal["lora", "qlora", "dora", "full", "freeze", "auto"]


class Quantization(Spec):
    """4-bit loading of the base model for QLoRA (bitsandbytes; GPU only)."""

    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type.")
    double_quant: bool = Field(default=True, description="Quantise the quantisation constants too.")
    compute_dtype: Literal["bf16", "fp16", "fp32"] = Field(default="bf16", description="Dtype of the matmuls.")


class Freeze(Spec):
    """Which layers train when method is freeze; everything else is frozen."""

    cel_rules = (
        CelRule(
            rule="has(self.topLayers) || size(self.layers) > 0",
            message="freeze needs topLayers or layers",
        ),
    )

    top_layers: PositiveInt | None = Field(default=None, description="Train the top N transformer blocks.")
    layers: list[NonNegativeInt] = Field(default_factory=list, description="Indices of blocks to train.")
    train_embeddings: bool = Field(default=False, description="Train the input embeddings.")
    train_head: bool = Field(default=True, description="Train the LM head and final norm.")


class AutoLayers(Spec):
    """Layer selection by gradient sensitivity on a sample (the design notes' LoAR idea)."""

    top_k: PositiveInt = Field(default=4, description="Number of blocks with the largest gradient norm to train.")
    sample_examples: PositiveInt = Field(default=64, description="Examples used to measure gradients.")


class InTrainingEvaluation(Spec):
    """Evaluation during training, early stopping and best-checkpoint selection."""

    every_steps: PositiveInt = Field(default=50, description="Evaluate on the validation split every N steps.")
    early_stopping_patience: PositiveInt | None = Field(
        default=None, description="Stop after N evaluations without improvement."
    )
    select_best: bool = Field(default=True, description="Keep the checkpoint with the lowest eval loss.")


class Curriculum(Spec):
    """Training stages ordered by the dataset's difficulty column."""

    cel_rules = (
        CelRule(
            rule="self.stages.all(s, s > 0.0 && s <= 1.0) && self.stages[size(self.stages) - 1] == 1.0",
            message="stages are fractions in (0, 1] and the last one must be 1.0",
            field_path=".stages",
        ),
    )

    enabled: bool = Field(default=True, description="Train easiest-first.")
    stages: list[float] = Field(
        default_factory=lambda: [0.3, 0.6, 1.0],
        min_length=1,
        max_length=16,
        description="Cumulative shares of the data by difficulty, one per stage, e.g. [0.3, 0.6, 1.0].",
    )
    column: str = Field(default="difficulty", description="Column holding the difficulty score.")


class DeepSpeed(Spec):
    """DeepSpeed ZeRO settings for multi-GPU training."""

    stage: Literal[0, 1, 2, 3] = Field(default=2, description="ZeRO stage.")
    offload_optimizer: bool = Field(default=False, description="Keep optimizer state in CPU memory.")
    offload_params: bool = Field(default=False, description="Keep parameters in CPU memory (stage 3).")


class Distributed(Spec):
    """Data-parallel layout: nodes x GPUs per node."""

    cel_rules = (
        CelRule(
            rule="!self.deepspeed.offloadParams || self.deepspeed.stage == 3",
            message="offloadParams needs ZeRO stage 3",
            field_path=".deepspeed.offloadParams",
        ),
    )

    nodes: PositiveInt = Field(default=1, le=1024, description="Number of nodes (pods).")
    gpus_per_node: PositiveInt = Field(default=1, le=16, description="GPUs per node.")
    deepspeed: DeepSpeed = Field(default_factory=DeepSpeed, description="DeepSpeed ZeRO.")


class Checkpointing(Spec):
    """Checkpoints to the object store, and resumption."""

    every_steps: PositiveInt = Field(default=100, description="Save a checkpoint every N steps.")
    keep_last: PositiveInt = Field(default=2, description="Checkpoints kept.")
    resume: bool = Field(default=True, description="Resume from the latest checkpoint when one exists.")


class ModelOutput(Spec):
    """What the training stage writes besides the adapter."""

    merge_adapter: bool = Field(default=True, description="Also write the base model with the adapter merged in.")


class RetrievedContext(Spec):
    """Retrieval-augmented fine-tuning: questions also train with retrieved passages."""

    top_k: PositiveInt = Field(
        default=3, le=20, description="Passages from the dataset's retrieval index put before each question."
    )


class DataOptions(Spec):
    """How the dataset's splits become training examples."""

    cel_rules = (
        CelRule(
            rule="!has(self.retrievedContext) || self.task != 'pretrain'",
            message="retrievedContext adds context to questions: it needs task sft or mixed",
            field_path=".retrievedContext",
        ),
    )

    task: Literal["sft", "pretrain", "mixed"] = Field(
        default="sft",
        description=(
            "sft: chat examples; pretrain: continued pre-training on text; mixed: both in one run "
            "(documents teach the facts, questions teach how to recall them)."
        ),
    )
    retrieved_context: RetrievedContext | None = Field(
        default=None,
        description=(
            "Also train every single-turn question with the top-k chunks of the dataset's retrieval index "
            "in the prompt (the evaluation's and serving's RAG prompt), so the model learns to use context."
        ),
    )
    packing: bool = Field(default=True, description="Pack examples into full sequences (no cross-attention).")
    completion_only_loss: bool = Field(default=True, description="SFT loss on the answer tokens only.")
    max_examples: PositiveInt | None = Field(default=None, description="Use at most this many training examples.")
    validation_fraction: Fraction | None = Field(
        default=None, description="Carve a validation set out of train when the dataset has none."
    )


class FineTuneOptions(Spec):
    """Everything a user declares about how a model is fine-tuned."""

    cel_rules = (
        CelRule(rule="self.method != 'qlora' || has(self.lora)", message="method qlora needs a lora block", field_path=".lora"),
        CelRule(rule="self.method != 'freeze' || has(self.freeze)", message="method freeze needs a freeze block", field_path=".freeze"),
        CelRule(
            rule="!has(self.quantization) || self.method == 'qlora'",
            message="quantization is only used by method qlora",
            field_path=".quantization",
        ),
    )

    method: Method = Field(default="lora", description="lora, qlora (4-bit, GPU only), dora, full, freeze or auto.")
    lora: LoraConfig | None = Field(default=None, description="Adapter settings for lora, qlora and dora.")
    quantization: Quantization | None = Field(default=None, description="4-bit settings for qlora.")
    freeze: Freeze | None = Field(default=None, description="Trainable layers for method freeze.")
    auto_layers: AutoLayers = Field(default_factory=AutoLayers, description="Layer selection for method auto.")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters, description="Optimisation settings.")
    data: DataOptions = Field(default_factory=DataOptions, description="Example construction.")
    evaluation: InTrainingEvaluation = Field(default_factory=InTrainingEvaluation, description="Evaluation during training.")
    curriculum: Curriculum | None = Field(default=None, description="Easiest-first training stages.")
    distributed: Distributed = Field(default_factory=Distributed, description="Multi-GPU / multi-node layout.")
    checkpointing: Checkpointing = Field(default_factory=Checkpointing, description="Checkpoints and resumption.")
    output: ModelOutput = Field(default_factory=ModelOutput, description="Outputs besides the adapter.")
    trust_remote_code: bool = Field(default=False, description="Allow model code from the checkpoint (off: safer).")


class SftStageConfig(StageRuntime, FineTuneOptions):
    """The rendered config `mentor-trainer sft` reads."""

    base_model: ModelUri = Field(description="Model to fine-tune.")
    dataset_uri: StorageUri = Field(description="Output URI of the DomainDataset.")


class TrainingResult(StageResult):
    """Outputs of a finished training run (`mentor-trainer sft` and `rlhf`)."""

    model_uri: str | None = Field(default=None, description="The trained model (merged when asked, else the adapter).")
    adapter_uri: str | None = Field(default=None, description="The adapter alone (adapter methods).")
    mlflow_run_id: str | None = Field(default=None, description="MLflow run of the job.")
    registered_model: str | None = Field(default=None, description="mlflow://models/<name>/<version> when registered.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Final metrics (train/eval loss, perplexity).")

    def with_defaults(self, output_uri: str | None) -> "TrainingResult":
        if self.model_uri or not output_uri:
            return self
        return self.model_copy(update={"model_uri": f"{output_uri.rstrip('/')}/model/"})
