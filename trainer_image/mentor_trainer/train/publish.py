"""What a finished run leaves under output_uri: adapter/ and/or model/ (the adapter merged
into the base when asked), README.md (the model card) and result.json; the model registered
in MLflow when asked."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .. import storage
from ..config.sft import TrainingResult
from ..tracking import Tracker
from .job import Job
from .methods import ADAPTER_METHODS


def publish_outputs(job: Job, metrics: dict, tracker: Tracker) -> TrainingResult:
    config = job.config
    out = storage.parse(config.output_uri)
    model = job.trainer.model
    rounded = {k: round(v, 6) for k, v in metrics.items()}
    weights = full_state_dict(job.trainer)
    if not job.trainer.is_world_process_zero():
        return TrainingResult(mlflow_run_id=tracker.run_id, metrics=rounded)  # rank 0 writes
    adapter_uri = None
    if config.method in ADAPTER_METHODS:
        adapter = out.join("adapter")
        with storage.publish(adapter, {"kind": "adapter", "base": job.base_uri}) as staging:
            _save(job, model, staging, weights)
        adapter_uri = model_uri = str(adapter) + "/"
        if config.output.merge_adapter:
            merged = _merged_model(job, staging_adapter=adapter)
            with storage.publish(out.join("model"), {"kind": "model", "base": job.base_uri}) as staging:
                _save(job, merged, staging)
            model_uri = str(out.join("model")) + "/"
    else:
        with storage.publish(out.join("model"), {"kind": "model", "base": job.base_uri}) as staging:
            _save(job, model, staging, weights)
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


def full_state_dict(trainer) -> dict | None:
    """The trained weights, whole. Under DeepSpeed ZeRO-3 (or FSDP) each rank holds a shard of
    every weight, so a model's own state_dict (what save_pretrained writes) lacks most of them;
    accelerate gathers them, a collective that every rank must call (rank 0 gets the result)."""
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)


def _save(job: Job, model, staging, state_dict: dict | None = None) -> None:
    """``model`` with ``state_dict`` (gathered weights; default: the model's own), tokenizer
    and the stage's extra files."""
    model.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
    job.tokenizer.save_pretrained(staging)
    for name, text in job.model_files.items():
        (Path(staging) / name).write_text(text)


def model_card(job: Job, metrics: dict, result: TrainingResult) -> str:
    c = job.config
    hp = c.hyperparameters
    lines = [
        f"# {c.run.name}",
        "",
        f"Trained by `mentor-trainer {job.stage}` for {c.run.kind} `{c.run.namespace}/{c.run.name}` (generation {c.run.generation}).",
        "",
        f"- Base model: `{job.base_uri}`",
        f"- Dataset: `{c.dataset_uri}` (content hash `{job.dataset_hash or 'unknown'}`), "
        f"{job.train_examples} training / {job.eval_examples} validation examples",
        *job.card_lines,
        f"- Method: {c.method}"
        + (f" (r={c.lora.r}, alpha={c.lora.alpha}, targets {', '.join(c.lora.target_modules)})" if c.lora and c.method in ADAPTER_METHODS else ""),
        f"- Trainable parameters: {job.notes.get('trainableParameters'):,} of {job.notes.get('parameters'):,}",
        f"- Hyper-parameters: lr {hp.learning_rate} ({hp.lr_scheduler}), batch {hp.per_device_batch_size} x "
        f"{hp.gradient_accumulation_steps}, max length {hp.max_seq_length}, precision {job.precision} on {job.device}",
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


def _merged_model(job: Job, staging_adapter: storage.Uri):
    """The base with the adapter merged in. QLoRA reloads the base unquantised first, and so
    does a distributed run: its rank 0 may hold only shards of the base (ZeRO-3)."""
    model = job.trainer.model
    if job.config.method != "qlora" and job.trainer.args.world_size == 1:
        return model.merge_and_unload()
    import torch
    from peft import PeftModel

    from ..models import load_model_and_tokenizer

    dtype = torch.bfloat16 if job.config.method == "qlora" else model.dtype
    base = load_model_and_tokenizer(job.base_uri, trust_remote_code=job.config.trust_remote_code, dtype=dtype).model
    with tempfile.TemporaryDirectory() as tmp:
        storage.download(staging_adapter, tmp)
        return PeftModel.from_pretrained(base, tmp).merge_and_unload()
