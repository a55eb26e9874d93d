"""A training spec as TRL's configs (TrainingArguments): :func:`training_arguments` are the
settings every training stage shares (schedule, batch, precision, checkpoints, DeepSpeed,
logging); :func:`sft_arguments` adds the FineTuneJob's packing, evaluation, best-checkpoint
selection and data order."""

from __future__ import annotations

import logging
from pathlib import Path

from .. import storage
from ..config.sft import SftStageConfig
from .distributed import deepspeed_config, world_size

log = logging.getLogger(__name__)


def sft_arguments(
    config: SftStageConfig,
    checkpoint_dir: Path,
    precision: str,
    device: str,
    has_eval: bool,
    completion_only: bool,
    curriculum: bool,
):
    """``curriculum``: read the training set in its order (it is in curriculum order)."""
    from trl import SFTConfig

    hp = config.hyperparameters
    evaluation = config.evaluation
    save_steps = config.checkpointing.every_steps
    eval_steps = evaluation.every_steps
    load_best = has_eval and (evaluation.select_best or bool(evaluation.early_stopping_patience))
    if load_best and save_steps % eval_steps:
        # Best-checkpoint selection needs save steps that are a multiple of the eval steps.
        # Checkpoints are never made rarer than asked (they are what a restarted pod resumes
        # from): evaluate at every checkpoint, or checkpoint at the last evaluation before it.
        if eval_steps > save_steps:
            log.info(
                "evaluation.everySteps %d -> %d (at every checkpoint, for best-checkpoint selection)", eval_steps, save_steps
            )
            eval_steps = save_steps
        else:
            rounded = save_steps // eval_steps * eval_steps
            log.info("checkpointing.everySteps %d -> %d (a multiple of evaluation.everySteps)", save_steps, rounded)
            save_steps = rounded
    return SFTConfig(
        **{
            **training_arguments(config, checkpoint_dir, precision, device),
            **dict(
                max_length=hp.max_seq_length,
                packing=config.data.packing,
                packing_strategy="bfd",
                completion_only_loss=completion_only,
                dataset_text_field="text",
                shuffle_dataset=False,
                train_sampling_strategy="sequential" if curriculum else "random",
                eval_strategy="steps" if has_eval else "no",
                eval_steps=eval_steps,
                save_steps=save_steps,
                load_best_model_at_end=load_best,
                metric_for_best_model="eval_loss" if load_best else None,
                greater_is_better=False if load_best else None,
                logging_steps=max(1, min(10, eval_steps)),
                include_num_input_tokens_seen="non_padding",
                remove_unused_columns=True,
            ),
        }
    )


def training_arguments(config, checkpoint_dir: Path, precision: str, device: str) -> dict:
    """TrainingArguments every training stage shares, from a config's hyperparameters,
    checkpointing and distributed blocks; a stage adds (or overrides) its own."""
    hp = config.hyperparameters
    deepspeed = None
    if device == "cuda" and world_size(config.distributed) > 1:
        deepspeed = deepspeed_config(config.distributed, precision)
    return dict(
        deepspeed=deepspeed,
        output_dir=str(checkpoint_dir),
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps or -1,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=hp.lr_scheduler,
        warmup_steps=min(hp.warmup_ratio, 0.999),
        per_device_train_batch_size=hp.per_device_batch_size,
        per_device_eval_batch_size=hp.per_device_batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        max_grad_norm=hp.max_grad_norm,
        weight_decay=hp.weight_decay,
        seed=hp.seed,
        data_seed=hp.seed,
        # the spec decides (TRL's configs default to on: slower steps, and generation without
        # a KV cache for the online algorithms)
        activation_checkpointing=hp.gradient_checkpointing,
        save_strategy="steps",
        save_steps=config.checkpointing.every_steps,
        save_total_limit=config.checkpointing.keep_last,
        # object stores: each node writes a whole checkpoint in its own local directory and
        # publishes it as its part (checkpoints.py); HF then turns on DeepSpeed's node-local storage
        save_on_each_node=not storage.parse(config.output_uri).is_local,
        logging_steps=1,
        logging_first_step=True,
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda",
        disable_tqdm=True,
    )
