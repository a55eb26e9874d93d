"""`mentor-trainer drift`: is the deployment's recent traffic unlike its training data?

Input: the newest ``drift.windowRequests`` records of the payload logs under
``config.payload_log_uri`` (:func:`mentor_trainer.serve.payload_log.scan_records`; corrupt files
and rows are skipped and counted: a ``payload_log.skipped_files`` signal in the result, which is
never judged, the lists in ``drift.json``, a warning in the log, and the ``skipped`` reason of a
check that decided nothing), and a reference: ``drift.referenceUri``, else ``config.reference_uri``, either

- a DomainDataset root: the prompts of its validation split (the last user turn of each
  ``sft`` row's messages, its last assistant turn as the reference completion), falling back
  to its ``pretrain`` texts (prompts only); or
- a payload log directory (``<uri>/requests/`` exists) of reference traffic: prompts,
  completions, retrieval scores and feedback.

The signals, their scales, thresholds and the calibrated decision are described in
:mod:`mentor_trainer.drift.signals`. The verdict: drifted when the share of judged signals that
drifted is greater than ``drift.threshold``.

Skipped (``drifted`` unset, ``skipped`` says why; never an error): no logs yet, fewer than
``drift.minRequests`` logged requests, no reference configured, a reference that is missing
or holds no prompts.

The result's ``window_start`` and ``window_end`` are the timestamps of the oldest and newest
request compared (also on a skipped check that read some), so that a retraining can take
exactly that window.

Cost: the scalar descriptors are computed on every row; language detection and the MiniLM
embeddings (MMD and the domain classifier) on seeded samples of ``LANGUAGE_SAMPLE`` and
``EMBEDDED_SAMPLE`` prompts per side, so a check embeds at most ``2 * EMBEDDED_SAMPLE``
prompts whatever the window's size (``bench/drift_check.py`` measures 100,000 requests against
10,000 reference rows).

Output under ``<output_uri>/<check time>/``: ``drift.json`` (every signal with its score,
threshold, p-value and verdict; what was skipped) and ``report.html`` (Evidently's per-column
ValueDrift report on the descriptors, for people; it does not decide).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from ..config.deploy import DriftResult, DriftSignal, DriftStageConfig
from ..errors import StageError
from ..progress import ProgressReporter
from ..timestamps import utc_now
from . import signals as sig

log = logging.getLogger(__name__)

__all__ = ["main", "load_reference", "Traffic", "compare"]
MAX_REFERENCE = 10000  # reference rows compared at most (a seeded sample)
# per side, seeded samples; langdetect and MiniLM cost ~6 ms a prompt each on a CPU core, and
# these sizes still detect every planted shift of the benchmark (bench/drift_check.py)
LANGUAGE_SAMPLE = 300
EMBEDDED_SAMPLE = 500


class Traffic:
    """Prompts (and, where known, completions, best retrieval scores, ratings) of one side."""

    def __init__(self, prompts, completions=None, top_scores=None, ratings=None) -> None:
        self.prompts: list[str] = list(prompts)
        self.completions: list[str] | None = None if completions is None else list(completions)
        self.top_scores: list[float] = list(top_scores or [])
        self.ratings: list[float] = list(ratings or [])

    def sample(self, limit: int, seed: int = 0) -> "Traffic":
        if len(self.prompts) <= limit:
            return self
        keep = sample_indices(len(self.prompts), limit, np.random.default_rng(seed))
        return Traffic(
            [self.prompts[i] for i in keep],
            None if self.completions is None else [self.completions[i] for i in keep],
            self.top_scores,
            self.ratings,
        )


def sample_indices(n: int, limit: int, rng) -> np.ndarray:
    """Sorted indices of a random sample of at most ``limit`` of ``n`` rows (all when n <= limit)."""
    return np.sort(rng.choice(n, limit, replace=False)) if n > limit else np.arange(n)


def _from_records(records, feedback: list[dict]) -> Traffic:
    from ..rollout import feedback_by_request

    ids = {r.request_id for r in records}
    ratings = [v for k, v in feedback_by_request(feedback).items() if k in ids]
    tops = [max(r.retrieval_scores) for r in records if r.retrieval_scores]
    return Traffic([r.prompt for r in records], [r.completion for r in records], tops, ratings)


def _last_turn(messages, role: str) -> str | None:
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("role") == role and isinstance(message.get("content"), str):
            return message["content"]
    return None


def load_reference(uri: str) -> Traffic:
    """The reference traffic at ``uri`` (see the module docs); empty when it holds nothing."""
    from ..serve.payload_log import read_feedback, scan_records

    if any(True for _ in _safe_list(f"{uri.rstrip('/')}/requests/")):
        scan = scan_records(uri)
        return _from_records(scan.records, read_feedback(uri))
    from ..data.layout import read_split

    prompts, completions = [], []
    for row in read_split(uri, "validation", ("sft",)):
        prompt = _last_turn(row.get("messages"), "user")
        if prompt:
            prompts.append(prompt)
            completions.append(_last_turn(row.get("messages"), "assistant") or "")
    if prompts:
        return Traffic(prompts, completions)
    texts = [row.get("text") for row in read_split(uri, "validation", ("pretrain",))]
    return Traffic([t for t in texts if isinstance(t, str) and t.strip()])


def _safe_list(prefix: str):
    from .. import storage

    try:
        yield from storage.list_objects(prefix)
    except StageError:
        return


def _embed(texts: list[str]) -> np.ndarray:
    from ..data.index import load_embedding_model
    from ..evaluate.embedding_f1 import default_model_dir

    model = load_embedding_model(f"file://{default_model_dir()}", "drift embedding model")
    return np.asarray(model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False))


def _descriptors(traffic: Traffic) -> dict[str, np.ndarray]:
    return {
        "length": np.fromiter(map(len, traffic.prompts), float, len(traffic.prompts)),
        "non_letter_share": sig.non_letter_shares(traffic.prompts),
    }


def _optional_signals(current: Traffic, reference: Traffic, cols: dict, tokenizer) -> list[sig.Signal]:
    """OOV share, refusals, retrieval scores and ratings, each where both sides have them."""
    out = []
    if tokenizer is not None:
        for side, traffic in (("current", current), ("reference", reference)):
            cols[side]["oov_share"] = sig.oov_shares(traffic.prompts, tokenizer)
        out.append(sig.numeric("prompt.oov_share", cols["current"]["oov_share"], cols["reference"]["oov_share"]))
    else:
        out.append(sig.Signal("prompt.oov_share", threshold=sig.THRESHOLDS["prompt.oov_share"], note="no tokenizer"))
    refusal = sig.Signal("completion.refusal_share", threshold=sig.THRESHOLDS["completion.refusal_share"], note="no reference completions")
    if current.completions is not None and reference.completions:
        refusal = sig.proportion(
            "completion.refusal_share",
            [sig.is_refusal(c) for c in current.completions],
            [sig.is_refusal(c) for c in reference.completions],
        )
    out.append(refusal)
    if current.top_scores and reference.top_scores:
        out.append(sig.numeric("retrieval.top_score", current.top_scores, reference.top_scores))
    elif current.top_scores:
        out.append(sig.Signal("retrieval.top_score", threshold=sig.THRESHOLDS["retrieval.top_score"],
                              note=f"no reference scores; current mean {np.mean(current.top_scores):.3f}"))
    if min(len(current.ratings), len(reference.ratings)) >= sig.MIN_RATINGS:
        out.append(sig.numeric("feedback.rating", current.ratings, reference.ratings))
    elif current.ratings or reference.ratings:
        note = f"fewer than {sig.MIN_RATINGS} ratings on a side (current {len(current.ratings)}, reference {len(reference.ratings)})"
        if current.ratings:
            note += f"; current mean {np.mean(current.ratings):.2f}"
        out.append(sig.Signal("feedback.rating", threshold=sig.THRESHOLDS["feedback.rating"], note=note))
    return out


def _embedding_signals(current: Traffic, reference: Traffic, cols: dict, seed: int, embed) -> list[sig.Signal]:
    """MMD and the domain classifier on one seeded sample of each side, embedded once."""
    rng = np.random.default_rng(seed)
    picks = {side: sample_indices(len(t.prompts), EMBEDDED_SAMPLE, rng) for side, t in (("current", current), ("reference", reference))}
    vectors = embed([current.prompts[i] for i in picks["current"]] + [reference.prompts[i] for i in picks["reference"]])
    m = len(picks["current"])
    # the classifier also sees the scalar descriptors of the same rows (length on a log scale)
    scalars = {side: np.column_stack([np.log1p(cols[side]["length"][picks[side]]), cols[side]["non_letter_share"][picks[side]]])
               for side in picks}
    return [
        sig.mmd(vectors[:m], vectors[m:], seed=seed),
        sig.domain_classifier(np.hstack([vectors[:m], scalars["current"]]), np.hstack([vectors[m:], scalars["reference"]]), seed=seed),
    ]


def compare(
    current: Traffic, reference: Traffic, *, tokenizer=None, seed: int = 0, embed=_embed, thresholds: dict[str, float] | None = None
) -> tuple[list[sig.Signal], dict]:
    """Every signal of ``current`` against ``reference`` (not yet decided) and the descriptor
    columns of both sides (for the report); ``thresholds`` replace signals' default thresholds
    (and naming prompt.length_kl adds that signal)."""
    cols = {"current": _descriptors(current), "reference": _descriptors(reference)}
    out = [
        sig.numeric("prompt.length", cols["current"]["length"], cols["reference"]["length"]),
        sig.numeric("prompt.non_letter_share", cols["current"]["non_letter_share"], cols["reference"]["non_letter_share"]),
    ]
    langs = {side: sig.languages(t.sample(LANGUAGE_SAMPLE, seed).prompts) for side, t in (("current", current), ("reference", reference))}
    out.append(sig.categorical("prompt.language", langs["current"], langs["reference"], seed=seed))
    out += _optional_signals(current, reference, cols, tokenizer)
    out += _embedding_signals(current, reference, cols, seed, embed)
    if thresholds and "prompt.length_kl" in thresholds:
        out.append(sig.length_kl(cols["current"]["length"], cols["reference"]["length"]))
    for signal in out:
        signal.threshold = (thresholds or {}).get(signal.name, signal.threshold)
    cols["current"]["language"] = langs["current"]
    cols["reference"]["language"] = langs["reference"]
    return out, cols


def _report_html(cols: dict, path: Path) -> None:
    """Evidently 0.7's per-column ValueDrift report on the descriptors (informative only)."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, ValueDrift

    numeric = [c for c in cols["current"] if c != "language"]
    frames = {}
    for side in ("current", "reference"):
        data = {c: cols[side][c] for c in numeric}
        frame = pd.DataFrame(data)
        languages = list(cols[side]["language"])
        frame["language"] = (languages + [None] * len(frame))[: len(frame)]
        frames[side] = frame
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=["language"])
    columns = numeric + ["language"]
    report = Report([DriftedColumnsCount(columns=columns)] + [ValueDrift(column=c) for c in columns])
    snapshot = report.run(
        Dataset.from_pandas(frames["current"], data_definition=definition),
        Dataset.from_pandas(frames["reference"], data_definition=definition),
    )
    snapshot.save_html(str(path))


def _window(records) -> dict:
    """The compared window's bounds: the timestamps of the oldest and newest record (they come
    oldest first) whose timestamp is RFC 3339; an unreadable one cannot bound a retraining's
    window (the scan orders such records by their file's write time)."""
    from ..timestamps import parse_utc

    valid = [r.timestamp for r in records if parse_utc(r.timestamp)]
    return {"window_start": valid[0], "window_end": valid[-1]} if valid else {}


def _skip(checked: str, why: str, records=(), reference_rows: int | None = None) -> DriftResult:
    log.info("drift check skipped: %s", why)
    return DriftResult(last_check_time=checked, skipped=why, requests=len(records), reference_rows=reference_rows, **_window(records))


def main(config: DriftStageConfig) -> DriftResult:
    from .. import storage
    from ..config.data import Source
    from ..data import traffic
    from ..serve.payload_log import read_feedback, scan_records

    checked = utc_now()
    drift = config.drift
    with ProgressReporter.for_stage(config.progress_file) as progress:
        progress.update(phase="reading payload logs", force=True)
        scan = scan_records(config.payload_log_uri, limit=drift.window_requests)
        corrupt = ""
        if scan.skipped_files or scan.skipped_rows:
            corrupt = f"; skipped {len(scan.skipped_files)} corrupt log file(s) and {scan.skipped_rows} bad row(s)"
            log.warning("payload logs%s", corrupt)
        records = scan.records
        if not records:
            return _skip(checked, "no logged requests yet" + corrupt)
        if len(records) < drift.min_requests:
            return _skip(checked, f"{len(records)} logged requests, fewer than minRequests {drift.min_requests}" + corrupt, records)
        reference_uri = drift.reference_uri or config.reference_uri
        if not reference_uri:
            return _skip(checked, "no reference configured (the training dataset or drift.referenceUri)" + corrupt, records)
        progress.update(phase="reading the reference", force=True)
        try:
            reference = load_reference(reference_uri)
        except StageError as error:
            return _skip(checked, f"reference {reference_uri} cannot be read: {str(error)[:300]}" + corrupt, records)
        if not reference.prompts:
            return _skip(checked, f"reference {reference_uri} is missing or holds no prompts" + corrupt, records, 0)
        reference = reference.sample(MAX_REFERENCE)
        feedback = read_feedback(config.payload_log_uri)
        current = _from_records(records, feedback)
        tokenizer = None
        if config.tokenizer_uri:
            from ..models import load_tokenizer

            try:
                tokenizer = load_tokenizer(config.tokenizer_uri, "drift tokenizer")
            except StageError as error:
                log.warning("out-of-vocabulary share skipped: %s", error)
        progress.update(phase="comparing", force=True)
        found, cols = compare(current, reference, tokenizer=tokenizer, thresholds=drift.thresholds)
        drifted, score = sig.decide(found, drift.threshold)
        window = _window(records)
        labelled = traffic.learnable_requests(records, traffic.latest_feedback(feedback), Source.model_fields["min_rating"].default)
        folder = f"{config.output_uri.rstrip('/')}/drift/{checked.replace(':', '').replace('-', '')}"
        summary = {
            "checked": checked,
            "drifted": drifted,
            "score": score,
            "threshold": drift.threshold,
            "alpha": sig.ALPHA,
            "rule": "a signal drifts when score > threshold and p < alpha / judged signals; "
            "the check drifts when the share of judged signals that drifted > threshold",
            "requests": len(current.prompts),
            **window,
            "reference_rows": len(reference.prompts),
            "labelled_requests": labelled,
            "reference_uri": reference_uri,
            "skipped_log_files": scan.skipped_files,
            "skipped_log_rows": scan.skipped_rows,
            "signals": [s.as_dict() for s in found],
        }
        # corrupt log files are said as a signal that is never judged (score: files skipped)
        corrupt_signal = [DriftSignal(name="payload_log.skipped_files", score=len(scan.skipped_files))] if scan.skipped_files else []
        report_uri = None
        progress.update(phase="writing the report", force=True)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                _report_html(cols, Path(tmp) / "report.html")
                report_uri = f"{folder}/report.html"
            except Exception as error:  # noqa: BLE001 - the report is for people; the verdict stands without it
                log.warning("the Evidently report failed: %s: %s", type(error).__name__, str(error)[:300])
                summary["report_error"] = f"{type(error).__name__}: {str(error)[:300]}"
            with storage.publish(folder) as staging:
                (staging / "drift.json").write_text(json.dumps(summary, indent=2))
                if report_uri:
                    (staging / "report.html").write_bytes((Path(tmp) / "report.html").read_bytes())
        log.info("drift: %s (score %s) over %d requests: %s", drifted, score, len(current.prompts),
                 ", ".join(f"{s.name}={s.score if s.score is None else round(s.score, 3)}{'!' if s.drifted else ''}" for s in found))
        return DriftResult(
            last_check_time=checked,
            drifted=drifted,
            score=None if score is None else round(score, 4),
            report_uri=report_uri or f"{folder}/drift.json",
            requests=len(current.prompts),
            **window,
            reference_rows=len(reference.prompts),
            labelled_requests=labelled,
            skipped=None if drifted is not None else "no signal could be judged" + corrupt,
            signals=[
                DriftSignal(name=s.name, score=sig._round(s.score, 4), threshold=s.threshold, drifted=s.drifted) for s in found
            ] + corrupt_signal,
        )
