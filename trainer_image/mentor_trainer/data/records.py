"""The units that flow through the data pipeline.

Every input unit is one of: a text document (a file, a part of a very large text file, or an
inline document), a question-answer record, or a preference record. Each unit is either kept
or dropped with a reason, so ``documentsIn == documentsKept + sum(droppedByReason)`` always.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TEXT = "text"
QA = "qa"
PREFERENCE = "preference"
KINDS = (TEXT, QA, PREFERENCE)


class FlatRecord:
    """Records hold only plain fields, so their JSON form is a shallow copy (asdict would
    deep-copy on the hot path)."""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Document(FlatRecord):
    """A text document: becomes continued-pretraining chunks."""

    id: str  # URI of the file (``#part=N`` for parts of a large file) or ``inline:<source>/<id>``
    source: str  # name of the source it came from
    group: str  # mixture group (domain, general, scenario)
    text: str
    format: str  # pdf, html, markdown, text, docx
    split_key: str  # documents sharing this key always land in the same split (the file's URI)
    language: str = ""
    kind: str = TEXT



@dataclass
class QARecord(FlatRecord):
    """A question-answer pair (optionally with reasoning): becomes SFT / CoT examples."""

    id: str
    source: str
    group: str
    question: str
    answer: str
    split_key: str
    reasoning: str = ""
    language: str = ""
    format: str = "qa"
    kind: str = QA
    evidence: str = ""  # the passage that answers it, when the file names one (evaluation recall@k)
    fact: str = ""  # the key fact a correct answer states, "|"-separated alternatives (evaluation)



@dataclass
class PreferenceRecord(FlatRecord):
    """A prompt with a chosen and a rejected answer: passed through as a preference example."""

    id: str
    source: str
    group: str
    prompt: str
    chosen: str
    rejected: str
    split_key: str
    language: str = ""
    format: str = "preference"
    kind: str = PREFERENCE
    # optional safety labels of each answer (the reward model's safety head trains on them)
    chosen_safe: bool | None = None
    rejected_safe: bool | None = None



@dataclass
class Dropped:
    """An input unit that was skipped, with the reason counted in the manifest."""

    id: str
    source: str
    reason: str
    detail: str = ""
    kind: str = TEXT


Unit = Document | QARecord | PreferenceRecord

_CLASSES = {TEXT: Document, QA: QARecord, PREFERENCE: PreferenceRecord}


def from_json(data: dict[str, Any]) -> Unit:
    return _CLASSES[data["kind"]](**data)


def unit_text(unit: Unit) -> str:
    """The text a unit is compared on (dedup, filters)."""
    if isinstance(unit, Document):
        return unit.text
    if isinstance(unit, QARecord):
        return f"{unit.question}\n{unit.answer}"
    return f"{unit.prompt}\n{unit.chosen}\n{unit.rejected}"


@dataclass
class Counter:
    """Counts of kept/dropped units, per kind and per reason."""

    dropped: dict[str, int] = field(default_factory=dict)
    dropped_by_kind: dict[str, dict[str, int]] = field(default_factory=dict)

    def drop(self, reason: str, kind: str = TEXT, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n
        per_kind = self.dropped_by_kind.setdefault(kind, {})
        per_kind[reason] = per_kind.get(reason, 0) + n
