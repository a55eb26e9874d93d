"""Evaluation throughput: the evaluate stage's batched LanguageModel (ours) against plain
transformers one example at a time (peer), in the same process on the same model.

A benchmark, not a test. See bench/README.md.

    V=$(bash .ci/env.sh | tail -1)
    OMP_NUM_THREADS=1 $V/bin/python bench/eval_throughput.py                 # CPU: tiny model
    $V/bin/python bench/eval_throughput.py --shape 1.5b                      # GPU: 1.5B shape, random weights
    $V/bin/python bench/eval_throughput.py --model-uri file:///models/r1-1.5b

Suites:
  qa          greedy answers to N questions in the held-out style (examples/corpus: eval/heldout,
              qa/qa.jsonl and qa/faq.csv questions, cycled), --max-new-tokens each.
              OURS: LanguageModel.generate (length-sorted batches, left padding).
              PEER: per prompt, chat template + ``model.generate(do_sample=False)`` + decode.
  perplexity  summed NLL of N texts (paragraphs of the English and Chinese example documents,
              cycled). OURS: LanguageModel.token_nll (length-sorted, right-padded batches).
              PEER: per text, one forward with ``labels`` (mean loss x predicted tokens).

Both sides run under ``torch.inference_mode`` after a warm-up call; timed is the whole call
(tokenisation, forward/generate, decoding). "agree" checks that batching changed nothing:
identical answers (qa), NLL within 1e-3 relative (perplexity).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from train_throughput import hardware  # noqa: E402 - same folder; the env must be set first

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus"


# --------------------------------------------------------------------------------------
# Inputs


def questions(n: int) -> list[list[dict]]:
    pool = [json.loads(line)["question"] for name in ("eval/heldout.jsonl", "qa/qa.jsonl")
            for line in (CORPUS / name).read_text().splitlines() if line.strip()]
    with (CORPUS / "qa" / "faq.csv").open(newline="") as f:
        pool += [row["question"] for row in csv.DictReader(f)]
    return [[{"role": "user", "content": pool[i % len(pool)]}] for i in range(n)]


def texts(n: int) -> list[str]:
    pool = []
    for lang in ("en", "zh"):
        for path in sorted((CORPUS / "docs" / lang).glob("*.md")) + sorted((CORPUS / "docs" / lang).glob("*.txt")):
            try:
                pool += [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 40]
            except UnicodeDecodeError:  # the deliberately GBK / GB18030 encoded files
                continue
    return [pool[i % len(pool)] for i in range(n)]


# --------------------------------------------------------------------------------------
# Model


def language_model(a):
    import torch

    from mentor_trainer.evaluate.lm import LanguageModel
    from mentor_trainer.tiny_model import build_tiny_model, qwen2_1p5b_config

    if a.model_uri:
        return LanguageModel.load(a.model_uri, batch_size=a.batch_size), a.model_uri
    with tempfile.TemporaryDirectory(prefix="mentor-bench-") as tmp:
        tiny = build_tiny_model(Path(tmp) / "tiny")
        if a.shape == "tiny":
            return LanguageModel.load(tiny.as_uri(), batch_size=a.batch_size), "tiny (build_tiny_model)"
        from transformers import AutoTokenizer, Qwen2ForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(tiny)  # its ids are valid ids of the 151936 vocabulary
    config = qwen2_1p5b_config()
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16 if device == "cuda" else torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LanguageModel(model, tokenizer, device=device, batch_size=a.batch_size), "1.5b (qwen2_1p5b_config, random)"


# --------------------------------------------------------------------------------------
# Peer: plain transformers, one example at a time


def plain_generate(lm, prompts: list[list[dict]], max_new_tokens: int) -> list[str]:
    tok, model, answers = lm.tokenizer, lm.model, []
    for messages in prompts:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = tok(text, add_special_tokens=False, return_tensors="pt").to(lm.device)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=lm.pad_id)
        answers.append(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return answers


def plain_token_nll(lm, items: list[str]) -> list[tuple[float, int]]:
    tok, model, result = lm.tokenizer, lm.model, []
    for text in items:
        enc = tok(text, return_tensors="pt", truncation=True, max_length=lm.max_length).to(lm.device)
        n = enc["input_ids"].shape[1] - 1
        loss = model(**enc, labels=enc["input_ids"]).loss.item() if n else 0.0
        result.append((loss * n, n))
    return result


# --------------------------------------------------------------------------------------
# Driver


def timed(fn, *args) -> tuple[list, float]:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def main() -> None:
    import torch

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=["tiny", "1.5b"], default="1.5b" if cuda else "tiny")
    p.add_argument("--model-uri", default=None, help="benchmark this model instead of a built --shape")
    p.add_argument("--qa", type=int, default=None, help="questions (default: 256 on GPU, 64 on CPU)")
    p.add_argument("--texts", type=int, default=None, help="perplexity texts (default: 1024 on GPU, 256 on CPU)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=None, help="ours (default: 32 on GPU, 8 on CPU)")
    p.add_argument("--json", default=None, help="write the figures to this file")
    a = p.parse_args()
    a.qa = a.qa or (256 if cuda else 64)
    a.texts = a.texts or (1024 if cuda else 256)
    a.batch_size = a.batch_size or (32 if cuda else 8)

    lm, name = language_model(a)
    prompts, docs = questions(a.qa), texts(a.texts)
    dtype = next(lm.model.parameters()).dtype
    print(f"hardware: {hardware()}")
    print(f"model {name}, {dtype}, device {lm.device}, torch threads {torch.get_num_threads()}, "
          f"batch size (ours) {a.batch_size}, max new tokens {a.max_new_tokens}")

    rows = []
    with torch.inference_mode():
        lm.generate(prompts[:2], 4)  # warm-up, both sides
        plain_generate(lm, prompts[:2], 4)
        ours, t_ours = timed(lm.generate, prompts, a.max_new_tokens)
        peer, t_peer = timed(plain_generate, lm, prompts, a.max_new_tokens)
        rows.append(("qa", len(prompts), t_ours, t_peer, f"{sum(x == y for x, y in zip(ours, peer))}/{len(ours)} identical"))

        lm.token_nll(docs[:2])
        plain_token_nll(lm, docs[:2])
        ours, t_ours = timed(lm.token_nll, docs)
        peer, t_peer = timed(plain_token_nll, lm, docs)
        close = sum(abs(x - y) <= 1e-3 * max(abs(y), 1.0) and n == m for (x, n), (y, m) in zip(ours, peer))
        tokens = sum(n for _, n in ours)
        rows.append(("perplexity", len(docs), t_ours, t_peer, f"{close}/{len(docs)} within 1e-3 ({tokens} tokens)"))

    device = torch.cuda.get_device_name(0) if lm.device.type == "cuda" else "cpu"
    if a.json:
        Path(a.json).write_text(json.dumps({
            "hardware": hardware(), "torch": torch.__version__, "model": name, "dtype": str(dtype),
            "device": device, "torch_threads": torch.get_num_threads(), "batch_size": a.batch_size,
            "max_new_tokens": a.max_new_tokens, "date": time.strftime("%Y-%m-%d"),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if lm.device.type == "cuda" else None,
            "suites": {suite: {"examples": n, "ours_seconds": round(t_ours, 3), "plain_seconds": round(t_peer, 3),
                               "ours_per_second": round(n / t_ours, 2), "plain_per_second": round(n / t_peer, 2),
                               "ratio": round(t_peer / t_ours, 2), "agree": agree}
                       for suite, n, t_ours, t_peer, agree in rows},
        }, indent=2))
    print()
    print(f"{'suite':<11} {'examples':>8} {'ours ex/s':>10} {'plain ex/s':>11} {'ratio':>7}  {'device':<10} {'threads':>7}  agree")
    for suite, n, t_ours, t_peer, agree in rows:
        print(f"{suite:<11} {n:>8} {n / t_ours:>10.2f} {n / t_peer:>11.2f} {t_peer / t_ours:>6.2f}x  "
              f"{device:<10} {torch.get_num_threads():>7}  {agree}")


if __name__ == "__main__":
    main()
