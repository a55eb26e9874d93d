"""The examples one run trains and validates on: the DomainDataset's train and validation
splits, a validation share held out of train when the dataset has none, the cap on training
examples, copies with retrieved passages, and mixed tasks rendered as one text-pair form."""

from __future__ import annotations

import random

from ..config.sft import SftStageConfig
from ..errors import StageError
from .rows import CHAT_TASKS, TASK_FORMATS, Examples, as_text_pairs, load_examples, with_retrieved_context


def completion_only_loss(config: SftStageConfig) -> bool:
    """Whether the loss is on the answers only (chat tasks that ask for it)."""
    return config.data.completion_only_loss and config.data.task in CHAT_TASKS


def training_splits(config: SftStageConfig, tokenizer) -> tuple[Examples, Examples]:
    """(train, validation) as the trainer gets them; no training examples is an error."""
    task, data, seed = config.data.task, config.data, config.hyperparameters.seed
    completion_only = completion_only_loss(config)
    train = load_examples(config.dataset_uri, "train", task, completion_only)
    validation = load_examples(config.dataset_uri, "validation", task, completion_only)
    if not train.rows:
        formats = "/".join(TASK_FORMATS[task])
        raise StageError(
            f"dataset {config.dataset_uri} has zero {formats} training examples in train/: "
            f"add documents or QA pairs to the DomainDataset, include format(s) {formats} in spec.formats, "
            "or change data.task"
        )
    if not validation.rows and data.validation_fraction:
        train, validation = hold_out(train, data.validation_fraction, seed)
    if data.max_examples and len(train.rows) > data.max_examples:
        train = subsample(train, data.max_examples, seed)
    if data.retrieved_context:
        from ..data.index import Retriever

        search = Retriever.load(config.dataset_uri).search
        train = with_retrieved_context(train, search, data.retrieved_context.top_k)
        validation = with_retrieved_context(validation, search, data.retrieved_context.top_k)
    if task == "mixed":  # documents and chat examples together: one prompt/completion form
        train, validation = as_text_pairs(train, tokenizer), as_text_pairs(validation, tokenizer)
    return train, validation


def hold_out(examples: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    """(kept, held): a seeded random ``fraction`` of the examples (at least one) held out in
    dataset order; the kept ones stay in the shuffled order."""
    order = _shuffled(len(examples.rows), seed)
    cut = max(1, int(len(order) * fraction))
    return _subset(examples, order[cut:]), _subset(examples, sorted(order[:cut]))


def subsample(examples: Examples, count: int, seed: int) -> Examples:
    """A seeded random ``count`` of the examples, in their order."""
    return _subset(examples, sorted(_shuffled(len(examples.rows), seed)[:count]))


def _shuffled(count: int, seed: int) -> list[int]:
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order


def _subset(examples: Examples, indices: list[int]) -> Examples:
    return Examples([examples.rows[i] for i in indices], [examples.difficulty[i] for i in indices])
