"""TrainerCallbacks of a run: live progress for the resource's status, and a stop with the
reason when the loss stops being a number."""

from __future__ import annotations

import math
import time

from ..errors import StageError
from ..progress import ProgressReporter


def progress_callback(reporter: ProgressReporter, tokens_fn):
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Reports step, total_steps, epoch, loss, eval_loss, reward or reward_margin, tokens_per_second and
        eta_seconds on each log."""

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
            # TRL's names: GRPO logs the mean total reward, DPO/ORPO/KTO/reward models the margin
            for key, name in (("reward", "reward"), ("rewards/margins", "reward_margin"), ("margin", "reward_margin")):
                if logs.get(key) is not None:
                    fields[name] = round(float(logs[key]), 6)
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
