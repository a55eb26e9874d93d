"""Full fine-tune on one GPU: where a step's time goes, and what the sft stage's choices change.

A benchmark, not a test (bench/README.md; bench/gpu_profile.sh runs it on a lent GPU):

    python bench/gpu_profile.py --out DIR [--steps 20] [--steady-from 10] [--budget 280]

Same model and data as train_throughput.py (random-weight 1.5B shape, vocab 151936, the
generated chat dataset, batch 4 x seq len 2048, bf16, packing on). In order:

1. check: the stage's packed attention (train/packed_attention.py) against SDPA run on each
   packed sequence alone, output and gradients, on the 1.5B model's attention shapes.
2. variants, each in its own subprocess, ``sft.prepare(config).trainer.train()`` (no evaluation
   or saving), ``--steps`` steps plus ``--profile-steps`` profiled ones:
      baseline        the stage before packed attention: SDPA (dense block-diagonal mask over the
                      flattened batch), fp32 master weights under bf16 autocast
      varlen          the stage now: packed varlen flash attention, fp32 master weights
      varlen-bf16     varlen, weights (and so AdamW states) in bf16: what fp32 master weights cost
      lora-varlen     method lora with packed attention (the stage's LoRA path now)
      baseline-again  baseline once more: a first-process warm-up (kernel compilation and
                      caches on a fresh machine) against one of the configuration
   Each step end is synchronised and recorded: seconds, tokens, GPU memory allocated/reserved,
   allocator retries and cudaMalloc calls; logged losses too. Steady tokens/s: from the end of
   step --steady-from to the end of step --steps; MFU as train_throughput.py counts it.
3. profiles (torch.profiler, CPU and CUDA): steps 2-3 and the steps after --steps of the
   baseline, the steps after --steps of varlen: the top operators and kernels by GPU time and by
   CPU time, and GPU time by kind of kernel.

Writes DIR/results.json (after each variant) and DIR/profile-<variant>-<steps>.txt; a variant
that fails or runs past the time left (--budget seconds for everything) is recorded and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train_throughput import PEAK_BF16, build_model, flops_per_token, hardware, ours_config, write_dataset

VARIANTS = {
    # name: (method, attention, weights, profiled step ranges)
    "baseline": ("full", "sdpa", "fp32", ((2, 3), "tail")),
    "varlen": ("full", "varlen", "fp32", ("tail",)),
    "varlen-bf16": ("full", "varlen", "bf16", ()),
    "lora-varlen": ("lora", "varlen", "stage", ()),
    "baseline-again": ("full", "sdpa", "fp32", ()),
}


# --------------------------------------------------------------------------------------
# Check


def check_packed_attention() -> dict:
    """Max abs differences between the packed varlen path and SDPA on each sequence alone."""
    import types

    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from mentor_trainer.train.packed_attention import packed_flash_attention

    torch.manual_seed(0)
    lengths = [700, 1, 1200, 147, 2048]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    total = sum(lengths)
    module = types.SimpleNamespace(is_causal=True, num_key_value_groups=6, layer_idx=0, training=True)
    result = {}
    for label, dtype, autocast in (("bf16", torch.bfloat16, False), ("fp32-autocast", torch.float32, True)):
        q = torch.randn(1, 12, total, 128, device="cuda", dtype=dtype, requires_grad=True)
        k = torch.randn(1, 2, total, 128, device="cuda", dtype=dtype, requires_grad=True)
        v = torch.randn(1, 2, total, 128, device="cuda", dtype=dtype, requires_grad=True)
        grad = torch.randn(1, total, 12, 128, device="cuda", dtype=torch.bfloat16)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out, _ = packed_flash_attention(
                module, q, k, v, None, scaling=128**-0.5, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths)
            )
        got = [out.float()] + list(torch.autograd.grad((out.float() * grad).sum(), (q, k, v)))
        refs = []
        for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                ref, _ = sdpa_attention_forward(
                    module, q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], None, scaling=128**-0.5
                )
            refs.append(ref.float())
        ref = torch.cat(refs, dim=1)
        want = [ref] + list(torch.autograd.grad((ref * grad).sum(), (q, k, v)))
        result[label] = {
            name: round(float((g.float() - w.float()).abs().max()), 5) for name, g, w in zip(("out", "dq", "dk", "dv"), got, want)
        }
        result[label]["out_dtype"] = str(out.dtype)
    return result


# --------------------------------------------------------------------------------------
# Worker


def _profile_tables(prof, steps: str, path: Path) -> dict:
    """Writes the top operators/kernels by GPU and by CPU time; returns GPU ms by kind of kernel."""
    averages = prof.key_averages()
    lines = [f"profile: steps {steps}", ""]
    for sorts in (("self_device_time_total", "self_cuda_time_total"), ("self_cpu_time_total",)):
        for sort in sorts:  # the GPU key's name changed between torch releases
            try:
                lines += [f"== by {sort}", averages.table(sort_by=sort, row_limit=30, max_name_column_width=90), ""]
                break
            except Exception as error:  # noqa: BLE001 - try the next name; a failure must not lose the rest
                lines.append(f"== by {sort}: {type(error).__name__} {error}")
    path.write_text("\n".join(lines))

    kinds: dict[str, float] = {}
    for event in averages:
        gpu_us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        if not gpu_us or event.self_cpu_time_total:  # kernels have GPU time and no CPU time of their own
            continue
        name = event.key.lower()
        kind = (
            "attention" if any(k in name for k in ("fmha", "flash", "attention", "cudnn")) else
            "matmul" if any(k in name for k in ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "sm80_")) else
            "optimizer" if any(k in name for k in ("adam", "multi_tensor")) else
            "triton (lm head)" if name.startswith("_") else
            "copy/cast/fill" if any(k in name for k in ("copy", "memcpy", "memset", "fill")) else
            "elementwise/reduce/other"
        )
        kinds[kind] = kinds.get(kind, 0.0) + gpu_us / 1e3
    kinds = {k: round(v, 1) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}
    with path.open("a") as f:
        f.write("\n== GPU ms by kind of kernel\n" + json.dumps(kinds, indent=1) + "\n")
    return kinds


def worker(a) -> dict:
    import torch
    from transformers import TrainerCallback

    from mentor_trainer.train import packed_attention, sft

    method, attention, weights, profiles = VARIANTS[a.variant]
    if attention == "sdpa":
        packed_attention.implementation = lambda device: "sdpa"
    if weights == "bf16":
        sft.weights_dtype = lambda method, dtype: dtype
    ranges = [(a.steps + 1, a.steps + a.profile_steps) if r == "tail" else r for r in profiles]
    total_steps = a.steps + (a.profile_steps if "tail" in profiles else 0)

    torch.cuda.reset_peak_memory_stats()
    args = argparse.Namespace(model=a.model, dataset=a.dataset, method=method, steps=total_steps, batch=a.batch, seq_len=a.seq_len)
    job = sft.prepare(ours_config(args, Path(a.root) / f"out-{a.variant}", cuda=True))
    trainer = job.trainer
    out_dir = Path(a.out)

    class Steps(TrainerCallback):
        def __init__(self) -> None:
            self.rows, self.losses, self.kinds, self.prof, self.t0 = [], {}, {}, None, None

        def on_train_begin(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            step = state.global_step + 1
            if any(step == first for first, _ in ranges):
                self.prof = torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                )
                self.prof.start()

        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            now = time.perf_counter()
            stats = torch.cuda.memory_stats()
            self.rows.append(
                {
                    "step": state.global_step,
                    "t": round(now - self.t0, 4),
                    "tokens": int(state.num_input_tokens_seen or 0),
                    "alloc_gib": round(stats.get("allocated_bytes.all.current", 0) / 2**30, 2),
                    "reserved_gib": round(stats.get("reserved_bytes.all.current", 0) / 2**30, 2),
                    "retries": stats.get("num_alloc_retries", 0),
                    "cuda_mallocs": stats.get("num_device_alloc", 0),
                }
            )
            for first, last in ranges:
                if state.global_step == last and self.prof is not None:
                    self.prof.stop()
                    try:
                        label = f"{first}-{last}"
                        self.kinds[label] = _profile_tables(self.prof, label, out_dir / f"profile-{a.variant}-{label}.txt")
                    except Exception as error:  # noqa: BLE001 - the timings still count
                        self.kinds[f"{first}-{last}"] = f"{type(error).__name__}: {error}"
                    self.prof = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses[state.global_step] = round(float(logs["loss"]), 4)

    steps = Steps()
    trainer.add_callback(steps)
    trainer.train()

    rows = {r["step"]: r for r in steps.rows}
    first, last = rows[a.steady_from], rows[a.steps]
    optimizer = trainer.optimizer
    inner = getattr(optimizer, "optimizer", optimizer)
    return {
        "method": method,
        "attention": job.model.config._attn_implementation,
        "weights_dtype": str(next(job.model.parameters()).dtype),
        "optimizer": f"{type(inner).__name__} fused={inner.defaults.get('fused')} foreach={inner.defaults.get('foreach')}",
        "optim_arg": str(trainer.args.optim),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "steady_tokens_per_second": round((last["tokens"] - first["tokens"]) / (last["t"] - first["t"]), 1),
        "loop_tokens_per_second": round(last["tokens"] / last["t"], 1),
        "tokens_per_step": round((last["tokens"] - first["tokens"]) / (a.steps - a.steady_from), 1),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "losses": steps.losses,
        "gpu_ms_by_kind": steps.kinds,
        "steps": steps.rows,
    }


# --------------------------------------------------------------------------------------
# Driver


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--steady-from", type=int, default=10)
    p.add_argument("--profile-steps", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--budget", type=float, default=280, help="seconds for everything; variants that would not fit are skipped")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--_variant", dest="variant", help=argparse.SUPPRESS)
    p.add_argument("--_model", dest="model", help=argparse.SUPPRESS)
    p.add_argument("--_dataset", dest="dataset", help=argparse.SUPPRESS)
    p.add_argument("--_root", dest="root", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.variant:
        print("RESULT " + json.dumps(worker(a)), flush=True)
        return

    import torch

    deadline = time.time() + a.budget
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="mentor-gpu-profile-"))
    model = build_model("1.5b", root)
    dataset = write_dataset(root, rows=max(256, (a.steps + a.profile_steps) * a.batch * 4), seq_len=a.seq_len)
    fpt, params = flops_per_token(str(model), a.seq_len)
    report = {
        "hardware": hardware(), "torch": torch.__version__, "matmul_parameters": params, "flops_per_token": fpt,
        "steps": a.steps, "steady_from": a.steady_from, "batch": a.batch, "seq_len": a.seq_len, "variants": {},
    }
    save = lambda: (out / "results.json").write_text(json.dumps(report, indent=1))  # noqa: E731
    try:
        report["check"] = check_packed_attention()
    except Exception as error:  # noqa: BLE001 - the variants still run; the worker shows the error in context
        report["check"] = f"{type(error).__name__}: {error}"
    torch.cuda.empty_cache()
    print("check:", json.dumps(report["check"]), flush=True)
    save()

    for name in a.variants.split(","):
        left = deadline - time.time()
        if left < 40:
            report["variants"][name] = {"error": f"skipped: {left:.0f}s left"}
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name} ({left:.0f}s left) ...", flush=True)
        cmd = [
            sys.executable, __file__, "--_variant", name, "--_model", str(model), "--_dataset", str(dataset),
            "--_root", str(root), "--out", str(out), "--steps", str(a.steps), "--steady-from", str(a.steady_from),
            "--profile-steps", str(a.profile_steps), "--batch", str(a.batch), "--seq-len", str(a.seq_len),
        ]
        started = time.time()
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=left - 5)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            result = json.loads(lines[-1][len("RESULT "):]) if lines else {"error": f"exit {proc.returncode}: {proc.stdout[-2000:]}"}
        except subprocess.TimeoutExpired:
            result = {"error": "ran past the time left"}
        result["wall"] = round(time.time() - started, 1)
        for key in ("steady", "loop"):
            if result.get(f"{key}_tokens_per_second"):
                result[f"{key}_mfu_percent"] = round(100 * result[f"{key}_tokens_per_second"] * fpt / PEAK_BF16, 2)
        report["variants"][name] = result
        save()
        print(json.dumps({k: v for k, v in result.items() if k != "steps"}), flush=True)

    print()
    print(f"{'variant':<15} {'steady tok/s':>12} {'steady MFU':>10} {'loop tok/s':>10} {'peak GiB':>9} {'step-1 s':>8}  attention / weights")
    for name, r in report["variants"].items():
        if "error" in r:
            print(f"{name:<15} {r['error'][:300]}")
            continue
        print(
            f"{name:<15} {r['steady_tokens_per_second']:>12.1f} {r['steady_mfu_percent']:>9.1f}% {r['loop_tokens_per_second']:>10.1f} "
            f"{r['peak_gib']:>9.2f} {r['steps'][0]['t']:>8.1f}  {r['attention']} / {r['weights_dtype']}"
        )
    print(f"MFU = (6 x {params / 1e6:.0f}M matmul params + 12 x layers x hidden x {a.seq_len}) x tokens/s / 989 TFLOP/s")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
