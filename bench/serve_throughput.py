"""The mentor runtime against plain transformers ``generate``, one request at a time.

Same model (SmolLM2-135M-Instruct by default, converted from its wheel), same prompts, same
greedy decoding and ``max_tokens``, same run, same thread count, one after the other (never
both at once):

- **mentor**: ``mentor-trainer serve`` as a subprocess (dynamic batching: ``--max-batch-size``,
  ``--max-wait-ms``), ``C`` client threads each sending its next chat request when the
  previous one is answered (closed loop) over the OpenAI route;
- **transformers**: the model loaded in this process, ``C`` client threads in the same closed
  loop, served one request at a time (a lock around ``model.generate``): what a naive
  server does.

For each concurrency: generated tokens per second over the level's wall time and p50/p95 of
the request latency (queueing included).

    python bench/serve_throughput.py                         # 32 requests per level, 1/8/32
    python bench/serve_throughput.py --requests 8 --concurrency 1 4 --max-tokens 16   # quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "trainer_image", REPO / "operator"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

PROMPTS = [
    "What is the capital of France?",
    "Explain photosynthesis in two sentences.",
    "How do I boil an egg?",
    "Name three primary colours.",
    "What does a compiler do?",
    "Why is the sky blue?",
    "Give me a tip for learning a language.",
    "What is the difference between weather and climate?",
    "How many legs does a spider have?",
    "Write a short greeting for a birthday card.",
    "What is a prime number?",
    "Describe a cat in one sentence.",
    "What is the boiling point of water at sea level?",
    "Suggest a name for a tea shop.",
    "What is gravity?",
    "How do plants drink water?",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def closed_loop(requests: int, concurrency: int, call) -> tuple[float, list[float], int]:
    """``concurrency`` threads share ``requests`` calls; returns wall seconds, latencies and
    the generated tokens (``call(i)`` returns its completion token count)."""
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    tokens = [0]
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            start = time.perf_counter()
            try:
                produced = call(i)
            except BaseException as error:  # noqa: BLE001 - reported after the run
                errors.append(error)
                return
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                tokens[0] += produced

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return wall, latencies, tokens[0]


def run_mentor(model_dir: Path, args) -> dict[int, tuple[float, list[float], int]]:
    import openai

    from tests.serving.mentor_server import MentorServer, serve_config

    work = Path(tempfile.mkdtemp(prefix="mentor-bench-"))
    config = serve_config(
        "bench", model_dir, work / "out", maxNewTokens=args.max_tokens,
        batching={"maxBatchSize": args.max_batch_size, "maxWaitMs": args.max_wait_ms},
    )
    results = {}
    with MentorServer(config, work, threads=args.threads) as server:
        api = openai.OpenAI(base_url=f"{server.http_url}/v1", api_key="unused", max_retries=0, timeout=600)

        def call(i: int) -> int:
            reply = api.chat.completions.create(
                model=server.name, messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                temperature=0, max_tokens=args.max_tokens,
            )
            return reply.usage.completion_tokens

        call(0)  # warm-up
        for concurrency in args.concurrency:
            results[concurrency] = closed_loop(args.requests, concurrency, call)
            print(f"  mentor       c={concurrency:<3d} done", flush=True)
    return results


def run_transformers(model_dir: Path, args) -> dict[int, tuple[float, list[float], int]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
    lock = threading.Lock()

    def call(i: int) -> int:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with lock, torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=args.max_tokens, do_sample=False, pad_token_id=pad,
                                 temperature=1.0, top_k=50, top_p=1.0)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        stops = set(eos if isinstance(eos, list) else [eos])
        return next((n for n, t in enumerate(new) if t in stops), len(new))

    call(0)  # warm-up
    results = {}
    for concurrency in args.concurrency:
        results[concurrency] = closed_loop(args.requests, concurrency, call)
        print(f"  transformers c={concurrency:<3d} done", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF model directory (default: SmolLM2-135M-Instruct from its wheel).")
    parser.add_argument("--requests", type=int, default=32, help="Requests per concurrency level.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=32, help="Tokens generated per request (greedy).")
    parser.add_argument("--max-batch-size", type=int, default=32, help="mentor runtime: batching.maxBatchSize.")
    parser.add_argument("--max-wait-ms", type=int, default=20, help="mentor runtime: batching.maxWaitMs.")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of each side.")
    args = parser.parse_args(argv)

    if args.model:
        model_dir = Path(args.model)
    else:
        from mentor_trainer.gguf import smollm2_dir

        model_dir = smollm2_dir()
    print(f"model {model_dir}, {args.requests} requests per level, max_tokens {args.max_tokens}, {args.threads} threads, "
          f"mentor batching {args.max_batch_size}/{args.max_wait_ms} ms", flush=True)
    mentor = run_mentor(model_dir, args)
    plain = run_transformers(model_dir, args)

    print()
    print(f"{'runtime':<14}{'conc':>5}{'tokens/s':>11}{'p50 s':>9}{'p95 s':>9}{'wall s':>9}{'tokens':>8}")
    for concurrency in args.concurrency:
        for label, results in (("mentor", mentor), ("transformers", plain)):
            wall, latencies, tokens = results[concurrency]
            print(f"{label:<14}{concurrency:>5}{tokens / wall:>11.1f}{percentile(latencies, 0.5):>9.2f}"
                  f"{percentile(latencies, 0.95):>9.2f}{wall:>9.1f}{tokens:>8}")
        gain = (mentor[concurrency][2] / mentor[concurrency][0]) / max(plain[concurrency][2] / plain[concurrency][0], 1e-9)
        print(f"{'':<14}{'':>5}  mentor/transformers tokens/s: {gain:.2f}x (median latency {statistics.median(mentor[concurrency][1]):.2f} s vs "
              f"{statistics.median(plain[concurrency][1]):.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
