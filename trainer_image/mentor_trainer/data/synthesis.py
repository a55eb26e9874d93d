"""Synthetic QA, chain-of-thought answers and preference pairs from a teacher model.

The teacher is any OpenAI-compatible chat-completions endpoint (``spec.synthesis.teacher``),
called through :class:`~mentor_trainer.llm_client.ChatClient`. For every chunk it is asked
for ``questionsPerChunk`` question-answer pairs as JSON (with a ``reasoning`` field when
``chainOfThought``). Replies are parsed leniently (code fences, a leading ``<think>`` block,
an object wrapping the list); what still does not parse, and pairs without a question or an
answer, are skipped and counted as ``synthesis-invalid``. Failed requests are counted by
reason (``synthesis-unreachable``, ``synthesis-timeout``, ``synthesis-http-error``). When the
endpoint refuses the first requests and has never answered, the remaining chunks are not sent
(counted as ``synthesis-unreachable``; see :class:`~mentor_trainer.llm_client.CircuitBreaker`).

Preference pairs: the teacher's answer (with the passage) is ``chosen``; a draft — the
teacher asked at a high temperature to answer in one short sentence, without the passage —
is ``rejected``; when the draft fails or equals the answer, a truncated answer is used.
"""

from __future__ import annotations

import json
import logging
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ..llm_client import ChatClient, CircuitBreaker, failure_reason, json_candidates, strip_thinking

log = logging.getLogger(__name__)

ANSWER_TEMPERATURE = 0.7
DRAFT_TEMPERATURE = 1.2
PASSAGE_START = "<<<PASSAGE"
PASSAGE_END = "PASSAGE>>>"

SYSTEM_PROMPT = (
    "You are a domain expert who writes training data for a smaller model. You only use facts stated "
    "in the passage you are given, and you reply with JSON only."
)


def qa_prompt(passage: str, n: int, chain_of_thought: bool) -> str:
    fields = '"question", "reasoning", "answer"' if chain_of_thought else '"question", "answer"'
    reasoning = (
        ' "reasoning" is the step-by-step thinking that leads from the passage to the answer.'
        if chain_of_thought
        else ""
    )
    return (
        f"Write {n} question-answer pair{'s' if n != 1 else ''} that a practitioner might ask and that the passage "
        f"answers. Use the passage's language. Reply with a JSON array of {n} object{'s' if n != 1 else ''} with the keys "
        f"{fields}.{reasoning} The answer must be complete and correct according to the passage.\n\n"
        f"{PASSAGE_START}\n{passage}\n{PASSAGE_END}"
    )


def draft_prompt(question: str) -> str:
    return f"Answer in one short sentence, from memory, without explanation:\n{question}"


# --------------------------------------------------------------------------------------
# Parsing


def parse_pairs(text: str, chain_of_thought: bool) -> tuple[list[dict], int]:
    """(valid pairs, invalid count) from a teacher reply. A reply that is not JSON counts once."""
    data = None
    for candidate in json_candidates(text or ""):
        try:
            data = json.loads(candidate)
            break
        except (json.JSONDecodeError, ValueError):
            continue
    if isinstance(data, dict):
        inner = next((v for k, v in data.items() if isinstance(v, list) and k.lower() in ("pairs", "questions", "qa", "items", "data")), None)
        data = inner if inner is not None else [data]
    if not isinstance(data, list):
        return [], 1
    pairs, invalid = [], 0
    for item in data:
        if not isinstance(item, dict):
            invalid += 1
            continue
        question, answer = item.get("question"), item.get("answer")
        reasoning = item.get("reasoning") or item.get("thinking") or ""
        if not isinstance(question, str) or not isinstance(answer, str) or not question.strip() or not answer.strip():
            invalid += 1
            continue
        if not isinstance(reasoning, str):
            reasoning = ""
        # a teacher that puts its thinking into the answer: move it to the reasoning
        think = re.match(r"\s*<think>(.*?)</think>\s*(.*)", answer, re.S)
        if think:
            reasoning = reasoning or think.group(1)
            answer = think.group(2)
            if not answer.strip():
                invalid += 1
                continue
        pairs.append({"question": question.strip(), "answer": answer.strip(), "reasoning": reasoning.strip() if chain_of_thought else ""})
    return pairs, invalid


def truncated(answer: str) -> str:
    words = answer.split()
    keep = max(1, len(words) // 3)
    return " ".join(words[:keep]) + ("..." if keep < len(words) else "")


# --------------------------------------------------------------------------------------
# The teacher


@dataclass
class ChunkResult:
    chunk: dict
    pairs: list[dict] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    drafts_fallback: int = 0

    def fail(self, reason: str, n: int = 1) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + n


class Synthesizer:
    """Runs the teacher over chunks with bounded concurrency; results come back in chunk order."""

    def __init__(self, options) -> None:
        self.options = options
        self.teacher = ChatClient(options.teacher)
        self.concurrency = options.teacher.max_concurrency
        self.breaker = CircuitBreaker()

    @property
    def stopped(self) -> bool:
        return self.breaker.open

    @property
    def last_error(self) -> str:
        return self.breaker.last_error

    def _one(self, chunk: dict) -> ChunkResult:
        options = self.options
        result = ChunkResult(chunk)
        if self.stopped:
            result.fail("synthesis-unreachable")
            return result
        try:
            prompt = qa_prompt(chunk["text"], options.questions_per_chunk, options.chain_of_thought)
            reply = self.teacher.chat(prompt, ANSWER_TEMPERATURE, system=SYSTEM_PROMPT)
        except Exception as error:  # noqa: BLE001 - counted by reason
            self.breaker.record(error)
            result.fail(f"synthesis-{failure_reason(error)}")
            return result
        self.breaker.record()
        pairs, invalid = parse_pairs(reply, options.chain_of_thought)
        if invalid:
            result.fail("synthesis-invalid", invalid)
        result.pairs = pairs[: options.questions_per_chunk]
        if options.preference_pairs:
            for pair in result.pairs:
                draft = ""
                if not self.stopped:
                    try:
                        draft = strip_thinking(self.teacher.chat(draft_prompt(pair["question"]), DRAFT_TEMPERATURE))
                    except Exception as error:  # noqa: BLE001 - the fallback is a truncated answer
                        log.debug("draft for %r failed: %s", pair["question"][:60], error)
                if not draft or " ".join(draft.split()) == " ".join(pair["answer"].split()):
                    draft = truncated(pair["answer"])
                    result.drafts_fallback += 1
                pair["draft"] = draft
        return result

    def run(self, chunks: Iterable[dict], max_pairs: int | None = None) -> Iterator[ChunkResult]:
        """Results in chunk order; at most ``max_pairs`` pairs in all (later chunks are not sent)."""
        produced = 0
        window = max(1, self.concurrency) * 2
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="teacher") as pool:
            pending: deque = deque()
            iterator = iter(chunks)
            exhausted = False
            while True:
                while not exhausted and len(pending) < window and (max_pairs is None or produced < max_pairs):
                    try:
                        chunk = next(iterator)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.append(pool.submit(self._one, chunk))
                if not pending:
                    break
                result = pending.popleft().result()
                if max_pairs is not None:
                    room = max(0, max_pairs - produced)
                    result.pairs = result.pairs[:room]
                produced += len(result.pairs)
                yield result
                if max_pairs is not None and produced >= max_pairs:
                    for future in pending:
                        future.cancel()
                    # finish the in-flight requests without using their answers
                    for future in pending:
                        if not future.cancelled():
                            future.result()
                    return
