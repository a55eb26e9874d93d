"""Proof of expertise: does Mentor make a real pretrained model an expert in a domain?

A benchmark, not a test. See bench/README.md.

    V=$(bash .ci/env.sh | tail -1)
    $V/bin/python bench/proof_of_expertise.py                        # about 10 minutes on 2 cores
    $V/bin/python bench/proof_of_expertise.py -f my-pipeline/ --json out.json

It runs a pipeline's resource files with ``mentor run`` exactly as a user would (by default
examples/quickstart/, what ``make demo`` runs: the example corpus, SmolLM2-135M-Instruct
fine-tuned on documents mixed with question-answer pairs and their retrieved-context copies, an
Evaluation on 40 held-out questions whose answers appear only in the documents), then prints one table from the
Evaluation's own paired comparison: exact match, token F1 and "states the key fact", closed
book and with the dataset's retrieval index, for the base model and the fine-tuned one. Each
fine-tuned row carries the paired bootstrap interval of its difference from the base model in
the same setting and its two-sided p-value. Everything about the training and the evaluation
is configured in the resource files; this script only runs them and reads the result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from train_throughput import hardware

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"closed book": "qa", "with RAG": "retrieval.rag"}
METRICS = {"EM": "exact_match", "F1": "f1", "fact": "fact"}


def metric_name(setting: str, metric: str) -> str:
    prefix = SETTINGS[setting]
    return f"{prefix}.{METRICS[metric]}" if prefix == "qa" else f"{prefix}_{METRICS[metric]}"


def evaluation_document(run_root: Path) -> tuple[str, dict]:
    statuses = sorted((run_root / "status").glob("evaluation-*.json"))
    if not statuses:
        raise SystemExit(f"no Evaluation ran under {run_root}")
    status = json.loads(statuses[-1].read_text())["status"]
    if status.get("phase") != "Succeeded":
        raise SystemExit(f"the Evaluation did not succeed: {status.get('message')}")
    path = Path(status["outputUri"].removeprefix("file://"), "metrics.json")
    return statuses[-1].stem.removeprefix("evaluation-"), json.loads(path.read_text())


def stage_seconds(run_root: Path) -> list[tuple[str, float]]:
    out = []
    for path in sorted((run_root / "status").glob("*.json"), key=lambda p: p.stat().st_mtime):
        status = json.loads(path.read_text())["status"]
        if status.get("startTime") and status.get("completionTime"):
            start, end = (datetime.fromisoformat(status[k].replace("Z", "+00:00")) for k in ("startTime", "completionTime"))
            out.append((path.stem, (end - start).total_seconds()))
    return out


def table(document: dict) -> list[str]:
    comparison = document["comparison"]
    short = {"closed book": "closed", "with RAG": "RAG"}
    lines = [f"{'':<22}" + "".join(f"{short[setting] + ' ' + m:>16}" for setting in SETTINGS for m in METRICS)]
    for model, key in (("base model", "baseline"), ("fine-tuned", "candidate")):
        values = [comparison.get(metric_name(s, m), {}).get(key) for s in SETTINGS for m in METRICS]
        lines.append(f"{model:<22}" + "".join(f"{v:>16.3f}" if v is not None else f"{'-':>16}" for v in values))
    cells = []
    for s in SETTINGS:
        for m in METRICS:
            c = comparison.get(metric_name(s, m))
            cells.append(f"[{c['ciLow']:+.2f}, {c['ciHigh']:+.2f}]" if c else "-")
    lines.append(f"{'  95% CI of the gain':<22}" + "".join(f"{cell:>16}" for cell in cells))
    cells = [comparison.get(metric_name(s, m), {}).get("pValue") for s in SETTINGS for m in METRICS]
    lines.append(f"{'  p (paired bootstrap)':<22}" + "".join(f"{p:>16.4f}" if p is not None else f"{'-':>16}" for p in cells))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-f", "--file", action="append", help="Pipeline files or directories (repeatable); default: the quickstart.")
    parser.add_argument("--root", default=str(ROOT / ".mentor/proof"), help="Artifact root of the run.")
    parser.add_argument("--json", help="Also write the figures to this file.")
    parser.add_argument("--no-run", action="store_true", help="Only print the table of the run already under --root.")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    started = time.time()
    returncode = 0
    if not args.no_run:
        # the base model the quickstart names (.mentor/smollm2), converted once per machine
        subprocess.run([str(bin_dir / "mentor-trainer"), "smollm2", "--out", str(ROOT / ".mentor/smollm2")], check=True, cwd=ROOT)
        files = args.file or [str(ROOT / "examples/quickstart")]
        returncode = subprocess.run([str(bin_dir / "mentor"), "run", *(f"--file={f}" for f in files), "--root", args.root], cwd=ROOT).returncode
    wall = time.time() - started
    name, document = evaluation_document(Path(args.root))
    print(f"\nproof of expertise: Evaluation {name}, {document['pairedExamples'].get('qa.f1', 0)} held-out questions")
    print(f"machine: {hardware()}")
    print(f"wall time: {'-' if args.no_run else f'{wall:.0f} s'} in all (" + ", ".join(f"{stem} {seconds:.0f} s" for stem, seconds in stage_seconds(Path(args.root))) + ")")
    print("\n".join(table(document)))
    verdicts = {
        f"fine-tuned {setting} beats the base model {setting} ({metric}, p < 0.05)": metric_name(setting, metric)
        for setting in SETTINGS for metric in ("F1", "fact")
    }
    for text, metric in verdicts.items():
        c = document["comparison"].get(metric, {})
        met = c.get("delta", 0) > 0 and c.get("pValue", 1) < 0.05
        print(f"{'met' if met else 'NOT met'}: {text}: delta {c.get('delta', float('nan')):+.3f}, p {c.get('pValue', float('nan')):.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"wallSeconds": wall, "machine": hardware(), "comparison": document["comparison"]}, indent=2))
    return returncode


if __name__ == "__main__":
    raise SystemExit(main())
