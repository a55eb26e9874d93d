"""Curriculum training: the training rows stage by stage (each stage the easiest share of the
examples, :func:`~mentor_trainer.train.rows.curriculum_stages`), tokenized and packed one
stage at a time so packing never mixes stages, and read in that order (the public
``train_sampling_strategy="sequential"``, set in :mod:`.arguments`)."""

from __future__ import annotations

from ..config.sft import Curriculum, SftStageConfig
from .rows import Examples, curriculum_stages

STAGE_COLUMN = "_curriculum_stage"


def enabled_curriculum(config: SftStageConfig) -> Curriculum | None:
    return config.curriculum if config.curriculum and config.curriculum.enabled else None


def staged_rows(examples: Examples, curriculum: Curriculum, seed: int) -> list[dict]:
    """The training rows in curriculum order, each marked with its stage and difficulty."""
    rows: list[dict] = []
    for number, indices in enumerate(curriculum_stages(examples.difficulty, curriculum.stages, seed)):
        rows += [{**examples.rows[i], STAGE_COLUMN: number, "difficulty": examples.difficulty[i]} for i in indices]
    return rows


def curriculum_trainer_class():
    """SFTTrainer that prepares a training set with a stage column one stage at a time (every
    other dataset as SFTTrainer does).

    TRL has no public hook for this, so it overrides the private SFTTrainer._prepare_dataset;
    tests/trainer/test_sft.py fails, naming it, when TRL changes that method's signature."""
    from datasets import concatenate_datasets
    from trl import SFTTrainer

    class CurriculumSFTTrainer(SFTTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
            if dataset_name != "train" or STAGE_COLUMN not in dataset.column_names:
                return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
            parts = []
            for stage in sorted(set(dataset[STAGE_COLUMN])):
                part = dataset.filter(lambda row, s=stage: row[STAGE_COLUMN] == s)
                prepared = super()._prepare_dataset(part, processing_class, args, packing, formatting_func, f"{dataset_name} stage {stage}")
                if STAGE_COLUMN not in prepared.column_names:  # packing keeps only the token columns
                    prepared = prepared.add_column(STAGE_COLUMN, [stage] * len(prepared))
                parts.append(prepared)
            return concatenate_datasets(parts)

    return CurriculumSFTTrainer
