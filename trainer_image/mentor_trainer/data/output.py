"""Writing the dataset: streaming parquet writers and the human-readable dataset card."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import layout
from .examples import SCHEMAS, SPLITS

ROWS_PER_GROUP = 1000
ROWS_PER_FILE = 500_000


class ParquetSink:
    """Rows of one (split, format) -> its parquet files (:func:`.layout.example_file`), streamed."""

    def __init__(self, root: Path, split: str, fmt: str) -> None:
        self.root, self.split, self.fmt = root, split, fmt
        self.schema = SCHEMAS[fmt]
        self.buffer: list[dict] = []
        self.writer: pq.ParquetWriter | None = None
        self.files: list[str] = []
        self.rows_in_file = 0
        self.rows = 0
        self.tokens = 0
        self.min_tokens: int | None = None
        self.max_tokens = 0

    def _open(self) -> None:
        name = layout.example_file(self.split, self.fmt, len(self.files))
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        self.files.append(name)
        self.rows_in_file = 0

    def write(self, row: dict) -> None:
        self.buffer.append(row)
        self.rows += 1
        tokens = int(row.get("tokens") or 0)
        self.tokens += tokens
        self.max_tokens = max(self.max_tokens, tokens)
        self.min_tokens = tokens if self.min_tokens is None else min(self.min_tokens, tokens)
        if len(self.buffer) >= ROWS_PER_GROUP:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        if self.writer is None or self.rows_in_file >= ROWS_PER_FILE:
            if self.writer is not None:
                self.writer.close()
            self._open()
        table = pa.Table.from_pylist(self.buffer, schema=self.schema)
        self.writer.write_table(table)
        self.rows_in_file += len(self.buffer)
        self.buffer = []

    def close(self) -> None:
        self.flush()
        if self.writer is None:
            # an empty split still gets a (0-row) file, so loaders find the path
            self._open()
            self.writer.write_table(pa.Table.from_pylist([], schema=self.schema))
        self.writer.close()
        self.writer = None

    def stats(self) -> dict:
        return {
            "examples": self.rows,
            "tokens": self.tokens,
            "minTokens": self.min_tokens or 0,
            "maxTokens": self.max_tokens,
            "meanTokens": round(self.tokens / self.rows, 1) if self.rows else 0,
            "files": self.files,
        }


class SplitWriter:
    """A :class:`ParquetSink` for every split and requested format: the dataset's examples."""

    def __init__(self, root: Path, formats: list[str]) -> None:
        self.formats = formats
        self.sinks = {(split, fmt): ParquetSink(root, split, fmt) for split in SPLITS for fmt in formats}

    def write(self, split: str, fmt: str, row: dict) -> None:
        self.sinks[(split, fmt)].write(row)

    def close(self) -> None:
        for sink in self.sinks.values():
            sink.close()

    @property
    def examples(self) -> int:
        return sum(sink.rows for sink in self.sinks.values())

    @property
    def tokens(self) -> int:
        return sum(sink.tokens for sink in self.sinks.values())

    def examples_per_split(self) -> dict[str, int]:
        return {s: sum(self.sinks[(s, f)].rows for f in self.formats) for s in SPLITS}


def dataset_card(manifest: dict) -> str:
    """README.md of the dataset: what it is, where it came from, what was dropped, how to load it."""
    run = manifest["run"]
    stats = manifest["stats"]
    lines = [
        f"# {run['name']}",
        "",
        f"Training data built by `mentor-trainer data` for {run['kind']} `{run['namespace']}/{run['name']}` "
        f"(generation {run['generation']}).",
        "",
        f"- Content hash: `{manifest['contentHash']}` (inputs + configuration; same hash, same data)",
        f"- Documents: {stats['documentsKept']} kept of {stats['documentsIn']} read",
        f"- Tokens: {stats['tokens']} ({manifest['tokenizer']})",
        "",
        "## Sources",
        "",
        "| source | group | uri | documents | kept |",
        "|---|---|---|---|---|",
    ]
    for source in manifest["sources"]:
        lines.append(
            f"| {source['name']} | {source['group']} | {source.get('uri') or 'inline'} | {source['documents']} | {source['kept']} |"
        )
    lines += ["", "## Examples", "", "| split | format | examples | tokens | files |", "|---|---|---|---|---|"]
    for split in SPLITS:
        for fmt, info in manifest["splits"].get(split, {}).items():
            lines.append(f"| {split} | {fmt} | {info['examples']} | {info['tokens']} | {', '.join(info['files'])} |")
    lines += ["", "## Processing", ""]
    steps = manifest["steps"]
    for name, count in steps.items():
        lines.append(f"- {name}: {count}")
    if stats["droppedByReason"]:
        lines += ["", "Dropped, by reason:", ""]
        for reason, count in sorted(stats["droppedByReason"].items(), key=lambda kv: -kv[1]):
            lines.append(f"- {reason}: {count}")
    pii = manifest["cleaning"]["piiRedacted"]
    if pii:
        lines += ["", "Personal data redacted: " + ", ".join(f"{k} {v}" for k, v in pii.items()) + "."]
    mixture = manifest["mixture"]
    lines += [
        "",
        "## Mixture",
        "",
        "Configured weights: " + ", ".join(f"{k} {v}" for k, v in mixture["weights"].items()) + ".",
        "Realised share of training examples: "
        + (", ".join(f"{k} {v}" for k, v in mixture["realised"].items()) or "none")
        + ".",
    ]
    if mixture.get("sampled"):
        lines.append(
            "Sampled to the weights: target per group "
            + ", ".join(f"{k} {v}" for k, v in mixture.get("targetPerGroup", {}).items())
            + (", oversampled " + ", ".join(f"{k} +{v}" for k, v in mixture["oversampledPerGroup"].items()) if mixture.get("oversampledPerGroup") else "")
            + "."
        )
    synthesis = manifest.get("synthesis")
    if synthesis:
        lines += [
            "",
            "## Synthetic examples",
            "",
            f"Teacher `{synthesis['model']}` at {synthesis['teacher']}: {synthesis['pairs']} question-answer pairs from "
            f"{synthesis['chunks']} chunks ({', '.join(f'{k} {v}' for k, v in synthesis['examplesPerFormat'].items()) or 'no examples'}); "
            f"rows marked `origin: synthetic`."
            + (" Skipped: " + ", ".join(f"{k} {v}" for k, v in synthesis["skippedByReason"].items()) + "." if synthesis["skippedByReason"] else ""),
        ]
    index = manifest.get("index")
    if index:
        dense = index.get("dense")
        lines += [
            "",
            "## Retrieval index",
            "",
            f"`{layout.INDEX_DIR}/`: {index['chunks']} chunks; "
            + (f"dense embeddings ({dense['model']}, dimension {dense['dimension']})" if dense else "no dense embeddings")
            + ("; BM25 (CJK characters and bigrams, words)" if index.get("bm25") else "")
            + ". Load with `mentor_trainer.data.index.Retriever.load(\"<this directory>\")`.",
        ]
    first = next((f for s in SPLITS for f in manifest["formats"]), "pretrain")
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f"ds = load_dataset(\"parquet\", data_files={{s: f\"<this directory>/{{s}}/{layout.example_files(first)}\" "
        "for s in (\"train\", \"validation\", \"test\")})",
        "```",
        "",
        f"Columns: see `{layout.MANIFEST}` (`schemas`). `difficulty` is in [0, 1) for curriculum ordering.",
        "",
    ]
    return "\n".join(lines)
