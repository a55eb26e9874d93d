"""GRPO with the accuracy reward on a real pretrained model: does it raise held-out QA accuracy?

A benchmark, not a test. See bench/README.md.

    V=$(bash .ci/env.sh | tail -1)
    $V/bin/python bench/grpo_accuracy.py                              # quickstart expert, 30 steps, CPU
    $V/bin/python bench/grpo_accuracy.py --steps 60 --json out.json   # longer run, figures to a file

Policy: the quickstart's FineTuneJob output (SmolLM2-135M-Instruct fine-tuned on the example
corpus; run ``make demo`` first), trained on the prompts of the quickstart DomainDataset's
training split (its sft question-answer rows; each row's answer is the reference).

It runs the real rlhf stage, ``mentor_trainer.train.rlhf.run(config)``, exactly as an RLHFJob
would: algorithm grpo, reward ``accuracy`` (params.match f1: token F1 of the final answer
against the reference), LoRA r16/alpha 32 merged into the output model, groups of
``--generations`` sampled completions of up to ``--new-tokens`` tokens at temperature 0.9,
a constant learning rate, fp32 on CPU.

Measured, before (the policy) and after (the stage's merged output model), on the 40 held-out
questions of examples/corpus/eval/heldout.jsonl (never trained on; their answers appear only in
the corpus's documents): greedy answers through the evaluate stage's LanguageModel (the
model's chat template, batched), scored with the evaluate stage's own functions: "states the
key fact" (``metrics.contains_fact`` against the row's fact alternatives) and token F1
(``metrics.token_f1`` against the reference answer), both on ``text.extract_answer``. The gain
is paired per question: an exact two-sided McNemar (sign) test on the fact outcomes and a sign
test on the per-question F1 changes. Also printed: the stage's own training reward (its first
logged mean reward, ``initial_reward``, against the last, ``reward``), steps, wall times and the
machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import _skip_cel_without_celpy, hardware  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / ".mentor/quickstart/artifacts/default"
POLICY = ARTIFACTS / "finetunejob/quickstart-expert/local/model"
DATASET = ARTIFACTS / "domaindataset/quickstart-corpus/local"
HELDOUT = ROOT / "examples/corpus/eval/heldout.jsonl"


def load_heldout(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def score(model_dir: Path, rows: list[dict], new_tokens: int, batch: int) -> list[dict]:
    """Greedy answers of the model to the held-out questions, scored as the evaluate stage does."""
    import gc

    from mentor_trainer.evaluate import metrics
    from mentor_trainer.evaluate.lm import LanguageModel
    from mentor_trainer.evaluate.text import extract_answer

    lm = LanguageModel.load(Path(model_dir).as_uri(), batch_size=batch, purpose="model")
    raw = lm.generate([[{"role": "user", "content": r["question"]}] for r in rows], max_new_tokens=new_tokens)
    del lm
    gc.collect()
    out = []
    for row, text in zip(rows, raw):
        answer = extract_answer(text)
        out.append({
            "id": row["id"], "answer": answer,
            "fact": metrics.contains_fact(answer, row["fact"]),
            "f1": metrics.token_f1(answer, row["answer"]),
        })
    return out


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided binomial p-value of ``wins`` against ``losses`` at p = 1/2 (ties dropped):
    the exact McNemar test when they are the discordant pairs."""
    n = wins + losses
    if n == 0:
        return 1.0
    try:
        from scipy.stats import binomtest

        return float(binomtest(wins, n, 0.5).pvalue)
    except ImportError:
        k = min(wins, losses)
        return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def stage_config(a, out: Path):
    from mentor_trainer.config.rlhf import RLHFStageConfig

    return RLHFStageConfig.model_validate({
        "run": {"kind": "RLHFJob", "name": "grpo-accuracy", "namespace": "bench"},
        "outputUri": out.as_uri(),
        "policyModel": Path(a.policy).resolve().as_uri(),
        "datasetUri": Path(a.dataset).resolve().as_uri(),
        "algorithm": "grpo",
        "method": "lora",
        "lora": {"r": 16, "alpha": 32},
        "beta": a.beta,
        "rewardFunctions": [{"name": "accuracy", "params": {"match": "f1"}}],
        "generation": {"numGenerations": a.generations, "maxNewTokens": a.new_tokens, "temperature": a.temperature},
        "hyperparameters": {
            "maxSteps": a.steps, "learningRate": a.lr, "lrScheduler": "constant", "warmupRatio": 0.0,
            "perDeviceBatchSize": a.batch, "precision": "fp32", "seed": a.seed,
        },
        "checkpointing": {"everySteps": 10**6},
        "output": {"mergeAdapter": True},
    })


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", default=str(POLICY), help="Policy model directory (default: the quickstart expert).")
    parser.add_argument("--dataset", default=str(DATASET), help="DomainDataset output directory (training prompts).")
    parser.add_argument("--heldout", default=str(HELDOUT), help="Held-out questions (jsonl: id, question, answer, fact).")
    parser.add_argument("--steps", type=int, default=30, help="GRPO optimizer steps.")
    parser.add_argument("--batch", type=int, default=8, help="Completions per step (a multiple of --generations).")
    parser.add_argument("--generations", type=int, default=4, help="Completions per prompt (group size).")
    parser.add_argument("--new-tokens", type=int, default=48, help="Tokens per completion and per held-out answer.")
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1, help="KL weight to the starting policy.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--eval-batch", type=int, default=8, help="Held-out questions generated per batch.")
    parser.add_argument("--out", help="Stage output directory (default: a temporary one, removed).")
    parser.add_argument("--json", help="Write the figures (and per-question outcomes) here.")
    a = parser.parse_args()
    if a.batch % a.generations:
        parser.error("--batch must be a multiple of --generations")

    _skip_cel_without_celpy()
    import torch

    torch.manual_seed(a.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rows = load_heldout(Path(a.heldout))
    started = time.time()
    before = score(Path(a.policy), rows, a.new_tokens, a.eval_batch)
    eval_before_s = time.time() - started

    from mentor_trainer.train.rlhf import run

    tmp = None if a.out else tempfile.TemporaryDirectory(prefix="grpo-accuracy-")
    out = Path(a.out or tmp.name).resolve()
    started = time.time()
    result = run(stage_config(a, out))
    train_s = time.time() - started
    model_dir = Path((result.model_uri or f"{out.as_uri()}/model/").removeprefix("file://"))
    started = time.time()
    after = score(model_dir, rows, a.new_tokens, a.eval_batch)
    eval_after_s = time.time() - started
    if tmp is not None:
        tmp.cleanup()

    n = len(rows)
    fact_b, fact_a = sum(r["fact"] for r in before) / n, sum(r["fact"] for r in after) / n
    f1_b, f1_a = sum(r["f1"] for r in before) / n, sum(r["f1"] for r in after) / n
    gained = sum(b["fact"] == 0 and x["fact"] == 1 for b, x in zip(before, after))
    lost = sum(b["fact"] == 1 and x["fact"] == 0 for b, x in zip(before, after))
    f1_up = sum(x["f1"] > b["f1"] + 1e-9 for b, x in zip(before, after))
    f1_down = sum(x["f1"] < b["f1"] - 1e-9 for b, x in zip(before, after))
    m = result.metrics
    figures = {
        "questions": n,
        "fact_before": fact_b, "fact_after": fact_a, "fact_diff": fact_a - fact_b,
        "fact_gained": gained, "fact_lost": lost, "fact_mcnemar_p": sign_test(gained, lost),
        "f1_before": f1_b, "f1_after": f1_a, "f1_diff": f1_a - f1_b,
        "f1_up": f1_up, "f1_down": f1_down, "f1_sign_p": sign_test(f1_up, f1_down),
        "initial_reward": m.get("initial_reward"), "final_reward": m.get("reward"),
        "steps": m.get("steps"), "train_s": round(train_s, 1),
        "eval_before_s": round(eval_before_s, 1), "eval_after_s": round(eval_after_s, 1),
        "machine": hardware(),
        "settings": {k: v for k, v in vars(a).items() if k not in ("json",)},
        "stage_metrics": m,
        "per_question": [
            {"id": b["id"], "before": b["answer"], "after": x["answer"], "fact_before": b["fact"], "fact_after": x["fact"],
             "f1_before": b["f1"], "f1_after": x["f1"]}
            for b, x in zip(before, after)
        ],
    }

    def r(v):
        return "-" if v is None else f"{v:.3f}"

    print()
    print(f"GRPO (accuracy reward, match f1) on {a.policy}")
    print(f"{n} held-out questions, greedy, {a.new_tokens} new tokens")
    print(f"{'':<26}{'before':>10}{'after':>10}{'diff':>10}  paired test")
    print(f"{'states the key fact':<26}{fact_b:>10.3f}{fact_a:>10.3f}{fact_a - fact_b:>+10.3f}  "
          f"McNemar exact p={figures['fact_mcnemar_p']:.4f} (gained {gained}, lost {lost})")
    print(f"{'token F1':<26}{f1_b:>10.3f}{f1_a:>10.3f}{f1_a - f1_b:>+10.3f}  "
          f"sign test p={figures['f1_sign_p']:.4f} (up {f1_up}, down {f1_down})")
    print(f"{'training reward (mean)':<26}{r(figures['initial_reward']):>10}{r(figures['final_reward']):>10}"
          "  first vs last logged step")
    print(f"steps {figures['steps']:.0f}, batch {a.batch} ({a.batch // a.generations} prompts x {a.generations}), "
          f"lr {a.lr:g} constant, LoRA r16/alpha32, beta {a.beta:g}, temperature {a.temperature:g}")
    print(f"wall: GRPO stage {train_s:.0f} s, held-out eval {eval_before_s:.0f} s before / {eval_after_s:.0f} s after")
    print(f"machine: {figures['machine']}")
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
