"""`mentor-trainer export` on the tiny Qwen2 model: a full model is exported into a servable
transformers directory that reloads and generates what the source generates; a LoRA adapter
is merged (no peft modules left, the adapter model's logits); the generation config carries
the deployment's temperature; int8 (torchao) reloads with transformers on CPU, is smaller and
its perplexity is recorded next to the unquantised one; int4/fp8 without a fitting GPU and a
missing model fail naming the cause; the CLI writes the result as the termination message."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from mentor_trainer.config.deploy import ExportResult, ExportStageConfig
from mentor_trainer.errors import StageError
from mentor_trainer.export import main as export

REPO = Path(__file__).resolve().parents[2]
CORPUS_DOCS = REPO / "examples" / "corpus" / "docs" / "en"
PROMPTS = [
    [{"role": "user", "content": "How many pheromone traps per hectare are used?"}],
    [{"role": "user", "content": "What does grade AL-1 require?"}],
]


def make_config(model_uri: str, out: Path, **options) -> ExportStageConfig:
    wire = {
        "run": {"kind": "ModelDeployment", "name": "tea-expert", "namespace": "tests"},
        "outputUri": out.as_uri(),
        "progressFile": str(out.parent / f"{out.name}-progress.json"),
        "modelUri": model_uri,
        "runtime": "huggingface",
        "maxNewTokens": 24,
    }
    wire.update(options)
    return ExportStageConfig.model_validate(wire)


@pytest.fixture(scope="module")
def validation_dataset(tmp_path_factory) -> Path:
    """A dataset directory as the data stage lays it out, holding validation pretrain texts
    (paragraphs of the example corpus); the perplexity check reads nothing else."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = []
    for path in sorted(CORPUS_DOCS.glob("*.md")):
        texts += [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 80]
    assert len(texts) >= 8
    root = tmp_path_factory.mktemp("dataset") / "aurelian"
    (root / "validation").mkdir(parents=True)
    pq.write_table(pa.table({"text": texts[:16]}), root / "validation" / "pretrain-00000.parquet")
    return root


def greedy(model_dir: Path | str, prompts=PROMPTS, max_new_tokens: int = 12) -> list[str]:
    from mentor_trainer.evaluate.lm import LanguageModel

    lm = LanguageModel.load(str(model_dir) if "://" in str(model_dir) else Path(model_dir).as_uri(), purpose="model")
    return lm.generate(prompts, max_new_tokens=max_new_tokens)


def local(uri: str) -> Path:
    from mentor_trainer import storage

    return storage.local_path(uri)


# --------------------------------------------------------------------------------------
# Full model


@pytest.fixture(scope="module")
def full_export(tiny, tmp_path_factory) -> tuple[ExportStageConfig, ExportResult]:
    out = tmp_path_factory.mktemp("export") / "full"
    config = make_config(tiny.as_uri(), out, temperature=0.7)
    return config, export(config)


def test_full_model_export_is_a_servable_directory(full_export, tiny):
    config, result = full_export
    assert result.model_uri == config.output_uri + "/model/"
    model_dir = local(result.model_uri)
    names = {p.name for p in model_dir.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md", "_SUCCESS"} <= names
    assert "tokenizer.json" in names and "tokenizer_config.json" in names
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.chat_template and "<｜Assistant｜>" in tokenizer.apply_chat_template(PROMPTS[0], tokenize=False, add_generation_prompt=True)

    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["temperature"] == 0.7 and generation["do_sample"] is True
    assert generation["max_new_tokens"] == 24
    assert result.temperature == 0.7
    assert result.quantization == "none"
    assert result.size_bytes == result.unquantized_size_bytes == (model_dir / "model.safetensors").stat().st_size
    assert result.perplexity is None and result.unquantized_perplexity is None  # no dataset given

    card = (model_dir / "README.md").read_text()
    assert tiny.as_uri() in card and "Quantisation: none" in card and "temperature 0.7" in card

    details = json.loads((local(config.output_uri) / "result.json").read_text())
    assert details["modelUri"] == result.model_uri and details["device"] == "cpu"
    progress = json.loads(Path(config.progress_file).read_text())
    assert progress["phase"] == "done"


def test_full_model_export_generates_what_the_source_generates(full_export, tiny):
    _, result = full_export
    source = greedy(tiny)
    exported = greedy(local(result.model_uri))
    assert exported == source
    assert any(text.strip() for text in source)


def test_without_temperature_the_model_decodes_as_before(tiny, tmp_path):
    empty_dataset = tmp_path / "dataset-without-validation"
    empty_dataset.mkdir()
    result = export(make_config(tiny.as_uri(), tmp_path / "out", datasetUri=empty_dataset.as_uri()))
    assert result.perplexity is None and result.unquantized_perplexity is None  # nothing to measure on
    generation = json.loads((local(result.model_uri) / "generation_config.json").read_text())
    source = json.loads((tiny / "generation_config.json").read_text())
    assert generation.get("do_sample", False) == source.get("do_sample", False)
    assert generation["max_new_tokens"] == 24
    assert result.temperature == (source.get("temperature", 1.0) if source.get("do_sample") else None)


# --------------------------------------------------------------------------------------
# LoRA adapter


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory) -> tuple[Path, object]:
    """A LoRA adapter on the tiny model with non-zero weights (so merging changes the model),
    published the way the training stage publishes one (its base in the commit marker)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mentor_trainer import storage

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    )
    target = tmp_path_factory.mktemp("adapter") / "adapter"
    with storage.publish(target.as_uri(), {"kind": "adapter", "base": tiny.as_uri()}) as staging:
        peft_model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(tiny).save_pretrained(staging)
    return target, peft_model.eval()


def test_lora_adapter_is_merged_into_its_base(adapter, tiny, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    adapter_dir, peft_model = adapter
    config = make_config(adapter_dir.as_uri(), tmp_path / "out", runtime="vllm")
    result = export(config)
    model_dir = local(result.model_uri)
    assert not (model_dir / "adapter_config.json").exists()
    assert "lora" not in (model_dir / "model.safetensors").read_bytes()[:200_000].decode("latin-1").lower()
    merged = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in merged.named_modules())
    assert not hasattr(merged, "peft_config")

    ids = torch.tensor([[0, 17, 240, 999, 5, 61, 1200, 33]])
    with torch.inference_mode():
        expected = peft_model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, base, atol=1e-3)  # the adapter did change the model

    card = (model_dir / "README.md").read_text()
    assert adapter_dir.as_uri() in card and tiny.as_uri() in card and "merged" in card
    assert json.loads((local(config.output_uri) / "result.json").read_text())["adapterBaseUri"] == tiny.as_uri()


def test_adapter_without_marker_finds_its_base_in_the_adapter_config(adapter, tiny, tmp_path):
    import shutil

    adapter_dir, _ = adapter
    copy = tmp_path / "copied-adapter"
    shutil.copytree(adapter_dir, copy, ignore=shutil.ignore_patterns("_SUCCESS"))
    cfg = json.loads((copy / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tiny)
    (copy / "adapter_config.json").write_text(json.dumps(cfg))
    result = export(make_config(copy.as_uri(), tmp_path / "out"))
    assert (local(result.model_uri) / "model.safetensors").exists()


def test_dora_adapter_is_merged(tiny, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    dora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["k_proj", "o_proj"], use_dora=True,
                                           init_lora_weights=False)).eval()
    dora.save_pretrained(tmp_path / "dora")  # base_model_name_or_path: the tiny model's directory
    result = export(make_config((tmp_path / "dora").as_uri(), tmp_path / "out"))
    merged = AutoModelForCausalLM.from_pretrained(local(result.model_uri), dtype=torch.float32).eval()
    ids = torch.tensor([[0, 9, 300, 41, 2000, 7]])
    with torch.inference_mode():
        assert torch.allclose(merged(input_ids=ids).logits, dora(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    assert "DORA adapter, merged" in (local(result.model_uri) / "README.md").read_text()


# --------------------------------------------------------------------------------------
# Quantisation


def test_int8_export_reloads_on_cpu_smaller_with_perplexity_both_ways(tiny, validation_dataset, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    config = make_config(tiny.as_uri(), tmp_path / "out", quantization={"method": "int8"},
                         datasetUri=validation_dataset.as_uri(), temperature=0.5)
    result = export(config)
    assert result.quantization == "int8"
    model_dir = local(result.model_uri)
    reloaded = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert reloaded.device.type == "cpu"
    assert "Int8" in type(reloaded.model.layers[0].self_attn.q_proj.weight).__name__
    assert json.loads((model_dir / "config.json").read_text())["quantization_config"]["quant_method"] == "torchao"

    assert result.size_bytes == (model_dir / "model.safetensors").stat().st_size
    assert 0 < result.size_bytes < result.unquantized_size_bytes
    assert result.perplexity is not None and result.unquantized_perplexity is not None
    assert abs(result.perplexity - result.unquantized_perplexity) / result.unquantized_perplexity < 0.05
    assert result.temperature == 0.5
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["temperature"] == 0.5 and generation["do_sample"] is True and generation["max_new_tokens"] == 24

    ids = torch.tensor([[0, 17, 240, 999, 5, 61]])
    with torch.inference_mode():
        out = reloaded.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 10)
    card = (model_dir / "README.md").read_text()
    assert "Quantisation: int8" in card and "unquantised" in card and f"{result.perplexity:.4g}" in card


@pytest.mark.parametrize("method", ["int4", "fp8"])
def test_int4_and_fp8_without_a_fitting_gpu_fail_naming_the_field(tiny, tmp_path, method):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: the method may well be supported")
    with pytest.raises(StageError) as caught:
        export(make_config(tiny.as_uri(), tmp_path / "out", quantization={"method": method}))
    message = str(caught.value)
    assert "spec.quantization.method" in message and method in message and "CUDA" in message
    assert caught.value.permanent
    assert not (tmp_path / "out").exists()  # nothing published


@pytest.mark.parametrize(
    ("method", "capability", "supported"),
    [("int4", (7, 5), False), ("int4", (8, 0), True), ("fp8", (8, 6), False), ("fp8", (9, 0), True), ("int8", None, True)],
)
def test_the_hardware_check_names_the_field_and_the_gpu(monkeypatch, method, capability, supported):
    from mentor_trainer.export import quantize

    monkeypatch.setattr(quantize, "cuda_capability", lambda: capability)
    if supported:
        quantize.check_supported(method, "cuda" if capability else "cpu")
        return
    with pytest.raises(StageError, match=rf"spec\.quantization\.method: {method} .*compute capability {capability[0]}\.{capability[1]}"):
        quantize.check_supported(method, "cuda")


def test_each_method_has_a_torchao_config_transformers_takes(tiny):
    from transformers import AutoConfig, TorchAoConfig

    from mentor_trainer.export.quantize import torchao_config

    model_config = AutoConfig.from_pretrained(tiny)
    kinds = {}
    for method in ("int8", "int4", "fp8"):
        config = torchao_config(method, model_config)
        assert isinstance(config, TorchAoConfig)
        kinds[method] = type(config.quant_type).__name__
    assert kinds == {"int8": "Int8WeightOnlyConfig", "int4": "Int4WeightOnlyConfig", "fp8": "Float8WeightOnlyConfig"}
    assert torchao_config("int4", model_config).quant_type.int4_packing_format == "tile_packed_to_4d"


def test_a_missing_model_fails_clearly(tmp_path):
    missing = (tmp_path / "no-such-model").as_uri()
    with pytest.raises(StageError) as caught:
        export(make_config(missing, tmp_path / "out"))
    assert missing in str(caught.value) and "does not exist" in str(caught.value)


def test_a_directory_without_a_model_fails_clearly(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a model")
    with pytest.raises(StageError, match="no config.json"):
        export(make_config(empty.as_uri(), tmp_path / "out"))


# --------------------------------------------------------------------------------------
# Triton (the repository writer is export/triton.py)


@pytest.mark.skipif(importlib.util.find_spec("mentor_trainer.export.triton") is None, reason="export/triton.py not present")
def test_triton_runtime_writes_a_repository_over_the_exported_model(tiny, tmp_path):
    config = make_config(tiny.as_uri(), tmp_path / "out", runtime="triton", temperature=0.8,
                         batching={"maxBatchSize": 4, "maxWaitMs": 5})
    result = export(config)
    assert result.model_uri == config.output_uri + "/triton/"
    repo = local(result.model_uri)
    assert (repo / "_SUCCESS").exists()
    assert (repo / "tea-expert" / "config.pbtxt").is_file()
    assert (local(config.output_uri + "/model/") / "model.safetensors").is_file()  # model/ stays for the other runtimes


# --------------------------------------------------------------------------------------
# CLI


def test_cli_writes_the_result_as_termination_message(tiny, tmp_path, monkeypatch):
    from mentor_trainer import cli

    config = make_config(tiny.as_uri(), tmp_path / "out", temperature=1.2)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.to_wire()))
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("MENTOR_TERMINATION_LOG", str(termination))
    assert cli.main(["export", "--config", str(config_file)]) == 0
    wire = json.loads(termination.read_text())
    result = ExportResult.from_wire(wire)
    assert result.model_uri == config.output_uri + "/model/" and result.temperature == 1.2 and result.quantization == "none"

    bad = make_config((tmp_path / "missing").as_uri(), tmp_path / "out2")
    config_file.write_text(json.dumps(bad.to_wire()))
    assert cli.main(["export", "--config", str(config_file)]) == cli.EXIT_PERMANENT
    assert "does not exist" in termination.read_text()
