"""Answer text: normalisation and tokens for scoring, and the `<think>` reasoning block.

Chinese has no spaces between words, so tokens are CJK characters (the MLQA / CMRC
convention) plus Latin words and numbers; without that a Chinese answer is one "word" and
token F1 degenerates into exact match.
"""

from __future__ import annotations

import re
import unicodedata

from ..data.filters import CJK_RANGES

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

_TOKEN = re.compile(f"[{CJK_RANGES}]|[^\\W_{CJK_RANGES}]+")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_SPACE_BETWEEN_CJK = re.compile(f"(?<=[{CJK_RANGES}])\\s+(?=[{CJK_RANGES}])")
_THINK_BLOCK = re.compile(f"{THINK_OPEN}(.*?){THINK_CLOSE}", re.S)
_ANSWER_PREFIX = re.compile(
    r"^\W*(?:(?:the\s+)?(?:final\s+)?answer(?:\s+is)?|(?:最终)?答案是?|回答|答)\W*?[:：]\s*(?:\*\*)?\s*", re.I
)


def _is_punctuation(char: str) -> bool:
    # Unicode punctuation and symbols: covers ASCII, full-width and CJK marks (，。、《》…).
    return unicodedata.category(char)[0] in "PS"


def tokens(text: str) -> list[str]:
    """Lower-cased NFKC tokens: each CJK character, each Latin word or number; punctuation dropped."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def normalize_answer(text: str) -> str:
    """SQuAD normalisation (lower case, no punctuation, no English articles, single spaces),
    made script-aware: NFKC folds full-width forms and spaces between CJK characters vanish."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(char for char in text if not _is_punctuation(char))
    text = " ".join(_ARTICLES.sub(" ", text).split())
    return _SPACE_BETWEEN_CJK.sub("", text)


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, answer): the `<think>` content (None without one) and the text around it.

    DeepSeek-R1 chat templates put the opening `<think>` in the prompt, so an output may start
    straight with the reasoning and only close it. An unclosed `<think>` (generation cut off
    by max_new_tokens) is all reasoning: the answer is what came before it, usually nothing.
    """
    parts: list[str] = []
    head, closed, tail = text.partition(THINK_CLOSE)
    if closed and THINK_OPEN not in head:
        parts.append(head)
        text = tail
    parts += _THINK_BLOCK.findall(text)
    text = _THINK_BLOCK.sub(" ", text)
    text, opened, unclosed = text.partition(THINK_OPEN)
    if opened:
        parts.append(unclosed)
    reasoning = "\n".join(part.strip() for part in parts) if parts else None
    # A stray closing tag is never part of the answer.
    return reasoning, text.replace(THINK_CLOSE, " ").strip()


def extract_answer(text: str) -> str:
    """The final answer to score: no reasoning block and no "Answer:" / "答案：" label."""
    return _ANSWER_PREFIX.sub("", split_reasoning(text)[1], count=1).strip()


def is_well_formed(text: str) -> bool:
    """Exactly one non-empty reasoning block, closed by `</think>`, then a non-empty answer.

    The opening tag may be missing (it belongs to the prompt in R1-style templates) but
    nothing may precede the reasoning.
    """
    head, closed, answer = text.partition(THINK_CLOSE)
    if not closed or THINK_CLOSE in answer or THINK_OPEN in answer:
        return False
    reasoning = head.lstrip()
    if reasoning.startswith(THINK_OPEN):
        reasoning = reasoning[len(THINK_OPEN) :]
    return THINK_OPEN not in reasoning and bool(reasoning.strip()) and bool(answer.strip())
