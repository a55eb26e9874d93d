"""`mentor-trainer sft`: supervised fine-tuning / continued pre-training with TRL's SFTTrainer.

main(config: SftStageConfig) -> TrainingResult (model, adapter, MLflow run, registered model, metrics)

1. Fail fast on what cannot work (qlora without CUDA, missing model, no chat template,
   max_seq_length beyond the model's context, no examples).
2. Load the base model (models.load_model_and_tokenizer) and the dataset splits.
3. Decide what trains: LoRA/DoRA/QLoRA adapters, everything, chosen blocks, or the blocks
   with the largest gradient norm on a sample (auto).
4. Train with SFTTrainer: packing (best-fit, no cross-attention between packed examples),
   completion-only loss, evaluation every N steps, early stopping, best checkpoint,
   checkpoints every N steps under <output_uri>/checkpoints/ and resumption from the latest,
   curriculum order kept (stages by difficulty, sequential sampler), live progress JSON,
   MLflow metrics.
5. Publish adapter/, model/, README.md (model card) and result.json under output_uri.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import storage
from ..config.sft import SftStageConfig, TrainingResult
from ..errors import StageError
from ..progress import ProgressReporter
from ..tracking import Tracker, trainer_callback
from .data import (
    CHAT_TASKS,
    TASK_FORMATS,
    Examples,
    as_text_pairs,
    curriculum_stages,
    load_examples,
    manifest_hash,
    with_retrieved_context,
)
from .distributed import deepspeed_config, world_size

log = logging.getLogger(__name__)

ADAPTER_METHODS = ("lora", "qlora", "dora")
STAGE_COLUMN = "_curriculum_stage"


# --------------------------------------------------------------------------------------
# Checks that need no model


def check_device(config) -> str:
    """'cuda' or 'cpu'; qlora without CUDA fails here, before anything is loaded."""
    import torch

    cuda = torch.cuda.is_available()
    if config.method == "qlora" and not cuda:
        raise StageError("qlora needs a CUDA GPU; use method lora on CPU (or request nvidia.com/gpu in resources)")
    if config.method == "qlora":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise StageError("qlora needs the bitsandbytes package, which this trainer image lacks; use method lora or an image with it")
    return "cuda" if cuda else "cpu"


def choose_precision(requested: str, device: str) -> tuple[str, Any]:
    import torch

    if device == "cpu":
        if requested != "fp32":
            log.info("precision %s requested; training in fp32 on CPU", requested)
        return "fp32", torch.float32
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16; training in fp16")
        return "fp16", torch.float16
    return requested, {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[requested]


def weights_dtype(method: str, dtype):
    """The dtype the model's weights are loaded (and kept) in.

    Adapters train on a base kept in the training dtype. Full/freeze keep fp32 master weights and
    autocast the matmuls: in bf16 weights (and torch AdamW's bf16 states) an update smaller than
    about 1/256 of a weight rounds away, which at fine-tuning learning rates (~1e-5 against weights
    of ~1e-2) is most updates. The fp32 copy costs memory (weights, gradients and AdamW states in
    fp32: 16 bytes a parameter against 8) and a little time: at the 1.5B shape on an H200, 15.5 GiB
    and 9% of the step, while bf16 weights trained visibly worse within 20 steps (bench/README.md)."""
    import torch

    return dtype if method in ADAPTER_METHODS else torch.float32


# --------------------------------------------------------------------------------------
# Callbacks


def progress_callback(reporter: ProgressReporter, tokens_fn):
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Reports step, total_steps, epoch, loss, eval_loss, tokens_per_second and eta_seconds on each log."""

        def __init__(self) -> None:
            self.started = None
            self.start_step = 0
            self.start_tokens = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.time()
            self.start_step = state.global_step
            self.start_tokens = tokens_fn(state)
            reporter.update(force=True, phase="training", step=state.global_step, total_steps=state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            fields = {}
            if "loss" in logs:
                fields["loss"] = round(float(logs["loss"]), 6)
            if "eval_loss" in logs:
                fields["eval_loss"] = round(float(logs["eval_loss"]), 6)
            elapsed = max(time.time() - (self.started or time.time()), 1e-6)
            done = state.global_step - self.start_step
            tokens = tokens_fn(state) - self.start_tokens
            eta = (state.max_steps - state.global_step) * elapsed / done if done > 0 else None
            reporter.update(
                step=state.global_step,
                total_steps=state.max_steps,
                epoch=round(state.epoch or 0.0, 4),
                tokens_per_second=round(tokens / elapsed, 1) if tokens else None,
                eta_seconds=round(eta, 1) if eta is not None else None,
                percent=f"{100 * state.global_step / max(state.max_steps, 1):.0f}%",
                **fields,
            )

        def on_train_end(self, args, state, control, **kwargs):
            reporter.update(force=True, phase="saving", step=state.global_step, eta_seconds=0)

    return ProgressCallback()


def nan_guard_callback(learning_rate: float, precision: str):
    from transformers import TrainerCallback

    class NanGuard(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "eval_loss"):
                value = (logs or {}).get(key)
                if value is not None and not math.isfinite(value):
                    raise StageError(
                        f"{key} became {value} at step {state.global_step}: lower hyperparameters.learningRate "
                        f"(now {learning_rate}), use precision bf16 or fp32 (now {precision}), or check the data "
                        "and the base model's weights"
                    )

    return NanGuard()


FINGERPRINT_FILE = "mentor-config.sha256"


def config_fingerprint(config) -> str:
    """What a checkpoint must match to be resumed from: the training config (not tracking,
    progress or the resource's generation)."""
    import hashlib

    wire = config.model_dump(mode="json", exclude={"progress_file", "tracking", "run"})
    return hashlib.sha256(json.dumps(wire, sort_keys=True).encode()).hexdigest()


def _read_fingerprint(checkpoint: str) -> str | None:
    try:
        return (Path(checkpoint) / FINGERPRINT_FILE).read_text().strip()
    except OSError:
        return None


def fingerprint_callback(fingerprint: str):
    from transformers import TrainerCallback

    class Fingerprint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if directory.is_dir():
                (directory / FINGERPRINT_FILE).write_text(fingerprint)

    return Fingerprint()


def checkpoint_sync_callback(remote: storage.Uri):
    """After each checkpoint save, publish it under <output_uri>/checkpoints/ (object stores)."""
    from transformers import TrainerCallback

    class Sync(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            name = f"checkpoint-{state.global_step}"
            local = Path(args.output_dir) / name
            if local.is_dir():
                with storage.publish(remote.join(name), {"step": state.global_step}) as staging:
                    shutil.copytree(local, staging, dirs_exist_ok=True)
                # keep only what the trainer keeps locally
                kept = {p.name for p in Path(args.output_dir).glob("checkpoint-*")}
                for info in _remote_checkpoints(remote):
                    if info not in kept:
                        storage.delete_prefix(remote.join(info))

    return Sync()


def _remote_checkpoints(remote: storage.Uri) -> list[str]:
    names = set()
    try:
        for info in storage.list_objects(remote):
            head = info.name.split("/", 1)[0]
            if head.startswith("checkpoint-") and info.name.endswith(storage.SUCCESS_MARKER):
                names.add(head)
    except StageError:
        return []
    return sorted(names, key=lambda n: int(n.split("-")[1]))


# --------------------------------------------------------------------------------------
# The job


@dataclass
class Job:
    config: Any
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
    notes: dict = field(default_factory=dict)


def prepare(config, callbacks: tuple = (), reporter: ProgressReporter | None = None) -> Job:
    """Everything up to a ready SFTTrainer (the tests drive this directly)."""
    reporter = reporter or ProgressReporter(config.progress_file)
    import torch
    from datasets import Dataset

    from ..models import load_model_and_tokenizer
    from . import methods, packed_attention

    device = check_device(config)
    precision, dtype = choose_precision(config.hyperparameters.precision, device)
    hp = config.hyperparameters
    torch.manual_seed(hp.seed)

    # --- model -----------------------------------------------------------------------
    quantization = None
    if config.method == "qlora":
        from transformers import BitsAndBytesConfig

        q = config.quantization
        compute = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[q.compute_dtype if q else "bf16"]
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q.quant_type if q else "nf4",
            bnb_4bit_use_double_quant=q.double_quant if q else True,
            bnb_4bit_compute_dtype=compute,
        )
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
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if context and hp.max_seq_length > context:
        raise StageError(
            f"hyperparameters.maxSeqLength {hp.max_seq_length} is larger than the model's context "
            f"({context} positions, max_position_embeddings of {config.base_model}): set maxSeqLength <= {context}"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    # --- data ------------------------------------------------------------------------
    completion_only = config.data.completion_only_loss and task in CHAT_TASKS
    train = load_examples(config.dataset_uri, "train", task, completion_only)
    validation = load_examples(config.dataset_uri, "validation", task, completion_only)
    formats = "/".join(TASK_FORMATS[task])
    if not train.rows:
        raise StageError(
            f"dataset {config.dataset_uri} has zero {formats} training examples in train/: "
            f"add documents or QA pairs to the DomainDataset, include format(s) {formats} in spec.formats, "
            "or change data.task"
        )
    if not validation.rows and config.data.validation_fraction:
        import random

        order = list(range(len(train.rows)))
        random.Random(hp.seed).shuffle(order)
        cut = max(1, int(len(order) * config.data.validation_fraction))
        held, kept = set(order[:cut]), order[cut:]
        validation = Examples([train.rows[i] for i in sorted(held)], [train.difficulty[i] for i in sorted(held)])
        train = Examples([train.rows[i] for i in kept], [train.difficulty[i] for i in kept])
    if config.data.max_examples and len(train.rows) > config.data.max_examples:
        import random

        order = list(range(len(train.rows)))
        random.Random(hp.seed).shuffle(order)
        keep = sorted(order[: config.data.max_examples])
        train = Examples([train.rows[i] for i in keep], [train.difficulty[i] for i in keep])

    if config.data.retrieved_context:
        from ..data.index import Retriever

        search = Retriever.load(config.dataset_uri).search
        train = with_retrieved_context(train, search, config.data.retrieved_context.top_k)
        validation = with_retrieved_context(validation, search, config.data.retrieved_context.top_k)
    if task == "mixed":  # documents and chat examples together: one prompt/completion form
        train, validation = as_text_pairs(train, tokenizer), as_text_pairs(validation, tokenizer)

    curriculum = config.curriculum if config.curriculum and config.curriculum.enabled else None
    if curriculum:
        stages = curriculum_stages(train.difficulty, curriculum.stages, hp.seed)
        rows = []
        for number, indices in enumerate(stages):
            rows += [{**train.rows[i], STAGE_COLUMN: number, "difficulty": train.difficulty[i]} for i in indices]
        train_dataset = Dataset.from_list(rows)
    else:
        train_dataset = Dataset.from_list(train.rows)
    eval_dataset = Dataset.from_list(validation.rows) if validation.rows else None

    # --- what trains ---------------------------------------------------------------------
    notes: dict[str, Any] = {}
    if config.method == "auto":
        batches = _sample_batches(model, tokenizer, train.rows, config.auto_layers.sample_examples, hp.max_seq_length)
        chosen, norms = methods.select_layers_by_gradient(model, batches, config.auto_layers.top_k)
        log.info("auto: gradient norm per block %s -> training blocks %s", {k: round(v, 4) for k, v in norms.items()}, chosen)
        methods.apply_freeze(model, set(chosen), train_embeddings=False, train_head=True)
        notes["autoLayers"] = chosen
    elif config.method == "freeze":
        layers = methods.freeze_layers_from_config(model, config.freeze)
        methods.apply_freeze(model, layers, config.freeze.train_embeddings, config.freeze.train_head)
        notes["trainedLayers"] = sorted(layers)
    elif config.method in ADAPTER_METHODS:
        if quantization is not None:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=hp.gradient_checkpointing)
        model = methods.apply_lora(model, config, use_dora=config.method == "dora")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    notes["trainableParameters"], notes["parameters"] = trainable, total
    log.info("method %s: %d of %d parameters train (%.2f%%)", config.method, trainable, total, 100 * trainable / max(total, 1))

    # --- trainer -------------------------------------------------------------------------
    out = storage.parse(config.output_uri)
    if out.is_local:
        checkpoint_dir = storage.local_path(out.join("checkpoints"))
    else:
        checkpoint_dir = Path(tempfile.mkdtemp(prefix="mentor-ckpt-"))
        _download_latest_checkpoint(out.join("checkpoints"), checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)

    args = _sft_args(config, checkpoint_dir, precision, device, eval_dataset is not None, completion_only)
    from transformers import EarlyStoppingCallback

    extra = [nan_guard_callback(hp.learning_rate, precision)]
    if config.evaluation.early_stopping_patience and eval_dataset is not None:
        extra.append(EarlyStoppingCallback(early_stopping_patience=config.evaluation.early_stopping_patience))
    fingerprint = config_fingerprint(config)
    extra.append(fingerprint_callback(fingerprint))  # before the sync, so it travels with the checkpoint
    if not out.is_local:
        extra.append(checkpoint_sync_callback(out.join("checkpoints")))
    extra.append(progress_callback(reporter, lambda state: int(getattr(state, "num_input_tokens_seen", 0) or 0)))
    trainer_class = curriculum_trainer_class()
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=[*extra, *callbacks],
        curriculum=curriculum is not None,
    )
    resume_from = None
    if config.checkpointing.resume:
        from transformers.trainer_utils import get_last_checkpoint

        resume_from = get_last_checkpoint(str(checkpoint_dir))
        if resume_from and _read_fingerprint(resume_from) != fingerprint:
            # checkpoints of a different configuration (same output URI, edited spec): start over
            log.warning("ignoring checkpoints in %s: they were made with a different configuration", checkpoint_dir)
            for old_checkpoint in checkpoint_dir.glob("checkpoint-*"):
                shutil.rmtree(old_checkpoint, ignore_errors=True)
            resume_from = None
    return Job(
        config=config,
        device=device,
        precision=precision,
        trainer=trainer,
        model=model,
        tokenizer=tokenizer,
        checkpoint_dir=checkpoint_dir,
        resume_from=resume_from,
        train_examples=len(train.rows),
        eval_examples=len(validation.rows),
        dataset_hash=manifest_hash(config.dataset_uri),
        base_uri=config.base_model,
        notes=notes,
    )


def _sample_batches(model, tokenizer, rows: list[dict], count: int, max_length: int) -> list[dict]:
    import torch

    batches = []
    device = next(model.parameters()).device
    for row in rows[:count]:
        if "text" in row:
            ids = tokenizer(row["text"], truncation=True, max_length=max_length)["input_ids"]
        else:
            messages = row.get("messages") or (row["prompt"] + row["completion"])
            ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"][:max_length]
        tensor = torch.tensor([ids], device=device)
        batches.append({"input_ids": tensor, "labels": tensor})
    return batches


def _download_latest_checkpoint(remote: storage.Uri, local: Path) -> None:
    names = _remote_checkpoints(remote)
    if names:
        latest = names[-1]
        log.info("downloading %s to resume", remote.join(latest))
        storage.download(remote.join(latest), local / latest)
        (local / latest / storage.SUCCESS_MARKER).unlink(missing_ok=True)


def _sft_args(config, checkpoint_dir: Path, precision: str, device: str, has_eval: bool, completion_only: bool):
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
            log.info("evaluation.everySteps %d -> %d (at every checkpoint, for best-checkpoint selection)", eval_steps, save_steps)
            eval_steps = save_steps
        else:
            rounded = save_steps // eval_steps * eval_steps
            log.info("checkpointing.everySteps %d -> %d (a multiple of evaluation.everySteps)", save_steps, rounded)
            save_steps = rounded
    packing = config.data.packing
    deepspeed = None
    if device == "cuda" and world_size(config.distributed) > 1:
        deepspeed = deepspeed_config(config.distributed, precision)
    return SFTConfig(
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
        max_length=hp.max_seq_length,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        max_grad_norm=hp.max_grad_norm,
        weight_decay=hp.weight_decay,
        seed=hp.seed,
        data_seed=hp.seed,
        activation_checkpointing=hp.gradient_checkpointing,
        packing=packing,
        packing_strategy="bfd",
        completion_only_loss=completion_only,
        dataset_text_field="text",
        shuffle_dataset=False,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=config.checkpointing.keep_last,
        load_best_model_at_end=load_best,
        metric_for_best_model="eval_loss" if load_best else None,
        greater_is_better=False if load_best else None,
        logging_steps=max(1, min(10, eval_steps)),
        logging_first_step=True,
        report_to="none",
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda",
        disable_tqdm=True,
        remove_unused_columns=True,
    )


def curriculum_trainer_class():
    """SFTTrainer that, when asked, keeps the curriculum order: each stage is tokenized and
    packed on its own (packing never mixes stages) and the sampler is sequential."""
    from torch.utils.data import SequentialSampler
    from datasets import concatenate_datasets
    from trl import SFTTrainer

    class MentorSFTTrainer(SFTTrainer):
        def __init__(self, *args, curriculum: bool = False, **kwargs):
            self.curriculum = curriculum
            super().__init__(*args, **kwargs)

        def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
            if not getattr(self, "curriculum", False) or dataset_name != "train" or STAGE_COLUMN not in dataset.column_names:
                return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
            parts = []
            for stage in sorted(set(dataset[STAGE_COLUMN])):
                part = dataset.filter(lambda row, s=stage: row[STAGE_COLUMN] == s)
                prepared = super()._prepare_dataset(part, processing_class, args, packing, formatting_func, f"{dataset_name} stage {stage}")
                if STAGE_COLUMN not in prepared.column_names:
                    prepared = prepared.add_column(STAGE_COLUMN, [stage] * len(prepared))
                parts.append(prepared)
            return concatenate_datasets(parts)

        def _get_train_sampler(self, train_dataset=None):
            if getattr(self, "curriculum", False):
                dataset = train_dataset if train_dataset is not None else self.train_dataset
                return SequentialSampler(dataset)
            return super()._get_train_sampler(train_dataset)

    return MentorSFTTrainer


# --------------------------------------------------------------------------------------
# Running and publishing


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
    if job.resume_from:
        log.info("resuming from %s", job.resume_from)
    import torch

    try:
        output = trainer.train(resume_from_checkpoint=job.resume_from)
    except torch.OutOfMemoryError as error:
        hp = job.config.hyperparameters
        raise StageError(
            f"out of GPU memory at step {trainer.state.global_step} (batch {hp.per_device_batch_size} x "
            f"{hp.max_seq_length} tokens, method {job.config.method}): lower hyperparameters.perDeviceBatchSize "
            "(raise gradientAccumulationSteps to keep the batch), lower maxSeqLength, set gradientCheckpointing: true, "
            f"use method lora/qlora, or request a larger GPU ({str(error).splitlines()[0][:160]})"
        ) from None
    metrics["train_loss"] = float(output.training_loss)
    if trainer.eval_dataset is not None:
        final = trainer.evaluate()
        metrics["eval_loss"] = float(final["eval_loss"])
        metrics["eval_perplexity"] = _perplexity(metrics["eval_loss"])
    metrics["steps"] = float(trainer.state.global_step)
    metrics["epochs"] = float(trainer.state.epoch or 0.0)
    tokens = getattr(trainer.state, "num_input_tokens_seen", 0) or 0
    metrics["tokens"] = float(tokens)
    runtime = float(output.metrics.get("train_runtime") or 0.0)
    if runtime > 0 and tokens:
        metrics["tokens_per_second"] = round(tokens / runtime, 1)
    if trainer.state.best_model_checkpoint:
        job.notes["bestCheckpoint"] = Path(trainer.state.best_model_checkpoint).name
    return metrics


def _perplexity(loss: float) -> float:
    return float(math.exp(min(loss, 50.0)))


def model_card(job: Job, metrics: dict, result: TrainingResult) -> str:
    c = job.config
    hp = c.hyperparameters
    lines = [
        f"# {c.run.name}",
        "",
        f"Fine-tuned by `mentor-trainer sft` for {c.run.kind} `{c.run.namespace}/{c.run.name}` (generation {c.run.generation}).",
        "",
        f"- Base model: `{c.base_model}`",
        f"- Dataset: `{c.dataset_uri}` (content hash `{job.dataset_hash or 'unknown'}`), task {c.data.task}, "
        f"{job.train_examples} training / {job.eval_examples} validation examples",
        f"- Method: {c.method}"
        + (f" (r={c.lora.r}, alpha={c.lora.alpha}, targets {', '.join(c.lora.target_modules)})" if c.lora and c.method in ADAPTER_METHODS else "")
        + (f", trained blocks {job.notes.get('trainedLayers') or job.notes.get('autoLayers')}" if c.method in ("freeze", "auto") else ""),
        f"- Trainable parameters: {job.notes.get('trainableParameters'):,} of {job.notes.get('parameters'):,}",
        f"- Hyper-parameters: lr {hp.learning_rate} ({hp.lr_scheduler}), batch {hp.per_device_batch_size} x "
        f"{hp.gradient_accumulation_steps}, max length {hp.max_seq_length}, precision {job.precision} on {job.device}, "
        f"packing {c.data.packing}, curriculum {bool(c.curriculum and c.curriculum.enabled)}",
        "",
        "## Results",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items())]
    lines += ["", "## Files", ""]
    for key, uri in (("modelUri", result.model_uri), ("adapterUri", result.adapter_uri)):
        if uri:
            lines.append(f"- {key}: `{uri}`")
    lines.append("")
    return "\n".join(lines)


def publish_outputs(job: Job, metrics: dict, tracker: Tracker) -> TrainingResult:
    config = job.config
    out = storage.parse(config.output_uri)
    model = job.trainer.model
    rounded = {k: round(v, 6) for k, v in metrics.items()}
    if not job.trainer.is_world_process_zero():
        return TrainingResult(mlflow_run_id=tracker.run_id, metrics=rounded)  # rank 0 writes
    adapter_uri = None
    if config.method in ADAPTER_METHODS:
        adapter = out.join("adapter")
        with storage.publish(adapter, {"kind": "adapter", "base": config.base_model}) as staging:
            model.save_pretrained(staging, safe_serialization=True)
            job.tokenizer.save_pretrained(staging)
        adapter_uri = model_uri = str(adapter) + "/"
        if config.output.merge_adapter:
            merged = _merged_model(job, staging_adapter=adapter)
            with storage.publish(out.join("model"), {"kind": "model", "base": config.base_model}) as staging:
                merged.save_pretrained(staging, safe_serialization=True)
                job.tokenizer.save_pretrained(staging)
            model_uri = str(out.join("model")) + "/"
    else:
        with storage.publish(out.join("model"), {"kind": "model", "base": config.base_model}) as staging:
            model.save_pretrained(staging, safe_serialization=True)
            job.tokenizer.save_pretrained(staging)
        model_uri = str(out.join("model")) + "/"
    registered = None
    if config.tracking.registered_model_name and tracker.enabled:
        registered = tracker.register(config.tracking.registered_model_name, model_uri)
    result = TrainingResult(
        model_uri=model_uri, adapter_uri=adapter_uri, mlflow_run_id=tracker.run_id, registered_model=registered, metrics=rounded
    )
    card = model_card(job, metrics, result)
    storage.write_text(out.join("README.md"), card)
    full = {
        **result.model_dump(mode="json", by_alias=True),
        "method": config.method,
        "device": job.device,
        "precision": job.precision,
        "datasetHash": job.dataset_hash,
        "resumedFrom": Path(job.resume_from).name if job.resume_from else None,
        **job.notes,
    }
    storage.write_text(out.join("result.json"), json.dumps(full, indent=2, sort_keys=True))
    tracker.log_text(card, "README.md")
    tracker.log_text(json.dumps(full, indent=2, sort_keys=True), "result.json")
    return result


def _merged_model(job: Job, staging_adapter: storage.Uri):
    """The base with the adapter merged in. QLoRA reloads the base unquantised first."""
    model = job.trainer.model
    if job.config.method != "qlora":
        return model.merge_and_unload()
    import torch
    from peft import PeftModel

    from ..models import load_model_and_tokenizer

    base = load_model_and_tokenizer(job.config.base_model, trust_remote_code=job.config.trust_remote_code, dtype=torch.bfloat16).model
    with tempfile.TemporaryDirectory() as tmp:
        storage.download(staging_adapter, tmp)
        return PeftModel.from_pretrained(base, tmp).merge_and_unload()


def run(config: SftStageConfig, callbacks: tuple = ()) -> TrainingResult:
    """main() with extra TrainerCallbacks (tests use them to interrupt a run)."""
    with ProgressReporter.for_stage(config.progress_file) as reporter:
        reporter.update(force=True, phase="preparing")
        result = _run(config, prepare(config, callbacks, reporter))
        reporter.update(force=True, phase="done", eta_seconds=0)
        return result


def _run(config: SftStageConfig, job: Job) -> TrainingResult:
    tracker = Tracker(config)
    tags = {
        "mentor.kind": config.run.kind,
        "mentor.name": config.run.name,
        "mentor.namespace": config.run.namespace,
        "mentor.method": config.method,
        "mentor.dataset_hash": job.dataset_hash or "unknown",
        "mentor.base_model": config.base_model,
    }
    with tracker.run(tags):
        tracker.log_params(_flat_params(config))
        tracker.set_tags({"mentor.dataset_hash": job.dataset_hash or "unknown"})
        job.trainer.add_callback(trainer_callback(tracker))
        metrics = train(job, tracker)
        tracker.log_metrics({f"final_{k}": v for k, v in metrics.items()})
        return publish_outputs(job, metrics, tracker)


def _flat_params(config) -> dict:
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
