"""The data stage, end to end: sources -> cleaned, deduplicated, filtered, chunked, split examples.

Passes (each streams; intermediate units are spooled to JSONL files in a work directory, so
memory holds only indexes: exact-duplicate hashes, MinHash signatures, line counts, split keys):

1. ingest + normalise + exact dedup + near-duplicate dedup; count lines per document;
2. boilerplate lines, drop patterns, PII redaction, quality filters, language; document
   frequencies for relevance;
3. relevance (only when configured); collect split keys;
4. chunk, build examples, split; validation/test examples that near-duplicate a training
   example are dropped; parquet written into the publish staging directory, then the
   manifest (:mod:`.manifest`), the dataset card and the commit marker (files laid out as
   :mod:`.layout` says). Within this pass: chunks are spooled for the retrieval index
   (:mod:`.index`) and for the teacher (:mod:`.synthesis`, run after the documents, with
   bounded concurrency); training examples are mixed by group weight (:mod:`.mixture`)
   before they are written; difficulty is scored per example (length, entity density, or
   the base model's perplexity, :mod:`.perplexity`).

The content hash (:func:`.manifest.content_hash`) covers the configuration (without runtime
fields), the inputs (sha256 of each local file, ETag of each S3 object), the tokenizer files
and the pipeline version. When the output URI already holds a complete dataset with the same
hash, nothing is done and the recorded result is returned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

from .. import storage
from ..config.data import DatasetResult, DatasetStats, DataStageConfig
from ..errors import StageError
from ..jsonio import write_json
from ..models import load_tokenizer, resolve_model
from ..models import tokenizer_fingerprint as model_tokenizer_fingerprint
from ..progress import ProgressReporter
from . import clean, ingest, layout
from .chunking import FallbackTokenizer, HFTokenizer, chunk_text
from .dedup import NearDuplicateIndex, exact_key
from .examples import FORMATS, assign_splits, comparison_text, cot_answer, difficulty
from .filters import RelevanceScorer, detect_language, quality_reason
from .manifest import StageRecord, build_manifest, content_hash
from .output import SplitWriter, dataset_card
from .records import PREFERENCE, QA, TEXT, Document, Dropped, QARecord, from_json, unit_text

log = logging.getLogger("mentor_trainer.data")

MAX_RESULT_REASONS = 24


# --------------------------------------------------------------------------------------
# Small helpers


class Spool:
    """Units written to and read back from a JSONL file in the work directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = open(path, "w", encoding="utf-8")
        self.count = 0

    def write(self, data: dict) -> None:
        self.handle.write(json.dumps(data, ensure_ascii=False, separators=(",", ":")))
        self.handle.write("\n")
        self.count += 1

    def read(self) -> Iterator[dict]:
        self.handle.close()
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)

    def remove(self) -> None:
        self.handle.close()
        self.path.unlink(missing_ok=True)


def _source_error(index: int, source, error: StageError) -> StageError:
    return StageError(f"sources[{index}] ({source.name}): {error}", permanent=error.permanent)


def fingerprint_inputs(config, path: Path) -> dict:
    """Hash every input (name, size, content) into one digest; the list goes to inputs.jsonl."""
    digest = hashlib.sha256()
    files = total = 0
    with open(path, "w", encoding="utf-8") as out:
        for index, source in enumerate(config.sources):
            if source.inline is not None:
                continue  # inline text is part of the configuration
            try:
                for info in storage.list_objects(source.uri, include=source.include or None):
                    if ingest.is_hidden(info.name):
                        continue
                    if info.etag is not None:
                        content = f"etag:{info.etag.strip(chr(34))}"
                    else:
                        content = "sha256:" + _sha256(info.uri)
                    entry = {"source": source.name, "name": info.name, "size": info.size, "content": content}
                    out.write(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
                    digest.update(json.dumps(entry, sort_keys=True).encode())
                    files += 1
                    total += info.size
            except StageError as error:
                raise _source_error(index, source, error) from None
        if config.relevance is not None:
            for uri in config.relevance.seed_documents:
                for info in storage.list_objects(uri):
                    digest.update(f"seed:{info.uri}:{info.size}:{info.etag or _sha256(info.uri)}".encode())
    return {"digest": digest.hexdigest(), "files": files, "bytes": total}


def _sha256(uri: str) -> str:
    digest = hashlib.sha256()
    with storage.open_read(uri) as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _normalize_unit(unit, cleaning) -> None:
    def norm(text: str) -> str:
        return clean.normalize(text, cleaning.unicode_nfkc, cleaning.strip_control_chars, cleaning.strip_html)

    if isinstance(unit, Document):
        unit.text = norm(unit.text)
    elif isinstance(unit, QARecord):
        unit.question, unit.answer, unit.reasoning = norm(unit.question), norm(unit.answer), norm(unit.reasoning)
    else:
        unit.prompt, unit.chosen, unit.rejected = norm(unit.prompt), norm(unit.chosen), norm(unit.rejected)


def _redact_unit(unit, redactor: clean.PiiRedactor) -> None:
    if isinstance(unit, Document):
        unit.text = redactor.redact(unit.text)
    elif isinstance(unit, QARecord):
        unit.question = redactor.redact(unit.question)
        unit.answer = redactor.redact(unit.answer)
        unit.reasoning = redactor.redact(unit.reasoning)
    else:
        unit.prompt = redactor.redact(unit.prompt)
        unit.chosen = redactor.redact(unit.chosen)
        unit.rejected = redactor.redact(unit.rejected)


def _incomplete(unit) -> bool:
    if isinstance(unit, Document):
        return not unit.text.strip()
    if isinstance(unit, QARecord):
        return not (unit.question.strip() and unit.answer.strip())
    return not (unit.prompt.strip() and unit.chosen.strip() and unit.rejected.strip())


# --------------------------------------------------------------------------------------
# The stage


class DataStage:
    def __init__(self, config) -> None:
        self.config = config
        self.record = StageRecord.for_config(config)
        self.progress = ProgressReporter.for_stage(config.progress_file)
        self.dropped_log: Spool | None = None

    # -- bookkeeping -------------------------------------------------------------------
    def drop(self, unit_id: str, source: str, reason: str, kind: str, detail: str = "") -> None:
        self.record.counter.drop(reason, kind)
        self.dropped_log.write({"id": unit_id, "source": source, "kind": kind, "reason": reason, "detail": detail})

    def _timed(self, name: str, start: float) -> None:
        self.record.timings[name] = round(time.monotonic() - start, 3)

    # -- main --------------------------------------------------------------------------
    def run(self) -> DatasetResult:
        try:
            return self._run()
        finally:
            self.progress.close()

    def _run(self) -> DatasetResult:
        config = self.config
        if config.difficulty.method == "perplexity" and not config.difficulty.model_uri:
            raise StageError("difficulty.method perplexity needs difficulty.modelUri (the base model that scores each example)")
        self.perplexity = None
        self.difficulty_scale = max(64, config.chunking.max_tokens // 2)
        self.patterns = clean.compile_patterns(config.cleaning.drop_patterns)
        storage.parse(config.output_uri)
        workroot = os.environ.get("MENTOR_WORK_DIR") or None
        with tempfile.TemporaryDirectory(prefix="mentor-data-", dir=workroot) as work:
            self.work = Path(work)
            start = time.monotonic()
            self.progress.update(force=True, phase="fingerprint")
            tokenizer_model = None
            if config.tokenizer:
                tokenizer_model = resolve_model(config.tokenizer, "tokenizer", tokenizer_only=True, workdir=work)
                tokenizer_fingerprint = model_tokenizer_fingerprint(tokenizer_model)
            else:
                tokenizer_fingerprint = FallbackTokenizer.fingerprint
            self.record.inputs = fingerprint_inputs(config, self.work / layout.INPUTS_LIST)
            self.hash = content_hash(config, self.record.inputs["digest"], tokenizer_fingerprint)
            self._timed("fingerprint", start)

            marker = storage.read_marker(config.output_uri)
            if marker and marker.get("contentHash") == self.hash and isinstance(marker.get("result"), dict):
                log.info("%s already holds this dataset (content hash %s): nothing to do", config.output_uri, self.hash[:12])
                self.progress.update(force=True, phase="done", reused=True)
                return DatasetResult.from_wire(marker["result"])

            if tokenizer_model is not None:
                self.tokenizer = HFTokenizer(load_tokenizer(tokenizer_model), name=config.tokenizer)
            else:
                self.tokenizer = FallbackTokenizer()
            self.record.tokenizer = self.tokenizer.name
            if config.difficulty.method == "perplexity":
                from .perplexity import PerplexityScorer

                self.perplexity = PerplexityScorer(config.difficulty.model_uri)
            self.dropped_log = Spool(self.work / layout.DROPPED_LIST)
            pass1 = self.ingest()
            pass2 = self.clean_and_filter(pass1)
            final, keys = self.relevance(pass2)
            self.check_not_empty(final)
            marker_metadata = {"contentHash": self.hash}
            with storage.publish(config.output_uri, marker_metadata) as staging:
                result = self.build(final, keys, staging)
                # the result travels in the commit marker too: a re-run answers from it alone
                marker_metadata["result"] = result.to_wire()
            self.progress.update(force=True, phase="done")
            return result

    # -- pass 1 ------------------------------------------------------------------------
    def ingest(self) -> Spool:
        config = self.config
        start = time.monotonic()
        near = config.dedup.near
        index = NearDuplicateIndex(near.threshold, near.num_perm, near.shingle_size) if near.enabled else None
        seen: set[bytes] = set()
        self.lines = clean.LineCounter()
        spool = Spool(self.work / "pass1.jsonl")
        documents = 0
        for position, source in enumerate(config.sources):
            info = self.record.sources[source.name]
            try:
                for unit in ingest.iter_source(source):
                    info["documents"] += 1
                    documents += 1
                    if documents % 100 == 0:
                        self.progress.update(phase="ingest", documents=documents)
                    if isinstance(unit, Dropped):
                        self.drop(unit.id, unit.source, unit.reason, unit.kind, unit.detail)
                        continue
                    self.record.units_in_by_kind[unit.kind] += 1
                    _normalize_unit(unit, config.cleaning)
                    if _incomplete(unit):
                        self.drop(unit.id, unit.source, "empty", unit.kind, "nothing left after normalisation")
                        continue
                    text = unit_text(unit)
                    if config.dedup.exact:
                        key = exact_key(unit.kind + "\0" + text)
                        if key in seen:
                            self.drop(unit.id, unit.source, "exact-duplicate", unit.kind)
                            continue
                        seen.add(key)
                    if index is not None and unit.kind == TEXT:
                        original = index.check_and_add(text, unit.id)
                        if original is not None:
                            self.drop(unit.id, unit.source, "near-duplicate", unit.kind, f"of {original}")
                            continue
                    if unit.kind == TEXT:
                        self.lines.add(unit.text)
                    spool.write(unit.to_json())
            except StageError as error:
                raise _source_error(position, source, error) from None
            if info["documents"] == 0:
                log.warning("source %s (%s) holds no documents", source.name, source.uri or "inline")
        self.record.documents_in = documents
        self.record.steps["documentsIn"] = documents
        self.record.steps["afterIngest"] = sum(self.record.units_in_by_kind.values())
        self.record.steps["afterDedup"] = spool.count
        self._timed("ingestAndDedup", start)
        return spool

    # -- pass 2 ------------------------------------------------------------------------
    def clean_and_filter(self, previous: Spool) -> Spool:
        config = self.config
        start = time.monotonic()
        boilerplate = self.lines.boilerplate(config.cleaning.boilerplate_min_documents)
        self.record.cleaning["boilerplateLines"] = len(boilerplate)
        del self.lines
        pii = config.cleaning.pii
        self.redactor = clean.PiiRedactor(pii.kinds, pii.replacement) if pii.enabled else None
        languages = set(config.filters.languages)
        self.scorer = None
        if config.relevance is not None:
            seeds = [
                ingest.read_seed_document(uri, f"relevance.seedDocuments[{i}]")
                for i, uri in enumerate(config.relevance.seed_documents)
            ]
            self.scorer = RelevanceScorer(config.relevance.keywords, seeds)
        self.keys: dict[str, set[str]] = {TEXT: set(), QA: set(), PREFERENCE: set()}
        spool = Spool(self.work / "pass2.jsonl")
        done = 0
        for data in previous.read():
            unit = from_json(data)
            done += 1
            if done % 100 == 0:
                self.progress.update(phase="clean", documents=done)
            if unit.kind == TEXT:
                unit.text, n_boiler, n_pattern = clean.remove_lines(unit.text, boilerplate, self.patterns)
                self.record.cleaning["boilerplateLinesRemoved"] += n_boiler
                self.record.cleaning["patternLinesRemoved"] += n_pattern
            if self.redactor is not None:
                _redact_unit(unit, self.redactor)
            if unit.kind == TEXT:
                reason = quality_reason(unit.text, config.filters)
                if reason:
                    self.drop(unit.id, unit.source, reason, unit.kind)
                    continue
            elif _incomplete(unit):
                self.drop(unit.id, unit.source, "empty", unit.kind, "nothing left after cleaning")
                continue
            unit.language = detect_language(unit_text(unit), precise=bool(languages))
            if languages and unit.language not in languages:
                self.drop(unit.id, unit.source, "language", unit.kind, unit.language)
                continue
            if self.scorer is not None and unit.kind == TEXT:
                self.scorer.observe(unit.text)
            if self.scorer is None:
                self.keys[unit.kind].add(unit.split_key)
            spool.write(unit.to_json())
        previous.remove()
        self.record.steps["afterCleaningAndFilters"] = spool.count
        self._timed("cleanAndFilter", start)
        return spool

    # -- pass 3 ------------------------------------------------------------------------
    def relevance(self, previous: Spool) -> tuple[Spool, dict[str, set[str]]]:
        if self.scorer is None:
            self.record.steps["afterRelevance"] = previous.count
            return previous, self.keys
        start = time.monotonic()
        threshold = self.config.relevance.threshold
        spool = Spool(self.work / "pass3.jsonl")
        scores = []
        for data in previous.read():
            unit = from_json(data)
            if unit.kind == TEXT:
                score = self.scorer.score(unit.text)
                scores.append(score)
                if score < threshold:
                    self.drop(unit.id, unit.source, "irrelevant", unit.kind, f"similarity {score:.3f} < {threshold}")
                    continue
            self.keys[unit.kind].add(unit.split_key)
            spool.write(unit.to_json())
        previous.remove()
        self.record.relevance = {
            "threshold": threshold,
            "scored": len(scores),
            "minScore": round(min(scores), 4) if scores else None,
            "meanScore": round(sum(scores) / len(scores), 4) if scores else None,
            "maxScore": round(max(scores), 4) if scores else None,
        }
        self.record.steps["afterRelevance"] = spool.count
        self._timed("relevance", start)
        return spool, self.keys

    def check_not_empty(self, final: Spool) -> None:
        if final.count:
            return
        record = self.record
        where = "; ".join(f"{s['name']} ({s['uri'] or 'inline'}): {s['documents']} read" for s in record.sources.values())
        if record.documents_in == 0:
            raise StageError(f"no documents found in the sources: {where}")
        raise StageError(
            f"no documents left after cleaning and filtering: {record.documents_in} read ({where}); dropped: {self._drop_reasons()}"
        )

    def _drop_reasons(self) -> str:
        """The reasons units were dropped, the most frequent first (for error messages)."""
        return ", ".join(f"{r} {n}" for r, n in sorted(self.record.counter.dropped.items(), key=lambda kv: -kv[1]))

    # -- pass 4 ------------------------------------------------------------------------
    def _difficulty(self, text: str, tokens: int) -> float:
        if self.perplexity is not None:
            return self.perplexity.difficulty(text)
        return difficulty(text, tokens, self.config.difficulty.method, self.difficulty_scale)

    def rows(self, unit) -> tuple[list[tuple[str, dict]], list, str | None]:
        """(format, row) pairs for a unit, the chunks of a document, or the reason it yields none."""
        config = self.config
        formats = config.formats
        tok = self.tokenizer
        common = {"source": unit.source, "group": unit.group, "doc_id": unit.id, "language": unit.language, "origin": "source"}
        out: list[tuple[str, dict]] = []
        if isinstance(unit, Document):
            wants_chunks = "pretrain" in formats or self.index_builder is not None or self.synthesis_chunks is not None
            if not wants_chunks:
                return [], [], "format-not-requested"
            chunking = config.chunking
            chunks = list(chunk_text(unit.text, tok, chunking.max_tokens, chunking.overlap_tokens, chunking.respect_structure))
            if "pretrain" in formats:
                scores = self.perplexity.difficulties([c.text for c in chunks]) if self.perplexity is not None else None
                for position, chunk in enumerate(chunks):
                    out.append(
                        (
                            "pretrain",
                            {
                                "text": chunk.text,
                                **common,
                                "tokens": chunk.tokens,
                                "difficulty": scores[position] if scores is not None else self._difficulty(chunk.text, chunk.tokens),
                                "chunk_index": chunk.index,
                                "char_start": chunk.start,
                                "char_end": chunk.end,
                            },
                        )
                    )
            if not chunks:
                return [], [], "no-text"
            if not out and self.synthesis_chunks is None:
                # only indexed: the document is kept (its chunks are in the index), no examples
                return [], chunks, None
            return out, chunks, None
        if isinstance(unit, QARecord):
            question_tokens = tok.count(unit.question)
            if "sft" in formats:
                tokens = question_tokens + tok.count(unit.answer)
                out.append(("sft", self._chat(unit.question, unit.answer, common, tokens)))
            if "cot" in formats and unit.reasoning:
                answer = cot_answer(unit.reasoning, unit.answer)
                tokens = question_tokens + tok.count(answer)
                out.append(("cot", self._chat(unit.question, answer, common, tokens)))
            if not out:
                return [], [], "no-reasoning" if "cot" in formats else "format-not-requested"
            return out, [], None
        if "preference" not in formats:
            return [], [], "format-not-requested"
        labels = {"chosen_safe": unit.chosen_safe, "rejected_safe": unit.rejected_safe}
        return [("preference", self._preference(unit.prompt, unit.chosen, unit.rejected, common, labels))], [], None

    def _chat(self, question: str, answer: str, common: dict, tokens: int) -> dict:
        return {
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            **common,
            "tokens": tokens,
            "difficulty": self._difficulty(f"{question}\n{answer}", tokens),
        }

    def _preference(self, prompt: str, chosen: str, rejected: str, common: dict, labels: dict | None = None) -> dict:
        """``labels``: the pair's chosen_safe / rejected_safe (None where unlabelled)."""
        tok = self.tokenizer
        tokens = tok.count(prompt) + max(tok.count(chosen), tok.count(rejected))
        return {
            "prompt": prompt,
            "chosen": chosen,
            "rejected": rejected,
            **(labels or {}),
            **common,
            "tokens": tokens,
            "difficulty": self._difficulty(f"{prompt}\n{chosen}", tokens),
        }

    def _write_train(self, fmt: str, row: dict) -> None:
        self.splits.write("train", fmt, row)
        group, record = row["group"], self.record
        record.train_examples_per_group[group] = record.train_examples_per_group.get(group, 0) + 1
        record.train_tokens_per_group[group] = record.train_tokens_per_group.get(group, 0) + row["tokens"]

    def _route(self, split: str, fmt: str, row: dict) -> None:
        if split == "train":
            if self.cross is not None:
                self.cross.add(self.cross.hasher.signature(comparison_text(fmt, row)), row["doc_id"])
            if self.mixer is not None:
                self.mixer.add(fmt, row)
            else:
                self._write_train(fmt, row)
        else:
            self.held.write({"split": split, "format": fmt, "row": row})

    def synthesize(self, chunks: Spool) -> dict:
        """Synthetic QA / CoT / preference examples from the teacher, routed like every example."""
        from .synthesis import Synthesizer

        options = self.config.synthesis
        formats = self.config.formats
        cleaning = self.config.cleaning
        stats = {
            "teacher": str(options.teacher.url),
            "model": options.teacher.model,
            "chunks": chunks.count,
            "chunksAnswered": 0,
            "pairs": 0,
            "examplesPerFormat": {},
            "skippedByReason": {},
            "draftFallbacks": 0,
        }
        wanted = [f for f in ("sft", "cot", "preference") if f in formats]
        if not (("sft" in wanted) or ("cot" in wanted and options.chain_of_thought) or ("preference" in wanted and options.preference_pairs)):
            stats["note"] = "no requested format takes synthetic examples (sft, cot with chainOfThought, preference with preferencePairs)"
            chunks.remove()
            return stats
        synthesizer = Synthesizer(options)
        start = time.monotonic()

        def norm(text: str) -> str:
            text = clean.normalize(text, cleaning.unicode_nfkc, cleaning.strip_control_chars, cleaning.strip_html)
            return self.redactor.redact(text) if self.redactor is not None else text

        per_format = stats["examplesPerFormat"]
        for result in synthesizer.run(chunks.read(), options.max_examples):
            for reason, n in result.failures.items():
                stats["skippedByReason"][reason] = stats["skippedByReason"].get(reason, 0) + n
            if result.pairs:
                stats["chunksAnswered"] += 1
            stats["draftFallbacks"] += result.drafts_fallback
            chunk = result.chunk
            common = {"source": chunk["source"], "group": chunk["group"], "doc_id": chunk["doc_id"],
                      "language": chunk["language"], "origin": "synthetic"}
            for pair in result.pairs:
                question, answer = norm(pair["question"]), norm(pair["answer"])
                if not question.strip() or not answer.strip():
                    stats["skippedByReason"]["synthesis-invalid"] = stats["skippedByReason"].get("synthesis-invalid", 0) + 1
                    continue
                stats["pairs"] += 1
                made = []
                q_tokens = self.tokenizer.count(question)
                if "sft" in formats:
                    made.append(("sft", self._chat(question, answer, common, q_tokens + self.tokenizer.count(answer))))
                reasoning = norm(pair.get("reasoning") or "")
                if "cot" in formats and options.chain_of_thought:
                    if reasoning.strip():
                        full = cot_answer(reasoning, answer)
                        made.append(("cot", self._chat(question, full, common, q_tokens + self.tokenizer.count(full))))
                    else:
                        stats["skippedByReason"]["synthesis-no-reasoning"] = stats["skippedByReason"].get("synthesis-no-reasoning", 0) + 1
                if "preference" in formats and options.preference_pairs and pair.get("draft"):
                    made.append(("preference", self._preference(question, answer, norm(pair["draft"]), common)))
                for fmt, row in made:
                    per_format[fmt] = per_format.get(fmt, 0) + 1
                    self._route(chunk["split"], fmt, row)
        stats["stoppedEarly"] = synthesizer.stopped
        stats["lastError"] = synthesizer.last_error or None
        stats["failures"] = sum(n for r, n in stats["skippedByReason"].items() if r != "synthesis-invalid" and r != "synthesis-no-reasoning")
        chunks.remove()
        self._timed("synthesis", start)
        if stats["failures"]:
            log.warning("synthesis: %d teacher requests failed (%s)", stats["failures"], stats["skippedByReason"])
        return stats

    def build(self, final: Spool, keys: dict[str, set[str]], staging: Path) -> DatasetResult:
        """Examples into the splits (the units', the teacher's, mixed by group), then the
        retrieval index and the dataset's documents; returns the stage result."""
        start = time.monotonic()
        self._open_outputs(staging)
        self._write_units(final, self._split_assignment(keys))
        if self.synthesis_chunks is not None:
            self.progress.update(force=True, phase="synthesis", chunks=self.synthesis_chunks.count)
            self.record.synthesis = self.synthesize(self.synthesis_chunks)
        if self.mixer is not None:
            self._write_mixture()
        self._write_held_out()
        self.splits.close()
        self._timed("chunkSplitWrite", start)
        self._check_examples()
        if self.index_builder is not None:
            self._write_index(staging)
        return self._write_documents(staging)

    def _split_assignment(self, keys: dict[str, set[str]]) -> dict[str, dict[str, str]]:
        """The split of every split key, per kind of unit."""
        split = self.config.split
        fractions = {"train": split.train, "validation": split.validation, "test": split.test}
        assignment = {
            kind: dict.fromkeys(keys[kind], "train") if kind == TEXT and split.documents_in_train
            else assign_splits(keys[kind], fractions, split.seed)
            for kind in keys
        }
        # a QA and a preference record under one key (a logged request, see .traffic) share a split
        assignment[PREFERENCE] = {key: assignment[QA].get(key, s) for key, s in assignment[PREFERENCE].items()}
        return assignment

    def _open_outputs(self, staging: Path) -> None:
        """The parquet writers and where examples wait: held-out ones for the cross-split check,
        training ones for the mixer, chunks for the index and the teacher."""
        from .index import IndexBuilder
        from .mixture import Mixer, mixing_requested

        config = self.config
        self.splits = SplitWriter(staging, [f for f in FORMATS if f in config.formats])
        near = config.dedup.near
        self.cross = NearDuplicateIndex(near.threshold, near.num_perm, near.shingle_size) if config.dedup.across_splits else None
        self.held = Spool(self.work / "heldout.jsonl")
        self.mixer = Mixer(config.mixture, config.split.seed, self.work) if mixing_requested(config.mixture) else None
        self.index_builder = IndexBuilder(config.index, self.work) if config.index.enabled else None
        self.synthesis_chunks = Spool(self.work / "synthesis-chunks.jsonl") if config.synthesis is not None else None

    def _write_units(self, final: Spool, assignment: dict[str, dict[str, str]]) -> None:
        """Each unit's examples to its split, its chunks to the index and the teacher."""
        record = self.record
        for data in final.read():
            unit = from_json(data)
            split = assignment[unit.kind][unit.split_key]
            rows, doc_chunks, reason = self.rows(unit)
            if not rows and not doc_chunks:
                self.drop(unit.id, unit.source, reason or "no-examples", unit.kind)
                continue
            record.documents_kept += 1
            record.sources[unit.source]["kept"] += 1
            if record.documents_kept % 100 == 0:
                self.progress.update(phase="examples", documents=record.documents_kept)
            record.chunks += len(doc_chunks)
            for chunk in doc_chunks:
                where = {"doc_id": unit.id, "source": unit.source, "group": unit.group, "split": split,
                         "language": unit.language, "chunk_index": chunk.index}
                if self.index_builder is not None:
                    self.index_builder.add(**where, char_start=chunk.start, char_end=chunk.end, text=chunk.text)
                if self.synthesis_chunks is not None:
                    self.synthesis_chunks.write({**where, "text": chunk.text})
            for fmt, row in rows:
                self._route(split, fmt, row)
        final.remove()

    def _write_mixture(self) -> None:
        for fmt, row in self.mixer.mix():
            self._write_train(fmt, row)
        self.record.mixture = report = self.mixer.report
        if report.get("droppedPerGroup"):
            self.record.examples_dropped["mixture-sampled-out"] = sum(report["droppedPerGroup"].values())

    def _write_held_out(self) -> None:
        """Validation and test examples, without those that near-duplicate a training example."""
        cross, dropped = self.cross, self.record.examples_dropped
        for entry in self.held.read():
            row, fmt = entry["row"], entry["format"]
            if cross is not None and cross.find(cross.hasher.signature(comparison_text(fmt, row))) is not None:
                dropped["cross-split-duplicate"] = dropped.get("cross-split-duplicate", 0) + 1
                continue
            self.splits.write(entry["split"], fmt, row)
        self.held.remove()

    def _check_examples(self) -> None:
        if self.splits.examples:
            return
        formats = ", ".join(self.splits.formats)
        synthesis = self.record.synthesis
        if synthesis and synthesis.get("failures"):
            failed = ", ".join(f"{r} {n}" for r, n in sorted(synthesis["skippedByReason"].items()))
            raise StageError(
                f"synthesis: the teacher at {synthesis['teacher']} failed ({failed}; last error: "
                f"{synthesis['lastError']}) and synthesis was the only source of {formats} examples",
                permanent=False,
            )
        teacher = ""
        if synthesis and synthesis.get("skippedByReason"):
            skipped = ", ".join(f"{r} {n}" for r, n in sorted(synthesis["skippedByReason"].items()))
            teacher = f"; the teacher at {synthesis['teacher']} gave no usable examples ({skipped})"
        raise StageError(
            f"no training examples: formats {formats} produce nothing from the {self.record.steps.get('afterRelevance', 0)} "
            f"documents left (dropped: {self._drop_reasons()}){teacher}"
        )

    def _write_index(self, staging: Path) -> None:
        start = time.monotonic()
        self.progress.update(force=True, phase="index", chunks=self.index_builder.count)
        self.record.index = self.index_builder.write(staging)
        self._timed("index", start)

    def _write_documents(self, staging: Path) -> DatasetResult:
        """manifest.json, the dataset card, the inputs and dropped lists; returns the stage result."""
        config, record = self.config, self.record
        record.steps.update(documentsKept=record.documents_kept, chunks=record.chunks, examples=self.splits.examples)
        record.pii_redacted = dict(self.redactor.counts) if self.redactor else {}
        record.perplexity = self.perplexity.summary() if self.perplexity is not None else None
        manifest = build_manifest(config, self.hash, record, self.splits)
        stats = manifest["stats"]
        result = DatasetResult(output_uri=config.output_uri, content_hash=self.hash, stats=DatasetStats.model_validate(self._compact(stats)))
        log.info(
            "kept %d of %d documents; examples %s; %d tokens; dropped %s",
            record.documents_kept, record.documents_in, stats["examplesPerSplit"], stats["tokens"], stats["droppedByReason"] or "none",
        )
        manifest["result"] = result.to_wire()
        write_json(staging / layout.MANIFEST, manifest)
        (staging / layout.CARD).write_text(dataset_card(manifest))
        os.replace(self.work / layout.INPUTS_LIST, staging / layout.INPUTS_LIST)
        self.dropped_log.handle.close()
        os.replace(self.dropped_log.path, staging / layout.DROPPED_LIST)
        return result

    @staticmethod
    def _compact(stats: dict) -> dict:
        """The stats for the termination message (< 3 KB): at most MAX_RESULT_REASONS reasons."""
        reasons = stats["droppedByReason"]
        if len(reasons) > MAX_RESULT_REASONS:
            top = sorted(reasons.items(), key=lambda kv: -kv[1])
            kept = dict(top[: MAX_RESULT_REASONS - 1])
            kept["other"] = sum(n for _, n in top[MAX_RESULT_REASONS - 1 :])
            stats = {**stats, "droppedByReason": kept}
        return stats


def run(config: DataStageConfig) -> DatasetResult:
    """Run the data stage for a validated config; returns the stage result."""
    stage = DataStage(config)
    return stage.run()
