"""algorithm reward-model: the design notes' reward model, one backbone with two heads.

A sequence-classification model with two logits, quality (0) and safety (1), trained with TRL's
RewardTrainer: a Bradley-Terry loss on the quality logit (chosen above rejected) plus a binary
cross-entropy on the safety logit for every answer that carries a safety label
(chosenSafe/rejectedSafe in the dataset; unlabelled answers add nothing to it). Its score is
quality x rewardHeads.qualityWeight + safety x rewardHeads.safetyWeight, written beside the
weights as mentor-reward.json (:mod:`.scoring` reads it back).

Held-out evaluation (validation pairs) reports ``accuracy``: the share of pairs whose chosen
answer scores above the rejected one, and ``quality_accuracy`` / ``safety_accuracy`` per head.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import StageError
from .context import Built, RlhfRun
from .data import SAFETY_LABELS, Rows, capped, preference_pairs, require
from .scoring import HEADS, REWARD_FILE, reward_file


def build(run: RlhfRun) -> Built:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig

    config = run.config
    heads = config.reward_heads
    train = require(preference_pairs(config.dataset_uri, "train"), config.dataset_uri, "preference pairs", config.algorithm)
    train = capped(train, config.max_examples, config.hyperparameters.seed)
    validation = preference_pairs(config.dataset_uri, "validation")
    labelled = _labelled_answers(train)
    if heads.safety_weight > 0 and not labelled:
        raise StageError(
            f"spec.rewardHeads.safetyWeight is {heads.safety_weight} but no training pair in {config.dataset_uri} has a "
            "safety label to train the safety head on: add chosenSafe/rejectedSafe booleans to the preference records, "
            "or set rewardHeads.safetyWeight to 0"
        )
    model = run.policy(
        task_type="SEQ_CLS", model_class=AutoModelForSequenceClassification, model_kwargs={"num_labels": len(HEADS)}
    )
    model.config.pad_token_id = run.tokenizer.pad_token_id  # the heads read the last non-pad token
    model.config.id2label = dict(enumerate(HEADS))
    model.config.label2id = {name: i for i, name in enumerate(HEADS)}
    args = run.arguments(
        RewardConfig,
        max_length=config.hyperparameters.max_seq_length,
        eval_strategy="no",  # the stage evaluates before and after training
    )
    trainer = reward_trainer_class()(
        model=model,
        weights=(heads.quality_weight, heads.safety_weight),
        args=args,
        train_dataset=Dataset.from_list(_with_labels(train)),
        eval_dataset=Dataset.from_list(_with_labels(validation)) if validation.rows else None,
        processing_class=run.tokenizer,
        callbacks=run.callbacks,
    )
    eval_examples = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
    return Built(
        trainer=trainer,
        train_examples=len(trainer.train_dataset),
        eval_examples=eval_examples,
        notes={
            "rewardHeads": {"qualityWeight": heads.quality_weight, "safetyWeight": heads.safety_weight},
            "safetyLabels": labelled,
            "skipped": dict(train.skipped),
        },
        card_lines=[
            f"- Reward model: one backbone, heads {list(HEADS)}; score = {heads.quality_weight} x quality + "
            f"{heads.safety_weight} x safety ({REWARD_FILE})",
            f"- Quality head: Bradley-Terry on {len(trainer.train_dataset)} preference pairs; "
            f"safety head: binary cross-entropy on {labelled} labelled answers",
        ],
        model_files={REWARD_FILE: reward_file(heads.quality_weight, heads.safety_weight)},
    )


def _labelled_answers(pairs: Rows) -> int:
    return sum(pair.get(label) is not None for pair in pairs.rows for label in SAFETY_LABELS)


def _with_labels(pairs: Rows) -> list[dict]:
    # every row has both label columns (None where unlabelled) so the dataset's columns are fixed
    return [{**pair, **{label: pair.get(label) for label in SAFETY_LABELS}} for pair in pairs.rows]


@dataclass
class PairsWithSafety:
    """TRL's preference collator (the chosen answers, then the rejected ones) plus each answer's
    safety label (1.0 safe) and whether it has one, in the same order."""

    pairs: object  # trl.trainer.reward_trainer.DataCollatorForPreference

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        batch = self.pairs([{k: e[k] for k in ("chosen_ids", "rejected_ids")} for e in examples])
        labels = [e["chosen_safe"] for e in examples] + [e["rejected_safe"] for e in examples]
        batch["safety_labels"] = torch.tensor([float(bool(v)) for v in labels])
        batch["safety_mask"] = torch.tensor([v is not None for v in labels])
        return batch


def reward_trainer_class():
    """The RewardTrainer subclass (made on first use: TRL imports torch)."""
    import torch
    import torch.nn.functional as F
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    class TwoHead(RewardTrainer):
        """RewardTrainer with a quality and a safety logit (see the module doc)."""

        def __init__(self, model, weights: tuple[float, float], **kwargs):
            self.weights = weights
            # RewardTrainer accepts only single-logit models; ours has two, which compute_loss reads apart
            heads, names = model.config.num_labels, model.config.id2label
            model.config.num_labels = 1
            try:
                super().__init__(model=model, **kwargs)
            finally:
                model.config.num_labels, model.config.id2label = heads, names
            self.data_collator = PairsWithSafety(DataCollatorForPreference(pad_token_id=self.processing_class.pad_token_id))
            self._metric_prefix = "eval"

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:  # keep the safety labels for the collator
                self._signature_columns = ["chosen_ids", "rejected_ids", *SAFETY_LABELS]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if model.training else "eval"
            safe, labelled = inputs.pop("safety_labels"), inputs.pop("safety_mask")
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
            quality, safety = outputs.logits.float().unbind(-1)
            quality_chosen, quality_rejected = quality.chunk(2)
            loss = -F.logsigmoid(quality_chosen - quality_rejected).mean()
            if labelled.any():
                loss = loss + F.binary_cross_entropy_with_logits(safety[labelled], safe[labelled])
            with torch.no_grad():
                score_chosen, score_rejected = (self.weights[0] * quality + self.weights[1] * safety).chunk(2)
                self._record(mode, "accuracy", (score_chosen > score_rejected).float().mean())
                self._record(mode, "margin", (score_chosen - score_rejected).mean())
                self._record(mode, "quality_accuracy", (quality_chosen > quality_rejected).float().mean())
                if labelled.any():
                    agree = (safety[labelled] > 0) == (safe[labelled] > 0.5)
                    self._record(mode, "safety_accuracy", agree.float().mean())
            return (loss, outputs) if return_outputs else loss

        def _record(self, mode: str, name: str, value) -> None:
            self._metrics[mode][name].append(self.accelerator.gather_for_metrics(value).mean().item())

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
            self._metric_prefix = metric_key_prefix
            try:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            finally:
                self._metric_prefix = "eval"

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            # RewardTrainer.log names its own eval metrics eval_* whatever the prefix; the stage's
            # baseline evaluation asks for base_eval_*
            if not self.model.training and self._metric_prefix != "eval":
                logs.update({f"{self._metric_prefix}_{k}": sum(v) / len(v) for k, v in self._metrics["eval"].items()})
                self._metrics["eval"].clear()
            super().log(logs, start_time)

    return TwoHead

