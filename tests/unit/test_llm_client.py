"""The shared OpenAI-compatible client: reply parsing, failure names, the circuit breaker,
secret handling. Endpoints behind real HTTP servers are exercised by the teacher and judge
tests (tests/trainer/test_data_synthesis.py, test_eval_judge_report.py)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from pydantic import ValidationError

from mentor_trainer.config.common import Endpoint
from mentor_trainer.llm_client import (
    BREAKER_FAILURES,
    ChatClient,
    CircuitBreaker,
    failure_reason,
    json_candidates,
    strip_thinking,
    without_userinfo,
)

REQUEST = httpx.Request("POST", "http://judge:8000/v1/chat/completions")


def first_json(reply: str):
    for candidate in json_candidates(reply):
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return None


def test_json_found_in_fences_prose_and_after_thinking() -> None:
    assert first_json('<think>{"no": 1}</think>\n```json\n[{"a": 1}]\n```') == [{"a": 1}]
    assert first_json('Sure! Here it is: {"score": 4} Hope that helps.') == {"score": 4}
    assert first_json("no json here") is None
    assert strip_thinking("<think>hmm</think>  An answer. ") == "An answer."


def test_failure_reasons() -> None:
    assert failure_reason(openai.APITimeoutError(request=REQUEST)) == "timeout"
    assert failure_reason(openai.APIConnectionError(request=REQUEST)) == "unreachable"
    response = httpx.Response(503, request=REQUEST)
    assert failure_reason(openai.APIStatusError("busy", response=response, body=None)) == "http-error"
    assert failure_reason(ValueError("bad body")) == "invalid"


def test_breaker_opens_only_for_an_endpoint_that_never_answered() -> None:
    unreachable = openai.APIConnectionError(request=REQUEST)
    dead = CircuitBreaker()
    for _ in range(BREAKER_FAILURES):
        assert not dead.open
        dead.record(unreachable)
    assert dead.open and dead.last_error.startswith("APIConnectionError")

    flaky = CircuitBreaker()
    flaky.record()
    for _ in range(BREAKER_FAILURES + 1):
        flaky.record(unreachable)
    assert not flaky.open  # it answered once: failures are counted per request, not fatal

    refusing = CircuitBreaker()
    for _ in range(BREAKER_FAILURES):
        refusing.record(openai.APIStatusError("no", response=httpx.Response(401, request=REQUEST), body=None))
    assert not refusing.open and refusing.answered  # an HTTP error is an answer


def test_key_from_the_secret_env_and_redacted(monkeypatch) -> None:
    endpoint = Endpoint.model_validate(
        {"url": "http://judge:8000/v1", "model": "m", "apiKeySecret": {"name": "judge", "key": "token"}}
    )
    monkeypatch.setenv(endpoint.api_key_secret.env_name, "s3cret")
    client = ChatClient(endpoint)
    assert client.client.api_key == "s3cret"
    assert client.redact("echoed s3cret back") == "echoed *** back"
    # credentials belong in the Secret: a URL carrying them is rejected (and never printed)
    with pytest.raises(ValidationError, match="url"):
        Endpoint.model_validate({"url": "http://user:pw@judge:8000/v1", "model": "m"})
    assert without_userinfo("http://user:pw@judge:8000/v1") == "http://judge:8000/v1"

    anonymous = ChatClient(Endpoint.model_validate({"url": "http://judge:8000/v1", "model": "m"}))
    assert anonymous.client.api_key == "none" and anonymous.redact("text") == "text"
