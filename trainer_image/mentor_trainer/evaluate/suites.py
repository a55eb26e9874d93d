"""The evaluation suites, run the same way for the candidate and the baseline.

Each suite gives metrics, per-example values (``paired``: metric -> {example id: value}, which
the comparison bootstraps) and rows for examples.parquet. A suite whose input is missing or
whose judge is down fails alone with an error; the other suites still run. Answers are
generated once per model and shared by the suites that read them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import StageError
from . import metrics as m
from .calibration import expected_calibration_error, fit_temperature, reliability_curve, softmax_confidences
from .eval_data import EvalData, QAItem
from .perturb import PERTURBATIONS, RED_TEAM_PROMPTS, is_refusal, leaks, perturb
from .text import extract_answer, is_well_formed

log = logging.getLogger(__name__)

F1_CORRECT = 0.5  # a QA answer counts as correct (robustness accuracy) at token F1 >= this


@dataclass
class SuiteResult:
    metrics: dict[str, float] = field(default_factory=dict)
    paired: dict[str, dict[str, float]] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class SuiteRunner:
    """Runs the configured suites for one model; ``shared`` holds what does not depend on it
    (the retriever, the embedding F1's encoder, the judge), built once for both models."""

    def __init__(self, config, data: EvalData, shared: "Shared", lm, report: Callable[[str], None] = lambda suite: None):
        self.config = config
        self.data = data
        self.shared = shared
        self.lm = lm
        self.report = report
        self._answers: dict[str, list[str]] = {}
        self._choice_scores: SuiteResult | None = None

    def run(self) -> dict[str, SuiteResult]:
        results = {}
        for suite in self.config.suites:
            self.report(suite)
            try:
                results[suite] = SUITES[suite](self)
            except StageError as error:  # the suite's input is missing or unusable
                log.warning("suite %s failed: %s", suite, error)
                results[suite] = SuiteResult(error=str(error))
        return results

    # ------------------------------------------------------------------ shared work

    def answers(self, key: str, prompts: list[list[dict]]) -> list[str]:
        """Raw generations (with any reasoning block), cached by ``key``."""
        if key not in self._answers:
            g = self.config.generation
            self._answers[key] = self.lm.generate(prompts, max_new_tokens=g.max_new_tokens, temperature=g.temperature)
        return self._answers[key]

    def qa_answers(self) -> list[str]:
        return self.answers("qa", [item.prompt() for item in self.require_qa()])

    def require_qa(self) -> list[QAItem]:
        if not self.data.qa:
            raise StageError("no QA examples: the dataset's test split has no chat examples and no qaUri was given")
        return self.data.qa

    def choice_scores(self) -> SuiteResult:
        """Option log-likelihoods of every multiple-choice item (shared by two suites)."""
        if self._choice_scores is None:
            items = self.data.choices
            if not items:
                raise StageError("no multiple-choice items: give multipleChoiceUri, or at least 4 QA examples to build them from")
            # length-normalised: a long option must not lose for being long
            logits = self.lm.option_logprobs([i.prompt() for i in items], [i.options for i in items], normalize=True)
            self._choice_scores = SuiteResult(extra={"logits": logits, "labels": [i.answer for i in items]})
        return self._choice_scores


@dataclass
class Shared:
    retriever: Any = None
    retriever_error: str = "the dataset has no retrieval index (spec.index of the DomainDataset)"
    embedding_f1: Any = None
    judge: Any = None
    _retrieved: tuple | None = field(default=None, repr=False)

    def retrieved(self, items: list[QAItem], k: int) -> tuple[list[list[dict]], dict[str, float]]:
        """Top-k chunks per question and recall@k of the chunk holding the evidence (or the
        answer); model-independent, so searched once for candidate and baseline."""
        if self._retrieved is None:
            chunks = [_squash(c["text"]) for c in self.retriever.chunks]
            hits = [self.retriever.search(i.question, k=k) for i in items]
            recall: dict[str, float] = {}
            for item, found in zip(items, hits):
                needle = _squash(item.evidence or item.reference)
                if any(needle in text for text in chunks):  # items without a gold chunk are not scored
                    recall[item.id] = float(any(needle in _squash(c["text"]) for c in found))
            self._retrieved = (hits, recall)
        return self._retrieved


# ---------------------------------------------------------------------- suites


def perplexity_suite(run: SuiteRunner) -> SuiteResult:
    result = SuiteResult()
    for name, texts in (("domain", run.data.domain_texts), ("general", run.data.general_texts)):
        if not texts:
            continue
        scored = run.lm.token_nll([t for _, t in texts])
        nll = {i: s[0] for (i, _), s in zip(texts, scored)}
        tokens = {i: s[1] for (i, _), s in zip(texts, scored)}
        total = sum(tokens.values())
        result.metrics[f"ppl.{name}"] = math.exp(sum(nll.values()) / total) if total else math.nan
        result.extra[f"ppl.{name}"] = {"nll": nll, "tokens": tokens}
    if "ppl.domain" not in result.metrics:
        raise StageError("no domain text: the dataset's test split has no pretrain chunks (add pretrain to spec.formats)")
    return result


def qa_suite(run: SuiteRunner) -> SuiteResult:
    items = run.require_qa()
    raw = run.qa_answers()
    answers = [extract_answer(a) for a in raw]
    scores: dict[str, list[float]] = {
        "qa.exact_match": [m.exact_match(a, i.reference) for a, i in zip(answers, items)],
        "qa.f1": [m.token_f1(a, i.reference) for a, i in zip(answers, items)],
        "qa.rouge_l": [m.rouge_l(a, i.reference) for a, i in zip(answers, items)],
        "qa.bleu": [m.bleu(a, i.reference) for a, i in zip(answers, items)],
    }
    if run.shared.embedding_f1 is not None:
        scores["qa.embedding_f1"] = run.shared.embedding_f1.score(answers, [i.reference for i in items])
    result = _scored(items, scores)
    _add_fact(result, "qa.fact", items, answers)
    result.rows = [
        {"suite": "qa", "id": i.id, "question": i.question, "reference": i.reference, "answer": a, "raw": r,
         **{k: v[n] for k, v in scores.items()}}
        for n, (i, a, r) in enumerate(zip(items, answers, raw))
    ]
    return result


def multiple_choice_suite(run: SuiteRunner) -> SuiteResult:
    scores = run.choice_scores().extra
    items = run.data.choices
    # an item the model scored NaN/inf (broken weights) is not a wrong answer: NaN, so the metric is too
    correct = [float(int(np.argmax(lg)) == label) if np.all(np.isfinite(lg)) else math.nan
               for lg, label in zip(scores["logits"], scores["labels"])]
    result = _scored(items, {"mc.accuracy": correct})
    result.extra["builtFromQa"] = run.data.choices_built_from_qa
    result.rows = [{"suite": "multiple-choice", "id": i.id, "question": i.question, "correct": c} for i, c in zip(items, correct)]
    return result


def calibration_suite(run: SuiteRunner) -> SuiteResult:
    """Confidence = softmax over the options' mean token log-probs; the temperature that
    minimises the NLL of the right option is what serving can apply (Guo et al. 2017)."""
    scores = run.choice_scores().extra
    # option scores that are NaN/inf (broken weights) would fit a meaningless temperature
    scored = [(lg, y) for lg, y in zip(scores["logits"], scores["labels"]) if np.all(np.isfinite(lg))]
    if not scored:
        raise StageError("no multiple-choice item has finite option scores: the model's outputs are NaN or infinite")
    k = {len(lg) for lg, _ in scored}
    if len(k) != 1:  # temperature scaling needs one option count; keep the common one
        common = max(k, key=lambda n: sum(len(lg) == n for lg, _ in scored))
        pairs = [(lg, y) for lg, y in scored if len(lg) == common]
    else:
        pairs = scored
    logits = np.array([lg for lg, _ in pairs], dtype=float)
    labels = np.array([y for _, y in pairs], dtype=int)
    confidence = softmax_confidences(logits, 1.0)
    correct = logits.argmax(axis=1) == labels
    temperature = fit_temperature(logits, labels)
    calibrated = softmax_confidences(logits, temperature)
    result = SuiteResult(
        metrics={
            "calibration.ece": expected_calibration_error(confidence, correct),
            "calibration.temperature": temperature,
        },
        extra={
            "eceAfterScaling": expected_calibration_error(calibrated, correct),
            "curve": reliability_curve(confidence, correct),
            "curveAfterScaling": reliability_curve(calibrated, correct),
        },
    )
    return result


def reasoning_format_suite(run: SuiteRunner) -> SuiteResult:
    items = run.require_qa()
    formed = [float(is_well_formed(a)) for a in run.qa_answers()]
    return _scored(items, {"reasoning.format_rate": formed})


def robustness_suite(run: SuiteRunner) -> SuiteResult:
    """Accuracy (F1 >= 0.5) on perturbed questions over accuracy on the clean ones."""
    items = run.require_qa()
    clean = [m.token_f1(extract_answer(a), i.reference) >= F1_CORRECT for a, i in zip(run.qa_answers(), items)]
    perturbed: list[list[bool]] = [[] for _ in items]
    rows = []
    for kind in PERTURBATIONS:
        prompts = [[{"role": "user", "content": perturb(i.question, kind, seed=n)}] for n, i in enumerate(items)]
        for n, (i, raw) in enumerate(zip(items, run.answers(f"robustness-{kind}", prompts))):
            ok = m.token_f1(extract_answer(raw), i.reference) >= F1_CORRECT
            perturbed[n].append(ok)
            rows.append({"suite": "robustness", "id": i.id, "perturbation": kind, "question": prompts[n][0]["content"], "correct": ok})
    clean_accuracy = float(np.mean(clean))
    perturbed_accuracy = float(np.mean([np.mean(p) for p in perturbed]))
    relative = perturbed_accuracy / clean_accuracy if clean_accuracy else math.nan
    result = SuiteResult(
        metrics={"robustness.relative_accuracy": relative},
        extra={"cleanAccuracy": clean_accuracy, "perturbedAccuracy": perturbed_accuracy},
        rows=rows,
    )
    if not clean_accuracy:
        result.extra["note"] = "no clean question answered correctly: relative accuracy is undefined"
    return result


def safety_suite(run: SuiteRunner) -> SuiteResult:
    prompts = [[{"role": "user", "content": p}] for p in RED_TEAM_PROMPTS]
    red_team = run.answers("red-team", prompts)
    refused = [float(is_refusal(extract_answer(a))) for a in red_team]
    ids = [f"red-team-{n}" for n in range(len(prompts))]
    result = SuiteResult(
        metrics={"safety.refusal_rate": float(np.mean(refused))},
        paired={"safety.refusal_rate": dict(zip(ids, refused))},
        rows=[{"suite": "safety", "id": i, "question": p[0]["content"], "answer": a, "refused": bool(r)}
              for i, p, a, r in zip(ids, prompts, red_team, refused)],
    )
    if run.config.canaries:
        outputs = list(zip(ids, red_team))
        if run.data.qa:
            outputs += [(i.id, a) for i, a in zip(run.data.qa, run.qa_answers())]
        leaked = {i: float(leaks(a, run.config.canaries)) for i, a in outputs}
        result.metrics["safety.leakage_rate"] = float(np.mean(list(leaked.values())))
        result.paired["safety.leakage_rate"] = leaked
    else:
        result.extra["note"] = "no canaries configured: leakage not measured"
    return result


def retrieval_suite(run: SuiteRunner) -> SuiteResult:
    """recall@k of the chunk holding the evidence (or the answer), and QA F1 with the top-k
    chunks as context minus F1 without."""
    if run.shared.retriever is None:
        raise StageError(run.shared.retriever_error)
    items = run.require_qa()
    hits, recall = run.shared.retrieved(items, run.config.retrieval_top_k)
    rag_prompts = [i.prompt([c["text"] for c in found]) for i, found in zip(items, hits)]
    with_context = [extract_answer(a) for a in run.answers("rag", rag_prompts)]
    without = [extract_answer(a) for a in run.qa_answers()]
    scores = {
        "retrieval.rag_exact_match": [m.exact_match(w, i.reference) for w, i in zip(with_context, items)],
        "retrieval.rag_f1": [m.token_f1(w, i.reference) for w, i in zip(with_context, items)],
    }
    result = _scored(items, scores)
    _add_fact(result, "retrieval.rag_fact", items, with_context)
    gain = {i.id: f - m.token_f1(o, i.reference) for i, f, o in zip(items, scores["retrieval.rag_f1"], without)}
    result.metrics["retrieval.rag_f1_gain"] = float(np.mean(list(gain.values())))
    result.paired["retrieval.rag_f1_gain"] = gain
    result.extra["scoredForRecall"] = len(recall)
    result.rows = [
        {"suite": "retrieval", "id": i.id, "question": i.question, "answer": w, "f1_gain": gain[i.id],
         "chunks": [c["chunk_id"] for c in found]}
        for i, w, found in zip(items, with_context, hits)
    ]
    if recall:
        result.metrics["retrieval.recall_at_k"] = float(np.mean(list(recall.values())))
        result.paired["retrieval.recall_at_k"] = recall
    return result


def judge_suite(run: SuiteRunner) -> SuiteResult:
    items = run.require_qa()
    answers = [extract_answer(a) for a in run.qa_answers()]
    outcome = run.shared.judge.score(
        [{"id": i.id, "question": i.question, "reference": i.reference, "answer": a} for i, a in zip(items, answers)]
    )
    if outcome.error:
        return SuiteResult(error=outcome.error, extra={"counts": outcome.counts})
    from .judge import scaled

    paired: dict[str, dict[str, float]] = {}
    for row in outcome.examples:
        if row.get("error") or row.get("score") is None:
            continue
        paired.setdefault("judge.score", {})[row["id"]] = row["score"]
        for criterion in run.config.judge.rubric:  # raw 1..5 per example; the metrics are 0..1
            paired.setdefault(f"judge.{criterion}", {})[row["id"]] = scaled(row[criterion])
    return SuiteResult(
        metrics=dict(outcome.metrics),
        paired=paired,
        rows=[{"suite": "judge", **row} for row in outcome.examples],
        extra={"counts": outcome.counts},
    )


SUITES: dict[str, Callable[[SuiteRunner], SuiteResult]] = {
    "perplexity": perplexity_suite,
    "qa": qa_suite,
    "multiple-choice": multiple_choice_suite,
    "judge": judge_suite,
    "reasoning-format": reasoning_format_suite,
    "calibration": calibration_suite,
    "robustness": robustness_suite,
    "safety": safety_suite,
    "retrieval": retrieval_suite,
}


def _scored(items, scores: dict[str, list[float]]) -> SuiteResult:
    ids = [i.id for i in items]
    return SuiteResult(
        metrics={k: float(np.mean(v)) for k, v in scores.items()},
        paired={k: dict(zip(ids, map(float, v))) for k, v in scores.items()},
    )


def _add_fact(result: SuiteResult, metric: str, items: list[QAItem], answers: list[str]) -> None:
    """Whether each answer states its item's key fact; only items that name one are scored."""
    scored = {i.id: m.contains_fact(a, i.fact) for i, a in zip(items, answers) if i.fact}
    if scored:
        result.metrics[metric] = float(np.mean(list(scored.values())))
        result.paired[metric] = scored


def _squash(text: str) -> str:
    return " ".join(text.lower().split())
