"""The reward terms of GRPO and PPO (spec.rewardFunctions, and spec.rewardModel), as TRL's
GRPOTrainer calls them: ``f(prompts, completions, **columns) -> list[float | None]``, one value
per completion, None where a term does not apply (TRL leaves it out of that term's mean).

Each function's ``__name__`` is its term's name, so TRL logs ``rewards/<name>/mean`` per term;
the total is TRL's weighted sum (``reward_weights``). Every term is checked: a term that raises,
returns the wrong number of values or a NaN/inf is a StageError naming it, never a silent 0
that would train the policy on a broken signal.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from ...config.rlhf import RewardFunction
from ...errors import StageError
from ...evaluate.metrics import contains_fact, exact_match, token_f1
from ...evaluate.text import THINK_CLOSE, THINK_OPEN, extract_answer, is_well_formed
from .context import RlhfRun
from .scoring import load_scorer

RewardFn = Callable[..., list]
MATCHES = ("exact", "numeric", "f1")
SCORING_BATCH = 8  # texts per reward-model forward pass
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")


@dataclass
class RewardTerm:
    name: str  # unique; TRL's metric name rewards/<name>/mean
    label: str  # the spec field, for errors: "spec.rewardFunctions[0] format"
    weight: float
    function: RewardFn  # checked (see :func:`checked`)
    description: str  # for the model card


def text_of(message: Any) -> str:
    """A completion's (or prompt's) text: TRL passes conversational ones as message lists."""
    if isinstance(message, list):
        return "".join(m.get("content") or "" for m in message)
    return message or ""


def question_of(prompt: Any) -> str:
    if isinstance(prompt, list):
        users = [m.get("content") or "" for m in prompt if m.get("role") == "user"]
        return users[-1] if users else text_of(prompt)
    return prompt or ""


def prefilled_opening(tokenizer, chat_template_kwargs: dict) -> str:
    """What the chat template's generation prompt already opened of a reasoning block
    (DeepSeek-R1 templates end it with ``<think>\\n``): the completion continues inside it."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "?"}], tokenize=False, add_generation_prompt=True, **chat_template_kwargs
    )
    opened = rendered.rfind(THINK_OPEN)
    return rendered[opened:] if opened > rendered.rfind(THINK_CLOSE) else ""


# --------------------------------------------------------------------------------------
# The terms (plain functions of text, so they are tested without a trainer)


def format_score(completion: str, prefill: str = "") -> float:
    """1.0 for one non-empty ``<think>...</think>`` block opening the reply, then a non-empty
    answer; the template's pre-filled opening counts as part of the completion."""
    text = prefill + completion
    return float(text.lstrip().startswith(THINK_OPEN) and is_well_formed(text))


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def accuracy_score(completion: str, reference: str | None, match: str) -> float | None:
    """The final answer (after ``</think>``, without an "Answer:" label) against the reference;
    None without a reference (numeric: without a number in it)."""
    if reference is None or not reference.strip():
        return None
    answer = extract_answer(completion)
    if match == "exact":
        return exact_match(answer, reference)
    if match == "f1":
        return token_f1(answer, reference)
    expected = last_number(reference)
    if expected is None:
        return None
    got = last_number(answer)
    return float(got is not None and math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9))


def length_score(tokens: int, target: int) -> float:
    """1.0 at ``target`` tokens, falling linearly to 0 at 0 and 2 x target tokens."""
    return max(0.0, 1.0 - abs(tokens - target) / target)


def keywords_score(completion: str, keywords: list[str]) -> float:
    """Share of the keywords the completion contains as whole words (case- and
    punctuation-insensitive; "a|b" alternatives as in the evaluation's facts)."""
    return sum(contains_fact(completion, keyword) for keyword in keywords) / len(keywords)


# --------------------------------------------------------------------------------------
# Building the terms from the spec


def _param(spec: RewardFunction, label: str, key: str, default: str | None = None) -> str:
    value = spec.params.get(key, default)
    if value is None or not value.strip():
        raise StageError(f"{label} needs params.{key}")
    return value.strip()


def _format_term(spec, label, run, prefill: str) -> tuple[RewardFn, str]:
    def score(prompts, completions, **_):
        return [format_score(text_of(c), prefill) for c in completions]

    return score, "a <think>...</think> block then an answer"


def _accuracy_term(spec, label, run, prefill: str) -> tuple[RewardFn, str]:
    match = _param(spec, label, "match", "f1")
    if match not in MATCHES:
        raise StageError(f"{label} params.match is {match!r}: use one of {', '.join(MATCHES)}")

    def score(prompts, completions, answer=None, **_):
        references = answer or [None] * len(completions)
        return [accuracy_score(text_of(c), ref, match) for c, ref in zip(completions, references)]

    return score, f"the final answer against the reference ({match})"


def _length_term(spec, label, run, prefill: str) -> tuple[RewardFn, str]:
    raw = _param(spec, label, "targetTokens")
    if not raw.isdigit() or int(raw) < 1:
        raise StageError(f"{label} params.targetTokens is {raw!r}: use a positive whole number of tokens")
    target, tokenizer = int(raw), run.tokenizer

    def score(prompts, completions, **_):
        counts = [len(tokenizer(text_of(c), add_special_tokens=False)["input_ids"]) for c in completions]
        return [length_score(n, target) for n in counts]

    return score, f"near {target} tokens"


def _keywords_term(spec, label, run, prefill: str) -> tuple[RewardFn, str]:
    keywords = [k.strip() for k in _param(spec, label, "keywords").split(",") if k.strip()]
    if not keywords:
        raise StageError(f"{label} params.keywords names no keyword: use a comma-separated list")

    def score(prompts, completions, **_):
        return [keywords_score(text_of(c), keywords) for c in completions]

    return score, f"mentions {', '.join(keywords)}"


def _judge_term(spec, label, run, prefill: str) -> tuple[RewardFn, str]:
    from ...evaluate.judge import JUDGE_TEMPERATURE, SYSTEM_PROMPT, parse_verdict, scaled
    from ...llm_client import ChatClient, failure_reason, without_userinfo

    endpoint = spec.judge
    client = ChatClient(endpoint)
    where = f"{label}: judge endpoint {without_userinfo(str(endpoint.url))} (model {endpoint.model})"

    def one(item: tuple) -> float | None:
        prompt, completion, reference = item
        request = judge_prompt(question_of(prompt), extract_answer(text_of(completion)), reference)
        try:
            reply = client.chat(request, JUDGE_TEMPERATURE, system=SYSTEM_PROMPT)
        except Exception as error:  # noqa: BLE001 - any failed request ends the run: the reward would be wrong
            reason = f"{failure_reason(error)}: {str(error)[:200]}"
            raise StageError(client.redact(f"{where} failed ({reason})"), permanent=False) from None
        verdict = parse_verdict(reply, ["score"])
        return None if verdict is None else scaled(verdict["score"])  # an unusable verdict scores nothing

    def score(prompts, completions, answer=None, **_):
        references = answer or [None] * len(completions)
        with ThreadPoolExecutor(max_workers=endpoint.max_concurrency, thread_name_prefix="judge-reward") as pool:
            return list(pool.map(one, zip(prompts, completions, references)))

    return score, f"an LLM judge ({endpoint.model})"


def judge_prompt(question: str, answer: str, reference: str | None) -> str:
    against = f"<reference>\n{reference}\n</reference>\n\n" if reference else ""
    return (
        "Grade the answer to the question below"
        + (" against the reference answer" if reference else "")
        + " from 1 (wrong, unhelpful or unsafe) to 5 (correct, precise and helpful).\n\n"
        f"<question>\n{question}\n</question>\n\n{against}<answer>\n{answer}\n</answer>\n\n"
        'Reply with strict JSON and nothing else: {"score": <1-5>}'
    )


def _reward_model_term(spec, label, run, prefill: str) -> tuple[RewardFn, str]:
    uri = run.config.reward_model
    score_texts = load_scorer(
        uri,
        run.config.reward_heads,
        purpose="reward model (spec.rewardModel)",
        trust_remote_code=run.config.trust_remote_code,
        dtype=run.dtype,
        device=run.device,
        batch_size=SCORING_BATCH,
    )

    def score(prompts, completions, **_):
        return score_texts([p + c if isinstance(p, list) else text_of(p) + text_of(c) for p, c in zip(prompts, completions)])

    return score, f"the reward model {uri}"


BUILDERS = {
    "format": _format_term,
    "accuracy": _accuracy_term,
    "length": _length_term,
    "keywords": _keywords_term,
    "judge": _judge_term,
    "reward-model": _reward_model_term,
}


def checked(function: RewardFn, name: str, label: str) -> RewardFn:
    """``function`` whose failures (an exception, a wrong count, NaN or inf) are StageErrors
    naming ``label``; named ``name`` for TRL's logs."""

    def reward(prompts, completions, **columns):
        try:
            values = function(prompts, completions, **columns)
        except StageError:
            raise
        except Exception as error:  # noqa: BLE001 - a broken term must stop the run, named
            raise StageError(f"{label} failed: {type(error).__name__}: {str(error)[:300]}") from error
        if len(values) != len(completions):
            raise StageError(f"{label} returned {len(values)} rewards for {len(completions)} completions")
        bad = [v for v in values if v is not None and not math.isfinite(v)]
        if bad:
            raise StageError(
                f"{label} returned a non-finite reward ({bad[0]}) for {len(bad)} of {len(values)} completions"
            )
        return [None if v is None else float(v) for v in values]

    reward.__name__ = name
    return reward


def reward_terms(run: RlhfRun, chat_template_kwargs: dict, reward_model_term: bool = False) -> list[RewardTerm]:
    """The weighted terms of spec.rewardFunctions; with ``reward_model_term`` also spec.rewardModel
    (weight 1) when no function names it (PPO's reward can be the reward model alone)."""
    config = run.config
    prefill = prefilled_opening(run.tokenizer, chat_template_kwargs)
    specs = [(f"spec.rewardFunctions[{i}] {f.name}", f) for i, f in enumerate(config.reward_functions)]
    if reward_model_term and config.reward_model and not any(f.name == "reward-model" for f in config.reward_functions):
        specs.append(("spec.rewardModel", RewardFunction(name="reward-model")))
    counts: dict[str, int] = {}
    terms = []
    for label, spec in specs:
        counts[spec.name] = counts.get(spec.name, 0) + 1
        name = spec.name if counts[spec.name] == 1 else f"{spec.name}-{counts[spec.name]}"  # unique metric names
        function, description = BUILDERS[spec.name](spec, label, run, prefill)
        terms.append(RewardTerm(name, label, spec.weight, checked(function, name, label), description))
    return terms
