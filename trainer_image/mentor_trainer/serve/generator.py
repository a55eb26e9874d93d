"""The served model and its dynamic batcher.

Batching: requests wait in an asyncio queue; the batch loop takes the first, then collects
more for up to ``batching.max_wait_ms`` (or until ``batching.max_batch_size``) and runs them
as ONE left-padded ``model.generate`` call in a single worker thread, so the event loop keeps
accepting requests (they form the next batch) while a batch generates. Batches are static:
a request that arrives mid-batch waits for the running batch to end (no continuous batching).

Per-request settings inside one batch:

- ``max_new_tokens``: a stopping criterion ends each row at its own limit (``generate`` runs
  to the largest one, finished rows only produce padding);
- temperature: ``generate`` runs greedy for the whole batch and a logits processor samples
  the rows that asked for sampling (softmax at their temperature, one draw, every other logit
  set to -inf), so greedy and sampled requests share a batch and greedy rows are untouched.

Streaming: a per-batch streamer receives each step's tokens (one per row) from inside
``generate`` and hands every row's token to its request's asyncio queue
(``loop.call_soon_threadsafe``); a request's first token is its time to first token, and
streaming and non-streaming requests are the same generation (non-streaming just waits for
the end). Text is detokenised incrementally (the whole sequence decoded, the new suffix sent,
a trailing incomplete UTF-8 character held back), so the streamed pieces concatenate to the
non-streamed text.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from ..config.deploy import ServeStageConfig

log = logging.getLogger(__name__)

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_DONE = object()
MAX_TOKENS_CAP = 8192


class RequestError(ValueError):
    """A request the model cannot take (too long, bad parameter): the client's fault, a 4xx."""


@dataclass
class Generation:
    """One request's generation: what it asked for and, as it runs, what it produced."""

    id: int
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float  # 0 = greedy
    loop: asyncio.AbstractEventLoop
    submitted: float = field(default_factory=time.perf_counter)
    tokens: list[int] = field(default_factory=list)
    first_token_at: float | None = None
    finished_at: float | None = None
    finish_reason: str | None = None  # "stop" (end of sequence) or "length"
    error: BaseException | None = None
    cancelled: bool = False
    batch_size: int | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token_at is None else (self.first_token_at - self.submitted) * 1000.0

    @property
    def latency_ms(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.perf_counter()
        return (end - self.submitted) * 1000.0

    def cancel(self) -> None:
        """The client went away: the row stops at the next step."""
        self.cancelled = True

    # called from the worker thread -------------------------------------------------------

    def _emit(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the loop is closed (shutdown): nobody is listening
            pass


class AnswerFilter:
    """With chain of thought, only the answer after ``</think>`` is returned; a reply without
    one is returned whole. Streaming holds text back until it knows which case it is in, so
    the streamed pieces concatenate to the non-streamed answer."""

    def __init__(self, chain_of_thought: bool):
        self.chain_of_thought = chain_of_thought
        self.released = not chain_of_thought
        self.strip = False  # after </think>: drop whitespace until the answer starts
        self.buffer = ""

    def feed(self, delta: str) -> str:
        if self.released:
            if self.strip:
                delta = delta.lstrip()
                self.strip = not delta
            return delta
        self.buffer += delta
        if THINK_CLOSE in self.buffer:
            self.released, self.strip = True, True
            rest, self.buffer = self.buffer.split(THINK_CLOSE, 1)[1], ""
            return self.feed(rest)
        return ""

    def finish(self) -> str:
        """What is still held back when generation ends (a reply that never closed a think
        block: the whole reply)."""
        if self.released:
            return ""
        rest, self.buffer, self.released = self.buffer, "", True
        return rest

    @staticmethod
    def answer(text: str, chain_of_thought: bool) -> str:
        if chain_of_thought and THINK_CLOSE in text:
            return text.split(THINK_CLOSE, 1)[1].lstrip()
        return text


class Generator:
    """The loaded model, its tokenizer and the batch loop."""

    def __init__(self, model: Any, tokenizer: Any, config: ServeStageConfig, device: str):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.device = device
        self.max_batch_size = config.batching.max_batch_size
        self.max_wait = config.batching.max_wait_ms / 1000.0
        self.chain_of_thought = config.chain_of_thought
        self.default_max_tokens = config.max_new_tokens
        self.context_length = int(
            getattr(model.config, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", 2048) or 2048
        )
        generation_config = getattr(model, "generation_config", None)
        self.default_temperature = default_temperature(config.temperature, generation_config)
        eos = {tokenizer.eos_token_id}
        configured = getattr(generation_config, "eos_token_id", None)
        eos |= set(configured if isinstance(configured, (list, tuple)) else [configured])
        self.eos_ids = sorted(e for e in eos if e is not None)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)
        self._queue: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mentor-generate")
        self._ids = itertools.count(1)
        self._closing = False
        # set by the server: called (in the event loop) after each batch with (size, tokens, seconds)
        self.on_batch: Callable[[int, int, float], None] | None = None

    # ---------------------------------------------------------------- loading

    @classmethod
    def load(cls, config: ServeStageConfig) -> "Generator":
        """Load the served model from ``config.model_uri`` (file://, pvc://, s3://, ...) onto
        CUDA when there is one, else the CPU; a missing or broken model is a StageError."""
        import torch

        from ..models import load_model_and_tokenizer, torch_device

        device = torch_device()
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if device == "cuda" else torch.float32
        loaded = load_model_and_tokenizer(config.model_uri, dtype=dtype, purpose="served model")
        model = loaded.model.to(device).eval()
        tokenizer = loaded.tokenizer
        tokenizer.padding_side = "left"
        log.info("serving %s on %s (%s)", config.model_uri, device, dtype)
        return cls(model, tokenizer, config, device)

    # ---------------------------------------------------------------- prompts

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        """The chat template rendered with the generation prompt (and, with chain of thought,
        an opened ``<think>`` block), as token ids."""
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:  # a base model without a template: the conversation as plain text
            text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant: "
        if self.chain_of_thought and not text.rstrip().endswith(THINK_OPEN):
            text += THINK_OPEN + "\n"
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def text_prompt_ids(self, prompt: str) -> list[int]:
        """A raw completion prompt (no template) as token ids."""
        return self.tokenizer(prompt)["input_ids"]

    def check(self, prompt_ids: list[int], max_tokens: int | None, temperature: float | None) -> tuple[int, float]:
        """The request's max_tokens and temperature with defaults applied, or a RequestError
        that says what is wrong."""
        if not prompt_ids:
            raise RequestError("the prompt is empty")
        max_tokens = self.default_max_tokens if max_tokens is None else max_tokens
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        limit = self.max_tokens_limit
        if max_tokens > limit:
            raise RequestError(f"max_tokens {max_tokens} is above this server's limit of {limit}")
        if len(prompt_ids) + max_tokens > self.context_length:
            raise RequestError(
                f"the prompt has {len(prompt_ids)} tokens; with max_tokens {max_tokens} that exceeds the model's context of "
                f"{self.context_length} tokens (at most {max(self.context_length - max_tokens, 0)} prompt tokens)"
            )
        temperature = self.default_temperature if temperature is None else temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 5:
            raise RequestError(f"temperature must be a number between 0 and 5, got {temperature!r}")
        return max_tokens, float(temperature)

    @property
    def max_tokens_limit(self) -> int:
        """The most tokens one request may ask for: the deployment's maxNewTokens or
        MAX_TOKENS_CAP, whichever is larger, and always less than the context."""
        return max(1, min(self.context_length - 1, max(self.default_max_tokens, MAX_TOKENS_CAP)))

    # ---------------------------------------------------------------- requests

    def submit(self, prompt_ids: list[int], max_tokens: int | None = None, temperature: float | None = None) -> Generation:
        """Queue one generation (call from the event loop); RequestError if it cannot run."""
        if self._closing:
            raise RuntimeError("the server is shutting down")
        max_tokens, temperature = self.check(prompt_ids, max_tokens, temperature)
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._batch_loop(), name="mentor-batcher")
        generation = Generation(next(self._ids), list(prompt_ids), max_tokens, temperature, loop)
        self._queue.put_nowait(generation)
        return generation

    async def token_ids(self, generation: Generation) -> AsyncIterator[int]:
        """The generation's tokens as they come; raises what the batch raised."""
        while True:
            item = await generation.events.get()
            if item is _DONE:
                if generation.error is not None:
                    raise generation.error
                return
            yield item

    async def stream_text(self, generation: Generation) -> AsyncIterator[str]:
        """Text deltas of the answer (chain of thought filtered) as they are generated."""
        answer = AnswerFilter(self.chain_of_thought)
        sent, ids = "", []
        try:
            async for token in self.token_ids(generation):
                ids.append(token)
                text = self.decode(ids)
                if text.endswith("\ufffd") or not text.startswith(sent):
                    continue  # an incomplete character (or a re-segmentation): wait for more
                delta, sent = text[len(sent):], text
                piece = answer.feed(delta)
                if piece:
                    yield piece
            text = self.decode(ids)
            tail = answer.feed(text[len(sent):]) if text.startswith(sent) else ""
            tail += answer.finish()
            if tail:
                yield tail
        finally:
            if generation.finished_at is None:
                generation.cancel()

    async def complete(self, generation: Generation) -> str:
        """The whole answer once generated."""
        try:
            async for _ in self.token_ids(generation):
                pass
        finally:
            if generation.finished_at is None:
                generation.cancel()
        return AnswerFilter.answer(self.decode(generation.tokens), self.chain_of_thought)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # ---------------------------------------------------------------- batching

    async def _batch_loop(self) -> None:
        queue, loop = self._queue, asyncio.get_running_loop()
        while True:
            first = await queue.get()
            batch = [first]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch_size:
                remaining = deadline - loop.time()
                try:
                    batch.append(queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(queue.get(), remaining))
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
            live = [g for g in batch if not g.cancelled]
            for g in batch:
                if g.cancelled:
                    g.finished_at, g.finish_reason = time.perf_counter(), "cancelled"
                    g._emit(_DONE)
            if not live:
                continue
            started = time.perf_counter()
            try:
                await loop.run_in_executor(self._executor, self._generate, live)
            except BaseException as error:  # noqa: BLE001 - every waiting request must hear about it
                log.exception("generation of a batch of %d failed", len(live))
                for g in live:
                    if g.finished_at is None:
                        g.error, g.finished_at = error, time.perf_counter()
                        g._emit(_DONE)
                if isinstance(error, asyncio.CancelledError):
                    raise
                continue
            if self.on_batch is not None:
                try:
                    self.on_batch(len(live), sum(g.completion_tokens for g in live), time.perf_counter() - started)
                except Exception:  # noqa: BLE001 - metrics never fail a request
                    log.exception("batch metrics failed")

    def _generate(self, batch: list[Generation]) -> None:
        """One left-padded batched generate (worker thread)."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        width = max(g.prompt_tokens for g in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, g in enumerate(batch):
            ids[row, width - g.prompt_tokens:] = torch.tensor(g.prompt_ids, dtype=torch.long)
            mask[row, width - g.prompt_tokens:] = 1
            g.batch_size = len(batch)
        config = GenerationConfig(
            max_new_tokens=max(g.max_new_tokens for g in batch),
            do_sample=False,
            temperature=1.0,
            top_k=50,
            top_p=1.0,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids or None,
        )
        streamer = _BatchStreamer(batch, set(self.eos_ids))
        processors = LogitsProcessorList([_RowSampler(batch)]) if any(g.temperature > 0 for g in batch) else None
        with torch.inference_mode():
            self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                generation_config=config,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_RowStop(batch, width)]),
                logits_processor=processors,
            )
        streamer.end()

    def shutdown(self) -> None:
        """After the server stopped: no new requests, the running batch (if any) finishes."""
        self._closing = True
        self._executor.shutdown(wait=True, cancel_futures=True)


def default_temperature(configured: float | None, generation_config: Any) -> float:
    """The serving default: the config's temperature (the deployment's, or the Evaluation's
    calibrated one the operator rendered), else the exported generation config's when it
    samples, else greedy (0)."""
    if configured:
        return float(configured)
    if generation_config is not None and getattr(generation_config, "do_sample", False):
        value = getattr(generation_config, "temperature", None)
        return float(value) if value is not None else 1.0  # as the export reads it (export/card.py)
    return 0.0


class _BatchStreamer:
    """``generate``'s streamer for a whole batch: each step's token of row i goes to
    request i, until the row ends (end of sequence, its max_new_tokens, or cancelled)."""

    def __init__(self, batch: list[Generation], eos: set[int]):
        self.batch = batch
        self.eos = eos
        self.prompt_seen = False
        self.done = [False] * len(batch)

    def put(self, value) -> None:
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        now = time.perf_counter()
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.done[row]:
                continue
            g = self.batch[row]
            if g.cancelled:
                self._finish(row, "cancelled", now)
                continue
            if token in self.eos:
                self._finish(row, "stop", now)
                continue
            if g.first_token_at is None:
                g.first_token_at = now
            g.tokens.append(token)
            g._emit(token)
            if len(g.tokens) >= g.max_new_tokens:
                self._finish(row, "length", now)

    def _finish(self, row: int, reason: str, now: float) -> None:
        self.done[row] = True
        g = self.batch[row]
        g.finish_reason, g.finished_at = reason, now
        g._emit(_DONE)

    def end(self) -> None:
        now = time.perf_counter()
        for row, done in enumerate(self.done):
            if not done:
                self._finish(row, "length", now)


class _RowStop:
    """Per-row stopping: a row is finished at its own max_new_tokens or when cancelled."""

    def __init__(self, batch: list[Generation], prompt_width: int):
        self.batch = batch
        self.start = prompt_width

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        produced = input_ids.shape[1] - self.start
        return torch.tensor(
            [g.cancelled or produced >= g.max_new_tokens for g in self.batch], dtype=torch.bool, device=input_ids.device
        )


class _RowSampler:
    """Samples the rows that asked for a temperature > 0 (the batch itself runs greedy):
    one draw from softmax(logits / T), every other logit set to -inf so argmax picks it."""

    def __init__(self, batch: list[Generation]):
        self.temperatures = [g.temperature for g in batch]

    def __call__(self, input_ids, scores):
        import torch

        for row, temperature in enumerate(self.temperatures):
            if temperature > 0:
                probs = torch.softmax(scores[row].float() / temperature, dim=-1)
                choice = torch.multinomial(probs, 1)
                picked = torch.full_like(scores[row], float("-inf"))
                picked[choice] = 0.0
                scores[row] = picked
        return scores
