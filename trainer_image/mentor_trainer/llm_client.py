"""The OpenAI-compatible chat client that every stage calling a model over HTTP shares
(the data stage's teacher, the evaluation's judge).

A :class:`ChatClient` talks to an :class:`~mentor_trainer.config.common.Endpoint` with the
``openai`` client: the endpoint's per-request timeout, one client retry of a transient failure
(timeout, dropped connection, 429/5xx) and no silent retries beyond it. The API key comes from
the environment variable ``SecretKeyRef.env_name`` of ``apiKeySecret`` (the operator maps the
Secret's key into it); without a secret no key is sent, and :meth:`ChatClient.redact` keeps the
key out of anything a server could echo it back in.

Callers name a failed request with :func:`failure_reason`, stop sending to an endpoint that has
never answered with a :class:`CircuitBreaker`, and read JSON out of chatty replies (code fences,
a leading ``<think>`` block, prose around it) with :func:`json_candidates`.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Iterator, Literal
from urllib.parse import urlsplit, urlunsplit

from .config.common import Endpoint

MAX_REPLY_TOKENS = 2048
BREAKER_FAILURES = 3  # consecutive connection failures, with no answer yet, that stop the calls

FailureReason = Literal["timeout", "unreachable", "http-error", "invalid"]
CONNECTION_FAILURES: tuple[FailureReason, ...] = ("unreachable", "timeout")

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_THINK = re.compile(r"^\s*<think>.*?</think>", re.S)  # a reasoning model's leading thinking


def strip_thinking(reply: str) -> str:
    """A reply without a reasoning model's leading ``<think>`` block."""
    return _THINK.sub("", reply).strip()


def json_candidates(reply: str) -> Iterator[str]:
    """Substrings of a reply that may parse as JSON, most likely first: fenced blocks, the whole
    reply, then the outermost ``[...]`` and ``{...}``."""
    text = strip_thinking(reply)
    for match in _FENCE.finditer(text):
        yield match.group(1).strip()
    yield text
    for opener, closer in (("[", "]"), ("{", "}")):
        start, end = text.find(opener), text.rfind(closer)
        if 0 <= start < end:
            yield text[start : end + 1]


def failure_reason(error: Exception) -> FailureReason:
    """What went wrong with a request, as callers count and report it."""
    import openai

    if isinstance(error, openai.APITimeoutError):
        return "timeout"
    if isinstance(error, openai.APIConnectionError):
        return "unreachable"
    if isinstance(error, openai.APIStatusError):
        return "http-error"
    return "invalid"  # a reply the client could not even decode


def without_userinfo(url: str) -> str:
    """A URL fit for messages: credentials in it (``user:pass@host``) are dropped."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class ChatClient:
    """Chat completions from one endpoint; safe to call from several threads."""

    def __init__(self, endpoint: Endpoint) -> None:
        from openai import OpenAI

        self.url = str(endpoint.url)
        self.model = endpoint.model
        secret = endpoint.api_key_secret
        self._key = os.environ.get(secret.env_name) if secret is not None else None
        self.client = OpenAI(
            base_url=self.url, api_key=self._key or "none", timeout=float(endpoint.timeout_seconds), max_retries=1
        )

    def chat(self, prompt: str, temperature: float, system: str | None = None) -> str:
        """The reply's text ("" when there is none); raises the ``openai`` client's errors."""
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        response = self.client.chat.completions.create(
            model=self.model, messages=messages, temperature=temperature, max_tokens=MAX_REPLY_TOKENS
        )
        if not response.choices:
            return ""
        return response.choices[0].message.content or ""

    def redact(self, text: str) -> str:
        """Error text and replies come from the server, which could echo the key back."""
        return text.replace(self._key, "***") if self._key else text


class CircuitBreaker:
    """Stops requests to an endpoint that has never answered, so a dead endpoint costs seconds,
    not one timeout per request: after ``BREAKER_FAILURES`` consecutive connection failures
    (unreachable, timeout) with no answer yet, :attr:`open` turns true for good. An HTTP error
    is an answer. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.answered = False
        self.connection_failures = 0
        self.open = False
        self.last_error = ""  # the latest connection failure, for the stage's report

    def record(self, error: Exception | None = None) -> None:
        """After each request: ``None`` when it was answered, else the exception it raised."""
        with self._lock:
            if error is None or failure_reason(error) not in CONNECTION_FAILURES:
                self.answered = True
                self.connection_failures = 0
                return
            self.connection_failures += 1
            self.last_error = f"{type(error).__name__}: {str(error)[:200]}"
            if not self.answered and self.connection_failures >= BREAKER_FAILURES:
                self.open = True
