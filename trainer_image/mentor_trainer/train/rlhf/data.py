"""The DomainDataset's splits as the rows TRL's preference, RL and distillation trainers take.

- preference pairs (format ``preference``: prompt/chosen/rejected strings, optional
  chosen_safe/rejected_safe labels) as conversational pairs; a pair whose prompt is empty or
  whose chosen equals its rejected teaches nothing and is skipped and counted;
- KTO's unpaired rows derived from them (chosen: desirable, rejected: undesirable);
- prompts with verifiable answers from the QA formats (``sft``/``cot``: the final answer,
  as the evaluation extracts it), else the preference prompts without answers;
- chat examples (prompt/completion) for distillation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ...data.layout import read_split
from ...errors import StageError
from ...evaluate.text import extract_answer
from ..rows import Examples, load_examples
from ..splits import subsample

SAFETY_LABELS = ("chosen_safe", "rejected_safe")


@dataclass
class Rows:
    rows: list[dict]
    skipped: Counter = field(default_factory=Counter)  # reason -> count


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def preference_pairs(dataset_uri: str, split: str) -> Rows:
    out = Rows([])
    for row in read_split(dataset_uri, split, ("preference",)):
        prompt, chosen, rejected = ((row.get(k) or "").strip() for k in ("prompt", "chosen", "rejected"))
        if not prompt:
            out.skipped["empty-prompt"] += 1
        elif not chosen or not rejected:
            out.skipped["empty-answer"] += 1
        elif chosen == rejected:
            out.skipped["chosen-equals-rejected"] += 1
        else:
            pair = {"prompt": _user(prompt), "chosen": _assistant(chosen), "rejected": _assistant(rejected)}
            for label in SAFETY_LABELS:
                if row.get(label) is not None:
                    pair[label] = bool(row[label])
            out.rows.append(pair)
    return out


def unpaired(pairs: Rows) -> Rows:
    """KTO's rows: each pair's chosen answer labelled desirable, its rejected one undesirable."""
    rows = []
    for pair in pairs.rows:
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        rows.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    return Rows(rows, Counter(pairs.skipped))


def prompts(dataset_uri: str, split: str) -> Rows:
    """Prompts for online algorithms, each with its reference ``answer`` where the dataset has
    one (QA formats), else the preference prompts with ``answer`` None."""
    out = Rows([])
    seen: set[str] = set()
    for example in chat_examples(dataset_uri, split).rows:
        question = example["prompt"][-1]["content"]
        if question not in seen:  # the same question in sft and cot format: one prompt
            seen.add(question)
            out.rows.append({"prompt": example["prompt"], "answer": extract_answer(example["completion"][0]["content"])})
    if not out.rows:
        for pair in preference_pairs(dataset_uri, split).rows:
            if pair["prompt"][0]["content"] not in seen:
                seen.add(pair["prompt"][0]["content"])
                out.rows.append({"prompt": pair["prompt"], "answer": None})
    return out


def chat_examples(dataset_uri: str, split: str) -> Rows:
    """Prompt/completion chat examples (QA formats), as the sft stage reads them."""
    return Rows(load_examples(dataset_uri, split, "sft", completion_only=True).rows)


def capped(rows: Rows, limit: int | None, seed: int) -> Rows:
    """At most ``limit`` rows, a seeded random choice kept in dataset order (as sft's maxExamples)."""
    if not limit or len(rows.rows) <= limit:
        return rows
    return Rows(subsample(Examples(rows.rows, [0.0] * len(rows.rows)), limit, seed).rows, rows.skipped)


def require(rows: Rows, dataset_uri: str, what: str, algorithm: str) -> Rows:
    """``rows`` unless empty: then an error naming the dataset, what was missing and why."""
    if not rows.rows:
        skipped = f" ({', '.join(f'{n} skipped: {r}' for r, n in rows.skipped.items())})" if rows.skipped else ""
        raise StageError(
            f"dataset {dataset_uri} has no {what} in train/, which algorithm {algorithm} trains on{skipped}: "
            "add them to the DomainDataset (spec.formats) or choose another algorithm"
        )
    return rows
