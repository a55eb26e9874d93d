"""Preference / RL training throughput: the rlhf stage (ours) against plain TRL (peer).

A benchmark, not a test. See DESIGN.md section 5 (DPO / GRPO step throughput >= 1.3x plain
TRL defaults) and bench/README.md.

    V=$(bash .ci/env.sh | tail -1)
    $V/bin/python bench/rlhf_throughput.py --shape tiny --steps 20          # CPU, a few minutes
    $V/bin/python bench/rlhf_throughput.py --shape 1.5b --steps 20          # GPU: the 1.5B shape

Model: the tiny Qwen2 model, or the 1.5B shape with random weights (as train_throughput.py).
Data: generated, deterministic: preference pairs (a prompt, a long answer chosen, a short
evasive one rejected) and prompts, written in the DomainDataset layout; both sides read the
same rows.

OURS: ``mentor_trainer.train.rlhf.stage.prepare(config)`` (LoRA r16; DPO precomputes the
reference's log-probabilities; GRPO with the ``length`` reward).
PEER: ``trl.DPOTrainer`` / ``trl.GRPOTrainer`` with default configs, given the same model
(same dtype), the same PEFT LoRA, the same algorithm settings (beta, group size, completion
length, temperature, reward) so that the algorithm is the same; only steps, batch, precision
flag, logging and saving are set besides.

Timed, both sides: ``train_runtime`` of ``trainer.train()`` (every step, DPO's reference pass
included wherever it happens). Samples/s: preference pairs (DPO) or completions (GRPO) per
second. Peak memory: ``torch.cuda.max_memory_allocated`` on GPU, peak RSS on CPU. Each
(side, algorithm) runs in its own subprocess, one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import WORDS, _peak_memory, _skip_cel_without_celpy, build_model, hardware  # noqa: E402

LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
TARGET_TOKENS = "24"  # the length reward's target


def write_dataset(root: Path, pairs: int, seed: int = 1234) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    preference, sft = [], []
    for i in range(pairs):
        prompt = f"Question {i}: {text(rng.randint(8, 24))}?"
        preference.append({"prompt": prompt, "chosen": text(rng.randint(40, 120)), "rejected": "I am not sure."})
        sft.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": text(30)}]})
    out = root / "dataset"
    (out / "train").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(preference), out / "train" / "preference-00000.parquet")
    pq.write_table(pa.Table.from_pylist(sft), out / "train" / "sft-00000.parquet")
    return out


def ours_config(a, algorithm: str, out: Path):
    from mentor_trainer.config.rlhf import RLHFStageConfig

    return RLHFStageConfig.model_validate({
        "run": {"kind": "RLHFJob", "name": "bench", "namespace": "bench"},
        "outputUri": out.as_uri(),
        "policyModel": Path(a._model).as_uri(),
        "datasetUri": Path(a._dataset).as_uri(),
        "algorithm": algorithm,
        "lora": LORA,
        "beta": 0.1,
        "rewardFunctions": [{"name": "length", "params": {"targetTokens": TARGET_TOKENS}}] if algorithm == "grpo" else [],
        "generation": {"numGenerations": a.generations, "maxNewTokens": a.new_tokens, "temperature": 1.0},
        "hyperparameters": {
            "maxSteps": a.steps, "learningRate": 1e-4, "lrScheduler": "constant", "warmupRatio": 0.0,
            "perDeviceBatchSize": a.batch, "maxSeqLength": a.seq_len, "precision": "bf16",
        },
        "checkpointing": {"everySteps": 10**6},
        "output": {"mergeAdapter": False},
    })


def worker(a) -> dict:
    import torch

    _skip_cel_without_celpy()
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    root = Path(a._root)
    if a._side == "ours":
        from mentor_trainer.train.rlhf.stage import prepare

        trainer = prepare(ours_config(a, a._algorithm, root / "ours-out")).trainer
    else:
        trainer = peer_trainer(a, root / "peer-out", cuda)
    output = trainer.train()
    runtime = float(output.metrics["train_runtime"])
    return {
        "samples_per_second": a.steps * a.batch / runtime,  # pairs (DPO) or completions (GRPO) per step: the batch
        "train_runtime": runtime,
        "peak_gib": _peak_memory(cuda),
    }


def peer_trainer(a, out: Path, cuda: bool):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mentor_trainer.train.rlhf import data, rewards

    tokenizer = AutoTokenizer.from_pretrained(a._model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(a._model, dtype=torch.bfloat16 if cuda else torch.float32)
    peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    common = dict(
        output_dir=str(out), max_steps=a.steps, per_device_train_batch_size=a.batch, learning_rate=1e-4,
        lr_scheduler_type="constant", bf16=cuda, use_cpu=not cuda, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, beta=0.1,
    )
    if a._algorithm == "dpo":
        from trl import DPOConfig, DPOTrainer

        rows = data.preference_pairs(Path(a._dataset).as_uri(), "train").rows
        return DPOTrainer(model=model, args=DPOConfig(**common, max_length=a.seq_len), train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, peft_config=peft)
    from trl import GRPOConfig, GRPOTrainer

    rows = data.prompts(Path(a._dataset).as_uri(), "train").rows

    def length(completions, **_):  # the same score as the stage's length term
        return [rewards.length_score(len(tokenizer(rewards.text_of(c), add_special_tokens=False).input_ids), int(TARGET_TOKENS)) for c in completions]

    return GRPOTrainer(
        model=model, reward_funcs=[length], train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=peft,
        args=GRPOConfig(**common, num_generations=a.generations, max_completion_length=a.new_tokens, temperature=1.0),
    )


def run_worker(side: str, algorithm: str, a, model: Path, dataset: Path, root: Path) -> dict:
    cmd = [
        sys.executable, __file__, "--_side", side, "--_algorithm", algorithm, "--_model", str(model), "--_dataset", str(dataset),
        "--_root", str(root), "--steps", str(a.steps), "--batch", str(a.batch), "--seq-len", str(a.seq_len),
        "--generations", str(a.generations), "--new-tokens", str(a.new_tokens),
    ]
    print(f"[{time.strftime('%H:%M:%S')}] {side}/{algorithm} ...", flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if a.verbose else subprocess.PIPE, text=True, timeout=a.worker_timeout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + (proc.stderr or "")[-6000:])
        return {"error": f"{side}/{algorithm} failed (exit {proc.returncode})"}
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("tiny", "1.5b"), default="tiny")
    parser.add_argument("--algorithms", default="dpo,grpo")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--worker-timeout", type=int, default=3600)
    for hidden in ("--_side", "--_algorithm", "--_model", "--_dataset", "--_root"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a._side:
        print("RESULT " + json.dumps(worker(a)), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="mentor-rlhf-bench-") as tmp:
        root = Path(tmp)
        model = build_model(a.shape, root)
        dataset = write_dataset(root, a.pairs)
        results: dict = {"hardware": hardware(), "shape": a.shape, "steps": a.steps, "batch": a.batch}
        for algorithm in a.algorithms.split(","):
            ours = run_worker("ours", algorithm, a, model, dataset, root)
            peer = run_worker("peer", algorithm, a, model, dataset, root)
            results[algorithm] = {"ours": ours, "peer": peer}
            if "error" not in ours and "error" not in peer:
                speedup = ours["samples_per_second"] / peer["samples_per_second"]
                results[algorithm]["speedup"] = round(speedup, 2)
                print(
                    f"{algorithm}: ours {ours['samples_per_second']:.2f} samples/s, {ours['peak_gib']:.2f} GiB; "
                    f"plain TRL {peer['samples_per_second']:.2f} samples/s, {peer['peak_gib']:.2f} GiB; {speedup:.2f}x",
                    flush=True,
                )
            if a.json:
                a.json.write_text(json.dumps(results, indent=2))
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
