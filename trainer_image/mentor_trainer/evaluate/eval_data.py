"""What an evaluation runs on: QA items, domain and general texts, multiple-choice items.

QA comes from ``qaUri`` (held-out JSONL/CSV) or else the dataset's test split (the chat
examples: the last user turn is the question, the final assistant turn the reference, with
any ``<think>`` block removed); domain text is the test split's pretrain chunks. Records
that cannot be used are skipped and counted, never silently lost.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field

from .. import storage
from ..errors import StageError
from ..data.ingest import iter_object
from ..data.layout import read_split
from ..data.records import Dropped, QARecord
from ..prompts import question_messages, rag_messages
from .text import extract_answer

log = logging.getLogger(__name__)

CHOICE_LETTERS = "ABCDEFGHIJ"


@dataclass
class QAItem:
    id: str
    question: str
    reference: str
    evidence: str | None = None  # the passage that answers it, for retrieval recall
    fact: str | None = None  # the key fact an answer must state ("12|twelve": alternatives)

    def prompt(self, passages: list[str] | None = None) -> list[dict]:
        return question_messages(self.question) if passages is None else rag_messages(self.question, passages)


@dataclass
class ChoiceItem:
    id: str
    question: str
    options: list[str]
    answer: int  # index into options

    def prompt(self) -> list[dict]:
        lines = [self.question, ""] + [f"{CHOICE_LETTERS[i]}. {o}" for i, o in enumerate(self.options)]
        return [{"role": "user", "content": "\n".join(lines) + "\nAnswer:"}]


@dataclass
class EvalData:
    qa: list[QAItem] = field(default_factory=list)
    domain_texts: list[tuple[str, str]] = field(default_factory=list)  # (id, text)
    general_texts: list[tuple[str, str]] = field(default_factory=list)
    choices: list[ChoiceItem] = field(default_factory=list)
    choices_built_from_qa: bool = False
    skipped: Counter = field(default_factory=Counter)  # "<input>: <reason>" -> count


def load_eval_data(config) -> EvalData:
    """Everything the selected suites need, capped at ``maxExamples`` per kind (deterministic)."""
    data = EvalData()
    if not storage.exists_complete(config.dataset_uri):
        raise StageError(f"dataset {config.dataset_uri} is missing or incomplete (no _SUCCESS marker); run its DomainDataset first")
    data.qa = _qa_from_uri(config.qa_uri, data.skipped) if config.qa_uri else _qa_from_split(config.dataset_uri, data.skipped)
    data.domain_texts = [
        (f"test-text-{i}", row["text"]) for i, row in enumerate(read_split(config.dataset_uri, "test", ("pretrain",))) if row.get("text")
    ]
    if config.general_text_uri:
        data.general_texts = _general_texts(config.general_text_uri)
    if config.multiple_choice_uri:
        data.choices = _choices_from_uri(config.multiple_choice_uri, data.skipped)
    else:
        data.choices, data.choices_built_from_qa = choices_from_qa(data.qa), True
    cap = config.max_examples
    if cap:
        data.qa, data.domain_texts, data.general_texts, data.choices = (
            data.qa[:cap], data.domain_texts[:cap], data.general_texts[:cap], data.choices[:cap]
        )
    for items in (data.qa, data.choices):
        _unique_ids(items)
    for reason, count in data.skipped.items():
        log.warning("skipped %d evaluation record(s): %s", count, reason)
    return data


def _unique_ids(items) -> None:
    """Per-example values are paired by id: a repeated id gets a #n suffix."""
    seen: Counter = Counter()
    for item in items:
        seen[item.id] += 1
        if seen[item.id] > 1:
            item.id = f"{item.id}#{seen[item.id]}"


def _qa_from_split(dataset_uri: str, skipped: Counter) -> list[QAItem]:
    items = []
    for i, row in enumerate(read_split(dataset_uri, "test", ("sft", "cot"))):
        messages = row.get("messages") or []
        questions = [m["content"] for m in messages if m.get("role") == "user"]
        answers = [m["content"] for m in messages if m.get("role") == "assistant"]
        reference = extract_answer(answers[-1]) if answers else ""
        if not questions or not reference:
            skipped["test split: chat example without a question or an answer"] += 1
            continue
        items.append(QAItem(id=str(row.get("doc_id") or f"test-{i}"), question=questions[-1], reference=reference))
    return items


def _records(uri: str) -> list[tuple[int, dict | None]]:
    """(line number, record or None when unreadable) of a JSONL file."""
    try:
        text = storage.read_text(uri)
    except UnicodeDecodeError:
        raise StageError(f"{uri} is not UTF-8 text") from None
    out: list[tuple[int, dict | None]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        out.append((n, record if isinstance(record, dict) else None))
    return out


class _HeldOutSource:
    """The data stage's source fields its QA readers need."""

    name = "qaUri"
    group = "domain"
    format = "auto"
    encoding = "auto"


def _qa_from_uri(uri: str, skipped: Counter) -> list[QAItem]:
    """Held-out QA through the data stage's own readers (JSONL, JSON arrays, CSV; any text
    encoding; the same question/answer field names as training data); a directory works too."""
    items = []
    for info in storage.list_objects(uri):
        for unit in iter_object(info, _HeldOutSource):
            if isinstance(unit, QARecord):
                items.append(
                    QAItem(unit.id.rsplit("#", 1)[-1], unit.question, extract_answer(unit.answer), unit.evidence or None, unit.fact or None)
                )
            else:
                detail = unit.reason if isinstance(unit, Dropped) else "not a question-answer record"
                skipped[f"{uri}: {detail}"] += 1
    return items


def _choices_from_uri(uri: str, skipped: Counter) -> list[ChoiceItem]:
    """MedQA-style records: options as a list or a {"A": ...} map; answer as a letter, an
    index (answer_idx) or the option text."""
    items = []
    for line, record in _records(uri):
        record = record or {}
        options = record.get("options")
        keys: list[str] = []
        if isinstance(options, dict):
            keys, options = list(options), [str(v) for v in options.values()]
        answer = record.get("answer_idx", record.get("answer"))
        index = None
        if isinstance(options, list) and len(options) >= 2:
            options = [str(o) for o in options]
            if isinstance(answer, int) and 0 <= answer < len(options):
                index = answer
            elif isinstance(answer, str) and answer in keys:
                index = keys.index(answer)
            elif isinstance(answer, str) and len(answer) == 1 and answer.upper() in CHOICE_LETTERS[: len(options)]:
                index = CHOICE_LETTERS.index(answer.upper())
            elif answer in options:
                index = options.index(answer)
        if not record.get("question") or index is None:
            skipped[f"{uri}: record without question, two or more options and a valid answer"] += 1
            continue
        items.append(ChoiceItem(str(record.get("id") or f"line-{line}"), str(record["question"]), options, index))
    return items


def choices_from_qa(qa: list[QAItem], n_options: int = 4, seed: int = 0) -> list[ChoiceItem]:
    """Multiple choice from QA: the reference among other questions' answers."""
    answers = sorted({item.reference for item in qa})
    if len(answers) < n_options:
        return []
    rng = random.Random(seed)
    items = []
    for item in qa:
        wrong = rng.sample([a for a in answers if a != item.reference], n_options - 1)
        position = rng.randrange(n_options)
        options = wrong[:position] + [item.reference] + wrong[position:]
        items.append(ChoiceItem(item.id, item.question, options, position))
    return items


def _general_texts(uri: str) -> list[tuple[str, str]]:
    """One example per paragraph of plain text (or per record of JSONL with a text field),
    so the bootstrap has examples to resample."""
    if uri.lower().endswith(".jsonl"):
        passages = [str(r.get("text") or "").strip() for _, r in _records(uri) if r]
    else:
        passages = [p.strip() for p in storage.read_text(uri).split("\n\n")]
    return [(f"general-{i}", p) for i, p in enumerate(p for p in passages if p)]
