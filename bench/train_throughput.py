"""Training throughput: the sft stage (ours) against a plain TRL SFTTrainer (peer).

A benchmark, not a test. See DESIGN.md section 5 and bench/README.md.

    V=$(bash .ci/env.sh | tail -1)
    $V/bin/python bench/train_throughput.py --shape tiny --method both --steps 20   # CPU variant
    $V/bin/python bench/train_throughput.py --method both --steps 30                # GPU: 1.5B shape

Shapes: ``tiny`` is ``tiny_model.build_tiny_model``; ``1.5b`` is a random-weight Qwen2ForCausalLM
with ``tiny_model.qwen2_1p5b_config()`` (vocab 151936 kept; the tiny tokenizer's ids are all below
3072, so they are valid ids) saved in bf16, with the tiny model's tokenizer.

Data: a generated chat SFT dataset (``messages``, lengths varied so that padding matters)
written as ``<dataset>/train/sft-00000.parquet`` and ``validation/sft-00000.parquet``; both
sides read the same rows.

OURS: ``mentor_trainer.train.sft.main(config)`` with packing on (the stage's defaults
otherwise: completion-only loss, bf16 on GPU with packed varlen attention, fp32 master weights
for full).
PEER: ``trl.SFTTrainer`` with default SFTConfig settings (no packing, default collator,
full-sequence loss on ``messages``), the model loaded as ours loads it (fp32 for full, bf16
for LoRA on GPU), a PEFT LoraConfig with the same r/alpha/targets for LoRA; only the step
count, batch, max length, precision flag, logging/saving off and token counting are set.

What is timed, both sides: the Trainer's ``train_runtime`` (the whole ``trainer.train()``
loop: dataloader start, the first step's warm-up, every optimizer step; no in-loop evaluation
or checkpoint is made). Excluded: model load, dataset tokenisation/packing, ours' base/final
evaluation and saving. Tokens: ``state.num_input_tokens_seen`` with
``include_num_input_tokens_seen="non_padding"`` (the padding-free packed batch has no padding;
the peer's count is the attention-mask sum), so tokens/s counts real tokens only.

Each (side, method) runs in its own subprocess, one after the other, so the peak memory is its
own: ``torch.cuda.max_memory_allocated`` on GPU, the process's peak RSS (``ru_maxrss``,
model load included) on CPU.

Also reported, both sides: "steady" tokens/s, from the end of step ``--steady-from`` (default:
a third of the steps, at least 1) to the end of the last step, timed by a TrainerCallback
(the GPU synchronised at both ends), i.e. without the first steps' warm-up.
``--json PATH`` writes the figures (updated after each worker); ``--verbose`` passes the
workers' stderr through (the GPU script uses it so that a failure is visible in its log).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PEAK_BF16 = 989e12  # H100 SXM / H200 dense bf16, FLOP/s (DESIGN.md section 5)
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}

WORDS = (
    "tea leaf garden valley mountain harvest spring altitude soil water temperature humidity "
    "processing grading storage shipping research institute guideline cultivation oxidation "
    "roasting withering rolling drying aroma flavour colour quality farmer market price export "
    "the a of and to in is for on with as by at from that this which model answer question step"
).split()


# --------------------------------------------------------------------------------------
# Setup: model and data


def build_model(shape: str, root: Path) -> Path:
    from mentor_trainer.tiny_model import build_tiny_model

    tiny = build_tiny_model(root / "tiny")
    if shape == "tiny":
        return tiny
    import torch
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    from mentor_trainer.tiny_model import qwen2_1p5b_config

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = qwen2_1p5b_config()
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    out = root / "qwen2-1.5b-random"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the workers, not this driver, should hold the GPU
    return out


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def write_dataset(root: Path, rows: int, seq_len: int, seed: int = 1234) -> Path:
    """Chat examples whose rendered length is spread between ~5% and ~60% of seq_len."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    out = root / "dataset"

    def make(n: int) -> list[dict]:
        result = []
        for _ in range(n):
            total = rng.randint(max(8, seq_len // 20), max(16, seq_len * 6 // 10))
            prompt = max(4, int(total * rng.uniform(0.2, 0.5)))
            result.append(
                {
                    "messages": [
                        {"role": "user", "content": _text(rng, prompt)},
                        {"role": "assistant", "content": _text(rng, max(4, total - prompt))},
                    ],
                    "difficulty": rng.random(),
                }
            )
        return result

    for split, n in (("train", rows), ("validation", 8)):
        (out / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(make(n)), out / split / "sft-00000.parquet")
    return out


# --------------------------------------------------------------------------------------
# Workers (one subprocess each)


def _peak_memory(cuda: bool) -> float:
    """GiB."""
    if cuda:
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


def steady_timer(steady_from: int):
    """A TrainerCallback recording (time, tokens seen) at the end of step ``steady_from`` and
    of the last step; the GPU is synchronised there so that queued work is counted."""
    from transformers import TrainerCallback

    class SteadyTimer(TrainerCallback):
        def __init__(self) -> None:
            self.marks: dict[str, tuple[float, int, int]] = {}

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (steady_from, state.max_steps):
                import torch

                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                mark = (time.perf_counter(), int(getattr(state, "num_input_tokens_seen", 0) or 0), state.global_step)
                self.marks["first" if state.global_step == steady_from else "last"] = mark

        def result(self) -> dict:
            if "first" not in self.marks or "last" not in self.marks:
                return {"steady_tokens_per_second": None}
            (t0, n0, s0), (t1, n1, s1) = self.marks["first"], self.marks["last"]
            if t1 <= t0:
                return {"steady_tokens_per_second": None}
            return {
                "steady_tokens_per_second": round((n1 - n0) / (t1 - t0), 1),
                "steady_steps": s1 - s0,
                "steady_seconds": round(t1 - t0, 3),
            }

    return SteadyTimer()


def _skip_cel_without_celpy() -> None:
    """Where cel-python is not installed (the GPU machine gets only the packages the training
    path needs), the configs' CEL cross-field rules are not evaluated: the benchmark's config
    is fixed and valid (the CPU run checks it with the rules). Nested defaults are validated
    without the caller's context, so the rule evaluator itself is replaced."""
    import importlib.util

    if importlib.util.find_spec("celpy") is None:
        from mentor_trainer.config import common

        common.evaluate_cel = lambda rule, value: True


def ours_config(a, out: Path, cuda: bool):
    """The sft stage's config for this benchmark: packing on, the stage's defaults otherwise."""
    from mentor_trainer.config.sft import SftStageConfig

    _skip_cel_without_celpy()
    return SftStageConfig.model_validate(
        {
            "run": {"kind": "FineTuneJob", "name": "bench", "namespace": "bench"},
            "outputUri": out.as_uri(),
            "baseModel": Path(a.model).as_uri(),
            "datasetUri": Path(a.dataset).as_uri(),
            "method": a.method,
            **({"lora": LORA} if a.method == "lora" else {}),
            "hyperparameters": {
                "maxSteps": a.steps,
                "perDeviceBatchSize": a.batch,
                "maxSeqLength": a.seq_len,
                "precision": "bf16" if cuda else "fp32",
                "warmupRatio": 0.0,
            },
            "data": {"packing": True},
            "evaluation": {"everySteps": 10**6, "selectBest": False},
            "checkpointing": {"everySteps": 10**6, "resume": False},
            "output": {"mergeAdapter": False},
            "progressFile": str(out / "progress.json"),
        }
    )


def worker_ours(a) -> dict:
    import torch

    from mentor_trainer.train import sft

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    config = ours_config(a, Path(a.root) / f"out-ours-{a.method}", cuda)
    timer = steady_timer(a.steady_from)
    result = sft.run(config, callbacks=(timer,))  # sft.main(config), plus the timing callback
    m = result["metrics"]
    tokens, tps = m.get("tokens", 0.0), m.get("tokens_per_second", 0.0)
    return {
        "tokens": tokens,
        "seconds": tokens / tps if tps else None,
        "tokens_per_second": tps,
        "steps": m.get("steps"),
        "peak_gib": _peak_memory(cuda),
        "lora_targets": list(config.lora.target_modules) if config.lora else None,
        **timer.result(),
    }


def worker_peer(a) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    import pyarrow.parquet as pq

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(42)
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    dtype = torch.bfloat16 if (cuda and a.method == "lora") else torch.float32  # as ours loads it
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype)
    rows = pq.read_table(Path(a.dataset) / "train" / "sft-00000.parquet").to_pylist()
    train = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    peft_config = None
    if a.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
            target_modules=json.loads(a.lora_targets), task_type="CAUSAL_LM",
        )
    args = SFTConfig(
        output_dir=str(Path(a.root) / f"out-peer-{a.method}"),
        max_steps=a.steps,
        per_device_train_batch_size=a.batch,
        max_length=a.seq_len,
        bf16=cuda,
        use_cpu=not cuda,
        save_strategy="no",
        report_to="none",
        logging_steps=10,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
    )
    timer = steady_timer(a.steady_from)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train, processing_class=tokenizer, peft_config=peft_config, callbacks=[timer]
    )
    output = trainer.train()
    tokens = float(trainer.state.num_input_tokens_seen or 0)
    seconds = float(output.metrics["train_runtime"])
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": round(tokens / seconds, 1),
        "steps": float(trainer.state.global_step),
        "peak_gib": _peak_memory(cuda),
        **timer.result(),
    }


# --------------------------------------------------------------------------------------
# Driver


def flops_per_token(model_dir: str, seq_len: int) -> tuple[float, int]:
    """6 x (parameters less the input embedding) + 12 x layers x hidden x seq_len (PaLM's
    attention term, not halved for the causal mask)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    d, L, ff, v = c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size
    head = d // c.num_attention_heads
    kv = c.num_key_value_heads * head
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * ff  # q, k, v, o, gate/up/down (biases, norms ignored)
    params = L * per_layer + d * v  # + lm_head
    return 6 * params + 12 * L * d * seq_len, params


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x1, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"CPU only: {os.cpu_count()} cores, {cpu}, {mem:.0f} GiB, torch {torch.__version__} (no GPU)"


def run_worker(side: str, method: str, a, model: Path, dataset: Path, root: Path, extra: list[str] = ()) -> dict:
    cmd = [
        sys.executable, __file__, "--_worker", side, "--method", method, "--steps", str(a.steps),
        "--seq-len", str(a.seq_len), "--batch", str(a.batch), "--_model", str(model),
        "--_dataset", str(dataset), "--_root", str(root), *extra,
    ]
    if a.steady_from:
        cmd += ["--steady-from", str(a.steady_from)]
    started = time.time()
    print(f"[{time.strftime('%H:%M:%S')}] {side}/{method} ...", flush=True)
    try:
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=None if a.verbose else subprocess.PIPE, text=True,
            timeout=a.worker_timeout,
        )
    except subprocess.TimeoutExpired:
        message = f"{side}/{method} ran past --worker-timeout {a.worker_timeout}s"
        if not a.keep_going:
            raise SystemExit(message) from None
        print(message, file=sys.stderr, flush=True)
        return {"error": message}
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + (proc.stderr or "")[-6000:])
        message = f"{side}/{method} failed (exit {proc.returncode})"
        if not a.keep_going:
            raise SystemExit(message)
        print(message, file=sys.stderr, flush=True)
        return {"error": message}
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    result["wall"] = time.time() - started
    return result


def main() -> None:
    import torch

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=["tiny", "1.5b"], default="1.5b" if cuda else "tiny")
    p.add_argument("--method", choices=["full", "lora", "both"], default="both")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seq-len", type=int, default=None, help="default: 2048 (1.5b), 512 (tiny)")
    p.add_argument("--batch", type=int, default=None, help="default: 4 (1.5b), 4 (tiny)")
    p.add_argument("--keep", default=None, help="work directory to keep (default: a temp dir, removed)")
    p.add_argument("--steady-from", type=int, default=None, help="steady tokens/s from the end of this step (default: steps // 3, at least 1)")
    p.add_argument("--json", default=None, help="write the figures to this file (after each worker)")
    p.add_argument("--verbose", action="store_true", help="pass the workers' stderr through")
    p.add_argument("--worker-timeout", type=float, default=None, help="seconds each worker may run")
    p.add_argument("--keep-going", action="store_true", help="record a failed worker and go on with the next")
    p.add_argument("--_worker", choices=["ours", "peer"], help=argparse.SUPPRESS)
    p.add_argument("--_model", help=argparse.SUPPRESS)
    p.add_argument("--_dataset", help=argparse.SUPPRESS)
    p.add_argument("--_root", help=argparse.SUPPRESS)
    p.add_argument("--_lora-targets", dest="lora_targets", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.seq_len = a.seq_len or (2048 if a.shape == "1.5b" else 512)
    a.batch = a.batch or 4
    a.steady_from = a.steady_from or max(1, a.steps // 3)

    if a._worker:
        a.model, a.dataset, a.root = a._model, a._dataset, a._root
        result = (worker_ours if a._worker == "ours" else worker_peer)(a)
        print("RESULT " + json.dumps(result), flush=True)
        return

    if a.shape == "1.5b" and not cuda:
        raise SystemExit("--shape 1.5b needs a CUDA GPU; use --shape tiny on CPU")
    tmp = tempfile.TemporaryDirectory(prefix="mentor-bench-") if not a.keep else None
    root = Path(a.keep or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = build_model(a.shape, root)
    # Enough rows that neither side runs out within --steps (the peer uses batch rows a step).
    dataset = write_dataset(root, rows=max(256, a.steps * a.batch * 4), seq_len=a.seq_len)
    setup = time.time() - t0
    fpt, params = flops_per_token(str(model), a.seq_len)

    print(f"hardware: {hardware()}")
    print(
        f"shape {a.shape} ({params / 1e6:.1f}M matmul parameters), steps {a.steps}, batch {a.batch}, "
        f"seq len {a.seq_len}, precision {'bf16' if cuda else 'fp32'}; setup {setup:.0f}s"
    )
    methods = ["full", "lora"] if a.method == "both" else [a.method]
    report = {
        "hardware": hardware(), "torch": torch.__version__, "shape": a.shape, "matmul_parameters": params,
        "flops_per_token": fpt, "peak_flops": PEAK_BF16, "steps": a.steps, "steady_from": a.steady_from,
        "batch": a.batch, "seq_len": a.seq_len, "precision": "bf16" if cuda else "fp32",
        "date": time.strftime("%Y-%m-%d"), "results": {},
    }

    def save() -> None:
        if a.json:
            Path(a.json).write_text(json.dumps(report, indent=2))

    def mfu(tps) -> float | None:
        return round(100 * tps * fpt / PEAK_BF16, 2) if (cuda and tps) else None

    rows = []
    for method in methods:
        ours = run_worker("ours", method, a, model, dataset, root)
        report["results"][method] = {"ours": ours}
        save()
        targets = ours.get("lora_targets") or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        extra = ["--_lora-targets", json.dumps(targets)] if method == "lora" else []
        peer = run_worker("peer", method, a, model, dataset, root, extra)
        report["results"][method]["peer"] = peer
        for r in (ours, peer):
            r["mfu_percent"], r["steady_mfu_percent"] = mfu(r.get("tokens_per_second")), mfu(r.get("steady_tokens_per_second"))
        if ours.get("tokens_per_second") and peer.get("tokens_per_second"):
            report["results"][method]["ratio"] = round(ours["tokens_per_second"] / peer["tokens_per_second"], 3)
        if ours.get("steady_tokens_per_second") and peer.get("steady_tokens_per_second"):
            report["results"][method]["steady_ratio"] = round(ours["steady_tokens_per_second"] / peer["steady_tokens_per_second"], 3)
        save()
        rows.append((method, ours, peer))

    mem = "peak GPU mem GiB" if cuda else "peak RSS GiB"
    print()
    print(
        f"{'method':<6} {'side':<5} {'steps':>5} {'tokens':>9} {'train s':>8} {'tokens/s/dev':>13} {'MFU':>7} "
        f"{'steady tok/s':>13} {'steady MFU':>10} {mem:>17}"
    )

    def pct(value) -> str:
        return f"{value:.1f}%" if value is not None else "n/a"

    for method, ours, peer in rows:
        for side, r in (("ours", ours), ("peer", peer)):
            if "error" in r:
                print(f"{method:<6} {side:<5} {r['error']}")
                continue
            steady = r.get("steady_tokens_per_second")
            print(
                f"{method:<6} {side:<5} {int(r['steps'] or 0):>5} {int(r['tokens']):>9} {r['seconds'] or 0:>8.1f} "
                f"{r['tokens_per_second']:>13.1f} {pct(r['mfu_percent']):>7} "
                f"{(f'{steady:.1f}' if steady else 'n/a'):>13} {pct(r['steady_mfu_percent']):>10} {r['peak_gib']:>17.2f}"
            )
        result = report["results"][method]
        steady_ratio = f", steady {result['steady_ratio']:.2f}x" if result.get("steady_ratio") else ""
        print(f"{method:<6} ours/peer tokens/s: {result.get('ratio', float('nan')):.2f}x{steady_ratio}")
    print()
    if cuda:
        print("targets (1 H100, 1.5B): full >= 45% MFU; lora >= 1.5x the peer's tokens/s")
        print("MFU = (6 x matmul params + 12 x layers x hidden x seq len) x tokens/s / 989 TFLOP/s "
              "(for LoRA this 6N count overstates the work done)")
    else:
        print("CPU variant on the tiny model: the targets (full >= 45% MFU, lora >= 1.5x peer tokens/s) "
              "are GPU targets for the 1.5B shape on one H100; these figures only show the ratio")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
