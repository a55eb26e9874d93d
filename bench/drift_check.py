"""Drift check benchmark (not a timed test): ``mentor-trainer drift`` against a plain Evidently
``DataDriftPreset`` + ``EmbeddingsDrift`` on the same traffic, in the same run.

Traffic: the example corpus's in-domain questions (``tests/trainer/test_drift.py``'s
``in_domain()``) multiplied by polite prefixes and suffixes (77 x 4 x 3 distinct prompts);
shifted traffic is the test's ``TOPIC`` (another topic), ``LANGUAGE`` (the same questions in
German, French, Spanish and Italian) or ``longer()`` (~1,500 characters of notes before the
question), with the same variations. ``--requests`` logged requests (default 100,000) against a
``--reference`` of reference traffic (default 10,000), both payload logs in JSONL part files.

Measured:

1. **One check per side**, each in its own subprocess (wall time from the start of the process,
   imports included; peak memory = the process's ru_maxrss), on a window whose
   ``--shift-share`` is topic-shifted. Ours: ``main(DriftStageConfig)`` end to end (read the
   logs and the reference, every signal, drift.json, Evidently's per-column HTML report).
   Evidently's: the same log reading, ``DataDriftPreset`` on the length and non-letter share
   of every request and on the language of the same sample size as ours, and
   ``EmbeddingsDrift`` (its default classifier method, AUC > 0.55) on MiniLM embeddings of
   ``--embedded`` prompts per side; HTML saved. Neither embeds every request: MiniLM costs
   ~6 ms a prompt on a CPU core (110k prompts: minutes), and Evidently's ``mmd`` method would
   build the full (m+n)^2 kernel (110k rows: 97 GB), so it is not run.
   Bytecode is cached before the timed runs (as in an image); a cold first import adds ~30 s.
2. **False-alarm and detection rates** over ``--trials`` windows per case, of
   ``--rate-requests`` requests against ``--rate-reference`` reference rows (default 5,000
   against 2,000, smaller than the one check: at its size the 20 no-drift windows had not
   finished after 9 minutes; ours samples the same 500 prompts a side for the embeddings and
   300 for the language at any size) (no drift: a fresh
   in-domain window; topic, language, length: a window of which ``--shift-share`` is shifted).
   Ours: ``compare()`` + ``decide()`` with ``--threshold``; Evidently: the preset's dataset
   verdict (share of drifted columns >= 0.5) and EmbeddingsDrift's, each on its own.
   Embeddings and languages are cached between trials, so a trial costs the statistics.

    python bench/drift_check.py                                 # 100k against 10k
    python bench/drift_check.py --requests 20000 --reference 5000 --trials 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "trainer_image")]

PREFIXES = ["", "Quick question: ", "Please tell me: ", "Hi! "]
SUFFIXES = ["", " Thanks.", " Please be brief."]
CASES = ("none", "topic", "language", "length")
# bytecode for the child processes (this environment sets PYTHONDONTWRITEBYTECODE)
PYCACHE = Path(tempfile.gettempdir()) / "mentor-drift-bench-pycache"


def pools() -> dict[str, list[str]]:
    from tests.trainer import test_drift as t  # the same in-domain and planted-shift prompts as the tests

    def vary(questions):
        return [p + q + s for q in questions for p in PREFIXES for s in SUFFIXES]

    base = t.in_domain()
    return {"none": vary(base), "topic": vary(t.TOPIC), "language": vary(t.LANGUAGE), "length": vary(t.longer(base))}


def window(pool: dict, case: str, n: int, share: float, rng) -> list[str]:
    prompts = [pool["none"][i] for i in rng.integers(0, len(pool["none"]), n)]
    if case != "none":
        k = int(round(n * share))
        prompts[:k] = [pool[case][i] for i in rng.integers(0, len(pool[case]), k)]
    return prompts


def write_log(root: Path, prompts: list[str], per_file: int = 5000) -> None:
    from mentor_trainer.serve.payload_log import PayloadRecord, record_row

    folder = root / "requests" / "date=2026-01-10"
    folder.mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, len(prompts), per_file)):
        lines = []
        for i, prompt in enumerate(prompts[start:start + per_file], start):
            lines.append(json.dumps(record_row(PayloadRecord(
                request_id=f"r{i}", endpoint="/v1/chat/completions", prompt=prompt, completion="An answer.",
                retrieved_ids=[], retrieval_scores=[], latency_ms=100.0, ttft_ms=None, prompt_tokens=10,
                completion_tokens=5, model_version="v1", timestamp=f"2026-01-10T12:{(i // 60) % 60:02d}:{i % 60:02d}Z"))))
        (folder / f"part-20260110T12{part // 100:02d}{part % 100:02d}000000Z-{uuid.uuid4().hex}.jsonl").write_text("\n".join(lines) + "\n")


def sampled(prompts: list[str], limit: int) -> list[str]:
    """A seeded sample (shifted rows come first in a window, so not its head)."""
    from mentor_trainer.drift import sample_indices

    return [prompts[i] for i in sample_indices(len(prompts), limit, np.random.default_rng(0))]


def evidently_check(current: list[str], reference: list[str], *, embedded: int, embed, languages, html: str | None = None) -> dict:
    """Evidently's verdicts: DataDriftPreset on length and non-letter share (every row) and on
    the language (a sample as large as ours); EmbeddingsDrift on ``embedded`` prompts per side."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model
    from evidently.metrics import EmbeddingsDrift
    from evidently.presets import DataDriftPreset

    from mentor_trainer.drift import LANGUAGE_SAMPLE, Traffic, _descriptors

    def run(metrics, frames, definition):
        return Report(metrics).run(*(Dataset.from_pandas(f, data_definition=definition) for f in frames))

    snapshots = [
        run([DataDriftPreset()], [pd.DataFrame(_descriptors(Traffic(p))) for p in (current, reference)],
            DataDefinition(numerical_columns=["length", "non_letter_share"])),
        run([DataDriftPreset()], [pd.DataFrame({"language": languages(sampled(p, LANGUAGE_SAMPLE))}) for p in (current, reference)],
            DataDefinition(categorical_columns=["language"])),
    ]
    drifted_columns = sum(v["count"] for s in snapshots for v in _values(s) if isinstance(v, dict) and "count" in v)
    out = {"preset": drifted_columns / 3 >= 0.5}
    if embedded:
        sides = [embed(sampled(p, embedded)) for p in (current, reference)]
        columns = [f"e{i}" for i in range(sides[0].shape[1])]
        # its default method for >= 1000 reference rows, said explicitly: a classifier, AUC > 0.55
        emb = run([EmbeddingsDrift(embeddings_name="prompt", drift_method=model(bootstrap=False))],
                  [pd.DataFrame(s, columns=columns) for s in sides], DataDefinition(numerical_columns=columns, embeddings={"prompt": columns}))
        out["embeddings"] = bool(_values(emb)[0] > 0.55)
        snapshots.append(emb)
    if html:
        for i, snapshot in enumerate(snapshots):
            snapshot.save_html(f"{html}.{i}.html")
    return out


def _values(snapshot) -> list:
    return [metric.get("value") for metric in snapshot.dict()["metrics"]]


def one_check(args) -> dict:
    """One check of a side in this process: wall time (from process start) and peak RSS."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work)
    from mentor_trainer.drift import _embed
    from mentor_trainer.drift import signals as sig

    out: dict = {"side": args.side}
    if args.side == "ours":
        from mentor_trainer.config.deploy import DriftStageConfig
        from mentor_trainer.drift import main

        result = main(DriftStageConfig.model_validate({
            "run": {"kind": "ModelDeployment", "name": "bench"}, "outputUri": (work / "out").as_uri(),
            "drift": {"windowRequests": args.requests, "minRequests": 1, "threshold": args.threshold},
            "payloadLogUri": (work / "current").as_uri(), "referenceUri": (work / "reference").as_uri()}))
        out["drifted"] = result.drifted
        summary = json.loads(Path(result.report_uri.removeprefix("file://")).with_name("drift.json").read_text())
        out["signals"] = {s["name"]: (s["score"], s["p_value"], s["drifted"], s.get("n")) for s in summary["signals"]}
    elif args.side == "evidently":
        from mentor_trainer.serve.payload_log import read_records

        current = [r.prompt for r in read_records((work / "current").as_uri(), limit=args.requests)]
        reference = [r.prompt for r in read_records((work / "reference").as_uri())]
        out["drifted"] = evidently_check(current, reference, embedded=args.embedded, embed=_embed, languages=sig.languages,
                                         html=str(work / "evidently"))
    else:  # warm: import everything once so that both timed sides find cached bytecode
        import evidently.presets  # noqa: F401
        import sentence_transformers  # noqa: F401

        sig.languages(["warm up"])
    out["wall_s"] = round(time.time() - args.started, 1)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def run_side(side: str, work: str, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    command = [sys.executable, __file__, "--side", side, "--work", work, "--requests", str(args.requests),
               "--threshold", str(args.threshold), "--embedded", str(args.embedded), "--started", str(time.time())]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        return {"side": side, "error": done.stderr[-800:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def rates(args, pool) -> dict:
    from mentor_trainer.drift import Traffic, _embed, compare
    from mentor_trainer.drift import signals as sig

    unique = sorted({p for prompts in pool.values() for p in prompts})
    print(f"embedding {len(unique)} distinct prompts once ...", file=sys.stderr)
    table = dict(zip(unique, _embed(unique)))
    lang: dict[str, str] = {}
    original_languages = sig.languages

    def languages(texts):
        missing = [t for t in set(texts) if t not in lang]
        lang.update(zip(missing, original_languages(missing)))
        return [lang[t] for t in texts]

    def embed(texts):
        return np.stack([table[t] for t in texts])

    sig.languages = languages  # compare() detects through the module, so the cache applies there too
    out = {}
    try:
        for case in CASES:
            counts = {"ours": 0, "evidently_preset": 0, "evidently_embeddings": 0}
            for trial in range(args.trials):
                rng = np.random.default_rng(trial + 1000 * len(case))
                current = window(pool, case, args.rate_requests, args.shift_share, rng)
                reference = window(pool, "none", args.rate_reference, 0, rng)
                found, _ = compare(Traffic(current), Traffic(reference), embed=embed, seed=trial)
                counts["ours"] += bool(sig.decide(found, args.threshold)[0])
                theirs = evidently_check(current, reference, embedded=args.embedded, embed=embed, languages=languages)
                counts["evidently_preset"] += theirs["preset"]
                counts["evidently_embeddings"] += theirs["embeddings"]
            out[case] = counts
            print(case, counts, file=sys.stderr)
    finally:
        sig.languages = original_languages
    return out


def table(report: dict, args) -> str:
    lines = [f"one check: {args.requests:,} logged requests vs {args.reference:,} reference rows, "
             f"{args.shift_share:.0%} of the window topic-shifted, {report['cpus']} CPUs, threshold {args.threshold}",
             f"{'side':<44}{'wall s':>8}{'peak RSS MiB':>14}  verdict"]
    for side, label in (("ours", "ours (mentor-trainer drift, main())"),
                        ("evidently", f"Evidently preset + EmbeddingsDrift ({args.embedded}/side)")):
        r = report[side]
        lines.append(f"{label:<44}{r.get('wall_s', 'error'):>8}{r.get('peak_rss_mib', '-'):>14}  {r.get('drifted', r.get('error'))}")
    if "signals" in report["ours"]:
        lines.append("ours, per signal: score / p / drifted / n (current, reference)")
        for name, (score, p, drifted, n) in report["ours"]["signals"].items():
            size = f"{n['current']:,} / {n['reference']:,}" if n else "-"
            lines.append(f"  {name:<26}{score!s:>10}{p!s:>10}  {drifted!s:<6} {size}")
    if "rates" in report:
        lines.append(f"rates: {args.trials} windows per case, {args.rate_requests:,} requests vs {args.rate_reference:,} reference rows"
                     f" ({args.shift_share:.0%} of a shifted window shifted)")
        lines.append(f"{'case':<22}{'ours':>8}{'Evidently preset':>18}{'Evidently embeddings':>22}")
        for case in CASES:
            c = report["rates"][case]
            label = "no drift (false alarm)" if case == "none" else f"{case} (detected)"
            lines.append(f"{label:<22}{c['ours']:>5}/{args.trials:<2}{c['evidently_preset']:>15}/{args.trials:<2}"
                         f"{c['evidently_embeddings']:>19}/{args.trials:<2}")
    return "\n".join(lines)


def main() -> None:
    from mentor_trainer.drift import EMBEDDED_SAMPLE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000, help="logged requests of the one-check comparison")
    parser.add_argument("--reference", type=int, default=10_000, help="reference rows of the one-check comparison")
    parser.add_argument("--trials", type=int, default=20, help="windows per case for the rates")
    # smaller than the one check: at 100k against 10k, the 20 no-drift windows (both sides) had
    # not finished after 9 minutes on 2 cores shared with other jobs
    parser.add_argument("--rate-requests", type=int, default=5_000, help="requests per window for the rates")
    parser.add_argument("--rate-reference", type=int, default=2_000, help="reference rows per window for the rates")
    parser.add_argument("--shift-share", type=float, default=1.0, help="share of a shifted window that is shifted")
    parser.add_argument("--threshold", type=float, default=0.0, help="drift.threshold: share of judged signals above which it drifts")
    parser.add_argument("--embedded", type=int, default=EMBEDDED_SAMPLE, help="prompts per side given to Evidently's EmbeddingsDrift (default: as many as ours)")
    parser.add_argument("--skip-rates", action="store_true")
    parser.add_argument("--side", choices=["ours", "evidently", "warm"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(one_check(args)))
        return
    pool = pools()
    report: dict = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        write_log(Path(tmp) / "current", window(pool, "topic", args.requests, args.shift_share, rng))
        write_log(Path(tmp) / "reference", window(pool, "none", args.reference, 0, rng))
        for side in ("warm", "ours", "evidently"):
            report[side] = run_side(side, tmp, args)
            print(side, report[side], file=sys.stderr)
    if not args.skip_rates:
        report["rates"] = rates(args, pool)
    print(table(report, args))


if __name__ == "__main__":
    main()
