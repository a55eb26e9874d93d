"""Distributed training on CPU: two ranks (gloo) launched by `mentor-trainer launch`, the way
a multi-GPU pod runs them.

- Checkpoints on an object store (a real MinIO) are published once and complete: one part per
  node holding every rank's files, marked complete by rank 0 only when every part is there,
  and a new run resumes from it on both ranks.
- Under DeepSpeed ZeRO-3 each rank holds shards of the weights: what the stage saves is the
  gathered model, not rank 0's shards. (The stage turns DeepSpeed on for CUDA only, so this
  runs the gather and the save as publish does them, around a plain Trainer.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

import mentor_trainer

from .test_sft import make_config

LAUNCH = [sys.executable, "-m", "mentor_trainer.cli", "launch", "--standalone", "--nproc-per-node=2"]


def two_ranks(args: list[str], env: dict) -> subprocess.CompletedProcess:
    # the workers import mentor_trainer from this checkout, installed or not
    path = os.pathsep.join([str(Path(mentor_trainer.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    env = {**env, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([*LAUNCH, *args], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def minio(tmp_path_factory):
    from tests.storage.conftest import minio_binary
    from tests.storage.minio import MinioServer

    with MinioServer(minio_binary(), workdir=tmp_path_factory.mktemp("minio")) as server:
        yield server


def test_two_ranks_publish_one_complete_checkpoint_and_resume_from_it(tiny, dataset, tmp_path, minio, monkeypatch):
    from mentor_trainer import storage

    minio.make_bucket("mentor")
    out = "s3://mentor/jobs/two-ranks/"
    config = make_config(
        tiny,
        dataset,
        tmp_path / "unused",
        hyperparameters={"maxSteps": 4},
        evaluation={"everySteps": 2},
        checkpointing={"everySteps": 2},
        distributed={"gpusPerNode": 2},
    ).model_copy(update={"output_uri": out})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_wire()))
    termination = tmp_path / "termination-log"
    env = {**minio.process_env(), "MENTOR_TERMINATION_LOG": str(termination)}
    stage = ["-m", "mentor_trainer.cli", "sft", "--config", str(path)]

    two_ranks(stage, env)
    assert json.loads(termination.read_text())["adapterUri"] == out + "adapter/"  # rank 0's result, not rank 1's

    for name in minio.UNSET:  # this process reads the store too
        monkeypatch.delenv(name, raising=False)
    for name, value in minio.env().items():
        monkeypatch.setenv(name, value)
    checkpoint = out + "checkpoints/checkpoint-4/"
    assert storage.exists_complete(checkpoint)
    part = {info.name for info in storage.list_objects(checkpoint + "node-0/")}
    # both ranks' files, and the shared ones, in the one part of the one node
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json", "adapter_model.safetensors", "optimizer.pt"} <= part

    # a new pod (the local checkpoint directory starts empty) resumes from it on both ranks
    two_ranks(stage, env)
    saved = json.loads(storage.read_text(out + "result.json"))
    assert saved["resumedFrom"] == "checkpoint-4" and saved["metrics"]["steps"] == 4


ZERO3_WORKER = """
import json, sys
from pathlib import Path

from datasets import Dataset
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from mentor_trainer.config.sft import Distributed
from mentor_trainer.train.distributed import deepspeed_config
from mentor_trainer.train.publish import full_state_dict

tiny, out = Path(sys.argv[1]), Path(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(tiny)  # whole, as the stage loads it; ZeRO-3 partitions it when training starts
zero3 = deepspeed_config(Distributed.model_validate({"gpusPerNode": 2, "deepspeed": {"stage": 3}}), "fp32")
args = TrainingArguments(
    output_dir=str(out / "checkpoints"), deepspeed=zero3, use_cpu=True, max_steps=1, per_device_train_batch_size=1,
    learning_rate=0.01, save_strategy="no", report_to="none", disable_tqdm=True,
)
tokens = list(range(1, 17))
trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list([{"input_ids": tokens, "labels": tokens}] * 4))
trainer.train()
weights = full_state_dict(trainer)  # every rank: the gather is a collective
if trainer.is_world_process_zero():
    (out / "own.json").write_text(json.dumps({name: p.numel() for name, p in trainer.model.named_parameters()}))
    trainer.model.save_pretrained(out / "model", state_dict=weights)  # as publish._save
"""


def test_zero3_saves_the_gathered_model_not_rank_0s_shards(tiny, tmp_path):
    """DeepSpeed ZeRO-3 on CPU (gloo): rank 0 holds empty shards of most weights, and its own
    save_pretrained would write them as 0-element tensors; the stage's save writes them whole."""
    import torch
    from transformers import AutoModelForCausalLM

    worker = tmp_path / "worker.py"
    worker.write_text(ZERO3_WORKER)
    two_ranks([str(worker), str(tiny), str(tmp_path)], dict(os.environ))

    own = json.loads((tmp_path / "own.json").read_text())
    assert own["model.embed_tokens.weight"] == 0  # the run really was sharded
    initial = AutoModelForCausalLM.from_pretrained(tiny).state_dict()
    saved, info = AutoModelForCausalLM.from_pretrained(tmp_path / "model", output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    trained = saved.state_dict()
    assert {name: tuple(t.shape) for name, t in trained.items()} == {name: tuple(t.shape) for name, t in initial.items()}
    assert not torch.equal(trained["model.embed_tokens.weight"], initial["model.embed_tokens.weight"])  # a step was taken
