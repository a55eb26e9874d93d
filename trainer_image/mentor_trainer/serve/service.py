"""What every endpoint shares: retrieval, the generator, payload logs, metrics, counts."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..config.deploy import ServeStageConfig
from ..prompts import question_messages, rag_messages
from .generator import Generation, Generator
from .metrics import ServeMetrics

log = logging.getLogger(__name__)


@dataclass
class Retrieval:
    """What retrieval gave one request: passages (best first) and its status line."""

    passages: list[Any] = field(default_factory=list)
    status: str | None = None  # "ok", "unavailable: <reason>", None when RAG is off

    def as_json(self) -> dict:
        return {
            "retrieved": [{"id": p.id, "score": float(p.score), "source": p.source} for p in self.passages],
            "rag": self.status,
        }


class MentorService:
    def __init__(self, config: ServeStageConfig, generator: Generator, metrics: ServeMetrics, rag: Any = None, payload: Any = None):
        self.config = config
        self.name = config.run.name
        self.model_version = config.model_version
        self.generator = generator
        self.metrics = metrics
        self.rag = rag
        self.payload = payload
        self.served = 0
        self.failed = 0
        self.tokens = 0
        self.started = int(time.time())
        # metric label -> the path written into payload records
        self.endpoint_paths = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "v2": f"/v2/models/{self.name}/infer"}
        generator.on_batch = metrics.batch
        if rag is not None:
            metrics.rag_available.labels(model=self.name).set(1 if rag.available else 0)

    # ------------------------------------------------------------- retrieval

    @property
    def rag_status(self) -> str | None:
        if self.rag is None:
            return None
        return "ok" if self.rag.available else f"unavailable: {self.rag.reason}"

    async def retrieve(self, question: str) -> Retrieval:
        """Passages for a question (in a thread: retrieval may embed and re-rank); a failing
        retrieval answers without context and says why."""
        if self.rag is None:
            return Retrieval()
        if not self.rag.available:
            return Retrieval([], self.rag_status)
        try:
            passages = await asyncio.get_running_loop().run_in_executor(None, self.rag.retrieve, question)
        except Exception as error:  # noqa: BLE001 - retrieval never fails the answer
            log.warning("retrieval failed: %s", error)
            return Retrieval([], f"unavailable: retrieval failed ({type(error).__name__})")
        return Retrieval(list(passages), "ok")

    async def chat_prompt(self, messages: list[dict]) -> tuple[list[int], Retrieval, str]:
        """Token ids for a chat request: with RAG on, the last user message is answered with
        retrieved passages in the shared RAG prompt (``prompts.rag_messages``)."""
        retrieval = Retrieval()
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        if self.rag is not None and question:
            retrieval = await self.retrieve(question)
            if retrieval.passages:
                last = max(i for i, m in enumerate(messages) if m["role"] == "user")
                rendered = rag_messages(question, [p.text for p in retrieval.passages])
                messages = messages[:last] + rendered + messages[last + 1:]
        return self.generator.chat_prompt_ids(messages), retrieval, question

    def question_prompt(self, text: str) -> list[int]:
        """A v2 ``text_input`` row: one user question through the chat template (as the Triton
        repository's model does), no retrieval."""
        return self.generator.chat_prompt_ids(question_messages(text))

    # ------------------------------------------------------------- accounting

    def finished(
        self,
        endpoint: str,
        generation: Generation | None,
        *,
        prompt: str,
        completion: str = "",
        retrieval: Retrieval | None = None,
        status: int = 200,
        error: str | None = None,
        request_id: str | None = None,
    ) -> str:
        """Count a finished generation request, observe its metrics, log its payload; returns
        its request id."""
        request_id = request_id or uuid.uuid4().hex
        self.metrics.request(endpoint, status, reason=None if status < 400 else _reason(status))
        if status < 400:
            self.served += 1
        else:
            self.failed += 1
        if generation is not None:
            self.tokens += generation.completion_tokens
            self.metrics.generation(
                endpoint,
                latency_s=generation.latency_ms / 1000.0,
                ttft_s=None if generation.ttft_ms is None else generation.ttft_ms / 1000.0,
                prompt_tokens=generation.prompt_tokens,
                completion_tokens=generation.completion_tokens,
            )
        if self.payload is not None:
            self._log(endpoint, generation, prompt, completion, retrieval, status, error, request_id)
        return request_id

    def _log(self, endpoint, generation, prompt, completion, retrieval, status, error, request_id) -> None:
        try:
            from .payload_log import PayloadRecord

            passages = retrieval.passages if retrieval is not None else []
            self.payload.log(
                PayloadRecord(
                    request_id=request_id,
                    endpoint=self.endpoint_paths.get(endpoint, endpoint),
                    prompt=prompt,
                    completion=completion,
                    retrieved_ids=[p.id for p in passages],
                    retrieval_scores=[float(p.score) for p in passages],
                    latency_ms=generation.latency_ms if generation is not None else 0.0,
                    ttft_ms=generation.ttft_ms if generation is not None else None,
                    prompt_tokens=generation.prompt_tokens if generation is not None else 0,
                    completion_tokens=generation.completion_tokens if generation is not None else 0,
                    model_version=self.model_version,
                    status="ok" if status < 400 else "error",
                    error=error,
                )
            )
        except Exception:  # noqa: BLE001 - logging never fails a request
            log.exception("payload logging failed")

    def payload_counts(self) -> tuple[int, int]:
        if self.payload is None:
            return 0, 0
        return int(self.payload.written), int(self.payload.dropped)


def _reason(status: int) -> str:
    return {400: "bad_request", 404: "not_found", 413: "too_large", 503: "unavailable"}.get(
        status, "client" if status < 500 else "server"
    )
