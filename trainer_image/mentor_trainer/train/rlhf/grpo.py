"""GRPO (TRL's GRPOTrainer): the policy samples a group of completions per prompt, each scored
by the weighted reward terms (:mod:`.rewards`); a completion's advantage is its reward against
its group's, so no value model is needed. A KL term (beta) to the starting policy keeps it close.
"""

from __future__ import annotations

from .context import Built, RlhfRun
from .data import Rows, capped, prompts, require
from .rewards import RewardTerm, reward_terms


def online_arguments(run: RlhfRun, terms: list[RewardTerm]) -> dict:
    """GRPOConfig settings GRPO and PPO share: sampling, the KL weight, the reward weights."""
    generation = run.config.generation
    return dict(
        num_generations=generation.num_generations,
        max_completion_length=generation.max_new_tokens,
        temperature=generation.temperature,
        beta=run.config.beta,
        reward_weights=[term.weight for term in terms],
        logging_steps=1,  # the reward curve is the run's main result
        remove_unused_columns=False,  # reward terms read the dataset's columns (the reference answer)
    )


def training_prompts(run: RlhfRun) -> Rows:
    config = run.config
    rows = prompts(config.dataset_uri, "train")
    rows = capped(rows, config.max_examples, config.hyperparameters.seed)
    return require(rows, config.dataset_uri, "prompts", config.algorithm)


def chat_template_kwargs(run: RlhfRun) -> dict:
    """What spec.extra passes to the chat template (e.g. thinking: true opens a reasoning block)."""
    return dict(run.config.extra.get("chat_template_kwargs") or {})


def describe(terms: list[RewardTerm], rows: Rows, run: RlhfRun) -> tuple[dict, list[str]]:
    """result.json notes and model card lines on the reward and the prompts."""
    notes = {
        "rewardTerms": [{"name": t.name, "spec": t.label, "weight": t.weight, "rewards": t.description} for t in terms],
        "prompts": len(rows.rows),
        "skipped": dict(rows.skipped),
    }
    skipped = f" ({sum(rows.skipped.values())} rows skipped: {dict(rows.skipped)})" if rows.skipped else ""
    generation = run.config.generation
    lines = [
        "- Reward: " + " + ".join(f"{t.weight:g} x {t.name} ({t.description})" for t in terms),
        f"- Prompts: {len(rows.rows)} from the training split{skipped}; "
        f"{generation.num_generations} completions of up to {generation.max_new_tokens} tokens each "
        f"(temperature {generation.temperature:g})",
    ]
    return notes, lines


def build(run: RlhfRun) -> Built:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    rows = training_prompts(run)
    terms = reward_terms(run, chat_template_kwargs(run))
    trainer = GRPOTrainer(
        model=run.policy(),
        reward_funcs=[term.function for term in terms],
        args=run.arguments(GRPOConfig, **online_arguments(run, terms)),
        train_dataset=Dataset.from_list(rows.rows),
        processing_class=run.tokenizer,
        callbacks=run.callbacks,
    )
    notes, lines = describe(terms, rows, run)
    lines.append("- Advantage: the reward against its group's (GRPO)")
    return Built(trainer=trainer, train_examples=len(rows.rows), notes=notes, card_lines=lines)
