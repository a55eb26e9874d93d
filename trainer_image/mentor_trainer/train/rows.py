"""The DomainDataset's splits as trainer-ready rows, and curriculum ordering.

The splits are read through :mod:`mentor_trainer.data.layout` (formats pretrain: ``text``;
sft/cot: ``messages``; every row has a ``difficulty`` column).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from ..data.layout import read_split
from ..errors import StageError
from ..prompts import rag_messages

log = logging.getLogger(__name__)

TASK_FORMATS = {"sft": ("sft", "cot"), "pretrain": ("pretrain",), "mixed": ("pretrain", "sft", "cot")}
CHAT_TASKS = ("sft", "mixed")


@dataclass
class Examples:
    rows: list[dict]  # trainer-ready rows: {"prompt","completion"} | {"messages"} | {"text"}
    difficulty: list[float] = field(default_factory=list)


def to_example(row: dict, task: str, completion_only: bool) -> dict | None:
    if task == "pretrain" or (task == "mixed" and "text" in row):
        text = (row.get("text") or "").strip()
        return {"text": text} if text else None
    messages = [{"role": m["role"], "content": m["content"]} for m in (row.get("messages") or []) if m.get("content")]
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        return None
    if completion_only:
        # prompt/completion: TRL masks the prompt tokens out of the loss.
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    return {"messages": messages}


def load_examples(dataset_uri: str, split: str, task: str, completion_only: bool) -> Examples:
    formats = TASK_FORMATS[task]
    rows = read_split(dataset_uri, split, formats)
    out = Examples(rows=[])
    for row in rows:
        example = to_example(row, task, completion_only)
        if example is not None:
            out.rows.append(example)
            out.difficulty.append(float(row.get("difficulty") or 0.0))
    return out


def curriculum_stages(difficulty: list[float], stages: list[float], seed: int) -> list[list[int]]:
    """Indices per curriculum stage: stage k holds the easiest ``stages[k]`` share of the
    examples (cumulative: easiest 30%, then the easiest 60%, then all), shuffled within the
    stage with ``seed``. Concatenated, the stages are the training order of one epoch."""
    order = sorted(range(len(difficulty)), key=lambda i: (difficulty[i], i))
    rng = random.Random(seed)
    result = []
    for share in stages:
        count = max(1, round(share * len(order))) if order else 0
        chosen = order[:count]
        rng.shuffle(chosen)
        result.append(chosen)
    return result


def _chat_turns(example: dict) -> list[dict] | None:
    if "messages" in example:
        return example["messages"]
    if "prompt" in example:
        return example["prompt"] + example["completion"]
    return None  # plain text


def with_retrieved_context(examples: Examples, search, top_k: int) -> Examples:
    """``examples`` plus, for every single-turn question, a copy whose prompt carries the top-k
    retrieved passages (``search(question, k)`` -> chunk dicts) in the shared RAG layout."""
    rows, difficulty = list(examples.rows), list(examples.difficulty)
    for example, score in zip(examples.rows, examples.difficulty):
        turns = _chat_turns(example)
        if turns is None:
            continue
        system = [t for t in turns if t["role"] == "system"]
        dialogue = [t for t in turns if t["role"] != "system"]
        if [t["role"] for t in dialogue] != ["user", "assistant"]:
            continue  # multi-turn: which turn the context belongs to is ambiguous
        passages = [chunk["text"] for chunk in search(dialogue[0]["content"], top_k)]
        prompt = system + rag_messages(dialogue[0]["content"], passages)
        rows.append({"prompt": prompt, "completion": dialogue[1:]} if "prompt" in example else {"messages": prompt + dialogue[1:]})
        difficulty.append(score)
    return Examples(rows, difficulty)


def as_text_pairs(examples: Examples, tokenizer) -> Examples:
    """Chat and plain-text examples in one form the trainer takes together: prompt/completion
    strings. Chat examples are rendered with the tokenizer's chat template (the loss stays on
    the answer when they came as prompt/completion); documents are a completion with an empty
    prompt, so every token of them trains."""
    bos = tokenizer.bos_token
    # A tokenizer that adds BOS to any text would double the BOS the template writes.
    adds_bos = bool(bos) and tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]

    def render(messages: list[dict], open_answer: bool) -> str:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=open_answer)
        return text[len(bos):] if adds_bos and text.startswith(bos) else text

    rows = []
    for example in examples.rows:
        if "text" in example:
            rows.append({"prompt": "", "completion": example["text"]})
            continue
        turns = _chat_turns(example)
        full = render(turns, open_answer=False).rstrip()
        prompt = render(example["prompt"], open_answer=True) if "prompt" in example else ""
        if not full.startswith(prompt):
            raise StageError("the chat template renders a prompt that is not a prefix of prompt + answer; use task sft")
        rows.append({"prompt": prompt, "completion": full[len(prompt):]})
    return Examples(rows, list(examples.difficulty))
