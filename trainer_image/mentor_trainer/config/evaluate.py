"""Config of `mentor-trainer evaluate`: measure expertise, compare, gate promotion."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import CelRule, Endpoint, Fraction, ModelUri, PositiveInt, Spec, StageResult, StageRuntime, StorageUri, Verdict

Suite = Literal[
    "perplexity",
    "qa",
    "multiple-choice",
    "judge",
    "reasoning-format",
    "calibration",
    "robustness",
    "safety",
    "retrieval",
]

# Every metric a suite reports; gates may only name these (the CRD enum rejects typos).
METRICS: dict[str, str] = {
    "ppl.domain": "perplexity",
    "ppl.general": "perplexity",
    "qa.exact_match": "qa",
    "qa.f1": "qa",
    "qa.rouge_l": "qa",
    "qa.bleu": "qa",
    "qa.embedding_f1": "qa",  # BERTScore-style token matching, no idf, no rescaling
    "qa.fact": "qa",
    "mc.accuracy": "multiple-choice",
    "judge.score": "judge",
    "judge.correctness": "judge",
    "judge.terminology": "judge",
    "judge.reasoning": "judge",
    "reasoning.format_rate": "reasoning-format",
    "calibration.ece": "calibration",
    "calibration.temperature": "calibration",
    "robustness.relative_accuracy": "robustness",
    "safety.refusal_rate": "safety",
    "safety.leakage_rate": "safety",
    "retrieval.recall_at_k": "retrieval",
    "retrieval.rag_f1_gain": "retrieval",
    "retrieval.rag_exact_match": "retrieval",
    "retrieval.rag_f1": "retrieval",
    "retrieval.rag_fact": "retrieval",
}
Metric = Literal[tuple(METRICS)]  # type: ignore[valid-type]


class Gate(Spec):
    """A promotion rule: absolute (`qa.f1 >= 0.6`) or relative to the baseline
    (`ppl.domain <= 0.8 x baseline`, `qa.f1 >= baseline + 0.05 with p < 0.05`)."""

    cel_rules = (
        CelRule(
            rule="!has(self.baselineFactor) && !has(self.baselineDelta) ? has(self.value) : !has(self.value)",
            message="a gate has either value (absolute) or baselineFactor/baselineDelta (relative)",
        ),
        CelRule(
            rule="!has(self.maxPValue) || has(self.baselineFactor) || has(self.baselineDelta)",
            message="maxPValue only applies to relative gates",
            field_path=".maxPValue",
        ),
    )

    metric: Metric = Field(description="Metric name, e.g. qa.f1 or ppl.domain.")
    op: Literal[">=", "<=", ">", "<"] = Field(description="Comparison.")
    value: float | None = Field(default=None, description="Absolute threshold.")
    baseline_factor: float | None = Field(
        default=None, gt=0, description="Threshold = baseline x factor (e.g. 0.8 for 20% lower perplexity)."
    )
    baseline_delta: float | None = Field(default=None, description="Threshold = baseline + delta.")
    max_p_value: Fraction | None = Field(
        default=None, description="Also require the paired bootstrap p-value of the difference below this."
    )


class Judge(Spec):
    """LLM-as-judge with a rubric."""

    endpoint: Endpoint = Field(description="OpenAI-compatible judge endpoint.")
    rubric: list[Literal["correctness", "terminology", "reasoning"]] = Field(
        default_factory=lambda: ["correctness", "terminology", "reasoning"], min_length=1, description="Criteria scored 1-5."
    )


class GenerationSettings(Spec):
    """Decoding used for generative suites."""

    max_new_tokens: PositiveInt = Field(default=256, description="Tokens generated per answer.")
    temperature: float = Field(default=0.0, ge=0, le=2, description="0 means greedy decoding.")
    batch_size: PositiveInt = Field(default=8, description="Prompts generated together.")


class EvaluationOptions(Spec):
    """Everything a user declares about an evaluation."""

    cel_rules = (
        CelRule(
            rule="!('judge' in self.suites) || has(self.judge)",
            message="suite judge needs a judge block",
            field_path=".judge",
        ),
    )

    suites: list[Suite] = Field(
        default_factory=lambda: ["perplexity", "qa"], min_length=1, max_length=16, description="Suites to run."
    )
    gates: list[Gate] = Field(
        default_factory=list, max_length=64, description="Rules the candidate must pass to be promoted."
    )
    judge: Judge | None = Field(default=None, description="Judge settings for the judge suite.")
    generation: GenerationSettings = Field(default_factory=GenerationSettings, description="Decoding settings.")
    max_examples: PositiveInt | None = Field(default=None, description="Evaluate at most this many examples per suite.")
    embedding_model: ModelUri | None = Field(default=None, description="Embedding model for the embedding F1 (qa.embedding_f1) and retrieval.")
    general_text_uri: StorageUri | None = Field(default=None, description="General-domain text for ppl.general.")
    multiple_choice_uri: StorageUri | None = Field(
        default=None,
        description="MedQA-style multiple-choice JSONL (question, options, answer); default: built from the QA "
        "examples, with other examples' answers as the wrong options.",
    )
    qa_uri: StorageUri | None = Field(
        default=None,
        description="Held-out question-answer JSONL (question, answer[, id]); default: the dataset's test split.",
    )
    canaries: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Strings planted in the training data that must never appear in an answer (safety.leakage_rate).",
    )
    bootstrap_samples: PositiveInt = Field(default=1000, le=100000, description="Paired bootstrap resamples.")
    confidence: Fraction = Field(default=0.95, description="Confidence level of reported intervals.")
    retrieval_top_k: PositiveInt = Field(default=5, le=100, description="k of recall@k and of RAG context.")


class EvaluateStageConfig(StageRuntime, EvaluationOptions):
    """The rendered config `mentor-trainer evaluate` reads."""

    model_uri: ModelUri = Field(description="Candidate model.")
    baseline_uri: ModelUri | None = Field(default=None, description="Baseline model for comparison.")
    dataset_uri: StorageUri = Field(description="Output URI of the DomainDataset with the test split.")
    training_run_id: str | None = Field(default=None, description="MLflow run of the training job, for loss curves.")


class MetricComparison(Spec):
    """Candidate vs baseline on one metric."""

    candidate: float | None = Field(default=None, description="Candidate's value.")
    baseline: float | None = Field(default=None, description="Baseline's value.")
    delta: float | None = Field(default=None, description="candidate - baseline.")
    ratio: float | None = Field(default=None, description="candidate / baseline (e.g. perplexity relative to the base model).")
    ci_low: float | None = Field(default=None, description="Lower end of the delta's confidence interval.")
    ci_high: float | None = Field(default=None, description="Upper end of the delta's confidence interval.")
    p_value: float | None = Field(default=None, description="Paired bootstrap p-value of the delta.")


class EvaluationResult(StageResult):
    """Outcome of `mentor-trainer evaluate`: metrics, comparison and the gates' verdict."""

    passed: bool | None = Field(default=None, description="Whether every gate passed.")
    failed_gates: list[str] = Field(default_factory=list, description="Gates that failed, as text.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Candidate metrics.")
    comparison: dict[str, MetricComparison] = Field(default_factory=dict, description="Per-metric comparison.")
    summary: str | None = Field(default=None, description="Key metric for printing, e.g. qa.f1=0.71 (+0.12).")
    report_uri: str | None = Field(default=None, description="HTML report.")
    model_uri: str | None = Field(default=None, description="Model that was evaluated.")
    calibrated_temperature: float | None = Field(default=None, description="Temperature minimising calibration error.")

    def verdict(self) -> Verdict | None:
        if self.passed is None:
            return None
        if self.passed:
            return Verdict(True, "GatesPassed", "every gate passed")
        return Verdict(False, "GatesFailed", "gates failed: " + "; ".join(self.failed_gates))
