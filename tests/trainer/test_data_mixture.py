"""Mixing domain / general / scenario sources by weight (sampling, realised proportions reported)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mentor_trainer.config import DataStageConfig
from mentor_trainer.data.mixture import largest_remainder, plan, select
from mentor_trainer.errors import StageError

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "examples" / "corpus"
SPLITS = ("train", "validation", "test")
VOCABULARY = (
    "river mountain market library engine garden window harbor bridge village orchard valley lantern copper "
    "silver meadow forest winter summer autumn spring morning evening station theatre museum kitchen bakery "
    "painter farmer sailor teacher doctor student captain island desert canyon glacier volcano thunder"
).split()


def general_documents(n: int) -> list[dict]:
    docs = []
    for i in range(n):
        rng = random.Random(i)
        words = [rng.choice(VOCABULARY) for _ in range(40)]
        docs.append({"id": f"g{i}", "text": f"General note {i}. " + " ".join(words) + "."})
    return docs


def scenario_qa(directory: Path, n: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        {"id": f"s{i}", "question": f"A customer asks about order {i}: can lot {1000 + i} ship by day {i % 28 + 1}?",
         "answer": f"Yes, lot {1000 + i} ships from the Oradell warehouse within {i % 5 + 2} days."}
        for i in range(n)
    ]
    (directory / "scenario.jsonl").write_text("\n".join(json.dumps(line) for line in lines))


def make_config(tmp_path: Path, out: Path, mixture: dict, split=None) -> DataStageConfig:
    scenario_qa(tmp_path / "scenario", 30)
    return DataStageConfig.model_validate({
        "run": {"kind": "DomainDataset", "name": "mix", "namespace": "tests"},
        "outputUri": f"file://{out}",
        "sources": [
            {"name": "domain", "uri": f"file://{CORPUS / 'docs' / 'en'}", "include": ["*.md", "*.txt"], "group": "domain"},
            {"name": "general", "inline": general_documents(50), "group": "general"},
            {"name": "scenario", "uri": f"file://{tmp_path / 'scenario'}", "group": "scenario"},
        ],
        "formats": ["pretrain", "sft"],
        "dedup": {"near": {"enabled": False}},
        "filters": {"maxRepeatedNgramRatio": 1.0},
        "chunking": {"maxTokens": 64, "overlapTokens": 8},
        "index": {"enabled": False},
        "mixture": mixture,
        "split": split or {"train": 1.0, "validation": 0.0, "test": 0.0},
    })


def train_rows(out: Path) -> list[dict]:
    return [r for fmt in ("pretrain", "sft") for p in sorted((out / "train").glob(f"{fmt}-*.parquet")) for r in pq.read_table(p).to_pylist()]


def key(row: dict) -> str:
    return json.dumps([row["doc_id"], row.get("chunk_index"), row.get("text") or row["messages"][1]["content"]])


def run_stage(config):
    from mentor_trainer.data import main

    return main(config).to_wire()  # what the termination message carries


def test_total_examples_are_mixed_to_the_weights(tmp_path):
    out = tmp_path / "out"
    run_stage(make_config(tmp_path, out, {"domain": 0.6, "general": 0.3, "scenario": 0.1, "totalExamples": 200}))
    manifest = json.loads((out / "manifest.json").read_text())
    mixture = manifest["mixture"]
    rows = train_rows(out)
    assert len(rows) == 200 == sum(mixture["targetPerGroup"].values())
    counts = Counter(r["group"] for r in rows)
    realised = {g: counts[g] / len(rows) for g in counts}
    for group, weight in {"domain": 0.6, "general": 0.3, "scenario": 0.1}.items():
        assert abs(realised[group] - weight) <= 0.01, (group, realised)
        assert mixture["realised"][group] == pytest.approx(realised[group], abs=1e-4)
    assert mixture["sampled"] is True and mixture["trainExamplesPerGroup"] == dict(sorted(counts.items()))
    available = mixture["availablePerGroup"]
    assert available["general"] == 50 and available["scenario"] == 30
    # 60 general examples from 50: every one once, ten of them twice; scenario is sampled down to 20 of 30
    assert mixture["oversampledPerGroup"].get("general") == 10
    general = Counter(key(r) for r in rows if r["group"] == "general")
    assert len(general) == 50 and sorted(general.values()).count(2) == 10
    assert mixture["droppedPerGroup"]["scenario"] == 10
    assert manifest["examplesDroppedByReason"]["mixture-sampled-out"] == sum(mixture["droppedPerGroup"].values())
    card = (out / "README.md").read_text()
    assert "Realised share of training examples" in card


def test_without_a_total_the_scarcest_group_sets_the_size_and_nothing_repeats(tmp_path):
    out = tmp_path / "out"
    weights = {"domain": 0.5, "general": 0.3, "scenario": 0.2}
    config = make_config(tmp_path, out, weights, split={"train": 0.8, "validation": 0.1, "test": 0.1, "seed": 3})
    run_stage(config)
    manifest = json.loads((out / "manifest.json").read_text())
    mixture = manifest["mixture"]
    available = mixture["availablePerGroup"]
    expected_total = int(min(available[g] / w for g, w in weights.items()))
    rows = train_rows(out)
    assert len(rows) == expected_total
    assert len({key(r) for r in rows}) == len(rows)  # sampling without replacement
    counts = Counter(r["group"] for r in rows)
    for group, weight in weights.items():
        assert abs(counts[group] / len(rows) - weight) <= 0.02, (group, counts)
    # validation and test are not resampled: every held-out example is still there
    held = manifest["splits"]["validation"]["pretrain"]["examples"] + manifest["splits"]["test"]["pretrain"]["examples"]
    assert held > 0
    # deterministic: the same config keeps the same examples
    again = tmp_path / "again"
    run_stage(config.model_copy(update={"output_uri": f"file://{again}"}))
    assert sorted(key(r) for r in train_rows(again)) == sorted(key(r) for r in rows)


def test_default_weights_keep_every_group_and_report_it(tmp_path):
    out = tmp_path / "out"
    run_stage(make_config(tmp_path, out, {}))
    mixture = json.loads((out / "manifest.json").read_text())["mixture"]
    assert mixture["sampled"] is False
    assert set(mixture["trainExamplesPerGroup"]) == {"domain", "general", "scenario"}
    assert sum(mixture["realised"].values()) == pytest.approx(1.0, abs=1e-3)


def test_planning_and_selection():
    assert largest_remainder({"a": 0.5, "b": 0.3, "c": 0.2}, 7) == {"a": 4, "b": 2, "c": 1}
    targets, shares = plan({"domain": 100, "general": 10, "scenario": 0}, {"domain": 0.6, "general": 0.3, "scenario": 0.1}, None)
    # scenario has no examples: the weights are renormalised over domain and general
    assert shares == pytest.approx({"domain": 2 / 3, "general": 1 / 3})
    assert targets == {"domain": 20, "general": 10, "scenario": 0}
    chosen = select(100, 30, seed=1, group="domain")
    assert sum(chosen.values()) == 30 and set(chosen.values()) == {1}
    assert select(100, 30, seed=1, group="domain") == chosen
    assert select(100, 30, seed=2, group="domain") != chosen
    assert sum(select(10, 25, seed=1, group="g").values()) == 25
    with pytest.raises(StageError, match="weight 0"):
        plan({"general": 5}, {"domain": 1.0, "general": 0.0, "scenario": 0.0}, None)


# --------------------------------------------------------------------------------------
# Difficulty by the base model's perplexity (the curriculum column, beside the mixture)


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    """A tiny Qwen2-architecture causal LM with a BPE tokenizer trained on the corpus, trained for a few
    steps on the corpus (so it prefers the corpus' frequent tokens), saved like a real checkpoint."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    texts = [p.read_text(errors="ignore") for p in sorted((CORPUS / "docs" / "en").glob("*.md"))]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<｜begin▁of▁sentence｜>",
                                   eos_token="<｜end▁of▁sentence｜>", pad_token="<｜end▁of▁sentence｜>")
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         intermediate_size=64, vocab_size=len(fast), max_position_embeddings=256,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    model = Qwen2ForCausalLM(config)
    ids = [i for t in texts for i in fast(t, add_special_tokens=False)["input_ids"]]
    data = torch.tensor(ids[: (len(ids) // 64) * 64]).view(-1, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        batch = data[torch.randint(0, len(data), (8,))]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    directory = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def test_perplexity_difficulty_column(tmp_path, tiny_qwen2):
    from mentor_trainer.data.perplexity import PerplexityScorer

    out = tmp_path / "out"
    config = DataStageConfig.model_validate({
        "run": {"kind": "DomainDataset", "name": "ppl", "namespace": "tests"},
        "outputUri": f"file://{out}",
        "sources": [{"name": "docs", "uri": f"file://{CORPUS / 'docs' / 'en'}", "include": ["w*.md", "p*.md", "c*.md"]},
                    {"name": "qa", "uri": f"file://{CORPUS / 'qa'}", "include": ["faq.csv"]}],
        "formats": ["pretrain", "sft"], "tokenizer": f"file://{tiny_qwen2}",
        "difficulty": {"method": "perplexity", "modelUri": f"file://{tiny_qwen2}"},
        "chunking": {"maxTokens": 128, "overlapTokens": 0}, "index": {"enabled": False},
        "split": {"train": 1.0, "validation": 0.0, "test": 0.0},
    })
    run_stage(config)
    manifest = json.loads((out / "manifest.json").read_text())
    rows = train_rows(out)
    assert {r["group"] for r in rows} == {"domain"} and len(rows) > 5
    values = [r["difficulty"] for r in rows]
    assert all(0 < v < 1 for v in values) and len(set(values)) > 3
    summary = manifest["difficulty"]["perplexity"]
    assert summary["model"] == f"file://{tiny_qwen2}" and summary["scored"] == len(rows)
    assert 1 < summary["meanPerplexity"] < 400  # trained a little: better than uniform over the vocabulary

    scorer = PerplexityScorer(f"file://{tiny_qwen2}")
    vocab = [t for t in scorer.tokenizer.convert_ids_to_tokens(list(range(len(scorer.tokenizer)))) if not t.startswith("<")]
    rng = random.Random(0)
    random_text = scorer.tokenizer.convert_tokens_to_string([rng.choice(vocab) for _ in range(120)])
    repeated = " the" * 120
    low, high = scorer.nll([repeated, random_text])
    assert low < high, (low, high)
    assert scorer.nll([repeated])[0] == pytest.approx(low, rel=1e-3)  # batching (right padding) changes nothing
    assert scorer.difficulty(repeated) < scorer.difficulty(random_text)


def test_perplexity_needs_a_model(tmp_path):
    config = make_config(tmp_path, tmp_path / "out", {})
    config = config.model_copy(update={"difficulty": config.difficulty.model_copy(update={"method": "perplexity"})})
    with pytest.raises(StageError, match="difficulty.modelUri"):
        run_stage(config)
    missing = config.model_copy(update={"difficulty": config.difficulty.model_copy(update={"model_uri": f"file://{tmp_path / 'nope'}"})})
    with pytest.raises(StageError, match="difficulty.modelUri .*nope does not exist"):
        run_stage(missing)
