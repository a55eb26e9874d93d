"""`mentor-trainer evaluate`: run the suites on the candidate and the baseline, compare them
with paired bootstrap intervals, check the gates, and publish metrics.json, examples.parquet
and report.html under the output URI (and to MLflow)."""

from __future__ import annotations

import gc
import json
import logging
import math
from typing import Any

from .. import storage
from ..config.evaluate import EvaluateStageConfig, EvaluationResult
from ..errors import StageError
from ..progress import ProgressReporter
from ..timestamps import utc_now
from ..tracking import Tracker
from .eval_data import EvalData, load_eval_data
from .stats import Comparison, evaluate_gates, gate_text, paired_bootstrap, paired_bootstrap_ratio
from .suites import Shared, SuiteResult, SuiteRunner

log = logging.getLogger(__name__)

MAX_RESULT_BYTES = 3800  # the termination message keeps 4096 bytes
SUMMARY_METRICS = ("qa.f1", "ppl.domain", "mc.accuracy", "judge.score")  # printed when no gate names one


def main(config: EvaluateStageConfig) -> EvaluationResult:
    with ProgressReporter.for_stage(config.progress_file) as progress:
        return EvaluationRun(config, progress).run()


class EvaluationRun:
    """One run of the evaluate stage (not the Evaluation kind): the suites on the candidate and
    the baseline, the paired comparison, the gates, the published report."""

    def __init__(self, config, progress: ProgressReporter) -> None:
        self.config = config
        self.progress = progress

    def run(self) -> EvaluationResult:
        config = self.config
        self.progress.update(force=True, phase="loading data")
        data = load_eval_data(config)
        shared = self._shared(data)
        candidate = self._run_model(config.model_uri, "candidate", data, shared)
        baseline = self._run_model(config.baseline_uri, "baseline", data, shared) if config.baseline_uri else {}
        if all(r.error for r in candidate.values()):
            raise StageError("every suite failed: " + "; ".join(f"{s}: {r.error}" for s, r in candidate.items()))

        metrics = merged_metrics(candidate)
        baseline_metrics = merged_metrics(baseline)
        comparisons = compare(candidate, baseline, config.bootstrap_samples, config.confidence)
        suite_errors = {s: r.error for s, r in candidate.items() if r.error}
        suite_errors |= {s: f"baseline: {r.error}" for s, r in baseline.items() if r.error and s not in suite_errors}
        failed = evaluate_gates(config.gates, metrics, baseline_metrics, comparisons, suite_errors)
        not_finite = sorted(k for k, v in metrics.items() if not math.isfinite(v))
        comparison = comparison_status(metrics, baseline_metrics, comparisons)

        self.progress.update(force=True, phase="publishing")
        report_uri = storage.parse(config.output_uri).join("report.html")
        document = {
            "modelUri": config.model_uri,
            "baselineUri": config.baseline_uri,
            "datasetUri": config.dataset_uri,
            "passed": not failed,
            "failedGates": failed,
            "gates": [gate_text(g) for g in config.gates],
            "metrics": metrics,
            "baselineMetrics": baseline_metrics,
            "comparison": comparison,
            "pairedExamples": {k: c.n for k, c in comparisons.items()},
            "suiteErrors": suite_errors,
            "notFinite": not_finite,
            "skippedRecords": dict(data.skipped),
            "suites": {s: _json_safe(r.extra) for s, r in candidate.items()},
            "baselineSuites": {s: _json_safe(r.extra) for s, r in baseline.items()},
            "answers": side_by_side(candidate, baseline),
            "createdAt": utc_now(),
        }
        html = self._report(document, candidate, baseline)
        with storage.publish(config.output_uri, {"passed": not failed}) as staging:
            (staging / "metrics.json").write_text(json.dumps(_json_safe(document), indent=2, sort_keys=True))
            (staging / "report.html").write_text(html)
            write_examples(staging / "examples.parquet", candidate, baseline)
        self._track(document, html)
        result = {
            "modelUri": config.model_uri,
            "passed": not failed,
            "failedGates": failed,
            "metrics": {k: round(v, 6) for k, v in metrics.items() if math.isfinite(v)},
            "comparison": dict(comparison),  # trimmed below to fit the termination message
            "summary": summary(config.gates, metrics, comparisons),
            "reportUri": str(report_uri),
        }
        temperature = metrics.get("calibration.temperature")
        if temperature is not None and math.isfinite(temperature):
            result["calibratedTemperature"] = round(temperature, 4)
        if not_finite:
            log.warning("metrics that are not finite numbers (left out of status): %s", ", ".join(not_finite))
        self.progress.update(force=True, phase="done")
        return EvaluationResult.model_validate(fit_termination_message(result, {g.metric for g in config.gates}))

    # ------------------------------------------------------------------ steps

    def _shared(self, data: EvalData) -> Shared:
        config = self.config
        shared = Shared()
        if "retrieval" in config.suites:
            from ..data.index import Retriever

            try:
                shared.retriever = Retriever.load(config.dataset_uri, embedding_model=config.embedding_model)
            except StageError as error:
                shared.retriever_error = str(error)
        if "qa" in config.suites:
            from .embedding_f1 import EmbeddingF1

            shared.embedding_f1 = EmbeddingF1(config.embedding_model)
        if "judge" in config.suites:
            from .judge import JudgeSuite

            shared.judge = JudgeSuite(config.judge)
        return shared

    def _run_model(self, uri: str, role: str, data: EvalData, shared: Shared) -> dict[str, SuiteResult]:
        from .lm import LanguageModel

        self.progress.update(force=True, phase=f"loading {role}")
        lm = LanguageModel.load(uri, batch_size=self.config.generation.batch_size, purpose=f"{role} model")
        suites = self.config.suites

        def report(suite: str) -> None:
            self.progress.update(force=True, phase=f"{role}: {suite}", step=suites.index(suite), total_steps=len(suites))

        try:
            return SuiteRunner(self.config, data, shared, lm, report).run()
        finally:
            del lm
            gc.collect()
            _free_accelerator_memory()

    def _report(self, document: dict, candidate: dict[str, SuiteResult], baseline: dict[str, SuiteResult]) -> str:
        from .report import loss_curve_from_mlflow, render_report

        tracking = self.config.tracking.uri
        calibration = candidate.get("calibration")
        qa = candidate.get("qa")
        base_answers = {r["id"]: r["answer"] for r in (baseline.get("qa").rows if baseline.get("qa") else [])}
        return render_report(
            {
                "title": f"Evaluation {self.config.run.namespace}/{self.config.run.name}",
                "model_uri": document["modelUri"],
                "baseline_uri": document["baselineUri"],
                "created_at": document["createdAt"],
                "passed": document["passed"],
                "failed_gates": document["failedGates"],
                "gates": document["gates"],
                "metrics": document["metrics"],
                "baseline_metrics": document["baselineMetrics"],
                "comparison": document["comparison"],
                "suite_errors": document["suiteErrors"],
                "calibration_curve": calibration.extra.get("curve", []) if calibration else [],
                "calibrated_temperature": document["metrics"].get("calibration.temperature"),
                "loss_curve": loss_curve_from_mlflow(tracking, self.config.training_run_id)
                if tracking and self.config.training_run_id
                else [],
                "confidence": self.config.confidence,
                "examples": [
                    {"question": r["question"], "reference": r["reference"], "candidate": r["answer"],
                     "baseline": base_answers.get(r["id"]), "f1": r["qa.f1"]}
                    for r in (qa.rows[:10] if qa and not qa.error else [])
                ],
            }
        )

    def _track(self, document: dict, html: str) -> None:
        """The evaluation's own MLflow run, and its metrics on the model's training run too."""
        tracker = Tracker(self.config)
        if not tracker.enabled:
            return
        finite = {k: v for k, v in document["metrics"].items() if math.isfinite(v)}
        with tracker.run({"mentor.kind": "Evaluation", "mentor.model": self.config.model_uri}):
            tracker.log_metrics(finite)
            tracker.set_tags({"mentor.passed": str(document["passed"]).lower()})
            tracker.log_text(html, "report.html")
            tracker.log_text(json.dumps(_json_safe(document), indent=2), "metrics.json")
        if self.config.training_run_id:
            tracker.log_to_run(self.config.training_run_id, {f"eval.{k}": v for k, v in finite.items()}, {"evaluation/report.html": html})


# -------------------------------------------------------------------------- helpers


def merged_metrics(results: dict[str, SuiteResult]) -> dict[str, float]:
    return {k: float(v) for r in results.values() if not r.error for k, v in r.metrics.items()}


def side_by_side(candidate: dict[str, SuiteResult], baseline: dict[str, SuiteResult]) -> list[dict]:
    """Each QA question with both models' answers, closed-book and (when run) with retrieval."""

    def answers(results: dict[str, SuiteResult], suite: str) -> dict[str, str]:
        result = results.get(suite)
        return {r["id"]: r["answer"] for r in result.rows} if result and not result.error else {}

    qa = candidate.get("qa")
    if not qa or qa.error:
        return []
    columns = {"candidate": answers(candidate, "qa"), "baseline": answers(baseline, "qa"),
               "candidateRag": answers(candidate, "retrieval"), "baselineRag": answers(baseline, "retrieval")}
    return [
        {"id": r["id"], "question": r["question"], "reference": r["reference"],
         **{name: column[r["id"]] for name, column in columns.items() if r["id"] in column}}
        for r in qa.rows
    ]


def compare(candidate: dict[str, SuiteResult], baseline: dict[str, SuiteResult], samples: int, confidence: float) -> dict[str, Comparison]:
    """Paired bootstrap of every metric both models have per-example values for (perplexity
    as a corpus ratio), on the examples both scored."""
    out: dict[str, Comparison] = {}
    for suite, cand in candidate.items():
        base = baseline.get(suite)
        if base is None or cand.error or base.error:
            continue
        for metric in cand.metrics:
            if metric.startswith("ppl.") and metric in base.extra:
                c, b = cand.extra[metric], base.extra[metric]
                ids = sorted(set(c["nll"]) & set(b["nll"]))
                if not ids:
                    continue
                _add_comparison(out, metric, lambda: paired_bootstrap_ratio(
                    [c["nll"][i] for i in ids], [c["tokens"][i] for i in ids],
                    [b["nll"][i] for i in ids], [b["tokens"][i] for i in ids],
                    samples=samples, confidence=confidence,
                ))
            elif metric in cand.paired and metric in base.paired:
                ids = sorted(set(cand.paired[metric]) & set(base.paired[metric]))
                if ids:
                    _add_comparison(out, metric, lambda: paired_bootstrap(
                        [cand.paired[metric][i] for i in ids], [base.paired[metric][i] for i in ids],
                        samples=samples, confidence=confidence,
                    ))
    return out


def _add_comparison(out: dict[str, Comparison], metric: str, bootstrap) -> None:
    """A metric whose every pair holds a NaN (a model with NaN weights) has no comparison;
    it must not crash the evaluation (its gates then fail with a reason)."""
    try:
        out[metric] = bootstrap()
    except ValueError as error:
        log.warning("no comparison of %s with the baseline: %s", metric, error)


def comparison_status(metrics: dict[str, float], baseline: dict[str, float], comparisons: dict[str, Comparison]) -> dict[str, dict]:
    """Per-metric comparison for status: with interval and p where examples pair up,
    else the two values and their difference (calibration, robustness ratios)."""
    out: dict[str, dict] = {}
    for name in sorted(set(metrics) & set(baseline)):
        c = comparisons.get(name)
        if c is not None and _finite(c):
            out[name] = c.to_status()
        elif math.isfinite(metrics[name]) and math.isfinite(baseline[name]):
            out[name] = {"candidate": round(metrics[name], 6), "baseline": round(baseline[name], 6),
                         "delta": round(metrics[name] - baseline[name], 6)}
        if name.startswith("ppl.") and name in out and baseline[name]:
            out[name]["ratio"] = round(metrics[name] / baseline[name], 6)
    return out


def summary(gates, metrics: dict[str, float], comparisons: dict[str, Comparison]) -> str | None:
    """One metric for `kubectl get`: the first gated one, else the first of SUMMARY_METRICS."""
    names = [g.metric for g in gates] + list(SUMMARY_METRICS)
    name = next((n for n in names if n in metrics and math.isfinite(metrics[n])), None)
    if name is None:
        return None
    text = f"{name}={metrics[name]:.4g}"
    if name in comparisons and math.isfinite(comparisons[name].delta):
        text += f" ({comparisons[name].delta:+.4g})"
    return text


def write_examples(path, candidate: dict[str, SuiteResult], baseline: dict[str, SuiteResult]) -> None:
    import pandas as pd

    rows = [{"model": "candidate", **r} for s in candidate.values() for r in s.rows]
    rows += [{"model": "baseline", **r} for s in baseline.values() for r in s.rows]
    frame = pd.DataFrame(rows or [{"model": None}])
    for column in frame.columns:  # mixed object columns (str + bool) must be one type for parquet
        if frame[column].dtype == object:
            frame[column] = frame[column].map(lambda v: None if v is None else v if isinstance(v, str) else json.dumps(v))
    frame.to_parquet(path, index=False)


def fit_termination_message(result: dict, gated: set[str]) -> dict:
    """Kubernetes keeps 4 KiB of a termination message: drop comparisons, then metrics, of
    ungated metrics first (metrics.json under the output URI keeps them all)."""
    for key in ("comparison", "metrics"):
        for name in sorted(result[key], key=lambda n: (n in gated, n), reverse=False):
            if len(json.dumps(result)) <= MAX_RESULT_BYTES:
                return result
            del result[key][name]
    return result


def _finite(c: Comparison) -> bool:
    return all(math.isfinite(v) for v in (c.candidate, c.baseline, c.delta, c.ci_low, c.ci_high, c.p_value))


def _json_safe(value: Any) -> Any:
    """NaN/inf become null (JSON has no NaN; the API server would reject it)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _json_safe(value.item())
    return value


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
