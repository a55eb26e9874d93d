"""LLM-as-judge: an OpenAI-compatible model grades answers against reference answers.

Requests go through :class:`~mentor_trainer.llm_client.ChatClient`, as the data stage's
teacher's do: the same per-request timeout, API key from ``SecretKeyRef.env_name`` and one
client retry of a transient failure. The judge must reply with JSON scores 1-5 for each rubric
criterion; replies that do not parse or carry a score outside 1-5 count as garbage, never as a
score.

Endpoint trouble never raises: it sets :attr:`JudgeOutcome.error` (naming the endpoint's URL,
never its key) so the stage fails only the judge suite. As in synthesis, a judge that refuses or
times out on its first requests without ever answering is not sent the rest
(:class:`~mentor_trainer.llm_client.CircuitBreaker`).
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from statistics import fmean
from typing import Literal, Sequence

from ..config.evaluate import Judge
from ..llm_client import ChatClient, CircuitBreaker, failure_reason, json_candidates, without_userinfo

JUDGE_TEMPERATURE = 0.0  # grading should be repeatable
GARBAGE_LIMIT = 0.5  # more than this share of unusable verdicts fails the suite

SYSTEM_PROMPT = (
    "You are a strict examiner of domain experts. You grade an answer against a reference answer "
    "and reply with JSON only."
)

CRITERIA: dict[str, str] = {
    "correctness": "the answer states the same facts as the reference and nothing that contradicts it",
    "terminology": "the answer uses the domain's terms precisely and as the reference does",
    "reasoning": "the answer's explanation is sound and leads to its conclusion",
}

Status = Literal["scored", "garbage", "failed"]


def scaled(score: float) -> float:
    """A 1-5 score on 0..1, so judge metrics share the scale of the other suites."""
    return (score - 1.0) / 4.0


def judge_prompt(question: str, reference: str, answer: str, rubric: Sequence[str]) -> str:
    criteria = "\n".join(f'- "{name}": {CRITERIA[name]}' for name in rubric)
    shape = ", ".join(f'"{name}": <1-5>' for name in rubric)
    return (
        "Grade the answer to the question below against the reference answer. Score each criterion "
        f"from 1 (wrong or missing) to 5 (fully meets it):\n{criteria}\n\n"
        f"<question>\n{question}\n</question>\n\n"
        f"<reference>\n{reference}\n</reference>\n\n"
        f"<answer>\n{answer}\n</answer>\n\n"
        f'Reply with strict JSON and nothing else: {{{shape}, "rationale": "<one or two sentences>"}}'
    )


def _score(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and 1.0 <= value <= 5.0 else None


def parse_verdict(text: str, rubric: Sequence[str]) -> dict | None:
    """{criterion: 1-5 score, ..., "rationale": str} from a judge reply, or None when no JSON
    object in it (fenced, wrapped in prose, after a <think> block) scores every criterion 1-5."""
    for candidate in json_candidates(text or ""):
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        data = {str(key).lower(): value for key, value in data.items()}
        scores = {name: _score(data.get(name)) for name in rubric}
        if all(score is not None for score in scores.values()):
            rationale = data.get("rationale")
            return {**scores, "rationale": rationale if isinstance(rationale, str) else ""}
    return None


@dataclass
class JudgeOutcome:
    """Per-example verdicts, 0..1 metrics over the scored examples, and what went wrong.

    ``metrics`` is empty when ``error`` is set, so no gate can pass on a broken judge's numbers.
    """

    examples: list[dict] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"scored": 0, "garbage": 0, "failed": 0})
    error: str | None = None


class JudgeSuite:
    """Scores answers concurrently (``endpoint.maxConcurrency`` requests in flight)."""

    def __init__(self, judge: Judge) -> None:
        self.rubric = list(judge.rubric)
        self.endpoint = judge.endpoint
        self.client = ChatClient(judge.endpoint)
        self.where = f"judge endpoint {without_userinfo(str(judge.endpoint.url))} (model {judge.endpoint.model})"

    def _one(self, item: dict) -> tuple[Status, dict]:
        row: dict = {"id": item["id"], **dict.fromkeys(CRITERIA), "score": None, "rationale": "", "error": None}
        if self._breaker.open:
            row["error"] = "not sent: the endpoint never answered"
            return "failed", row
        prompt = judge_prompt(item["question"], item["reference"], item["answer"], self.rubric)
        try:
            reply = self.client.chat(prompt, JUDGE_TEMPERATURE, system=SYSTEM_PROMPT)
        except Exception as error:  # noqa: BLE001 - reported per example and in the outcome
            self._breaker.record(error)
            row["error"] = self.client.redact(f"{failure_reason(error)}: {str(error)[:200]}")
            return "failed", row
        self._breaker.record()
        verdict = parse_verdict(reply, self.rubric)
        if verdict is None:
            row["error"] = self.client.redact(f"garbage: no 1-5 score for every one of {self.rubric} in {reply[:200]!r}")
            return "garbage", row
        row.update(verdict)
        row["rationale"] = self.client.redact(verdict["rationale"])
        row["score"] = scaled(fmean(verdict[name] for name in self.rubric))
        return "scored", row

    def score(self, items: list[dict]) -> JudgeOutcome:
        """Grade items (``id``, ``question``, ``reference``, ``answer``); results in item order."""
        self._breaker = CircuitBreaker()  # a fresh one per call
        with ThreadPoolExecutor(max_workers=self.endpoint.max_concurrency, thread_name_prefix="judge") as pool:
            results = list(pool.map(self._one, items))
        outcome = JudgeOutcome(examples=[row for _, row in results])
        for status, _ in results:
            outcome.counts[status] += 1
        scored = [row for status, row in results if status == "scored"]
        verdicts = outcome.counts["scored"] + outcome.counts["garbage"]
        if results and not verdicts:
            first = results[0][1]["error"]  # always sent: the breaker trips only after failures
            outcome.error = f"{self.where} answered none of {len(results)} requests; first failure: {first}"
        elif outcome.counts["garbage"] > GARBAGE_LIMIT * verdicts:
            outcome.error = (
                f"{self.where} returned unusable verdicts for {outcome.counts['garbage']} of {verdicts} answers "
                f"(expected JSON with a 1-5 score for each of {self.rubric})"
            )
        elif scored:
            outcome.metrics["judge.score"] = fmean(row["score"] for row in scored)
            for name in self.rubric:
                outcome.metrics[f"judge.{name}"] = fmean(scaled(row[name]) for row in scored)
        return outcome
