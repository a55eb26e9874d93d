"""`mentor-trainer data` on the example corpus (examples/corpus) and on small planted inputs.

The corpus plants every kind of bad input the stage must survive; the expected counts below
are the planted ones (see examples/corpus/README.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mentor_trainer.config import DataStageConfig
from mentor_trainer.data.clean import normalize
from mentor_trainer.errors import StageError

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "examples" / "corpus"
KEYWORDS = [
    "Aurelian", "tea", "Veyra", "ATRI", "Silverleaf-7", "Copper Crown", "Mistral Bud", "cultivar", "garden",
    "terrace", "plucking", "flush", "withering", "oxidation", "leaf", "bush",
    "茶", "茶叶", "奥瑞兰", "维拉谷", "银叶", "铜冠", "萎凋", "采摘",
]
PLANTED_PII = {"email": 3, "phone": 4, "national-id": 1, "card-number": 1}
SPLITS = ("train", "validation", "test")


def make_config(output: Path, **options) -> DataStageConfig:
    wire = {
        "run": {"kind": "DomainDataset", "name": options.pop("name", "aurelian"), "namespace": "tests"},
        "outputUri": f"file://{output}",
        "sources": [
            {"name": "docs", "uri": f"file://{CORPUS / 'docs'}"},
            {"name": "qa", "uri": f"file://{CORPUS / 'qa'}"},
        ],
    }
    wire.update(options)
    return DataStageConfig.model_validate(wire)


def corpus_options() -> dict:
    return {
        "formats": ["pretrain", "sft", "cot", "preference"],
        "filters": {"languages": ["en", "zh"]},
        "relevance": {"keywords": KEYWORDS, "threshold": 0.02},
        "chunking": {"maxTokens": 96, "overlapTokens": 16},
    }


def run_stage(config) -> dict:
    from mentor_trainer.data import main

    return main(config).to_wire()  # what the termination message carries


def read_rows(out: Path, split: str, fmt: str) -> list[dict]:
    rows = []
    for path in sorted((out / split).glob(f"{fmt}-*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def all_rows(out: Path, fmt: str) -> dict[str, list[dict]]:
    return {split: read_rows(out, split, fmt) for split in SPLITS}


def rel(doc_id: str) -> str:
    return doc_id.split("examples/corpus/", 1)[-1]


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "dataset"
    config = make_config(out, **corpus_options())
    result = run_stage(config)
    manifest = json.loads((out / "manifest.json").read_text())
    dropped = [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]
    return config, result, manifest, dropped, out


def dropped_reasons(dropped: list[dict]) -> dict[str, str]:
    return {rel(d["id"]): d["reason"] for d in dropped}


# --------------------------------------------------------------------------------------
# The whole corpus


def test_result_is_the_status_shape_and_fits_a_termination_message(corpus_run):
    config, result, manifest, _, out = corpus_run
    assert set(result) == {"outputUri", "contentHash", "stats"}
    assert result["outputUri"] == config.output_uri
    stats = result["stats"]
    assert set(stats) == {"documentsIn", "documentsKept", "droppedByReason", "examplesPerSplit", "tokens", "kept"}
    # every input unit is either kept or dropped with a reason: nothing silently vanishes
    assert stats["documentsIn"] == stats["documentsKept"] + sum(stats["droppedByReason"].values())
    assert stats["kept"] == f"{stats['documentsKept']}/{stats['documentsIn']}"
    assert all(stats["examplesPerSplit"][s] > 0 for s in SPLITS)
    assert stats["tokens"] == manifest["tokens"]["total"] > 0
    assert len(json.dumps(result, separators=(",", ":"))) < 3072
    assert manifest["result"] == result


def test_planted_duplicates_are_removed_and_originals_kept(corpus_run):
    *_, dropped, out = corpus_run
    reasons = dropped_reasons(dropped)
    assert reasons["docs/mirror/withering-copy.md"] == "exact-duplicate"
    assert reasons["docs/mirror/planting-windows.txt"] == "exact-duplicate"  # CRLF, spaces, full-width
    assert reasons["docs/mirror/pruning-2023.md"] == "near-duplicate"
    assert reasons["docs/zh/overview.v2.md"] == "near-duplicate"
    assert reasons["qa/qa.jsonl#qa-009-dup"] == "exact-duplicate"
    kept_docs = {rel(r["doc_id"]) for rows in all_rows(out, "pretrain").values() for r in rows}
    for original in ["docs/en/withering.md", "docs/en/planting.txt", "docs/en/pruning.md", "docs/zh/overview.md"]:
        assert original in kept_docs


def test_bad_inputs_are_counted_by_reason_not_fatal(corpus_run):
    *_, manifest, dropped, _ = corpus_run
    reasons = dropped_reasons(dropped)
    assert reasons["docs/noise/corrupt.pdf"] == "corrupt"
    assert reasons["docs/noise/empty.txt"] == "empty"
    assert reasons["docs/noise/garbage.txt"] == "binary"
    assert reasons["docs/noise/tiny.txt"] == "too-short"
    assert reasons["docs/noise/symbols.txt"] == "symbol-ratio"
    assert reasons["docs/noise/price-table.txt"] == "digit-ratio"
    assert reasons["docs/noise/spam.txt"] == "repeated-ngrams"
    assert reasons["docs/noise/german.txt"] == "language"
    assert reasons["docs/noise/football.md"] == "irrelevant"
    assert reasons["qa/qa.jsonl#qa-bad"] == "invalid-record"
    # nothing else was dropped: every other document of the corpus made it through
    assert len(dropped) == 15
    assert manifest["stats"]["droppedByReason"]["exact-duplicate"] == 3


def test_pii_counts_equal_the_planted_personal_data(corpus_run):
    *_, manifest, _, out = corpus_run
    assert manifest["cleaning"]["piiRedacted"] == PLANTED_PII
    texts = [r["text"] for rows in all_rows(out, "pretrain").values() for r in rows]
    joined = "\n".join(texts)
    for secret in ["field.office@atri.example", "wang.li@atri.example", "+44 20 7946 0958", "(415) 555-0134",
                   "13812345678", "139 1234 5678", "11010519491231002X", "4539 1488 0343 6467"]:
        assert secret not in joined
    for kind in PLANTED_PII:
        assert f"[{kind}]" in joined
    # look-alikes that fail their checksum are not personal data
    assert "4539 1488 0343 6468" in joined  # Luhn fails
    assert "110105194912310021" in joined  # ID check character fails


def test_chinese_encodings_are_decoded(corpus_run):
    *_, out = corpus_run
    by_doc: dict[str, str] = {}
    for rows in all_rows(out, "pretrain").values():
        for r in rows:
            by_doc[rel(r["doc_id"])] = by_doc.get(rel(r["doc_id"]), "") + r["text"]
    assert "每亩用量为一百二十毫升" in by_doc["docs/zh/pests.gb18030.txt"]  # GB18030
    assert "茶园登记与联系方式" in by_doc["docs/zh/contacts.gbk.txt"]  # GBK, read as GB18030
    assert "茶氨酸含量采用高效液相色谱法测定" in by_doc["docs/zh/quality-lab.pdf"]  # CJK PDF (UniGB-UCS2-H)
    assert all("\ufffd" not in text for text in by_doc.values())


def test_formats_are_extracted_and_cleaned(corpus_run):
    *_, out = corpus_run
    by_doc: dict[str, str] = {}
    for rows in all_rows(out, "pretrain").values():
        for r in sorted(rows, key=lambda r: r["chunk_index"]):
            by_doc[rel(r["doc_id"])] = by_doc.get(rel(r["doc_id"]), "") + "\n" + r["text"]
    html = by_doc["docs/en/harvest.html"]
    assert "The first flush, called the Ember Flush" in html
    assert "Grower login" not in html and "Cookie settings" not in html and "analytics" not in html
    assert "# Harvest calendar" in html
    assert "at least 2.1 percent" in by_doc["docs/en/quality-lab.pdf"]
    docx = by_doc["docs/en/brewing-guide.docx"]
    assert "## Copper Crown black tea" in docx and "bright amber" in docx
    assert "Internal field guide, do not distribute" not in "".join(by_doc.values())  # boilerplate
    assert "仅供内部培训使用" not in "".join(by_doc.values())
    # NFKC folds the full-width forms of the Chinese harvest notes
    harvest = by_doc["docs/zh/harvest-and-withering.md"]
    assert "AL-1" in harvest and "14°C" in harvest and "ＡＬ" not in harvest and "１４" not in harvest and "℃" not in harvest


def test_sft_cot_and_preference_examples(corpus_run):
    *_, out = corpus_run
    sft = [r for rows in all_rows(out, "sft").values() for r in rows]
    cot = [r for rows in all_rows(out, "cot").values() for r in rows]
    preference = [r for rows in all_rows(out, "preference").values() for r in rows]
    qa_lines = [json.loads(line) for line in (CORPUS / "qa" / "qa.jsonl").read_text().splitlines()]
    valid = {q["id"]: q for q in qa_lines if "answer" in q and q["id"] != "qa-009-dup"}
    faq_rows = (CORPUS / "qa" / "faq.csv").read_text().strip().splitlines()[1:]
    assert len(sft) == len(valid) + len(faq_rows)
    assert len(cot) == sum(1 for q in valid.values() if q.get("reasoning"))
    example = next(r for r in cot if r["doc_id"].endswith("#qa-001"))
    assert [m["role"] for m in example["messages"]] == ["user", "assistant"]
    assert example["messages"][0]["content"] == valid["qa-001"]["question"]
    assert example["messages"][1]["content"] == (
        f"<think>\n{valid['qa-001']['reasoning']}\n</think>\n\n{valid['qa-001']['answer']}"
    )
    plain = next(r for r in sft if r["doc_id"].endswith("#qa-001"))
    assert plain["messages"][1]["content"] == valid["qa-001"]["answer"]
    source = [json.loads(line) for line in (CORPUS / "qa" / "preference.jsonl").read_text().splitlines()]
    # passed through (after the same normalisation as every text: NFKC folds "？" to "?")
    assert sorted(r["prompt"] for r in preference) == sorted(normalize(p["prompt"]) for p in source)
    pair = next(r for r in preference if r["doc_id"].endswith("#pref-3"))
    assert (pair["chosen"], pair["rejected"]) == (source[2]["chosen"], source[2]["rejected"])


def test_heldout_answers_are_in_the_documents_only(corpus_run):
    *_, out = corpus_run
    training_qa = "\n".join(
        (CORPUS / "qa" / name).read_text() for name in ["qa.jsonl", "faq.csv", "preference.jsonl"]
    ).lower()
    text = "\n".join(r["text"] for rows in all_rows(out, "pretrain").values() for r in rows).lower()
    heldout = [json.loads(line) for line in (CORPUS / "eval" / "heldout.jsonl").read_text().splitlines()]
    assert len(heldout) >= 10
    for item in heldout:
        evidence = item["evidence"].lower()
        assert evidence in text, item["id"]
        assert evidence not in training_qa, item["id"]


def test_chunks_keep_source_and_position(corpus_run):
    config, *_, out = corpus_run
    rows = [r for rows in all_rows(out, "pretrain").values() for r in rows]
    assert all(r["tokens"] <= config.chunking.max_tokens for r in rows)
    by_doc: dict[str, list[dict]] = {}
    for r in rows:
        assert r["source"] == "docs" and r["group"] == "domain"
        assert r["char_end"] - r["char_start"] == len(r["text"])
        by_doc.setdefault(r["doc_id"], []).append(r)
    multi = [sorted(v, key=lambda r: r["chunk_index"]) for v in by_doc.values() if len(v) > 1]
    assert multi, "the corpus has documents longer than one chunk"
    for chunks in multi:
        assert [c["chunk_index"] for c in chunks] == list(range(len(chunks)))
        for a, b in zip(chunks, chunks[1:]):
            assert b["char_start"] > a["char_start"]
            if b["char_start"] < a["char_end"]:  # overlapping chunks agree on the shared text
                shared = a["char_end"] - b["char_start"]
                assert a["text"][-shared:] == b["text"][:shared]


def test_split_is_grouped_by_document_and_has_no_cross_split_near_duplicates(corpus_run):
    config, *_, out = corpus_run
    from mentor_trainer.data.dedup import MinHasher, jaccard
    from mentor_trainer.data.examples import comparison_text

    where: dict[str, set[str]] = {}
    texts = {s: [] for s in SPLITS}
    for fmt in config.formats:
        for split, rows in all_rows(out, fmt).items():
            for r in rows:
                where.setdefault(r["doc_id"], set()).add(split)
                texts[split].append(comparison_text(fmt, r))
    assert all(len(splits) == 1 for splits in where.values())
    near = config.dedup.near
    hasher = MinHasher(near.num_perm, near.shingle_size)
    train = [hasher.signature(t) for t in texts["train"]]
    for split in ("validation", "test"):
        for text in texts[split]:
            signature = hasher.signature(text)
            assert max(jaccard(signature, other) for other in train) < near.threshold


def test_split_does_not_depend_on_where_the_files_are(tmp_path):
    """Two checkouts of the same corpus in different folders split it the same way."""
    import shutil

    def split_of(root: Path) -> dict[str, str]:
        shutil.copytree(CORPUS / "qa", root / "qa")
        shutil.copytree(CORPUS / "docs" / "en", root / "docs")
        out = root / "out"
        run_stage(DataStageConfig.model_validate({
            "run": {"kind": "DomainDataset", "name": "where"}, "outputUri": out.as_uri(), "formats": ["pretrain", "sft"],
            "sources": [{"name": "docs", "uri": (root / "docs").as_uri()}, {"name": "qa", "uri": (root / "qa").as_uri()}],
        }))
        return {r["doc_id"].removeprefix(root.as_uri()): split for fmt in ("pretrain", "sft")
                for split, rows in all_rows(out, fmt).items() for r in rows}

    here, there = split_of(tmp_path / "a"), split_of(tmp_path / "checkouts" / "elsewhere")
    assert here == there and set(here.values()) == {"train", "validation", "test"}


def test_parquet_loads_with_datasets(corpus_run):
    from datasets import load_dataset

    *_, result, _, _, out = corpus_run
    files = {s: str(out / s / "sft-*.parquet") for s in SPLITS}
    dataset = load_dataset("parquet", data_files=files)
    assert {s: dataset[s].num_rows for s in SPLITS} == {s: len(read_rows(out, s, "sft")) for s in SPLITS}
    assert dataset["train"][0]["messages"][0]["role"] == "user"
    pretrain = load_dataset("parquet", data_files={s: str(out / s / "pretrain-*.parquet") for s in SPLITS})
    assert set(pretrain["train"].column_names) >= {"text", "source", "doc_id", "chunk_index", "difficulty"}
    total = sum(pretrain[s].num_rows + dataset[s].num_rows for s in SPLITS)
    total += sum(len(read_rows(out, s, f)) for s in SPLITS for f in ("cot", "preference"))
    assert total == sum(result["stats"]["examplesPerSplit"].values())


def test_manifest_and_dataset_card(corpus_run):
    config, result, manifest, _, out = corpus_run
    steps = manifest["steps"]
    assert steps["documentsIn"] >= steps["afterIngest"] >= steps["afterDedup"] >= steps["afterCleaningAndFilters"]
    assert steps["afterCleaningAndFilters"] >= steps["afterRelevance"] >= steps["documentsKept"]
    assert manifest["contentHash"] == result["contentHash"]
    assert manifest["config"]["relevance"]["threshold"] == 0.02
    assert "outputUri" not in manifest["config"] and "run" not in manifest["config"]
    assert manifest["cleaning"]["boilerplateLines"] == 2  # the English and the Chinese footer
    assert manifest["cleaning"]["boilerplateLinesRemoved"] == 11  # 7 English + 4 Chinese documents
    assert manifest["mixture"]["realised"] == {"domain": 1.0}
    assert manifest["inputs"]["files"] == len((out / "inputs.jsonl").read_text().splitlines())
    for split in SPLITS:
        for fmt in config.formats:
            info = manifest["splits"][split][fmt]
            assert info["examples"] == len(read_rows(out, split, fmt))
    # without an embedding model the index is BM25 only, over every chunk of every split
    assert manifest["index"]["dense"] is None and manifest["index"]["bm25"]["tokens"] > 0
    assert manifest["index"]["chunks"] == manifest["steps"]["chunks"] == sum(
        len(read_rows(out, s, "pretrain")) for s in SPLITS
    )
    assert json.loads((out / "index" / "index.json").read_text())["chunks"] == manifest["index"]["chunks"]
    card = (out / "README.md").read_text()
    assert result["contentHash"] in card and "load_dataset" in card and "irrelevant: 1" in card
    difficulties = [r["difficulty"] for r in read_rows(out, "train", "pretrain")]
    assert all(0 <= d < 1 for d in difficulties) and len(set(difficulties)) > 1


# --------------------------------------------------------------------------------------
# Re-runs and content hash


def test_rerun_with_same_hash_does_no_work(corpus_run, monkeypatch):
    config, result, *_, out = corpus_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    from mentor_trainer.data import pipeline

    def must_not_run(self):
        raise AssertionError("a re-run with an unchanged content hash must not ingest")

    monkeypatch.setattr(pipeline.DataStage, "ingest", must_not_run)
    assert run_stage(config) == result
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_changed_config_or_input_changes_the_hash_and_rebuilds(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    facts = ["terraces are rebuilt after floods", "withering rooms are held at 14 °C", "pluckers take two leaves and a bud",
             "lantern oaks shade the bushes", "the lab measures theanine by HPLC", "chests hold forty kilograms"]
    for i, fact in enumerate(facts):
        (docs / f"d{i}.txt").write_text(f"Document {i} of the Aurelian tea guide says that {fact}, as every grower knows.")
    out = tmp_path / "ds"

    def config(**extra):
        return DataStageConfig.model_validate({
            "run": {"kind": "DomainDataset", "name": "h"}, "outputUri": f"file://{out}",
            "sources": [{"name": "docs", "uri": f"file://{docs}"}], "dedup": {"near": {"enabled": False}}, **extra,
        })

    first = run_stage(config())
    same = run_stage(config())
    assert same == first
    reseeded = run_stage(config(split={"seed": 7}))
    assert reseeded["contentHash"] != first["contentHash"]
    assert json.loads((out / "_SUCCESS").read_text())["contentHash"] == reseeded["contentHash"]
    (docs / "d0.txt").write_text("Document 0 was edited: Aurelian tea is withered at 14 °C for nine hours in a cool room.")
    edited = run_stage(config(split={"seed": 7}))
    assert edited["contentHash"] != reseeded["contentHash"]


# --------------------------------------------------------------------------------------
# Failures that make the result meaningless


def test_zero_documents_left_is_a_stage_error_naming_the_cause(tmp_path):
    config = DataStageConfig.model_validate({
        "run": {"kind": "DomainDataset", "name": "z"}, "outputUri": f"file://{tmp_path / 'out'}",
        "sources": [{"name": "noise", "uri": f"file://{CORPUS / 'docs' / 'noise'}", "include": ["tiny.txt", "symbols.txt", "empty.txt"]}],
    })
    with pytest.raises(StageError) as error:
        run_stage(config)
    message = str(error.value)
    assert "no documents left" in message and "too-short 1" in message and "symbol-ratio 1" in message and "empty 1" in message
    assert error.value.permanent
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_empty_or_missing_sources_are_stage_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = {"run": {"kind": "DomainDataset", "name": "e"}, "outputUri": f"file://{tmp_path / 'out'}"}
    with pytest.raises(StageError, match=r"no documents found in the sources: corpus \(file://.*empty\): 0 read"):
        run_stage(DataStageConfig.model_validate({**base, "sources": [{"name": "corpus", "uri": f"file://{empty}"}]}))
    missing = tmp_path / "typo"
    with pytest.raises(StageError) as error:
        run_stage(DataStageConfig.model_validate({**base, "sources": [{"name": "corpus", "uri": f"file://{missing}"}]}))
    assert "sources[0] (corpus)" in str(error.value) and str(missing) in str(error.value)


def test_unreachable_bucket_fails_the_stage_naming_source_and_endpoint(tmp_path, monkeypatch):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MENTOR_S3_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MENTOR_S3_TIMEOUT", "2")
    config = DataStageConfig.model_validate({
        "run": {"kind": "DomainDataset", "name": "s3"}, "outputUri": f"file://{tmp_path / 'out'}",
        "sources": [{"name": "corpus", "uri": "s3://corpus/docs/"}],
    })
    with pytest.raises(StageError) as error:
        run_stage(config)
    assert "sources[0] (corpus)" in str(error.value) and f"127.0.0.1:{port} unreachable" in str(error.value)
    assert not error.value.permanent  # exit code 1: a retry may help


def test_bad_drop_pattern_names_the_field(tmp_path):
    config = make_config(tmp_path / "out", cleaning={"dropPatterns": ["^ok$", "([unclosed"]})
    with pytest.raises(StageError, match=r"cleaning\.dropPatterns\[1\]"):
        run_stage(config)


# --------------------------------------------------------------------------------------
# Smaller inputs: cross-split check, drop patterns, large files, tokenizer


def _qa_pairs(directory: Path) -> None:
    """Twenty paraphrased pairs of QA records: each pair is a near-duplicate, never an exact one."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(20):
        answer = (
            f"Terrace number {i} of the Veyra Valley is replanted with Silverleaf-7 cuttings every {i + 3} years, "
            f"after the soil has rested and been mulched with pruned tea branches and lantern oak leaves."
        )
        lines.append({"id": f"q{i}a", "question": f"How often is terrace {i} replanted?", "answer": answer})
        lines.append({"id": f"q{i}b", "question": f"How often is terrace {i} replanted?", "answer": answer + " Always."})
    (directory / "pairs.jsonl").write_text("\n".join(json.dumps(l) for l in lines))


def test_validation_and_test_never_near_duplicate_training(tmp_path):
    _qa_pairs(tmp_path / "qa")
    from mentor_trainer.data.dedup import MinHasher, jaccard
    from mentor_trainer.data.examples import comparison_text

    def build(across: bool, out: Path):
        config = DataStageConfig.model_validate({
            "run": {"kind": "DomainDataset", "name": "x"}, "outputUri": f"file://{out}",
            "sources": [{"name": "qa", "uri": f"file://{tmp_path / 'qa'}"}], "formats": ["sft"],
            "split": {"train": 0.6, "validation": 0.2, "test": 0.2},
            "dedup": {"acrossSplits": across},
        })
        result = run_stage(config)
        hasher = MinHasher(config.dedup.near.num_perm, config.dedup.near.shingle_size)
        train = [hasher.signature(comparison_text("sft", r)) for r in read_rows(out, "train", "sft")]
        leaks = sum(
            1
            for split in ("validation", "test")
            for r in read_rows(out, split, "sft")
            if max(jaccard(hasher.signature(comparison_text("sft", r)), t) for t in train) >= config.dedup.near.threshold
        )
        return result, json.loads((out / "manifest.json").read_text()), leaks

    unchecked, _, leaks = build(False, tmp_path / "unchecked")
    assert leaks > 0  # the planted pairs do straddle the split
    checked, manifest, leaks = build(True, tmp_path / "checked")
    assert leaks == 0
    assert manifest["examplesDroppedByReason"]["cross-split-duplicate"] > 0
    assert sum(checked["stats"]["examplesPerSplit"].values()) < sum(unchecked["stats"]["examplesPerSplit"].values())


def test_drop_patterns_and_entity_density(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text(
        "# Notes\n\nDRAFT - internal only\n\nThe ATRI laboratory in Oradell tests Copper Crown lots for theanine "
        "with HPLC at 2.1 percent and VVPO seal VV-2023-00417.\n\nDRAFT - internal only\n"
    )
    (docs / "b.md").write_text("# Plain\n\n" + "the leaves are turned and the leaves are rested for a while before rolling " * 2)
    qa = tmp_path / "qa"
    qa.mkdir()
    (qa / "alpaca.json").write_text(json.dumps([
        {"instruction": "What shade tree do Veyra gardens use?", "output": "Lantern oak."},
        {"instruction": "No answer here"},
    ]))
    config = DataStageConfig.model_validate({
        "run": {"kind": "DomainDataset", "name": "p"}, "outputUri": f"file://{tmp_path / 'out'}",
        "sources": [
            {"name": "docs", "uri": f"file://{docs}"},
            {"name": "seeds", "inline": [{"id": "s1", "text": "Inline seed: Silverleaf-7 is cold-withered at 14 °C for nine hours in Oradell."}]},
            {"name": "qa", "uri": f"file://{qa}", "group": "scenario"},
        ],
        "cleaning": {"dropPatterns": ["^DRAFT"]}, "difficulty": {"method": "entity-density"},
        "filters": {"maxRepeatedNgramRatio": 0.9}, "split": {"train": 1.0, "validation": 0.0, "test": 0.0},
    })
    run_stage(config)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["cleaning"]["patternLinesRemoved"] == 2
    rows = {Path(r["doc_id"]).name: r for r in read_rows(tmp_path / "out", "train", "pretrain")}
    assert "DRAFT" not in rows["a.md"]["text"]
    assert rows["a.md"]["difficulty"] > rows["b.md"]["difficulty"]  # names, codes, numbers vs plain prose
    assert rows["s1"]["doc_id"] == "inline:seeds/s1" and rows["s1"]["language"] == "en"
    sft = read_rows(tmp_path / "out", "train", "sft")
    assert [r["messages"][1]["content"] for r in sft] == ["Lantern oak."] and sft[0]["group"] == "scenario"
    assert manifest["stats"]["droppedByReason"] == {"invalid-record": 1}
    assert manifest["mixture"]["trainExamplesPerGroup"] == {"domain": 3, "scenario": 1}


def test_large_text_file_is_streamed_in_parts(tmp_path, monkeypatch):
    from mentor_trainer.data import ingest

    monkeypatch.setattr(ingest, "MAX_DOCUMENT_CHARS", 20_000)
    docs = tmp_path / "docs"
    docs.mkdir()
    paragraphs = [
        f"Paragraph {i}: garden section {i % 97} was plucked on day {i % 31} and the leaf was withered for "
        f"{9 + i % 5} hours at {14 + i % 3} degrees before rolling number {i}."
        for i in range(2500)
    ]
    (docs / "big.txt").write_text("\n\n".join(paragraphs))
    config = DataStageConfig.model_validate({
        "run": {"kind": "DomainDataset", "name": "big"}, "outputUri": f"file://{tmp_path / 'out'}",
        "sources": [{"name": "docs", "uri": f"file://{docs}"}], "dedup": {"near": {"enabled": False}},
        "filters": {"maxRepeatedNgramRatio": 1.0, "maxDigitRatio": 1.0}, "chunking": {"maxTokens": 512, "overlapTokens": 0},
    })
    result = run_stage(config)
    size = (docs / "big.txt").stat().st_size
    assert result["stats"]["documentsIn"] >= size // 20_000  # one document per part
    rows = [r for rows in all_rows(tmp_path / "out", "pretrain").values() for r in rows]
    splits = {s for s in SPLITS if read_rows(tmp_path / "out", s, "pretrain")}
    assert len(splits) == 1  # every part of one file lands in the same split
    joined = "\n\n".join(r["text"] for r in sorted(rows, key=lambda r: (int((r["doc_id"] + "#part=0").split("#part=")[1]), r["chunk_index"])))
    assert "Paragraph 0:" in joined and "rolling number 2499." in joined
    assert all(not r["text"].startswith("aragraph") for r in rows)  # parts are cut at paragraph breaks


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer trained on the corpus, saved like a model's tokenizer files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [p.read_text(errors="ignore") for p in (CORPUS / "docs").rglob("*.md")]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>"
    )
    directory = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(directory)
    return directory


def test_chunking_with_the_model_tokenizer(tmp_path, tiny_tokenizer):
    from transformers import AutoTokenizer

    config = make_config(
        tmp_path / "out",
        sources=[{"name": "docs", "uri": f"file://{CORPUS / 'docs'}", "include": ["en/*.md", "zh/*.md"]}],
        tokenizer=f"file://{tiny_tokenizer}", chunking={"maxTokens": 48, "overlapTokens": 12}, formats=["pretrain"],
    )
    result = run_stage(config)
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer)
    rows = [r for rows in all_rows(tmp_path / "out", "pretrain").values() for r in rows]
    assert len(rows) > 20
    for r in rows:
        count = len(tokenizer(r["text"], add_special_tokens=False)["input_ids"])
        assert count == r["tokens"] <= 48
    assert result["stats"]["tokens"] == sum(r["tokens"] for r in rows)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["tokenizer"] == f"file://{tiny_tokenizer}"
    # consecutive chunks of a section share whole sentences
    by_doc: dict[str, list[dict]] = {}
    for r in rows:
        by_doc.setdefault(r["doc_id"], []).append(r)
    overlaps = sum(
        1 for chunks in by_doc.values() for a, b in zip(sorted(chunks, key=lambda r: r["chunk_index"]), sorted(chunks, key=lambda r: r["chunk_index"])[1:])
        if b["char_start"] < a["char_end"]
    )
    assert overlaps > 0
    # the tokenizer is part of the content hash
    other = make_config(
        tmp_path / "out",
        sources=[{"name": "docs", "uri": f"file://{CORPUS / 'docs'}", "include": ["en/*.md", "zh/*.md"]}],
        chunking={"maxTokens": 48, "overlapTokens": 12}, formats=["pretrain"],
    )
    assert run_stage(other)["contentHash"] != result["contentHash"]


def test_missing_tokenizer_is_a_stage_error(tmp_path):
    config = make_config(tmp_path / "out", tokenizer=f"file://{tmp_path / 'no-such-model'}")
    with pytest.raises(StageError, match="tokenizer .*no-such-model does not exist"):
        run_stage(config)


def test_chunker_prefers_structure():
    from mentor_trainer.data.chunking import FallbackTokenizer, chunk_text

    text = (
        "# Withering\n\nCold withering comes first. Leaves rest at 14 °C for nine hours. Workers turn them twice.\n\n"
        "## 病虫害\n\n琥珀螨是主要害虫。每片叶子超过五只时喷洒印楝油。霜蛾用诱捕器防治。\n\n"
        "## Drying\n\nThe leaf is dried at 110 °C. It leaves the drier with 3 % moisture. Then it is graded."
    )
    chunks = chunk_text(text, FallbackTokenizer(), max_tokens=24, overlap_tokens=6)
    tokenizer = FallbackTokenizer()
    assert all(tokenizer.count(c.text) == c.tokens <= 24 for c in chunks)
    assert all(text[c.start : c.end] == c.text for c in chunks)
    # headings open chunks and never end one
    assert [c.text.split("\n")[0] for c in chunks if c.text.startswith("#")] == ["# Withering", "## 病虫害", "## Drying"]
    assert not any(c.text.rstrip().split("\n")[-1].startswith("#") for c in chunks)
    # chunks end at sentence ends (CJK and Latin), never mid-sentence
    assert all(c.text.endswith((".", "。")) for c in chunks)
    # no chunk spans two sections, and chunks in a section overlap by whole sentences
    assert not any("Withering" in c.text and "病虫害" in c.text for c in chunks)
    assert any(b.start < a.end for a, b in zip(chunks, chunks[1:]))
    windows = chunk_text(text, tokenizer, max_tokens=24, overlap_tokens=6, respect_structure=False)
    assert all(w.tokens <= 24 for w in windows) and len(windows) >= len(chunks) - 1


# --------------------------------------------------------------------------------------
# The real CLI


def _cli(config_path: Path, termination: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["MENTOR_TERMINATION_LOG"] = str(termination)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "trainer_image"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "mentor_trainer.cli", "data", "--config", str(config_path)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )


def test_cli_writes_the_result_as_termination_message(tmp_path):
    config = make_config(
        tmp_path / "out",
        sources=[{"name": "docs", "uri": f"file://{CORPUS / 'docs' / 'en'}", "include": ["*.md", "*.txt"]}],
        progressFile=str(tmp_path / "progress.json"),
    )
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_wire()))
    termination = tmp_path / "termination-log"
    process = _cli(path, termination)
    assert process.returncode == 0, process.stderr[-2000:]
    result = json.loads(termination.read_text())
    assert result["outputUri"] == f"file://{tmp_path / 'out'}"
    assert result["stats"]["documentsKept"] > 0
    assert result == json.loads(process.stdout)
    assert json.loads((tmp_path / "progress.json").read_text())["phase"] == "done"

    bad = make_config(
        tmp_path / "out2",
        sources=[{"name": "noise", "uri": f"file://{CORPUS / 'docs' / 'noise'}", "include": ["tiny.txt"]}],
    )
    path.write_text(json.dumps(bad.to_wire()))
    process = _cli(path, termination)
    assert process.returncode == 2
    assert "no documents left" in termination.read_text() and "too-short 1" in termination.read_text()
