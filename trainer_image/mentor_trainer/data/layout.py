"""Where a published dataset keeps what: the one definition its writers and readers share.

::

    <dataset>/
      <split>/<format>-NNNNN.parquet   the examples (:class:`.output.ParquetSink`)
      manifest.json                    what was built, from what (:mod:`.manifest`)
      README.md                        the dataset card
      inputs.jsonl                     every input and its content hash
      dropped.jsonl                    every unit dropped, with the reason
      index/                           the retrieval index (:mod:`.index`)
      _SUCCESS                         the commit marker, written last (:func:`mentor_trainer.storage.publish`)

Training and evaluation read datasets through :func:`read_split` and :func:`manifest_hash`
(pyarrow is imported inside).
"""

from __future__ import annotations

import io
import json

from .. import storage
from ..errors import StageError

MANIFEST = "manifest.json"
CARD = "README.md"
INPUTS_LIST = "inputs.jsonl"
DROPPED_LIST = "dropped.jsonl"
INDEX_DIR = "index"


def example_file(split: str, fmt: str, number: int) -> str:
    """The ``number``-th parquet file of a format in a split, relative to the dataset."""
    return f"{split}/{fmt}-{number:05d}.parquet"


def example_files(fmt: str) -> str:
    """The pattern of every parquet file of a format inside a split directory."""
    return f"{fmt}-*.parquet"


def read_split(dataset_uri: str, split: str, formats: tuple[str, ...]) -> list[dict]:
    """Every row of the given formats in one split of the dataset."""
    import pyarrow.parquet as pq

    base = storage.parse(dataset_uri).join(split)
    rows: list[dict] = []
    try:
        infos = list(storage.list_objects(base, include=[example_files(fmt) for fmt in formats]))
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
        return json.loads(storage.read_bytes(uri.join(MANIFEST))).get("contentHash")
    except (StageError, ValueError):
        pass
    return (storage.read_marker(uri) or {}).get("contentHash")
