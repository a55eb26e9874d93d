"""Training examples, their parquet schemas, difficulty scores and the split.

Formats (one parquet file set per format and split, so each trainer loads exactly its own):

- ``pretrain``: ``text`` (a chunk) for continued pre-training;
- ``sft``: ``messages`` = [{role: user, content: question}, {role: assistant, content: answer}];
- ``cot``: the same, with the assistant turn in the DeepSeek-R1 style
  ``<think>\\n{reasoning}\\n</think>\\n\\n{answer}`` (only QA records that carry reasoning);
- ``preference``: ``prompt`` / ``chosen`` / ``rejected`` passed through, with the optional
  safety labels ``chosen_safe`` / ``rejected_safe`` (null where the record has none).

Every row also carries ``source``, ``group`` (mixture group), ``doc_id``, its position
(``chunk_index``, ``char_start``, ``char_end`` for chunks), ``tokens``, ``language`` and
``difficulty`` (in [0, 1): by length, entity density or the base model's perplexity) and
``origin`` (``source`` for examples built from the inputs, ``synthetic`` for the teacher's).
"""

from __future__ import annotations

import hashlib
import re

import pyarrow as pa

from .filters import CJK_RANGES, words

FORMATS = ("pretrain", "sft", "cot", "preference")
SPLITS = ("train", "validation", "test")

_COMMON = [
    ("source", pa.string()),
    ("group", pa.string()),
    ("doc_id", pa.string()),
    ("tokens", pa.int32()),
    ("language", pa.string()),
    ("difficulty", pa.float32()),
    ("origin", pa.string()),
]
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
SCHEMAS = {
    "pretrain": pa.schema(
        [("text", pa.string())]
        + _COMMON
        + [("chunk_index", pa.int32()), ("char_start", pa.int64()), ("char_end", pa.int64())]
    ),
    "sft": pa.schema([("messages", pa.list_(MESSAGE))] + _COMMON),
    "cot": pa.schema([("messages", pa.list_(MESSAGE))] + _COMMON),
    "preference": pa.schema(
        [("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())]
        + [("chosen_safe", pa.bool_()), ("rejected_safe", pa.bool_())]
        + _COMMON
    ),
}


def cot_answer(reasoning: str, answer: str) -> str:
    """The assistant turn of a DeepSeek-R1 style chain-of-thought example."""
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{answer.strip()}"


def comparison_text(fmt: str, row: dict) -> str:
    """The text two examples are compared on for cross-split near-duplicates."""
    if fmt == "pretrain":
        return row["text"]
    if fmt in ("sft", "cot"):
        user = next((m["content"] for m in row["messages"] if m["role"] == "user"), "")
        answer = row["messages"][-1]["content"]
        if "</think>" in answer:
            answer = answer.rsplit("</think>", 1)[1]
        return f"{user}\n{answer.strip()}"
    return f"{row['prompt']}\n{row['chosen']}"


# --------------------------------------------------------------------------------------
# Difficulty

_ENTITY_LATIN = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-zA-Z]+\b|\b[A-Z]{2,}[0-9-]*\b|\b[A-Za-z]+-\d+\b", re.M)
_ENTITY_NUMBER = re.compile(r"\d+(?:[.,]\d+)?\s?(?:%|°C|°F|[a-zA-Z]{1,3}\b|[\u4e00-\u9fff])?")
_ENTITY_CJK = re.compile(f"[《「『“][^》」』”]{{1,30}}[》」』”]|[A-Za-z][A-Za-z0-9-]*(?=[{CJK_RANGES}])")


def entity_density(text: str) -> float:
    """Entity-like mentions (names, acronyms, codes, quantities, quoted terms) per word."""
    tokens = words(text)
    if not tokens:
        return 0.0
    cjk_chars = sum(1 for t in tokens if len(t) == 1 and "\u2e80" <= t <= "\ud7af")
    n_words = len(tokens) - cjk_chars + cjk_chars / 2  # a Chinese word is about two characters
    mentions = len(_ENTITY_LATIN.findall(text)) + len(_ENTITY_NUMBER.findall(text)) + len(_ENTITY_CJK.findall(text))
    return mentions / max(n_words, 1.0)


def difficulty(text: str, tokens: int, method: str, scale: float) -> float:
    """A score in [0, 1): longer or denser texts are harder."""
    if method == "entity-density":
        density = entity_density(text)
        return round(density / (density + 0.15), 4)
    return round(tokens / (tokens + scale), 4)


# --------------------------------------------------------------------------------------
# Split


def split_rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{key}".encode()).digest()


def assign_splits(keys: set[str] | list[str], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Deterministic split of group keys: rank by a seeded hash, cut at the fractions.

    Every split with a non-zero fraction gets at least one key when there are enough keys.
    """
    ordered = sorted(set(keys), key=lambda k: split_rank(seed, k))
    n = len(ordered)
    wanted = [s for s in SPLITS if fractions.get(s, 0) > 0]
    sizes = {s: int(round(n * fractions.get(s, 0))) for s in SPLITS}
    if n >= len(wanted):
        for s in wanted:
            if sizes[s] == 0:
                sizes[s] = 1
    # the training split absorbs rounding
    sizes["train"] = max(0, n - sizes["validation"] - sizes["test"])
    while sizes["train"] == 0 and fractions.get("train", 0) > 0 and n > 0:
        donor = max(("validation", "test"), key=lambda s: sizes[s])
        sizes[donor] -= 1
        sizes["train"] += 1
    assignment: dict[str, str] = {}
    position = 0
    for s in ("validation", "test", "train"):
        for key in ordered[position : position + sizes[s]]:
            assignment[key] = s
        position += sizes[s]
    for key in ordered[position:]:
        assignment[key] = "train"
    return assignment
