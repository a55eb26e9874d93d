"""The model URI loader (file://, pvc://, mlflow://, hf://)."""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail at once instead of waiting

import pytest

from mentor_trainer.errors import StageError
from mentor_trainer.models import load_model_and_tokenizer


def test_pvc_uri_loads(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MENTOR_PVC_ROOT", str(tmp_path))
    shutil.copytree(tiny, tmp_path / "models" / "tiny")
    loaded = load_model_and_tokenizer("pvc://models/tiny/", load_model=False)
    assert loaded.local_dir == tmp_path / "models" / "tiny"
    assert loaded.tokenizer.chat_template


def test_missing_model_fails_clearly(tmp_path):
    with pytest.raises(StageError, match="does not exist"):
        load_model_and_tokenizer((tmp_path / "nowhere").as_uri())
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageError, match="no config.json"):
        load_model_and_tokenizer((tmp_path / "empty").as_uri())


def test_model_without_weights_or_with_corrupt_weights_fails_clearly(tiny, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(StageError, match="no weights"):
        load_model_and_tokenizer(broken.as_uri())
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(StageError, match="cannot load base model"):
        load_model_and_tokenizer(broken.as_uri())


def test_hf_uri_without_hub_says_what_to_do():
    with pytest.raises(StageError) as info:
        load_model_and_tokenizer("hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    message = str(info.value)
    assert "hub" in message and "s3://" in message and "file://" in message


def test_unsupported_scheme_and_bad_mlflow_uri():
    with pytest.raises(StageError, match="unsupported model URI"):
        load_model_and_tokenizer("ftp://host/model")
    with pytest.raises(StageError, match="mlflow://models/<name>/<version>"):
        load_model_and_tokenizer("mlflow://experiments/1")


def test_mlflow_registry_uri_loads(tiny, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    client.create_registered_model("tiny-expert")
    version = client.create_model_version("tiny-expert", source=tiny.as_uri() + "/")
    loaded = load_model_and_tokenizer(f"mlflow://models/tiny-expert/{version.version}", load_model=False)
    assert loaded.local_dir == tiny
    with pytest.raises(StageError, match="not in the MLflow registry"):
        load_model_and_tokenizer("mlflow://models/tiny-expert/99", load_model=False)
