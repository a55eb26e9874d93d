"""The rlhf stage's run: the common frame every algorithm trains in.

1. device and precision (as sft), the seed;
2. the policy's tokenizer (a chat template is required: every algorithm trains on chat turns);
3. checkpoints under <output_uri>/checkpoints/ and the resume point (as sft);
4. the algorithm's ``build(run)`` (preference, grpo, ppo, reward_model, distill) makes its TRL
   trainer with the stage's callbacks: NaN guard, checkpoints, live progress (reward or margin);
5. held-out evaluation before and after training where the algorithm has a validation set;
6. MLflow: parameters, every logged metric (per reward function, KL, margins, accuracies);
7. publish: adapter/, model/ (merged), README.md, result.json (as sft).
"""

from __future__ import annotations

import importlib
import math

from ...config.rlhf import RLHFStageConfig
from ...config.sft import TrainingResult
from ...data.layout import manifest_hash
from ...errors import StageError
from ...progress import ProgressReporter
from ...tracking import Tracker, trainer_callback
from .. import checkpoints
from ..callbacks import nan_guard_callback, progress_callback
from ..device import check_device, choose_precision, weights_dtype
from ..job import Job
from ..publish import publish_outputs
from ..sft import fit, flat_params, run_tags, tokens_seen
from .context import RlhfRun

# spec.algorithm -> the module whose build(run) makes its trainer
ALGORITHMS = {
    "dpo": "preference",
    "orpo": "preference",
    "kto": "preference",
    "grpo": "grpo",
    "ppo": "ppo",
    "reward-model": "reward_model",
    "distill": "distill",
}
# logged values that describe the optimiser or the clock, not the model
_NOT_RESULTS = ("learning_rate", "grad_norm", "epoch", "total_flos", "step", "runtime", "per_second", "preparation_time")


def prepare(config: RLHFStageConfig, callbacks: tuple = (), reporter: ProgressReporter | None = None) -> Job:
    """Everything up to a ready trainer (the tests drive this directly)."""
    import torch

    from ...models import load_tokenizer

    reporter = reporter or ProgressReporter(config.progress_file)
    device = check_device(config)
    precision, dtype = choose_precision(config.hyperparameters.precision, device)
    torch.manual_seed(config.hyperparameters.seed)
    tokenizer = load_tokenizer(config.policy_model, "policy", trust_remote_code=config.trust_remote_code)
    if not getattr(tokenizer, "chat_template", None):
        raise StageError(
            f"the tokenizer of the policy {config.policy_model} has no chat template, which algorithm {config.algorithm} "
            "needs (it trains on chat turns): use a chat model or a FineTuneJob's output as policyRef"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    checkpoint_dir = checkpoints.checkpoint_directory(config)
    own = [nan_guard_callback(config.hyperparameters.learning_rate, precision), *checkpoints.checkpoint_callbacks(config)]
    own.append(progress_callback(reporter, tokens_seen))
    run = RlhfRun(
        config=config,
        device=device,
        precision=precision,
        dtype=weights_dtype(config.method, dtype),
        tokenizer=tokenizer,
        checkpoint_dir=checkpoint_dir,
        callbacks=[*own, *callbacks],
    )
    module = importlib.import_module(f"{__package__}.{ALGORITHMS[config.algorithm]}")
    built = module.build(run)
    model = built.trainer.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    notes = {"algorithm": config.algorithm, "trainableParameters": trainable, "parameters": total, **built.notes}
    return Job(
        config=config,
        device=device,
        precision=precision,
        trainer=built.trainer,
        model=model,
        tokenizer=tokenizer,
        checkpoint_dir=checkpoint_dir,
        resume_from=checkpoints.resume_point(config, checkpoint_dir, built.trainer.args),
        train_examples=built.train_examples,
        eval_examples=built.eval_examples,
        dataset_hash=manifest_hash(config.dataset_uri),
        base_uri=config.policy_model,
        notes=notes,
        stage="rlhf",
        card_lines=[f"- Algorithm: {config.algorithm} (beta {config.beta})", *built.card_lines],
        model_files=built.model_files,
    )


def train(job: Job, tracker: Tracker) -> dict[str, float]:
    """Trains; returns the final metrics: held-out ones before (``base_eval_*``) and after
    (``eval_*``), the last logged value of every training metric, and the first logged reward
    (``initial_*``) so a run's gain reads from its result."""
    trainer = job.trainer
    metrics: dict[str, float] = {}
    if trainer.eval_dataset is not None:
        base = _results(trainer.evaluate(metric_key_prefix="base_eval"))
        tracker.log_metrics(base, step=0)
        metrics.update(base)
    output = fit(job)
    metrics["train_loss"] = float(output.training_loss)
    history = [entry for entry in trainer.state.log_history if "train_runtime" not in entry]
    for entry in history:
        metrics.update({k: v for k, v in _results(entry).items() if not k.startswith("eval_")})
    for key, value in _results(history[0] if history else {}).items():
        if "reward" in key or "margin" in key:
            metrics[f"initial_{key}"] = value
    if trainer.eval_dataset is not None:
        metrics.update(_results(trainer.evaluate()))
    metrics["steps"] = float(trainer.state.global_step)
    runtime = float(output.metrics.get("train_runtime") or 0.0)
    if runtime > 0:
        metrics["train_runtime"] = round(runtime, 3)
        metrics["samples_per_second"] = float(output.metrics.get("train_samples_per_second") or 0.0)
    return metrics


def _results(values: dict) -> dict[str, float]:
    """The finite numbers in a log entry that describe the model."""
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and not any(n in k for n in _NOT_RESULTS)
    }


def run(config: RLHFStageConfig, callbacks: tuple = ()) -> TrainingResult:
    """main() with extra TrainerCallbacks (tests use them to interrupt a run)."""
    with ProgressReporter.for_stage(config.progress_file) as reporter:
        reporter.update(force=True, phase="preparing")
        job = prepare(config, callbacks, reporter)
        tracker = Tracker(config)
        with tracker.run(run_tags(config, job, algorithm=config.algorithm, policy_model=config.policy_model)):
            tracker.log_params(flat_params(config))
            job.trainer.add_callback(trainer_callback(tracker))
            metrics = train(job, tracker)
            tracker.log_metrics({f"final_{k}": v for k, v in metrics.items()})
            result = publish_outputs(job, metrics, tracker)
        reporter.update(force=True, phase="done", eta_seconds=0)
        return result


def main(config: RLHFStageConfig) -> TrainingResult:
    return run(config)
