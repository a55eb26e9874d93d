"""Configs of the serving side: `mentor-trainer export`, `serve` and `drift`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .common import CelRule, Fraction, ModelUri, NonNegativeInt, PositiveInt, Spec, StageResult, StageRuntime, StorageUri, Verdict

Runtime = Literal["mentor", "huggingface", "vllm", "triton"]


class QuantizationExport(Spec):
    """Post-training quantisation applied by the export job."""

    method: Literal["none", "int8", "int4", "fp8"] = Field(default="none", description="Weight quantisation.")


class Rag(Spec):
    """Retrieval-augmented generation with the dataset's index."""

    enabled: bool = Field(default=True, description="Retrieve context for each request.")
    top_k: PositiveInt = Field(default=5, le=100, description="Chunks retrieved per request.")
    rerank: bool = Field(default=True, description="Re-rank retrieved chunks (dense + BM25 fusion, then cross-check).")
    dataset_ref: str | None = Field(
        default=None, description="DomainDataset whose index is used (default: the model's training dataset)."
    )


class Scaling(Spec):
    """Replica bounds and the autoscaling target."""

    cel_rules = (
        CelRule(rule="self.maxReplicas >= self.minReplicas", message="maxReplicas must be >= minReplicas", field_path=".maxReplicas"),
    )

    min_replicas: NonNegativeInt = Field(default=1, description="Minimum replicas (0 allows scale to zero).")
    max_replicas: PositiveInt = Field(default=1, description="Maximum replicas.")
    target_concurrency: PositiveInt | None = Field(default=None, description="Concurrent requests per replica to scale on.")


class Canary(Spec):
    """Gradual rollout of a new model version."""

    traffic_percent: int = Field(default=10, ge=1, le=99, description="Percent of traffic sent to the new model.")
    promote_after_minutes: PositiveInt = Field(default=30, description="Promote when healthy this long.")
    max_error_rate: Fraction = Field(default=0.05, description="Roll back above this error rate.")
    min_requests: PositiveInt = Field(
        default=50, description="Logged canary requests needed before the analysis decides (else it waits another period)."
    )
    max_latency_ratio: float = Field(
        default=1.5, gt=1, le=10, description="Roll back when the canary's p95 latency exceeds the stable one's by this factor."
    )


class Batching(Spec):
    """Dynamic batching: concurrent requests are generated together."""

    max_batch_size: PositiveInt = Field(default=8, le=256, description="Requests generated together at most.")
    max_wait_ms: NonNegativeInt = Field(
        default=10, le=10000, description="How long the first request of a batch waits for others to join."
    )


class PayloadLogging(Spec):
    """Logging of requests and responses, the input of drift monitoring."""

    enabled: bool = Field(default=True, description="Log payloads.")
    sample_rate: Fraction = Field(default=1.0, description="Share of requests logged.")
    uri: StorageUri | None = Field(default=None, description="Where logs go (default: under the deployment's output).")
    format: Literal["jsonl", "parquet"] = Field(default="jsonl", description="File format of the logged batches.")
    flush_every: PositiveInt = Field(default=64, le=100000, description="Write a batch after this many logged requests.")
    flush_seconds: PositiveInt = Field(default=10, le=3600, description="Write a batch at least this often when there are requests.")


# Every signal a drift check can judge (mentor_trainer/drift/signals.py defines each one and
# its default threshold); prompt.length_kl runs only when drift.thresholds names it.
DRIFT_SIGNALS = (
    "prompt.length", "prompt.non_letter_share", "prompt.language", "prompt.oov_share", "completion.refusal_share",
    "retrieval.top_score", "feedback.rating", "embedding.mmd", "domain.classifier_auc", "prompt.length_kl",
)


class Drift(Spec):
    """Evidently drift check over logged traffic against the training reference."""

    cel_rules = (
        CelRule(
            rule="!has(self.thresholds) || self.thresholds.all(k, k in [" + ", ".join(f"'{n}'" for n in DRIFT_SIGNALS) + "])",
            message="thresholds keys are signal names: " + ", ".join(DRIFT_SIGNALS),
            field_path=".thresholds",
        ),
    )

    schedule: str = Field(default="0 * * * *", min_length=9, description="Cron schedule of the check.")
    window_requests: PositiveInt = Field(default=10000, description="Latest logged requests compared.")
    threshold: Fraction = Field(
        default=0.0,
        description="Drift when the share of judged signals that drifted exceeds this (0: any one; each signal is already corrected for multiple tests).",
    )
    min_requests: PositiveInt = Field(default=200, description="Skip the check with fewer logged requests.")
    reference_uri: StorageUri | None = Field(
        default=None, description="Reference data (default: the training dataset's validation split)."
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict, max_length=len(DRIFT_SIGNALS),
        description="Effect-size threshold per signal, in place of its default. The design notes' rules on the same scales:"
        " embedding.mmd 0.3 (unbiased MMD^2, RBF kernel at the median distance) and prompt.length_kl 0.15"
        " (KL divergence in nats of the prompt lengths over 10 reference-quantile bins; this signal runs only when named here).",
    )

    @field_validator("thresholds")
    @classmethod
    def _known_signals(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(DRIFT_SIGNALS))
        if unknown:
            raise ValueError(f"unknown signal(s) {', '.join(unknown)}; signals: {', '.join(DRIFT_SIGNALS)}")
        return value


class Retrain(Spec):
    """What happens on drift: a new DomainDataset (the training data plus the drifted traffic),
    a FineTuneJob, Evaluations against the deployed model, then a rollout (a canary if set)."""

    enabled: bool = Field(default=False, description="Start a retraining pipeline when a drift check finds drift.")
    cooldown_minutes: PositiveInt = Field(default=1440, description="Minimum time between the starts of two retrainings.")
    max_concurrent: PositiveInt = Field(default=1, le=10, description="Retraining pipelines unfinished at once.")
    approval: Literal["auto", "manual"] = Field(
        default="manual",
        description="manual: the pipeline waits at approveBefore until a user approves (mentor approve, or the mentor.dev/approve annotation).",
    )
    approve_before: Literal["training", "rollout"] = Field(
        default="rollout", description="Where a manual approval is asked for: before the FineTuneJob trains, or before the rollout."
    )
    start_from: Literal["deployed", "base"] = Field(
        default="deployed", description="Fine-tune the deployed model further, or the training template's base model again."
    )
    training_ref: str | None = Field(
        default=None, description="FineTuneJob whose spec the retraining copies (default: modelRef, when it is a FineTuneJob)."
    )
    max_traffic_records: PositiveInt = Field(
        default=2000, le=1_000_000, description="Logged requests one retraining adds at most (the newest of the drifted window)."
    )
    traffic_windows: PositiveInt = Field(
        default=3, le=50, description="Drifted traffic windows a dataset keeps; older ones drop out (bounds dataset growth)."
    )
    regression_tolerance: float = Field(
        default=0.0, ge=0,
        description="How much worse than the deployed model the candidate may score on the original held-out set, per gated metric.",
    )


class Monitoring(Spec):
    """Monitoring of live traffic."""

    drift: Drift | None = Field(default=None, description="Drift checks; omitted means none.")
    retrain: Retrain = Field(default_factory=Retrain, description="Retraining policy on drift.")


class ServingOptions(Spec):
    """Everything a user declares about serving a model."""

    cel_rules = (
        CelRule(
            rule="self.runtime != 'triton' || self.quantization.method != 'fp8'",
            message="the triton runtime serves none, int8 or int4 weights",
            field_path=".quantization.method",
        ),
    )

    runtime: Runtime = Field(default="mentor", description="mentor (KServe ModelServer with RAG), huggingface, vllm or triton.")
    quantization: QuantizationExport = Field(default_factory=QuantizationExport, description="Export quantisation.")
    temperature: float | None = Field(
        default=None, gt=0, le=5, description="Logit temperature; default: the evaluation's calibrated temperature."
    )
    max_new_tokens: PositiveInt = Field(default=512, description="Default generation length.")
    chain_of_thought: bool = Field(
        default=False, description="Ask for reasoning in a <think> block before the answer (the answer alone is returned)."
    )
    batching: Batching = Field(default_factory=Batching, description="Dynamic batching of concurrent requests.")
    rag: Rag | None = Field(default=None, description="Retrieval-augmented generation.")
    scaling: Scaling = Field(default_factory=Scaling, description="Replicas.")
    canary: Canary | None = Field(default=None, description="Canary rollout of new versions.")
    logging: PayloadLogging = Field(default_factory=PayloadLogging, description="Payload logging.")
    monitoring: Monitoring = Field(default_factory=Monitoring, description="Drift monitoring and retraining.")


class ExportStageConfig(StageRuntime):
    """The rendered config `mentor-trainer export` reads: model -> servable artefact."""

    model_uri: ModelUri = Field(description="Model to export (an adapter is merged into its base).")
    runtime: Runtime = Field(description="Target runtime.")
    quantization: QuantizationExport = Field(default_factory=QuantizationExport, description="Quantisation.")
    temperature: float | None = Field(
        default=None, gt=0, le=5, description="Default sampling temperature written to the generation config."
    )
    max_new_tokens: PositiveInt = Field(default=512, description="Default generation length.")
    batching: Batching = Field(default_factory=Batching, description="Dynamic batching (Triton's config.pbtxt).")
    serving_gpus: NonNegativeInt = Field(default=0, description="GPUs per serving replica (Triton's instance group).")
    dataset_uri: StorageUri | None = Field(
        default=None, description="Dataset whose validation texts measure perplexity before and after quantisation."
    )


class ExportResult(StageResult):
    """Outcome of `mentor-trainer export`: the servable artefact and what quantisation cost."""

    model_uri: str | None = Field(default=None, description="Model being served (the exported artefact).")
    quantization: str | None = Field(default=None, description="Weight quantisation applied.")
    size_bytes: int | None = Field(default=None, description="Size of the exported weights.")
    unquantized_size_bytes: int | None = Field(default=None, description="Size of the weights before quantisation.")
    perplexity: float | None = Field(default=None, description="Perplexity of the exported model on validation texts.")
    unquantized_perplexity: float | None = Field(default=None, description="The same before quantisation.")
    temperature: float | None = Field(default=None, description="Default sampling temperature of the served model.")


class ServeStageConfig(StageRuntime, ServingOptions):
    """The rendered config the mentor ModelServer reads."""

    model_uri: ModelUri = Field(description="Exported model to serve.")
    model_version: str | None = Field(default=None, description="Version logged with each request (the source model).")
    index_uri: StorageUri | None = Field(default=None, description="Retrieval index for RAG.")
    payload_log_uri: StorageUri | None = Field(default=None, description="Where payload logs and feedback are written.")
    http_port: PositiveInt = Field(default=8080, le=65535, description="REST port (Open Inference Protocol v2, OpenAI).")
    grpc_port: PositiveInt = Field(default=8081, le=65535, description="gRPC port (Open Inference Protocol v2).")


class DriftStageConfig(StageRuntime):
    """The rendered config `mentor-trainer drift` reads."""

    drift: Drift = Field(description="Drift settings.")
    payload_log_uri: StorageUri = Field(description="Logged traffic.")
    reference_uri: StorageUri | None = Field(
        default=None,
        description="Reference: a DomainDataset (its validation split's prompts) or a payload log of reference traffic.",
    )
    tokenizer_uri: ModelUri | None = Field(
        default=None, description="The served model, whose tokenizer measures the out-of-vocabulary share."
    )


class DriftSignal(Spec):
    """One signal of a drift check, on its stated scale."""

    name: str = Field(description="What is compared, e.g. embedding.mmd or prompt.length.")
    score: float | None = Field(default=None, description="Its drift score (effect size, on the signal's scale).")
    threshold: float | None = Field(default=None, description="Above it, the signal has drifted.")
    drifted: bool | None = Field(default=None, description="Whether the signal drifted.")


class DriftResult(StageResult):
    """Outcome of `mentor-trainer drift`: the verdict, its score and each signal."""

    last_check_time: str | None = Field(default=None, description="When the last check ran (RFC 3339).")
    drifted: bool | None = Field(default=None, description="Whether the last check found drift (unset when skipped).")
    score: float | None = Field(default=None, description="Share of signals that drifted in the last check.")
    report_uri: str | None = Field(default=None, description="Evidently report of the last check.")
    requests: int | None = Field(default=None, description="Logged requests compared.")
    window_start: str | None = Field(default=None, description="Time of the oldest request compared (RFC 3339).")
    window_end: str | None = Field(default=None, description="Time of the newest request compared (RFC 3339).")
    labelled_requests: int | None = Field(
        default=None, description="Requests of the window with a correction or a positive rating: what a retraining can learn from."
    )
    reference_rows: int | None = Field(default=None, description="Reference rows compared.")
    skipped: str | None = Field(default=None, description="Why the check decided nothing (too few requests, no reference).")
    signals: list[DriftSignal] = Field(default_factory=list, description="Each signal's score, threshold and verdict.")


class ServeResult(StageResult):
    """Outcome of `mentor-trainer serve` after a graceful shutdown: what it served."""

    model_uri: str | None = Field(default=None, description="Model that was served.")
    model_version: str | None = Field(default=None, description="Version logged with each request.")
    requests_served: NonNegativeInt = Field(default=0, description="Generation requests answered (OpenAI and v2 rows).")
    requests_failed: NonNegativeInt = Field(default=0, description="Generation requests that failed (4xx/5xx).")
    tokens_generated: NonNegativeInt = Field(default=0, description="Completion tokens generated.")
    payload_logs_written: NonNegativeInt = Field(default=0, description="Payload records written to the log sink.")
    payload_logs_dropped: NonNegativeInt = Field(default=0, description="Payload records lost (sink down, queue full).")
    rag: str | None = Field(default=None, description='Retrieval: "ok", "unavailable: <reason>" or None when off.')


class RolloutStageConfig(StageRuntime):
    """The rendered config `mentor-trainer rollout` reads: the canary against the stable model,
    on the requests each served since the canary started."""

    payload_log_uri: StorageUri = Field(description="The deployment's payload logs and feedback.")
    stable_version: str = Field(description="modelVersion of the stable model's logged requests.")
    canary_version: str = Field(description="modelVersion of the canary's logged requests.")
    since: str = Field(description="When the canary started (RFC 3339); earlier requests are not compared.")
    canary: Canary = Field(default_factory=Canary, description="Thresholds of the analysis.")
    confidence: float = Field(default=0.95, gt=0.5, lt=1, description="Confidence of the significance tests.")


class RolloutResult(StageResult):
    """The analysis of a canary: promote, roll back, or wait for more traffic."""

    decision: Literal["promote", "rollback", "wait"] | None = Field(default=None, description="What the analysis decided.")
    reasons: list[str] = Field(default_factory=list, description="Why, one line per check.")
    stable_requests: int | None = Field(default=None, description="Logged requests of the stable model.")
    canary_requests: int | None = Field(default=None, description="Logged requests of the canary.")
    stable_error_rate: float | None = Field(default=None, description="Share of the stable model's requests that failed.")
    canary_error_rate: float | None = Field(default=None, description="Share of the canary's requests that failed.")
    error_rate_p_value: float | None = Field(default=None, description="One-sided test that the canary fails more often.")
    stable_latency_p95_ms: float | None = Field(default=None, description="p95 latency of the stable model.")
    canary_latency_p95_ms: float | None = Field(default=None, description="p95 latency of the canary.")
    latency_p_value: float | None = Field(default=None, description="One-sided test that the canary is slower.")
    stable_feedback: float | None = Field(default=None, description="Mean feedback rating of the stable model.")
    canary_feedback: float | None = Field(default=None, description="Mean feedback rating of the canary.")
    feedback_p_value: float | None = Field(default=None, description="One-sided test that the canary is rated lower.")

    def verdict(self) -> Verdict | None:
        message = "; ".join(self.reasons)
        if self.decision == "promote":
            return Verdict(True, "CanaryHealthy", message or "the canary is healthy")
        if self.decision == "rollback":
            return Verdict(False, "CanaryUnhealthy", message or "the canary is unhealthy")
        return None
