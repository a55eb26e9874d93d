"""Quality filters, language identification and domain relevance.

Each filter returns the reason a document is dropped (the manifest counts them) or None.

Language: a script heuristic decides CJK languages (Han -> zh, kana -> ja, hangul -> ko) and
other scripts; Latin-script text is identified with ``langdetect`` (seeded, so repeatable)
when a language filter is configured. Relevance: TF-IDF cosine similarity between each
document and the seed keywords / seed documents, with document frequencies counted over
the corpus in a streaming pass (a hashing vectoriser, so memory does not grow with the
vocabulary). Chinese is tokenised into characters and character bigrams, other scripts into words.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from typing import Iterable

import numpy as np

# --------------------------------------------------------------------------------------
# Tokens (shared by filters, relevance and the fallback tokenizer)

CJK_RANGES = "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u31ef\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_CJK_CHAR = re.compile(f"[{CJK_RANGES}]")
_WORDS = re.compile(f"[{CJK_RANGES}]|[^\\W\\d_{CJK_RANGES}]+|\\d+")
_SYMBOLS_ASCII = set("#*|_=~<>{}[]\\/@^&%$`+")


def words(text: str) -> list[str]:
    """Words for statistics: each CJK character is a word; Latin words; digit runs."""
    return _WORDS.findall(text)


# --------------------------------------------------------------------------------------
# Quality


def char_ratios(text: str) -> tuple[float, float]:
    """(symbol share, digit share) of the non-space characters, in one pass over distinct characters."""
    counts = Counter(text)
    visible = symbols = digits = 0
    for char, n in counts.items():
        if char.isspace():
            continue
        visible += n
        if char.isdigit():
            digits += n
        elif char in _SYMBOLS_ASCII or unicodedata.category(char).startswith("S"):
            symbols += n
    if not visible:
        return 0.0, 0.0
    return symbols / visible, digits / visible


def symbol_ratio(text: str) -> float:
    return char_ratios(text)[0]


def digit_ratio(text: str) -> float:
    return char_ratios(text)[1]


def repeated_ngram_ratio(text: str) -> float:
    """Share of characters covered by repeats of word n-grams seen earlier in the text.

    The first occurrence of an n-gram is content; later occurrences are repetition, so a
    text said twice scores about 0.5 and spam repeating one line scores close to 1, while
    parallel phrasing in normal prose stays low. n = 3 words for alphabetic text; Chinese
    has no spaces and a word is about two characters, so CJK-dominant text uses character
    6-grams (about three words).
    """
    tokens = words(text)
    if not tokens:
        return 0.0
    cjk = sum(1 for t in tokens if len(t) == 1 and _CJK_CHAR.match(t))
    n = 6 if cjk > 0.5 * len(tokens) else 3
    if len(tokens) < 2 * n:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    covered = bytearray(len(tokens))
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i : i + n])
        if gram in seen:
            covered[i : i + n] = b"\x01" * n
        else:
            seen.add(gram)
    total = sum(len(t) for t in tokens)
    return sum(len(t) for t, c in zip(tokens, covered) if c) / total


def quality_reason(text: str, filters) -> str | None:
    """Why a document fails the quality filters (None when it passes)."""
    length = len(text)
    if length < filters.min_chars:
        return "too-short"
    if filters.max_chars is not None and length > filters.max_chars:
        return "too-long"
    symbols, digits = char_ratios(text)
    if symbols > filters.max_symbol_ratio:
        return "symbol-ratio"
    if digits > filters.max_digit_ratio:
        return "digit-ratio"
    if repeated_ngram_ratio(text) > filters.max_repeated_ngram_ratio:
        return "repeated-ngrams"
    return None


# --------------------------------------------------------------------------------------
# Language

_SCRIPTS = (
    ("ja", re.compile("[\u3040-\u30ff]")),
    ("ko", re.compile("[\uac00-\ud7af\u1100-\u11ff]")),
    ("zh", re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")),
    ("ru", re.compile("[\u0400-\u04ff]")),
    ("ar", re.compile("[\u0600-\u06ff]")),
    ("el", re.compile("[\u0370-\u03ff]")),
    ("he", re.compile("[\u0590-\u05ff]")),
    ("th", re.compile("[\u0e00-\u0e7f]")),
    ("hi", re.compile("[\u0900-\u097f]")),
)
_LATIN = re.compile("[A-Za-z\u00c0-\u024f]")


def script_language(text: str, sample: int = 4000) -> str:
    """Language by script: zh/ja/ko/ru/ar/...; "latin" for Latin script; "" when no letters."""
    text = text[:sample]
    latin = len(_LATIN.findall(text))
    counts = {lang: len(pattern.findall(text)) for lang, pattern in _SCRIPTS}
    han = counts["zh"]
    if counts["ja"] > 0.1 * (han + counts["ja"]) and counts["ja"] > 5:
        counts["ja"] += han
    letters = latin + sum(counts.values())
    if not letters:
        return ""
    # CJK characters carry more information each: weigh them x3 against Latin letters
    best = max(counts, key=lambda k: counts[k])
    if counts[best] * 3 >= latin:
        return best
    return "latin"


_ENGLISH_FUNCTION_WORDS = frozenset(
    "the of and to in is that for it as with was on are by be this from or at an which have not has were "
    "their its can they but all when more than also into used after before each every only".split()
)
_LATIN_WORDS = re.compile(r"[A-Za-z\u00c0-\u024f]+")


def detect_language(text: str, precise: bool = True) -> str:
    """ISO 639-1 code ("und" when undetermined).

    Non-Latin scripts are decided by script. Latin-script text goes through langdetect when
    ``precise`` (a language filter is configured); otherwise a cheap test of English function
    words says "en" or "und".
    """
    script = script_language(text)
    if script != "latin":
        return script or "und"
    if not precise:
        sample = [w.lower() for w in _LATIN_WORDS.findall(text[:4000])]
        hits = sum(1 for w in sample if w in _ENGLISH_FUNCTION_WORDS)
        return "en" if sample and hits >= 0.08 * len(sample) else "und"
    try:
        from langdetect import DetectorFactory, detect
        from langdetect.lang_detect_exception import LangDetectException
    except ImportError:  # pragma: no cover - langdetect is a trainer dependency
        return "und"
    DetectorFactory.seed = 0
    try:
        code = detect(text[:4000])
    except LangDetectException:
        return "und"
    return code.split("-")[0]


# --------------------------------------------------------------------------------------
# Relevance

_LATIN_WORD = re.compile(f"[^\\W\\d_{CJK_RANGES}]{{2,}}")
_CJK_RUN = re.compile(f"[{CJK_RANGES}]+")


def relevance_terms(text: str) -> list[str]:
    """Terms for TF-IDF: lower-cased words of two letters or more, CJK characters and character bigrams."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    text = text.lower()
    terms = [w for w in _LATIN_WORD.findall(text) if w not in ENGLISH_STOP_WORDS]
    for run in _CJK_RUN.findall(text):
        terms.extend(run)  # unigrams, so one-character keywords (茶) match
        terms.extend(run[i : i + 2] for i in range(len(run) - 1))
    return terms


class RelevanceScorer:
    """TF-IDF cosine similarity to seed keywords and seed documents.

    ``observe`` every corpus document first (document frequencies), then ``score``. The score
    of a document is its best cosine similarity with the keyword vector or any seed document.
    """

    N_FEATURES = 1 << 20

    def __init__(self, keywords: Iterable[str], seed_texts: Iterable[str]) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.vectorizer = HashingVectorizer(
            analyzer=relevance_terms, n_features=self.N_FEATURES, alternate_sign=False, norm=None
        )
        keywords = [k for k in keywords if k.strip()]
        self.seeds = ([" ".join(keywords)] if keywords else []) + [t for t in seed_texts if t.strip()]
        self.df = np.zeros(self.N_FEATURES, dtype=np.int32)
        self.n_docs = 0
        self._seed_matrix = None
        for seed in self.seeds:
            self.observe(seed)

    def observe(self, text: str) -> None:
        row = self.vectorizer.transform([text])
        self.df[row.indices] += 1
        self.n_docs += 1

    def _tfidf(self, texts: list[str]):
        from sklearn.preprocessing import normalize

        matrix = self.vectorizer.transform(texts).tocsr()
        idf = np.log((1.0 + self.n_docs) / (1.0 + self.df[matrix.indices])) + 1.0
        matrix.data = np.log1p(matrix.data) * idf  # sublinear tf
        return normalize(matrix)

    def score(self, text: str) -> float:
        if not self.seeds:
            return 1.0
        if self._seed_matrix is None:
            self._seed_matrix = self._tfidf(self.seeds)
        vector = self._tfidf([text])
        similarities = (self._seed_matrix @ vector.T).toarray().ravel()
        return float(similarities.max()) if len(similarities) else 0.0


def round_ratio(value: float) -> float:
    return 0.0 if math.isnan(value) else round(value, 4)
