"""OpenAI-compatible routes, mounted on the kserve ModelServer's FastAPI app.

These are our own routes, not kserve's OpenAI classes: ``kserve.protocol.rest.openai``
imports vLLM (not installable on CPU-only machines), so the model would not load there. The
routes follow the OpenAI wire format closely enough for the ``openai`` client:

- ``GET /v1/models``;
- ``POST /v1/chat/completions`` and ``POST /v1/completions``, ``stream`` true (server-sent
  events, ending with ``data: [DONE]``) or false, ``usage`` token counts (in the last chunk
  with ``stream_options.include_usage``);
- an extra ``mentor`` object in each response: ``{"retrieved": [{"id", "score", "source"}],
  "rag": "ok" | "unavailable: <reason>" | null}`` (chat requests answer their last user
  message with retrieved passages when RAG is on);
- ``POST /v1/feedback`` ``{"request_id", "rating", "correction"}``: stored beside the payload
  logs; ``request_id`` is the response's ``id`` (or the bare id the payload log records).

Not supported: ``n`` > 1 (a 400), ``logprobs``, ``stop`` sequences, ``top_p`` and tools (ignored;
generation stops at the model's end-of-sequence tokens or ``max_tokens``).

Malformed or oversized requests get a 4xx with an OpenAI-style ``{"error": {"message",
"type", "param", "code"}}`` body; nothing a client sends crashes the server.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .generator import Generation, RequestError
from .service import MentorService, Retrieval

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # 1 MiB of JSON per request
MAX_PROMPTS = 32


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return JSONResponse(
            status_code=self.status,
            content={"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}},
        )


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=5)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = None

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[_TextPart]

    def as_dict(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatBody(_Body):
    messages: list[_Message] = Field(min_length=1, max_length=256)


class CompletionBody(_Body):
    prompt: str | list[str]


# A response's id is this prefix + the request id the payload log records and joins feedback on.
RESPONSE_ID_PREFIXES = {"chat": "chatcmpl-", "completion": "cmpl-"}


def logged_request_id(quoted: str) -> str:
    """The payload log's request id from a response id (or from the bare id itself)."""
    for prefix in RESPONSE_ID_PREFIXES.values():
        if quoted.startswith(prefix):
            return quoted[len(prefix):]
    return quoted


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=256)
    rating: float | None = None
    correction: str | None = Field(default=None, max_length=100_000)


def _validation_message(error: ValidationError) -> tuple[str, str | None]:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or None
    return (f"{where}: {first['msg']}" if where else first["msg"]), where


async def _read(request: Request, model: type[BaseModel]) -> Any:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body of {length} bytes is over the limit of {MAX_BODY_BYTES} bytes", code="request_too_large")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"request body is over the limit of {MAX_BODY_BYTES} bytes", code="request_too_large")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        message, param = _validation_message(error)
        raise ApiError(400, message, param=param, code="invalid_value") from None


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def openai_router(service: MentorService) -> APIRouter:
    """The OpenAI routes over one served model."""
    router = APIRouter()
    name = service.name
    generator = service.generator

    def check_model(body: _Body) -> None:
        if body.model not in (None, "", name):
            raise ApiError(404, f"model {body.model!r} is not served here; this server serves {name!r}", param="model", code="model_not_found")

    def usage(generation: Generation) -> dict:
        return {
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens,
        }

    def submit(prompt_ids: list[int], body: _Body) -> Generation:
        try:
            return generator.submit(prompt_ids, body.limit, body.temperature)
        except RequestError as error:
            raise ApiError(400, str(error), param="max_tokens" if "max_tokens" in str(error) else "messages", code="invalid_value") from None
        except RuntimeError as error:  # shutting down
            raise ApiError(503, str(error), code="unavailable") from None

    def fail(endpoint: str, error: ApiError, prompt: str = "") -> JSONResponse:
        service.finished(endpoint, None, prompt=prompt, status=error.status, error=error.message)
        return error.response()

    @router.get("/v1/models")
    async def models() -> JSONResponse:
        service.metrics.request("models", 200)
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "created": service.started, "owned_by": "mentor"}]})

    @router.get("/v1/models/{model_id}")
    async def model(model_id: str) -> JSONResponse:
        if model_id != name:
            service.metrics.request("models", 404)
            return ApiError(404, f"model {model_id!r} is not served here; this server serves {name!r}", code="model_not_found").response()
        service.metrics.request("models", 200)
        return JSONResponse({"id": name, "object": "model", "created": service.started, "owned_by": "mentor"})

    async def run(
        endpoint: str, kind: str, body: _Body, generation: Generation, prompt: str, retrieval: Retrieval
    ) -> Response:
        request_id = uuid.uuid4().hex
        response_id = RESPONSE_ID_PREFIXES[kind] + request_id
        created = int(time.time())
        mentor = retrieval.as_json()

        if not body.stream:
            try:
                text = await generator.complete(generation)
            except Exception as error:  # noqa: BLE001 - a failed generation is a 500 with its reason
                service.finished(endpoint, generation, prompt=prompt, retrieval=retrieval, status=500, error=str(error), request_id=request_id)
                return ApiError(500, f"generation failed: {type(error).__name__}: {error}", code="generation_failed").response()
            service.finished(endpoint, generation, prompt=prompt, completion=text, retrieval=retrieval, request_id=request_id)
            finish = "length" if generation.finish_reason == "length" else "stop"
            if kind == "chat":
                choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
                obj = "text_completion"
            return JSONResponse(
                {"id": response_id, "object": obj, "created": created, "model": name, "choices": [choice],
                 "usage": usage(generation), "mentor": mentor}
            )

        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(delta: str | None, finish: str | None = None, first: bool = False) -> dict:
            if kind == "chat":
                content: dict = {"role": "assistant", "content": ""} if first else ({"content": delta} if delta is not None else {})
                choice = {"index": 0, "delta": content, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
            return {"id": response_id, "object": obj, "created": created, "model": name, "choices": [choice]}

        async def events() -> AsyncIterator[bytes]:
            pieces: list[str] = []
            status, error_text = 200, None
            try:
                if kind == "chat":
                    yield _sse(chunk(None, first=True) | {"mentor": mentor})
                async for piece in generator.stream_text(generation):
                    pieces.append(piece)
                    yield _sse(chunk(piece))
                finish = "length" if generation.finish_reason == "length" else "stop"
                last = chunk(None, finish)
                last["mentor"] = mentor
                yield _sse(last)
                if body.include_usage:
                    yield _sse({"id": response_id, "object": obj, "created": created, "model": name, "choices": [], "usage": usage(generation)})
            except Exception as error:  # noqa: BLE001 - the stream reports it and ends cleanly
                status, error_text = 500, f"generation failed: {type(error).__name__}: {error}"
                yield _sse({"error": {"message": error_text, "type": "server_error", "param": None, "code": "generation_failed"}})
            finally:
                service.finished(
                    endpoint, generation, prompt=prompt, completion="".join(pieces), retrieval=retrieval,
                    status=status, error=error_text, request_id=request_id,
                )
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"x-request-id": request_id, "cache-control": "no-cache"})

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        try:
            body = await _read(request, ChatBody)
            check_model(body)
            messages = [m.as_dict() for m in body.messages]
            if not any(m["role"] == "user" for m in messages):
                raise ApiError(400, "messages: at least one message must have role 'user'", param="messages", code="invalid_value")
            try:
                prompt_ids, retrieval, question = await service.chat_prompt(messages)
            except Exception as error:  # noqa: BLE001 - e.g. a template that rejects the order of roles
                raise ApiError(400, f"messages: the model's chat template cannot render them: {error}", param="messages", code="invalid_value") from None
            generation = submit(prompt_ids, body)
        except ApiError as error:
            return fail("chat", error)
        return await run("chat", "chat", body, generation, question, retrieval)

    @router.post("/v1/completions")
    async def completions(request: Request) -> Response:
        try:
            body = await _read(request, CompletionBody)
            check_model(body)
            prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
            if len(prompts) != 1:
                raise ApiError(400, f"prompt: give one prompt per request (got {len(prompts)})", param="prompt", code="invalid_value")
            prompt = prompts[0]
            if not prompt:
                raise ApiError(400, "prompt: the prompt is empty", param="prompt", code="invalid_value")
            generation = submit(generator.text_prompt_ids(prompt), body)
        except ApiError as error:
            return fail("completions", error)
        return await run("completions", "completion", body, generation, prompt, Retrieval())

    @router.post("/v1/feedback")
    async def feedback(request: Request) -> Response:
        try:
            body = await _read(request, FeedbackBody)
            if service.payload is None:
                raise ApiError(404, "payload logging is off on this deployment: feedback has nowhere to go", code="logging_disabled")
            try:
                service.payload.feedback(logged_request_id(body.request_id), body.rating, body.correction)
            except ValueError as error:
                raise ApiError(400, str(error), code="invalid_value") from None
        except ApiError as error:
            service.metrics.request("feedback", error.status, reason="bad_request" if error.status == 400 else None)
            return error.response()
        service.metrics.request("feedback", 200)
        return JSONResponse({"request_id": body.request_id, "stored": True})

    return router
