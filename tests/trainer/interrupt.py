"""TrainerCallbacks the training tests interrupt and watch runs with."""

from __future__ import annotations


class Killed(Exception):
    pass


def kill_after_save(step: int):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step >= step:
                raise Killed(f"killed after the checkpoint of step {state.global_step}")

    return Kill()


def record_steps(into: list):
    from transformers import TrainerCallback

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            into.append(state.global_step)

    return Record()
