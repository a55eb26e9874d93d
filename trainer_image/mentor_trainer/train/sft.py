"""`mentor-trainer sft`: supervised fine-tuning / continued pre-training with TRL's SFTTrainer.

main(config: SftStageConfig) -> TrainingResult (model, adapter, MLflow run, registered model, metrics)

prepare() is the run's steps, each in its own module:
1. device: the device, precision and weight dtype (qlora without CUDA fails before anything loads).
2. load_base_model: the base model (models.load_model_and_tokenizer), checked for a chat
   template and a context that holds max_seq_length.
3. splits: the train and validation examples (none is an error).
4. curriculum: stages by difficulty, each packed apart, read in order.
5. methods: what trains: LoRA/DoRA/QLoRA adapters, everything, chosen blocks, or the blocks
   with the largest gradient norm on a sample (auto).
6. checkpoints: every N steps under <output_uri>/checkpoints/, resumption from the latest.
7. build_trainer: SFTTrainer (arguments) with packing (best-fit, no cross-attention between
   packed examples), completion-only loss, evaluation every N steps, early stopping, best
   checkpoint, live progress JSON (callbacks), MLflow metrics.
Then train() runs it and publish writes adapter/, model/, README.md (model card) and
result.json under output_uri.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ..config.sft import SftStageConfig, TrainingResult
from ..data.layout import manifest_hash
from ..errors import StageError
from ..progress import ProgressReporter
from ..tracking import Tracker, trainer_callback
from . import checkpoints, methods, packed_attention
from .arguments import sft_arguments
from .callbacks import nan_guard_callback, progress_callback
from .curriculum import curriculum_trainer_class, enabled_curriculum, staged_rows
from .rows import CHAT_TASKS, Examples
from .device import check_device, choose_precision, quantization_config, weights_dtype
from .job import Job
from .publish import publish_outputs
from .splits import completion_only_loss, training_splits

log = logging.getLogger(__name__)


def prepare(config: SftStageConfig, callbacks: tuple = (), reporter: ProgressReporter | None = None) -> Job:
    """Everything up to a ready SFTTrainer (the tests drive this directly)."""
    import torch

    reporter = reporter or ProgressReporter(config.progress_file)
    device = check_device(config)
    precision, dtype = choose_precision(config.hyperparameters.precision, device)
    torch.manual_seed(config.hyperparameters.seed)
    quantization = quantization_config(config)
    model, tokenizer = load_base_model(config, device, dtype, quantization)
    train, validation = training_splits(config, tokenizer)
    model, notes = methods.apply_method(model, tokenizer, config, train.rows, quantized=quantization is not None)
    checkpoint_dir = checkpoints.checkpoint_directory(config)
    trainer = build_trainer(config, model, tokenizer, train, validation, checkpoint_dir, precision, device, callbacks, reporter)
    return Job(
        config=config,
        device=device,
        precision=precision,
        trainer=trainer,
        model=model,
        tokenizer=tokenizer,
        checkpoint_dir=checkpoint_dir,
        resume_from=checkpoints.resume_point(config, checkpoint_dir, trainer.args),
        train_examples=len(train.rows),
        eval_examples=len(validation.rows),
        dataset_hash=manifest_hash(config.dataset_uri),
        base_uri=config.base_model,
        notes=notes,
        card_lines=card_lines(config, notes),
    )


def card_lines(config: SftStageConfig, notes: dict) -> list[str]:
    """What the model card says about this run's task, blocks and data order."""
    lines = [f"- Task: {config.data.task}, packing {config.data.packing}, curriculum {enabled_curriculum(config) is not None}"]
    if config.method in ("freeze", "auto"):
        lines.append(f"- Trained blocks: {notes.get('trainedLayers') or notes.get('autoLayers')}")
    return lines


def load_base_model(config: SftStageConfig, device: str, dtype, quantization) -> tuple[Any, Any]:
    """The base model and its tokenizer, checked against the run: a chat template for chat
    tasks, a context of at least max_seq_length; a tokenizer without a pad token pads with EOS."""
    from ..models import load_model_and_tokenizer

    loaded = load_model_and_tokenizer(
        config.base_model,
        trust_remote_code=config.trust_remote_code,
        dtype=weights_dtype(config.method, dtype),
        quantization_config=quantization,
        device_map={"": 0} if quantization is not None else None,
        attn_implementation=packed_attention.implementation(device),
    )
    model, tokenizer = loaded.model, loaded.tokenizer
    task = config.data.task
    if task in CHAT_TASKS and not getattr(tokenizer, "chat_template", None):
        raise StageError(
            f"the tokenizer of {config.base_model} has no chat template, which data.task {task} needs: use a chat model "
            "(chat_template in tokenizer_config.json or chat_template.jinja) or set data.task: pretrain"
        )
    max_seq_length = config.hyperparameters.max_seq_length
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if context and max_seq_length > context:
        raise StageError(
            f"hyperparameters.maxSeqLength {max_seq_length} is larger than the model's context "
            f"({context} positions, max_position_embeddings of {config.base_model}): set maxSeqLength <= {context}"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def build_trainer(
    config: SftStageConfig,
    model,
    tokenizer,
    train: Examples,
    validation: Examples,
    checkpoint_dir: Path,
    precision: str,
    device: str,
    callbacks: tuple,
    reporter: ProgressReporter,
):
    """The SFTTrainer over the examples (in curriculum order when one is on), with the stage's
    own callbacks ahead of ``callbacks``."""
    from datasets import Dataset
    from transformers import EarlyStoppingCallback

    curriculum = enabled_curriculum(config)
    train_rows = staged_rows(train, curriculum, config.hyperparameters.seed) if curriculum else train.rows
    eval_dataset = Dataset.from_list(validation.rows) if validation.rows else None
    args = sft_arguments(
        config, checkpoint_dir, precision, device, eval_dataset is not None, completion_only_loss(config), curriculum is not None
    )
    own = [nan_guard_callback(config.hyperparameters.learning_rate, precision)]
    if config.evaluation.early_stopping_patience and eval_dataset is not None:
        own.append(EarlyStoppingCallback(early_stopping_patience=config.evaluation.early_stopping_patience))
    own += checkpoints.checkpoint_callbacks(config)
    own.append(progress_callback(reporter, tokens_seen))
    return curriculum_trainer_class()(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=[*own, *callbacks],
    )


def tokens_seen(state) -> int:
    return int(getattr(state, "num_input_tokens_seen", 0) or 0)


# --------------------------------------------------------------------------------------
# Running


def train(job: Job, tracker: Tracker) -> dict:
    trainer = job.trainer
    metrics: dict[str, float] = {}
    if trainer.eval_dataset is not None:
        base = trainer.evaluate(metric_key_prefix="base_eval")
        metrics["base_eval_loss"] = float(base["base_eval_loss"])
        if not math.isfinite(metrics["base_eval_loss"]):
            raise StageError(
                f"the base model {job.base_uri} gives a {metrics['base_eval_loss']} loss on the validation split: "
                "its weights are corrupt or overflow in this precision; check the checkpoint or use precision fp32"
            )
        metrics["base_eval_perplexity"] = _perplexity(metrics["base_eval_loss"])
        tracker.log_metrics({"base_eval_loss": metrics["base_eval_loss"]}, step=0)
    output = fit(job)
    metrics["train_loss"] = float(output.training_loss)
    if trainer.eval_dataset is not None:
        final = trainer.evaluate()
        metrics["eval_loss"] = float(final["eval_loss"])
        metrics["eval_perplexity"] = _perplexity(metrics["eval_loss"])
    metrics["steps"] = float(trainer.state.global_step)
    metrics["epochs"] = float(trainer.state.epoch or 0.0)
    tokens = tokens_seen(trainer.state)
    metrics["tokens"] = float(tokens)
    runtime = float(output.metrics.get("train_runtime") or 0.0)
    if runtime > 0 and tokens:
        metrics["tokens_per_second"] = round(tokens / runtime, 1)
    if trainer.state.best_model_checkpoint:
        job.notes["bestCheckpoint"] = Path(trainer.state.best_model_checkpoint).name
    return metrics


def fit(job: Job):
    """trainer.train(), resumed from the job's checkpoint; running out of GPU memory is an
    error that says which settings to lower."""
    import torch

    trainer = job.trainer
    if job.resume_from:
        log.info("resuming from %s", job.resume_from)
    try:
        return trainer.train(resume_from_checkpoint=job.resume_from)
    except torch.OutOfMemoryError as error:
        hp = job.config.hyperparameters
        raise StageError(
            f"out of GPU memory at step {trainer.state.global_step} (batch {hp.per_device_batch_size} x "
            f"{hp.max_seq_length} tokens, method {job.config.method}): lower hyperparameters.perDeviceBatchSize "
            "(raise gradientAccumulationSteps to keep the batch), lower maxSeqLength, set gradientCheckpointing: true, "
            f"use method lora/qlora, or request a larger GPU ({str(error).splitlines()[0][:160]})"
        ) from None


def _perplexity(loss: float) -> float:
    return float(math.exp(min(loss, 50.0)))


def run(config: SftStageConfig, callbacks: tuple = ()) -> TrainingResult:
    """main() with extra TrainerCallbacks (tests use them to interrupt a run)."""
    with ProgressReporter.for_stage(config.progress_file) as reporter:
        reporter.update(force=True, phase="preparing")
        result = _run(config, prepare(config, callbacks, reporter))
        reporter.update(force=True, phase="done", eta_seconds=0)
        return result


def _run(config: SftStageConfig, job: Job) -> TrainingResult:
    tracker = Tracker(config)
    with tracker.run(run_tags(config, job, base_model=config.base_model)):
        tracker.log_params(flat_params(config))
        tracker.set_tags({"mentor.dataset_hash": job.dataset_hash or "unknown"})
        job.trainer.add_callback(trainer_callback(tracker))
        metrics = train(job, tracker)
        tracker.log_metrics({f"final_{k}": v for k, v in metrics.items()})
        return publish_outputs(job, metrics, tracker)


def run_tags(config, job: Job, **stage_tags: str) -> dict[str, str]:
    """The MLflow tags of a training run: the resource, the method, the dataset's content hash,
    and the stage's own (``mentor.<name>``)."""
    return {
        "mentor.kind": config.run.kind,
        "mentor.name": config.run.name,
        "mentor.namespace": config.run.namespace,
        "mentor.method": config.method,
        "mentor.dataset_hash": job.dataset_hash or "unknown",
        **{f"mentor.{name}": value for name, value in stage_tags.items()},
    }


def flat_params(config) -> dict:
    wire = config.model_dump(mode="json", exclude={"run", "tracking", "progress_file", "output_uri"}, exclude_none=True)
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = value

    walk("", wire)
    return flat


def main(config: SftStageConfig) -> TrainingResult:
    return run(config)
