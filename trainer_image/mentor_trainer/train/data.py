"""The DomainDataset's splits as training examples, and curriculum ordering.

Layout written by the data stage: ``<dataset_uri>/{train,validation,test}/{format}-NNNNN.parquet``
(formats pretrain: ``text``; sft/cot: ``messages``) with a ``difficulty`` column.
"""

from __future__ import annotations

import io
import json
import logging
import random
from dataclasses import dataclass, field

from .. import storage
from ..errors import StageError

log = logging.getLogger(__name__)

TASK_FORMATS = {"sft": ("sft", "cot"), "pretrain": ("pretrain",)}


@dataclass
class Examples:
    rows: list[dict]  # trainer-ready rows: {"prompt","completion"} | {"messages"} | {"text"}
    difficulty: list[float] = field(default_factory=list)


def read_split(dataset_uri: str, split: str, formats: tuple[str, ...]) -> list[dict]:
    import pyarrow.parquet as pq

    base = storage.parse(dataset_uri).join(split)
    rows: list[dict] = []
    try:
        infos = list(storage.list_objects(base, include=[f"{fmt}-*.parquet" for fmt in formats]))
    except StageError:
        return []  # a split directory that does not exist holds no examples
    for info in infos:
        table = pq.read_table(io.BytesIO(storage.read_bytes(info.uri)))
        rows.extend(table.to_pylist())
    return rows


def manifest_hash(dataset_uri: str) -> str | None:
    """The content hash of the dataset (manifest.json, else the commit marker)."""
    uri = storage.parse(dataset_uri)
    try:
        return json.loads(storage.read_bytes(uri.join("manifest.json"))).get("contentHash")
    except (StageError, ValueError):
        pass
    marker = storage.read_marker(uri) if storage.exists(uri.join(storage.SUCCESS_MARKER)) else None
    return (marker or {}).get("contentHash")


def to_example(row: dict, task: str, completion_only: bool) -> dict | None:
    if task == "pretrain":
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
