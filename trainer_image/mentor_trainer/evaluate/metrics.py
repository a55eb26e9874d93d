"""Per-example answer scores in [0, 1], so suites can bootstrap them against a baseline.

Every function takes the extracted final answer (see `text.extract_answer`); an empty
prediction scores 0 and nothing raises, because one bad generation must not end a suite.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from typing import TYPE_CHECKING, Sequence

from ..data.filters import CJK_RANGES
from .text import normalize_answer, tokens

if TYPE_CHECKING:
    from rouge_score.rouge_scorer import RougeScorer
    from sacrebleu.metrics import BLEU

_CJK = re.compile(f"[{CJK_RANGES}]")


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the SQuAD-normalised answers are equal."""
    normalized = normalize_answer(prediction)
    return float(bool(normalized) and normalized == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 over normalised answers; Chinese counts characters."""
    predicted, expected = tokens(normalize_answer(prediction)), tokens(normalize_answer(reference))
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def contains_fact(prediction: str, fact: str) -> float:
    """1.0 when the normalised answer contains one of the fact's "|"-separated alternatives as
    a whole token sequence ("12|twelve" matches "Twelve traps per hectare", not "120")."""
    predicted = tokens(normalize_answer(prediction))
    for alternative in fact.split("|"):
        wanted = tokens(normalize_answer(alternative))
        if wanted and any(predicted[i : i + len(wanted)] == wanted for i in range(len(predicted) - len(wanted) + 1)):
            return 1.0
    return 0.0


class _Tokenizer:
    """rouge_score's tokenizer interface over `text.tokens` (its default drops non-ASCII)."""

    def tokenize(self, text: str) -> list[str]:
        return tokens(text)


@functools.cache
def _rouge() -> RougeScorer:
    # Imported here: rouge_score pulls in nltk, seconds of start-up a stage without qa avoids.
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], tokenizer=_Tokenizer())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure: longest common token subsequence."""
    if not tokens(prediction):
        return 0.0
    return _rouge().score(reference, prediction)["rougeL"].fmeasure


def _has_cjk(texts: Sequence[str]) -> bool:
    return any(_CJK.search(text) for text in texts)


@functools.cache
def _bleu(tokenize: str, sentence: bool) -> BLEU:
    from sacrebleu.metrics import BLEU

    # effective_order: a short answer with no 4-gram match still gets a non-zero score.
    return BLEU(tokenize=tokenize, effective_order=sentence)


def bleu(prediction: str, reference: str) -> float:
    """Sentence BLEU / 100 (sacrebleu; its "zh" tokenizer splits CJK characters)."""
    if not prediction.strip():
        return 0.0
    tokenize = "zh" if _has_cjk([prediction, reference]) else "13a"
    return _bleu(tokenize, True).sentence_score(prediction, [reference]).score / 100


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU / 100: n-gram counts pooled over all answers (the usual reported number)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not any(prediction.strip() for prediction in predictions):
        return 0.0
    tokenize = "zh" if _has_cjk([*predictions, *references]) else "13a"
    return _bleu(tokenize, False).corpus_score(list(predictions), [list(references)]).score / 100
