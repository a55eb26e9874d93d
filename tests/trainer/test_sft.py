"""`mentor-trainer sft` on the tiny Qwen2 model and a dataset made by the real data stage
from examples/corpus: it learns (lora, full, freeze), keeps the curriculum order, resumes
from a checkpoint, tracks in MLflow, reports progress, and fails clearly on bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from mentor_trainer.config.sft import SftStageConfig, TrainingResult
from mentor_trainer.errors import StageError

from .interrupt import Killed, kill_after_save, record_steps


def make_config(tiny: Path, dataset: Path, out_dir: Path, **options) -> SftStageConfig:
    hyper = {
        "maxSteps": 30,
        "learningRate": 0.01,
        "lrScheduler": "constant",
        "warmupRatio": 0.0,
        "perDeviceBatchSize": 2,
        "maxSeqLength": 256,
        "seed": 3,
        **options.pop("hyperparameters", {}),
    }
    wire = {
        "run": {"kind": "FineTuneJob", "name": options.pop("name", "tea-expert"), "namespace": "tests"},
        "outputUri": out_dir.as_uri(),
        "baseModel": tiny.as_uri(),
        "datasetUri": dataset.as_uri(),
        "method": "lora",
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "hyperparameters": hyper,
        "evaluation": {"everySteps": 100},
        "checkpointing": {"everySteps": 100},
        "output": {"mergeAdapter": False},
    }
    wire.update(options)
    return SftStageConfig.model_validate(wire)


def run(config, callbacks=()):
    from mentor_trainer.train.sft import run as sft_run

    return sft_run(config, callbacks=callbacks)


# --------------------------------------------------------------------------------------
# It learns


@pytest.mark.parametrize(
    "method, options",
    [
        ("lora", {"output": {"mergeAdapter": True}}),
        ("full", {"hyperparameters": {"learningRate": 0.003}}),
        ("freeze", {"freeze": {"topLayers": 1}, "hyperparameters": {"learningRate": 0.005}}),
    ],
)
def test_domain_validation_loss_falls(tiny, dataset, tmp_path, method, options):
    config = make_config(tiny, dataset, tmp_path / "out", method=method, **options)
    result = run(config)
    metrics = result.metrics
    print(f"{method}: validation loss {metrics['base_eval_loss']:.3f} -> {metrics['eval_loss']:.3f}")
    # loss on the answers of the held-out domain QA (sft + cot validation split)
    assert metrics["eval_loss"] < metrics["base_eval_loss"] - 0.5, metrics
    assert metrics["eval_perplexity"] < 0.6 * metrics["base_eval_perplexity"], metrics
    assert metrics["steps"] == 30
    out = tmp_path / "out"
    saved = json.loads((out / "result.json").read_text())
    assert saved["metrics"] == metrics and saved["method"] == method and saved["precision"] == "fp32"
    assert (out / "README.md").read_text().startswith("# tea-expert")
    assert (out / "model" / "_SUCCESS").is_file() and (out / "model" / "model.safetensors").is_file()
    assert result.model_uri == (out / "model").as_uri() + "/"
    assert len(json.dumps(result.to_wire())) < 3000
    if method == "lora":
        assert (out / "adapter" / "adapter_model.safetensors").is_file()
        assert result.adapter_uri == (out / "adapter").as_uri() + "/"
    else:
        assert result.adapter_uri is None
    if method == "freeze":
        assert saved["trainedLayers"] == [3]
        assert saved["trainableParameters"] < 0.5 * saved["parameters"]
    # the published model is the trained one: it loads and scores like the final evaluation
    from mentor_trainer.models import load_model_and_tokenizer

    loaded = load_model_and_tokenizer(result.model_uri)
    assert loaded.tokenizer.chat_template
    assert _eval_loss(loaded.model, loaded.tokenizer, dataset) == pytest.approx(metrics["eval_loss"], abs=0.05)


def _eval_loss(model, tokenizer, dataset: Path) -> float:
    """Mean answer-token loss on the validation split, computed independently of TRL."""
    import pyarrow.parquet as pq
    import torch

    total, count = 0.0, 0
    for fmt in ("sft", "cot"):
        for row in pq.read_table(dataset / "validation" / f"{fmt}-00000.parquet").to_pylist():
            messages = row["messages"]
            prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
            full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"][:256]
            labels = [-100] * len(prompt) + full[len(prompt):]
            with torch.no_grad():
                out = model(input_ids=torch.tensor([full]), labels=torch.tensor([labels]))
            n = sum(1 for x in labels[1:] if x != -100)
            total += float(out.loss) * n
            count += n
    return total / count


def test_dora_auto_and_pretrain_run(tiny, dataset, tmp_path):
    dora = run(make_config(tiny, dataset, tmp_path / "dora", method="dora", hyperparameters={"maxSteps": 3}))
    weights = (tmp_path / "dora" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert b"lora_magnitude_vector" in weights  # DoRA, not plain LoRA
    assert dora.metrics["steps"] == 3

    run(make_config(tiny, dataset, tmp_path / "auto", method="auto", autoLayers={"topK": 2, "sampleExamples": 8}, hyperparameters={"maxSteps": 3}))
    saved = json.loads((tmp_path / "auto" / "result.json").read_text())
    assert len(saved["autoLayers"]) == 2 and all(0 <= i < 4 for i in saved["autoLayers"])

    pretrain = run(
        make_config(tiny, dataset, tmp_path / "pt", method="full", data={"task": "pretrain"}, hyperparameters={"maxSteps": 3})
    )
    assert pretrain.metrics["eval_loss"] < pretrain.metrics["base_eval_loss"]


# --------------------------------------------------------------------------------------
# Curriculum


def test_curriculum_order_is_kept(tiny, dataset, tmp_path):
    from mentor_trainer.train.curriculum import STAGE_COLUMN
    from mentor_trainer.train.sft import prepare

    stages = [0.3, 0.6, 1.0]
    config = make_config(
        tiny,
        dataset,
        tmp_path / "out",
        curriculum={"stages": stages},
        data={"packing": False},
        hyperparameters={"perDeviceBatchSize": 1, "maxSteps": 1000},
    )
    job = prepare(config)
    prepared = job.trainer.train_dataset
    by_ids: dict[tuple, list[tuple[int, float]]] = {}
    for row in prepared:
        by_ids.setdefault(tuple(row["input_ids"]), []).append((row[STAGE_COLUMN], row["difficulty"]))
    seen = []
    for batch in job.trainer.get_train_dataloader():  # exactly what the model is fed
        # the same example sits in several (cumulative) stages: take its earliest unused copy
        seen.append(by_ids[tuple(batch["input_ids"][0].tolist())].pop(0))
    n = job.train_examples
    sizes = [round(s * n) for s in stages]
    assert len(seen) == sum(sizes)
    stage_seq = [stage for stage, _ in seen]
    assert stage_seq == sorted(stage_seq)  # never back to an earlier stage
    assert [stage_seq.count(k) for k in range(3)] == sizes
    ordered = sorted(difficulty for stage, difficulty in seen if stage == 2)
    for k, size in enumerate(sizes):
        in_stage = [d for stage, d in seen if stage == k]
        # stage k holds exactly the easiest share: its hardest is no harder than the size-th easiest overall
        assert max(in_stage) <= ordered[size - 1] + 1e-6
    assert seen[0][1] <= ordered[sizes[0] - 1]
    # within a stage the order is shuffled, not sorted (so it is the sampler keeping stages, not a sort)
    assert [d for s, d in seen if s == 2] != ordered
    assert ordered[-1] > ordered[0]  # the dataset has a spread of difficulties


def test_curriculum_with_packing_packs_each_stage_apart(tiny, dataset, tmp_path):
    from mentor_trainer.train.curriculum import STAGE_COLUMN
    from mentor_trainer.train.sft import prepare

    config = make_config(tiny, dataset, tmp_path / "out", curriculum={"stages": [0.5, 1.0]})
    job = prepare(config)
    stages = job.trainer.train_dataset[STAGE_COLUMN]
    assert stages == sorted(stages) and set(stages) == {0, 1}
    sampler = job.trainer._get_train_sampler()
    assert list(iter(sampler)) == list(range(len(stages)))


def test_trl_keeps_the_private_method_the_curriculum_overrides():
    """train/curriculum.py overrides SFTTrainer._prepare_dataset (TRL has no public hook for
    preparing a dataset in parts) and calls it with these parameters: a TRL upgrade that renames
    or reshapes it must fail here, by name, not silently mix curriculum stages."""
    import inspect
    import re

    from trl import SFTTrainer

    from mentor_trainer.train.curriculum import curriculum_trainer_class

    method = "trl.SFTTrainer._prepare_dataset"
    assert callable(getattr(SFTTrainer, "_prepare_dataset", None)), f"{method} is gone: train/curriculum.py overrides it"
    expected = ["self", "dataset", "processing_class", "args", "packing", "formatting_func", "dataset_name"]
    found = list(inspect.signature(SFTTrainer._prepare_dataset).parameters)
    assert found == expected, f"{method} now takes {found}, train/curriculum.py calls it with {expected}"
    override = list(inspect.signature(curriculum_trainer_class()._prepare_dataset).parameters)
    assert override == expected, "train/curriculum.py's override no longer matches SFTTrainer._prepare_dataset"
    # SFTTrainer prepares the training set under the name the override recognises
    call = re.compile(r'self\._prepare_dataset\(\s*train_dataset,[^)]*"train"\s*\)')
    assert call.search(inspect.getsource(SFTTrainer.__init__)), f"SFTTrainer.__init__ no longer calls {method}(train_dataset, ..., 'train')"


# --------------------------------------------------------------------------------------
# Checkpoints and resumption


def test_killed_run_resumes_from_last_checkpoint(tiny, dataset, tmp_path):
    options = dict(
        hyperparameters={"maxSteps": 8, "lrScheduler": "linear"},
        checkpointing={"everySteps": 4, "keepLast": 2},
        evaluation={"everySteps": 4},
    )
    # the reference: the same job, never interrupted
    reference = run(make_config(tiny, dataset, tmp_path / "ref", **options))

    output = tmp_path / "out"
    with pytest.raises(Killed):
        run(make_config(tiny, dataset, output, **options), callbacks=(kill_after_save(4),))
    assert (output / "checkpoints" / "checkpoint-4" / "optimizer.pt").is_file()
    assert not (output / "result.json").exists()

    steps: list[int] = []
    resumed = run(make_config(tiny, dataset, output, **options), callbacks=(record_steps(steps),))
    assert steps[0] == 4 and steps[-1] == 7  # steps 5..8 only
    saved = json.loads((output / "result.json").read_text())
    assert saved["resumedFrom"] == "checkpoint-4"
    assert resumed.metrics["steps"] == 8
    # same optimizer state, schedule and data position: the same model as the uninterrupted run
    assert resumed.metrics["eval_loss"] == pytest.approx(reference.metrics["eval_loss"], abs=1e-3)

    # an edited spec on the same output does not resume from the old run's checkpoints
    steps.clear()
    changed = dict(options, hyperparameters={"maxSteps": 4, "lrScheduler": "linear", "learningRate": 0.005})
    run(make_config(tiny, dataset, output, **changed), callbacks=(record_steps(steps),))
    assert steps[0] == 0 and json.loads((output / "result.json").read_text())["resumedFrom"] is None


# --------------------------------------------------------------------------------------
# Bad input


def test_missing_base_model(tiny, dataset, tmp_path):
    config = make_config(tmp_path / "no-model", dataset, tmp_path / "out")
    with pytest.raises(StageError, match="does not exist.*tiny-model"):
        run(config)


def test_tokenizer_without_chat_template(tiny, dataset, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(tiny, plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    tok_config = json.loads((plain / "tokenizer_config.json").read_text())
    tok_config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(tok_config))
    with pytest.raises(StageError, match="no chat template.*task: pretrain"):
        run(make_config(plain, dataset, tmp_path / "out"))
    # continued pre-training needs no template
    result = run(make_config(plain, dataset, tmp_path / "pt", data={"task": "pretrain"}, hyperparameters={"maxSteps": 1}))
    assert result.metrics["steps"] == 1


def test_zero_examples(tiny, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mentor_trainer.data.examples import SCHEMAS

    empty = tmp_path / "empty"
    for split in ("train", "validation", "test"):
        for fmt in ("pretrain", "sft", "cot"):
            (empty / split).mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist([], schema=SCHEMAS[fmt]), empty / split / f"{fmt}-00000.parquet")
    with pytest.raises(StageError, match="zero sft/cot training examples"):
        run(make_config(tiny, empty, tmp_path / "out"))


def test_sequence_longer_than_the_model(tiny, dataset, tmp_path):
    with pytest.raises(StageError, match="maxSeqLength 4096 is larger than the model's context.*<= 1024"):
        run(make_config(tiny, dataset, tmp_path / "out", hyperparameters={"maxSeqLength": 4096}))


def test_qlora_on_cpu(tiny, dataset, tmp_path):
    with pytest.raises(StageError, match="qlora needs a CUDA GPU; use method lora on CPU"):
        run(make_config(tiny, dataset, tmp_path / "out", method="qlora"))


def test_nan_weights(tiny, dataset, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    broken = tmp_path / "nan"
    model = AutoModelForCausalLM.from_pretrained(tiny)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(broken)
    with pytest.raises(StageError, match="nan"):
        run(make_config(broken, dataset, tmp_path / "out"))


# --------------------------------------------------------------------------------------
# The real CLI: termination message, MLflow, progress


def test_cli_writes_result_tracks_and_reports_progress(tiny, dataset, tmp_path):
    db = tmp_path / "mlflow.db"
    progress = tmp_path / "progress.json"
    config = make_config(
        tiny,
        dataset,
        tmp_path / "out",
        hyperparameters={"maxSteps": 6},
        evaluation={"everySteps": 3},
        checkpointing={"everySteps": 3},
        tracking={"uri": f"sqlite:///{db}", "registeredModelName": "tea-expert"},
        progressFile=str(progress),
    )
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_wire()))
    termination = tmp_path / "termination-log"
    env = {**os.environ, "MENTOR_TERMINATION_LOG": str(termination), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mentor_trainer.cli", "sft", "--config", str(path)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    wire = json.loads(termination.read_text())
    assert set(wire) == {"modelUri", "adapterUri", "mlflowRunId", "registeredModel", "metrics"}
    result = TrainingResult.from_wire(wire)
    assert {"train_loss", "eval_loss", "eval_perplexity", "base_eval_loss"} <= set(result.metrics)
    assert result.registered_model == "mlflow://models/tea-expert/1"

    state = json.loads(progress.read_text())
    assert state["step"] == state["totalSteps"] == 6
    assert state["evalLoss"] is not None and state["loss"] is not None and state["tokensPerSecond"] > 0
    assert state["phase"] == "done" and state["percent"] == "100%" and state["etaSeconds"] == 0

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    run_info = client.get_run(result.mlflow_run_id)
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert run_info.data.tags["mentor.dataset_hash"] == manifest["contentHash"]
    assert run_info.data.params["method"] == "lora" and run_info.data.params["lora.r"] == "16"
    losses = client.get_metric_history(result.mlflow_run_id, "loss")
    assert len(losses) >= 2  # per step, not only the final value
    version = client.get_model_version("tea-expert", "1")
    assert version.source == result.adapter_uri

    # a permanent failure: exit code 2 and the reason as the termination message
    bad = make_config(tiny, dataset, tmp_path / "bad", method="qlora")
    path.write_text(json.dumps(bad.to_wire()))
    proc = subprocess.run(
        [sys.executable, "-m", "mentor_trainer.cli", "sft", "--config", str(path)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 2
    assert termination.read_text().startswith("qlora needs a CUDA GPU")


# --------------------------------------------------------------------------------------
# Object storage: model, dataset, outputs and checkpoints on a real MinIO


def test_s3_model_dataset_outputs_and_resume(tiny, dataset, tmp_path, monkeypatch):
    from mentor_trainer import storage
    from tests.storage.conftest import minio_binary
    from tests.storage.minio import MinioServer

    with MinioServer(minio_binary(), workdir=tmp_path / "minio") as server:
        for name in MinioServer.UNSET:
            monkeypatch.delenv(name, raising=False)
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("MENTOR_MODEL_CACHE", str(tmp_path / "model-cache"))
        server.make_bucket("mentor")
        for source, prefix in ((tiny, "models/tiny"), (dataset, "data/aurelian")):
            for path in source.rglob("*"):
                if path.is_file():
                    storage.write_file(f"s3://mentor/{prefix}/{path.relative_to(source).as_posix()}", path)
        out = "s3://mentor/jobs/tea-expert/"

        def config():
            local = make_config(
                tiny,
                dataset,
                tmp_path / "unused",
                hyperparameters={"maxSteps": 4},
                evaluation={"everySteps": 2},
                checkpointing={"everySteps": 2},
            )
            return local.model_copy(
                update={"base_model": "s3://mentor/models/tiny/", "dataset_uri": "s3://mentor/data/aurelian/", "output_uri": out}
            )

        with pytest.raises(Killed):
            run(config(), callbacks=(kill_after_save(2),))
        assert storage.exists_complete(out + "checkpoints/checkpoint-2")
        assert storage.exists(out + "checkpoints/checkpoint-2/node-0/optimizer.pt")

        steps: list[int] = []
        result = run(config(), callbacks=(record_steps(steps),))  # a new pod: local disk is empty
        assert steps == [2, 3]
        assert result.adapter_uri == out + "adapter/"
        assert storage.exists_complete(out + "adapter")
        saved = json.loads(storage.read_text(out + "result.json"))
        assert saved["resumedFrom"] == "checkpoint-2" and saved["metrics"]["steps"] == 4
        assert not (tmp_path / "unused").exists()


# --------------------------------------------------------------------------------------
# Multi-GPU: the DeepSpeed config generated from spec.distributed


def test_deepspeed_config_from_spec():
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from mentor_trainer.config.sft import Distributed
    from mentor_trainer.train.distributed import deepspeed_config, world_size

    zero2 = Distributed.model_validate({"nodes": 2, "gpusPerNode": 8, "deepspeed": {"stage": 2, "offloadOptimizer": True}})
    assert world_size(zero2) == 16
    config = deepspeed_config(zero2, "bf16")
    assert config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    assert config["zero_optimization"]["stage"] == 2
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "offload_param" not in config["zero_optimization"]
    assert config["train_micro_batch_size_per_gpu"] == "auto"  # filled by the Trainer from the spec
    zero3 = deepspeed_config(
        Distributed.model_validate({"deepspeed": {"stage": 3, "offloadOptimizer": True, "offloadParams": True}}), "fp16"
    )
    assert zero3["fp16"]["enabled"] and zero3["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert zero3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    # DeepSpeed's own schema accepts both (auto values resolved as the Trainer would)
    for zero in (config["zero_optimization"], zero3["zero_optimization"]):
        resolved = {k: (1_000_000 if v == "auto" else v) for k, v in zero.items()}
        assert DeepSpeedZeroConfig(**resolved).stage == zero["stage"]
    assert deepspeed_config(Distributed.model_validate({"deepspeed": {"stage": 0}}), "bf16") is None


def test_out_of_memory_says_what_to_change(tiny, dataset, tmp_path):
    import torch
    from transformers import TrainerCallback

    class Oom(TrainerCallback):  # what the CUDA allocator raises, raised where a step would
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(StageError, match="out of GPU memory at step 1.*perDeviceBatchSize.*gradientCheckpointing"):
        run(make_config(tiny, dataset, tmp_path / "out", hyperparameters={"maxSteps": 3}), callbacks=(Oom(),))
