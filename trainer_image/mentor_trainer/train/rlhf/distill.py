"""algorithm distill: knowledge distillation from spec.teacherModel into the policy with TRL's GKD.

The student matches the teacher's whole next-token distribution on the answers of the dataset's
chat examples (sft/cot) and, for distillation.onPolicyFraction of the batches, on its own
samples (generation.maxNewTokens at generation.temperature). The divergence is TRL's generalized
JSD with beta = distillation.divergence (0 forward KL, 1 reverse KL), both distributions softened
by distillation.temperature. Held-out evaluation reports that divergence on the validation
answers as ``eval_loss`` (before: ``base_eval_loss``).

Teacher and student compare distributions token by token, so they must share one vocabulary.
"""

from __future__ import annotations

from ...errors import StageError
from .context import Built, RlhfRun
from .data import Rows, capped, chat_examples, require


def build(run: RlhfRun) -> Built:
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig

    config = run.config
    teacher_uri = config.teacher_model
    if teacher_uri is None:
        raise StageError("algorithm distill needs spec.teacherModel (the model to distil from)")
    _check_same_vocabulary(run, teacher_uri)
    train = require(chat_examples(config.dataset_uri, "train"), config.dataset_uri, "chat examples (sft/cot)", config.algorithm)
    train = capped(train, config.max_examples, config.hyperparameters.seed)
    validation = chat_examples(config.dataset_uri, "validation")
    student = run.policy()
    teacher = run.frozen(teacher_uri, "teacher model")
    if teacher.config.get_text_config().vocab_size != student.config.get_text_config().vocab_size:
        raise StageError(
            f"spec.teacherModel {teacher_uri} has vocab_size {teacher.config.get_text_config().vocab_size}, the policy "
            f"{student.config.get_text_config().vocab_size}: distillation compares next-token distributions, so use a "
            "teacher of the policy's model family (the same tokenizer)"
        )
    distillation, generation = config.distillation, config.generation
    args = run.arguments(
        GKDConfig,
        lmbda=distillation.on_policy_fraction,
        beta=distillation.divergence,
        temperature=generation.temperature,  # GKD's temperature is the sampling one
        max_new_tokens=generation.max_new_tokens,
        max_length=config.hyperparameters.max_seq_length,
        eval_strategy="no",  # the stage evaluates before and after training
    )
    trainer = distill_trainer_class()(
        model=student,
        teacher_model=teacher,
        softmax_temperature=distillation.temperature,
        args=args,
        train_dataset=Dataset.from_list(_conversations(train)),
        eval_dataset=Dataset.from_list(_conversations(validation)) if validation.rows else None,
        processing_class=run.tokenizer,
        callbacks=run.callbacks,
    )
    return Built(
        trainer=trainer,
        train_examples=len(train.rows),
        eval_examples=len(validation.rows),
        notes={
            "teacherModel": teacher_uri,
            "distillation": {
                "divergence": distillation.divergence,
                "onPolicyFraction": distillation.on_policy_fraction,
                "temperature": distillation.temperature,
            },
            "skipped": dict(train.skipped),
        },
        card_lines=[
            f"- Distilled from `{teacher_uri}` (TRL GKD): generalized JSD beta {distillation.divergence} "
            f"(0 forward KL, 1 reverse KL), temperature {distillation.temperature}, "
            f"{distillation.on_policy_fraction:.0%} of batches on the student's own samples",
        ],
    )


def _check_same_vocabulary(run: RlhfRun, teacher_uri: str) -> None:
    """Fails before any weights load when the teacher's tokenizer is not the policy's."""
    from ...models import load_tokenizer

    teacher = load_tokenizer(teacher_uri, "teacher model", trust_remote_code=run.config.trust_remote_code)
    if teacher.get_vocab() != run.tokenizer.get_vocab():
        raise StageError(
            f"spec.teacherModel {teacher_uri} has another tokenizer vocabulary ({len(teacher)} tokens) than the policy "
            f"{run.config.policy_model} ({len(run.tokenizer)}): distillation compares next-token distributions token "
            "by token, so use a teacher of the policy's model family (the same tokenizer)"
        )


def _conversations(rows: Rows) -> list[dict]:
    # TRL's ChatML collator reads whole conversations from "messages" (the last turn is the answer)
    return [{"messages": row["prompt"] + row["completion"]} for row in rows.rows]


def distill_trainer_class():
    """GKDTrainer whose divergence uses distillation.temperature (made on first use: TRL imports torch)."""
    from trl.experimental.gkd import GKDTrainer

    class Distill(GKDTrainer):
        def __init__(self, *args, softmax_temperature: float, **kwargs):
            self.softmax_temperature = softmax_temperature
            super().__init__(*args, **kwargs)

        def generalized_jsd_loss(self, *args, **kwargs):
            # GKD's compute_loss leaves the softmax temperature at 1
            return GKDTrainer.generalized_jsd_loss(*args, temperature=self.softmax_temperature, **kwargs)

    return Distill
