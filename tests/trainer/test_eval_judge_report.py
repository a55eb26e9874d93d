"""LLM-as-judge against a real OpenAI-compatible server, and the HTML evaluation report.

The judge is the data-synthesis tests' HTTP server (stdlib ``http.server`` on 127.0.0.1 speaking
``POST /v1/chat/completions``) with grading functions that derive verdicts from the prompt. The
report is parsed back with ``html.parser``; the loss curve is read from a real MLflow on SQLite.
"""

from __future__ import annotations

import json
import logging
import re
import time
from html.parser import HTMLParser

import pytest
from pydantic import ValidationError

from mentor_trainer.config.evaluate import Judge
from mentor_trainer.evaluate.judge import JudgeSuite, judge_prompt, parse_verdict
from mentor_trainer.evaluate.report import loss_curve_from_mlflow, render_report
from tests.trainer.test_data_synthesis import TeacherServer, closed_port, url_of

API_KEY = "judge-s3cret-value"
KEY_ENV = "MENTOR_SECRET_JUDGE_TOKEN"
RUBRIC = ["correctness", "terminology", "reasoning"]


def items(n: int = 4) -> list[dict]:
    """Even items answer as the reference does, odd ones do not."""
    return [
        {
            "id": f"q{i}",
            "question": f"What happens in step {i} of black tea processing?",
            "reference": f"Step {i} withers the leaf.",
            "answer": f"Step {i} withers the leaf." if i % 2 == 0 else f"Step {i} roasts the leaf.",
        }
        for i in range(n)
    ]


def block(prompt: str, tag: str) -> str:
    return re.search(rf"<{tag}>\n(.*?)\n</{tag}>", prompt, re.S).group(1)


def verdict_for(prompt: str) -> dict:
    correct = block(prompt, "answer") == block(prompt, "reference")
    return {"correctness": 5 if correct else 1, "terminology": 4, "reasoning": 3, "rationale": "same facts" if correct else "wrong step"}


def fair_judge(prompt: str, body: dict) -> str:
    """Valid verdicts in the shapes real judges use: bare, fenced with prose, after <think>."""
    verdict = json.dumps(verdict_for(prompt))
    style = int(re.search(r"step (\d+)", block(prompt, "question")).group(1)) % 3
    if style == 0:
        return verdict
    if style == 1:
        return f"Here is my grading:\n```json\n{verdict}\n```\nLet me know if you need more."
    return f"<think>The reference says withers.</think>\n{verdict}"


def judge_config(url: str, rubric=RUBRIC, **endpoint) -> Judge:
    return Judge.model_validate({
        "endpoint": {"url": url, "model": "judge-7b", "maxConcurrency": 2, "timeoutSeconds": 5,
                     "apiKeySecret": {"name": "judge", "key": "token"}, **endpoint},
        "rubric": list(rubric),
    })


def test_judge_scores_examples_and_sends_the_key_only_as_bearer(monkeypatch):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    with TeacherServer(fair_judge) as server:
        outcome = JudgeSuite(judge_config(url_of(server))).score(items())

    assert outcome.error is None
    assert outcome.counts == {"scored": 4, "garbage": 0, "failed": 0}
    assert [row["id"] for row in outcome.examples] == ["q0", "q1", "q2", "q3"]
    right, wrong = outcome.examples[0], outcome.examples[1]
    assert (right["correctness"], right["terminology"], right["reasoning"]) == (5, 4, 3)
    assert right["score"] == pytest.approx(0.75) and right["rationale"] == "same facts" and right["error"] is None
    assert wrong["correctness"] == 1 and wrong["score"] == pytest.approx((8 / 3 - 1) / 4)
    assert outcome.metrics == pytest.approx({
        "judge.score": (0.75 + (8 / 3 - 1) / 4) / 2,
        "judge.correctness": 0.5,
        "judge.terminology": 0.75,
        "judge.reasoning": 0.5,
    })
    assert len(server.requests) == 4 and server.max_in_flight <= 2
    for request in server.requests:
        assert request["auth"] == f"Bearer {API_KEY}"
        assert request["body"]["model"] == "judge-7b" and request["body"]["temperature"] == 0
        assert request["body"]["messages"][0]["role"] == "system"
    assert API_KEY not in repr(outcome)


def test_prompt_and_metrics_follow_the_rubric():
    with TeacherServer(fair_judge) as server:
        suite = JudgeSuite(judge_config(url_of(server), rubric=["correctness"]))
        outcome = suite.score(items(2))
        empty = suite.score([])
    # two requests go out at once: find the first item's, whatever order they arrived in
    (prompt,) = [p for r in server.requests if "Step 0 withers the leaf." in (p := r["body"]["messages"][-1]["content"])]
    assert '"correctness": <1-5>' in prompt and "terminology" not in prompt and "reasoning" not in prompt
    assert "Step 0 withers the leaf." in prompt
    assert set(outcome.metrics) == {"judge.score", "judge.correctness"}
    assert outcome.metrics["judge.score"] == pytest.approx(0.5)
    assert outcome.examples[1]["score"] == 0.0 and outcome.examples[1]["terminology"] is None
    assert empty.error is None and empty.metrics == {} and empty.examples == []


def test_mostly_garbage_verdicts_fail_the_suite_without_leaking_the_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, API_KEY)

    def sloppy_judge(prompt: str, body: dict) -> str:
        step = int(re.search(r"step (\d+)", block(prompt, "question")).group(1))
        if step == 0:
            return json.dumps(verdict_for(prompt))
        if step == 1:
            return f"I would give it a solid four out of five. (auth was Bearer {API_KEY})"
        if step == 2:
            return json.dumps({**verdict_for(prompt), "terminology": 7})
        return json.dumps({"correctness": "5", "terminology": 4, "reasoning": 3})

    with TeacherServer(sloppy_judge) as server:
        url = url_of(server)
        outcome = JudgeSuite(judge_config(url)).score(items())

    assert outcome.counts == {"scored": 1, "garbage": 3, "failed": 0}
    assert outcome.error is not None and url in outcome.error and "unusable verdicts for 3 of 4" in outcome.error
    assert outcome.metrics == {}
    assert outcome.examples[1]["error"].startswith("garbage:") and "solid four" in outcome.examples[1]["error"]
    assert API_KEY not in repr(outcome)


def test_a_minority_of_garbage_is_counted_not_fatal():
    def mostly_fair(prompt: str, body: dict) -> str:
        return "no idea" if "step 3" in prompt else fair_judge(prompt, body)

    with TeacherServer(mostly_fair) as server:
        outcome = JudgeSuite(judge_config(url_of(server))).score(items())
    assert outcome.error is None
    assert outcome.counts == {"scored": 3, "garbage": 1, "failed": 0}
    assert outcome.examples[3]["score"] is None
    assert outcome.metrics["judge.correctness"] == pytest.approx(2 / 3)  # q0, q2 right; q1 wrong


def test_a_transient_failure_is_retried_once():
    seen: set[str] = set()

    def flaky_judge(prompt: str, body: dict) -> str:
        question = block(prompt, "question")
        if question not in seen:
            seen.add(question)
            raise ConnectionResetError("dropped")  # the server closes the connection without a reply
        return fair_judge(prompt, body)

    with TeacherServer(flaky_judge) as server:
        outcome = JudgeSuite(judge_config(url_of(server))).score(items())
    assert outcome.error is None and outcome.counts["scored"] == 4
    assert len(server.requests) == 8


def test_slow_judge_times_out_and_fails_the_suite():
    with TeacherServer(fair_judge, delay=2.5) as server:
        url = url_of(server)
        start = time.monotonic()
        outcome = JudgeSuite(judge_config(url, timeoutSeconds=1, maxConcurrency=3)).score(items(6))
        elapsed = time.monotonic() - start
    assert outcome.counts == {"scored": 0, "garbage": 0, "failed": 6}
    assert outcome.error is not None and url in outcome.error and "timeout" in outcome.error
    assert outcome.metrics == {}
    # every request is retried once; after three items time out the rest are not sent
    assert elapsed < 10 and len(server.requests) < 12


def test_closed_port_sets_the_error_and_never_raises(monkeypatch):
    monkeypatch.setenv(KEY_ENV, API_KEY)
    url = f"http://127.0.0.1:{closed_port()}/v1"
    start = time.monotonic()
    outcome = JudgeSuite(judge_config(url)).score(items(20))
    assert time.monotonic() - start < 15
    assert outcome.counts == {"scored": 0, "garbage": 0, "failed": 20}
    assert outcome.error is not None and url in outcome.error and "unreachable" in outcome.error
    assert API_KEY not in repr(outcome)


def test_credentials_in_the_url_are_refused():
    # they would be stored in the clear (spec, ConfigMap) and printed; the key comes from apiKeySecret
    with pytest.raises(ValidationError, match="endpoint.url"):
        judge_config(f"http://judge:pa55word@127.0.0.1:{closed_port()}/v1")


def test_parse_verdict_is_lenient_on_wrapping_and_strict_on_scores():
    rubric = ["correctness", "reasoning"]
    good = {"correctness": 4, "reasoning": 2.5, "rationale": "ok"}
    assert parse_verdict(json.dumps(good), rubric) == {"correctness": 4.0, "reasoning": 2.5, "rationale": "ok"}
    assert parse_verdict("Verdict:\n```json\n" + json.dumps(good) + "\n```\nDone.", rubric)["correctness"] == 4
    assert parse_verdict('I think {"Correctness": 5, "Reasoning": 1} is fair.', rubric) == {
        "correctness": 5.0, "reasoning": 1.0, "rationale": ""
    }
    for bad in (
        "",
        "four out of five",
        json.dumps({"correctness": 4}),
        json.dumps({"correctness": 0, "reasoning": 3}),
        json.dumps({"correctness": 6, "reasoning": 3}),
        json.dumps({"correctness": "4", "reasoning": 3}),
        json.dumps({"correctness": True, "reasoning": 3}),
        json.dumps([4, 3]),
        '{"correctness": NaN, "reasoning": 3}',
    ):
        assert parse_verdict(bad, rubric) is None, bad
    prompt = judge_prompt("Q?", "R.", "A.", rubric)
    assert '{"correctness": <1-5>, "reasoning": <1-5>, "rationale"' in prompt and "terminology" not in prompt


# --------------------------------------------------------------------------------------
# The report


class Page(HTMLParser):
    """Section texts by id, script bodies, and every text node."""

    def __init__(self, document: str) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self.scripts: list[str] = []
        self.texts: list[str] = []
        self._section: str | None = None
        self._in_script = False
        self.feed(document)

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self._section = dict(attrs)["id"]
            self.sections[self._section] = ""
        elif tag == "script":
            self._in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        elif tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
            return
        self.texts.append(data)
        if self._section:
            self.sections[self._section] += data + " "


FAILED_GATE = "qa.f1 >= baseline + 0.05 with p < 0.05 (got 0.61 vs 0.6)"
XSS = "<script>alert('x')</script> what is withering?"


def full_report_data() -> dict:
    return {
        "title": "tea-expert v3",
        "model_uri": "mlflow://models/tea-expert/3",
        "baseline_uri": "hf://Qwen/Qwen2.5-0.5B",
        "created_at": "2025-01-02T03:04:05Z",
        "passed": False,
        "failed_gates": [FAILED_GATE],
        "gates": [FAILED_GATE, "ppl.domain <= 0.8 x baseline"],
        "metrics": {"qa.f1": 0.61, "ppl.domain": 7.5, "judge.score": 0.7},
        "baseline_metrics": {"qa.f1": 0.6, "ppl.domain": 11.0},
        "comparison": {
            "qa.f1": {"candidate": 0.61, "baseline": 0.6, "delta": 0.01, "ciLow": -0.02, "ciHigh": 0.04, "pValue": 0.41},
            "ppl.domain": {"candidate": 7.5, "baseline": 11.0, "delta": -3.5, "ciLow": -4.1, "ciHigh": -2.9, "pValue": 0.001},
        },
        "suite_errors": {"judge": "judge endpoint http://judge:8000/v1 (model j) answered none of 5 requests"},
        "calibration_curve": [
            {"bin_low": 0.4, "bin_high": 0.5, "confidence": 0.45, "accuracy": 0.3, "count": 10},
            {"bin_low": 0.9, "bin_high": 1.0, "confidence": 0.95, "accuracy": 0.8, "count": 40},
        ],
        "calibrated_temperature": 1.37,
        "loss_curve": [
            {"step": 1, "loss": 2.5, "eval_loss": None},
            {"step": 2, "loss": 2.0, "eval_loss": 2.2},
            {"step": 3, "loss": 1.7, "eval_loss": 1.9},
        ],
        "examples": [
            {"question": XSS, "reference": "Wilting the leaf.", "candidate": "Wilting leaves.", "baseline": "Drying.", "f1": 0.5},
            {"question": "No baseline?", "reference": "Yes.", "candidate": "Yes.", "baseline": None, "f1": 1.0},
        ],
    }


def test_report_with_every_part():
    document = render_report(full_report_data())
    page = Page(document)

    assert list(page.sections) == ["verdict", "metrics", "deltas", "calibration", "loss", "errors", "examples"]
    assert "FAILED" in page.sections["verdict"] and FAILED_GATE in page.sections["verdict"]
    assert "ppl.domain <= 0.8 x baseline" in page.sections["verdict"]
    metrics = page.sections["metrics"]
    for value in ("0.61", "-3.5", "[-4.1, -2.9]", "0.001", "0.41", "95% CI", "judge.score", "0.7"):
        assert value in metrics, value
    assert metrics.count("*") == 2  # ppl.domain's mark and the footnote; qa.f1 (p=0.41) is not significant
    assert "1.37" in page.sections["calibration"]
    assert "answered none of 5 requests" in page.sections["errors"]
    assert XSS in page.sections["examples"] and "Wilting leaves." in page.sections["examples"]
    assert "None" not in page.sections["examples"]
    assert "not measured" not in document
    assert "mlflow://models/tea-expert/3" in " ".join(page.texts)

    # three figures, plotly.js inline exactly once, and the question's <script> only as text
    assert len(page.scripts) >= 4
    assert sum(len(script) > 1_000_000 for script in page.scripts) == 1
    assert not any("alert(" in script for script in page.scripts)
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in document
    assert not re.search(r"<script[^>]*\bsrc=", document)  # nothing to fetch: works offline


def test_report_with_minimal_data():
    page = Page(render_report({"title": "bare <run>", "metrics": {"qa.f1": 0.5}, "passed": True}))
    assert "bare <run>" in page.texts
    assert "PASSED" in page.sections["verdict"]
    assert "qa.f1" in page.sections["metrics"] and "n/a" in page.sections["metrics"]
    for key in ("deltas", "calibration", "loss", "examples"):
        assert "not measured" in page.sections[key], key
    assert "Every suite ran." in page.sections["errors"]
    assert page.scripts == []

    empty = Page(render_report({}))
    assert "No gates evaluated" in empty.sections["verdict"] and "not measured" in empty.sections["metrics"]


def test_loss_curve_from_mlflow_on_sqlite(tmp_path, caplog):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("tests/FineTuneJob", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(experiment).info.run_id
    for step, loss in ((10, 2.4), (20, 1.9), (30, 1.5)):
        client.log_metric(run, "loss", loss, step=step)
    client.log_metric(run, "eval_loss", 2.0, step=20)
    client.log_metric(run, "learning_rate", 1e-4, step=20)

    assert loss_curve_from_mlflow(uri, run) == [
        {"step": 10, "loss": 2.4, "eval_loss": None},
        {"step": 20, "loss": 1.9, "eval_loss": 2.0},
        {"step": 30, "loss": 1.5, "eval_loss": None},
    ]
    with caplog.at_level(logging.WARNING, logger="mentor_trainer.evaluate.report"):
        assert loss_curve_from_mlflow(uri, "0" * 32) == []
    assert "no loss curve" in caplog.text
