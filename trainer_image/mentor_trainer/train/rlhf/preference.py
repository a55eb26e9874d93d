"""Preference optimisation on the dataset's pairs with TRL: DPO, ORPO and KTO.

DPO and KTO compare the policy with a frozen reference: spec.referenceModel when given, else
the policy's starting point (for LoRA the same weights with the adapter switched off, so no
second copy is loaded). ORPO needs no reference. KTO trains on unpaired answers: each pair's
chosen one labelled desirable, its rejected one undesirable. The validation pairs are the
held-out set the stage evaluates before and after training (log-probability and reward
margins, and the share of pairs ranked right)."""

from __future__ import annotations

from ...config.rlhf import RLHFStageConfig
from . import data
from .context import Built, RlhfRun


def trainer_classes(algorithm: str):
    """(TRL trainer, its config) for a preference algorithm."""
    if algorithm == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer, DPOConfig
    if algorithm == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOTrainer, KTOConfig
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    return ORPOTrainer, ORPOConfig


def build(run: RlhfRun) -> Built:
    from datasets import Dataset

    config: RLHFStageConfig = run.config
    uri, algorithm = config.dataset_uri, config.algorithm
    train = data.capped(data.preference_pairs(uri, "train"), config.max_examples, config.hyperparameters.seed)
    data.require(train, uri, "usable preference pairs (format preference)", algorithm)
    validation = data.preference_pairs(uri, "validation")
    skipped = train.skipped + validation.skipped
    if algorithm == "kto":
        train, validation = data.unpaired(train), data.unpaired(validation)
    trainer_class, config_class = trainer_classes(algorithm)
    kwargs = {}
    if algorithm != "orpo" and config.reference_model:
        kwargs["ref_model"] = run.frozen(config.reference_model, "reference model")
    eval_rows = [_without_labels(row) for row in validation.rows]
    trainer = trainer_class(
        model=run.policy(),
        args=run.arguments(
            config_class,
            beta=config.beta,
            max_length=config.hyperparameters.max_seq_length,
            **_reference_options(algorithm),
        ),
        train_dataset=Dataset.from_list([_without_labels(row) for row in train.rows]),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=run.tokenizer,
        callbacks=run.callbacks,
        **kwargs,
    )
    reference = "none" if algorithm == "orpo" else (config.reference_model or "the policy's starting point")
    return Built(
        trainer=trainer,
        train_examples=len(train.rows),
        eval_examples=len(eval_rows),
        notes={"skipped": dict(skipped), "referenceModel": reference},
        card_lines=[
            f"- Preference data: {len(train.rows)} training / {len(eval_rows)} held-out "
            + ("answers (KTO, unpaired)" if algorithm == "kto" else "pairs")
            + (f"; skipped {dict(skipped)}" if skipped else ""),
            f"- Reference model: {reference}",
        ],
    )


def _reference_options(algorithm: str) -> dict:
    # The reference's log-probabilities never change: computing them once before training
    # saves a forward pass per step (TRL's default recomputes them every step).
    if algorithm == "dpo":
        return {"precompute_ref_log_probs": True}
    return {}


def _without_labels(row: dict) -> dict:
    """The row as the preference trainers take it (safety labels are for reward models)."""
    return {k: v for k, v in row.items() if k not in data.SAFETY_LABELS}
