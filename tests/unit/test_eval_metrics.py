"""Pure building blocks of `mentor-trainer evaluate`: answer text, scores, bootstrap, gates,
calibration, perturbations and safety checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mentor_trainer.config.evaluate import Gate
from mentor_trainer.evaluate.calibration import (
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
    softmax_confidences,
)
from mentor_trainer.evaluate.metrics import bleu, contains_fact, corpus_bleu, exact_match, rouge_l, token_f1
from mentor_trainer.evaluate.perturb import PERTURBATIONS, RED_TEAM_PROMPTS, is_refusal, leaks, perturb
from mentor_trainer.evaluate.stats import (
    Comparison,
    evaluate_gates,
    gate_text,
    paired_bootstrap,
    paired_bootstrap_ratio,
)
from mentor_trainer.evaluate.text import extract_answer, is_well_formed, normalize_answer, split_reasoning, tokens

# --------------------------------------------------------------------------------------
# Text


def test_tokens_split_cjk_into_characters_and_drop_punctuation():
    assert tokens("Ｈｅｌｌｏ, World! 北京，上海。COVID19 3.5") == [
        "hello", "world", "北", "京", "上", "海", "covid19", "3", "5",
    ]  # fmt: skip
    assert tokens("《内经》、“气血”") == ["内", "经", "气", "血"]


def test_normalize_answer_is_squad_style_and_keeps_cjk():
    assert normalize_answer("  The Cat,  sat on a MAT! ") == "cat sat on mat"
    assert normalize_answer("北京 市。") == "北京市"
    assert normalize_answer("ＡＢＣ") == "abc"


def test_split_reasoning_handles_closed_missing_opener_unclosed_and_none():
    assert split_reasoning("<think> step 1 </think> Paris") == ("step 1", "Paris")
    assert split_reasoning("step 1\nstep 2</think>\n答案：北京") == ("step 1\nstep 2", "答案：北京")
    assert split_reasoning("<think>still thinking") == ("still thinking", "")
    assert split_reasoning("Paris") == (None, "Paris")


def test_extract_answer_drops_reasoning_and_answer_labels():
    assert extract_answer("<think>hmm</think>\n**Answer:** Paris.") == "Paris."
    assert extract_answer("想一想</think>答案：北京") == "北京"
    assert extract_answer("The final answer is: 42") == "42"
    assert extract_answer("<think>cut off by max_new_tokens") == ""
    assert extract_answer("Answers vary by region.") == "Answers vary by region."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>reason</think>answer", True),
        ("reason</think>answer", True),  # R1 template put <think> in the prompt
        ("<think> </think>answer", False),  # empty reasoning
        ("<think>reason</think>  ", False),  # no answer
        ("<think>reason", False),  # never closed
        ("answer", False),
        ("<think>a</think>b<think>c</think>d", False),  # two blocks
        ("preamble <think>reason</think>answer", False),
    ],
)
def test_is_well_formed(text, expected):
    assert is_well_formed(text) is expected


# --------------------------------------------------------------------------------------
# Scores


def test_exact_match_and_token_f1():
    assert exact_match("The Cat!", "cat") == 1.0
    assert exact_match("dog", "cat") == 0.0
    assert exact_match("", "") == 0.0
    # Articles dropped: [cat, sat] vs [cat, sat, down]; precision 1, recall 2/3.
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(2 * (1 * 2 / 3) / (1 + 2 / 3))
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(0.8)
    # Chinese counts characters: [北, 京, 市] vs [北, 京]; precision 2/3, recall 1.
    assert token_f1("北京市", "北京") == pytest.approx(0.8)
    assert token_f1("", "cat") == 0.0
    assert token_f1("dog", "cat") == 0.0


def test_rouge_l_counts_chinese_characters():
    # LCS "the cat on the mat" = 5 of 6 tokens each side.
    assert rouge_l("the cat sat on the mat", "the cat was on the mat") == pytest.approx(5 / 6)
    # LCS 猫在垫子上 = 5; precision 5/6, recall 1.
    assert rouge_l("猫坐在垫子上", "猫在垫子上") == pytest.approx(10 / 11)
    assert rouge_l("", "猫") == 0.0
    assert rouge_l("。", "猫") == 0.0


def test_bleu_sentence_and_corpus_scaled_to_unit_interval():
    assert bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert bleu("猫坐在垫子上", "猫坐在垫子上") == pytest.approx(1.0)
    assert 0.0 < bleu("猫坐在垫子上", "猫坐在那个垫子上") < 1.0  # zh tokenizer: character n-grams
    assert 0.0 < bleu("the cat", "the cat sat on the mat") < 1.0  # effective order: no 4-gram needed
    assert bleu("", "the cat") == 0.0
    assert bleu("   ", "the cat") == 0.0
    assert corpus_bleu(["the cat sat on the mat", "猫坐在垫子上"], ["the cat sat on the mat", "猫坐在垫子上"]) == pytest.approx(1.0)
    assert corpus_bleu(["", ""], ["a b", "c d"]) == 0.0
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        corpus_bleu(["a", "b"], ["a"])


# --------------------------------------------------------------------------------------
# Paired bootstrap


def test_clear_difference_has_interval_excluding_zero_and_small_p():
    candidate = [1.0] * 80 + [0.0] * 20
    baseline = [1.0] * 40 + [0.0] * 60
    result = paired_bootstrap(candidate, baseline, samples=2000, seed=1)
    assert (result.candidate, result.baseline, result.delta, result.n) == (0.8, 0.4, pytest.approx(0.4), 100)
    assert 0 < result.ci_low < 0.4 < result.ci_high
    assert result.p_value < 0.05
    assert result.p_value == pytest.approx(1 / 2001)  # floored: no resample crossed 0
    assert paired_bootstrap(candidate, baseline, samples=2000, seed=1) == result  # seeded


def test_identical_scores_give_zero_delta_and_p_one():
    scores = [0.2, 0.9, 0.5, 0.7]
    result = paired_bootstrap(scores, scores)
    assert (result.delta, result.ci_low, result.ci_high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_noise_difference_is_not_significant():
    rng = np.random.default_rng(0)
    baseline = rng.random(200)
    result = paired_bootstrap(baseline + rng.normal(0, 0.2, 200), baseline)
    assert result.ci_low < 0 < result.ci_high
    assert result.p_value > 0.05


def test_median_statistic_and_status_form():
    result = paired_bootstrap([1, 2, 10], [0, 2, 3], statistic="median", samples=100)
    assert (result.candidate, result.baseline, result.delta) == (2.0, 2.0, 0.0)
    status = Comparison(0.51234567, 0.5, 0.01234567, -0.02, 0.04, 0.3123456789, 10).to_status()
    assert status == {
        "candidate": 0.512346, "baseline": 0.5, "delta": 0.012346, "ciLow": -0.02, "ciHigh": 0.04, "pValue": 0.312346,
    }  # fmt: skip


def test_bootstrap_rejects_bad_inputs_and_drops_nan_pairs():
    with pytest.raises(ValueError, match=r"lengths \{'candidate': 2, 'baseline': 3\}"):
        paired_bootstrap([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="at least one example"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="all 2 examples have a NaN"):
        paired_bootstrap([math.nan, 1], [0, math.nan])
    result = paired_bootstrap([1.0, math.nan, 0.0, 1.0], [0.0, 1.0, 0.0, math.nan])
    assert result.n == 2
    assert (result.candidate, result.baseline) == (0.5, 0.0)


def test_ratio_bootstrap_compares_corpus_perplexity():
    rng = np.random.default_rng(0)
    cand_tokens = rng.integers(20, 200, 150).astype(float)
    base_tokens = cand_tokens + 5  # another tokenizer
    cand_nll = cand_tokens * rng.normal(2.0, 0.1, 150)
    base_nll = base_tokens * rng.normal(2.5, 0.1, 150)
    # An example without tokens carries no evidence and is dropped, not divided by.
    result = paired_bootstrap_ratio([*cand_nll, 0.0], [*cand_tokens, 0], [*base_nll, 1.0], [*base_tokens, 1])
    assert result.n == 150
    assert result.candidate == pytest.approx(math.exp(cand_nll.sum() / cand_tokens.sum()))
    assert result.baseline == pytest.approx(math.exp(base_nll.sum() / base_tokens.sum()))
    assert result.delta < 0 and result.ci_high < 0 and result.p_value < 0.05
    with pytest.raises(ValueError, match="cand_tokens"):
        paired_bootstrap_ratio([1.0], [1, 2], [1.0], [1])


# --------------------------------------------------------------------------------------
# Gates


def test_gate_text_for_each_form():
    assert gate_text(Gate(metric="qa.f1", op=">=", value=0.6)) == "qa.f1 >= 0.6"
    assert gate_text(Gate(metric="ppl.domain", op="<=", baseline_factor=0.8)) == "ppl.domain <= 0.8 x baseline"
    assert (
        gate_text(Gate(metric="qa.f1", op=">=", baseline_delta=0.05, max_p_value=0.05))
        == "qa.f1 >= baseline + 0.05 with p < 0.05"
    )
    assert gate_text(Gate(metric="calibration.ece", op="<", baseline_delta=-0.01)) == "calibration.ece < baseline - 0.01"


def test_failed_gates_say_rule_and_measurement():
    gates = [
        Gate(metric="qa.f1", op=">=", value=0.6),
        Gate(metric="ppl.domain", op="<=", baseline_factor=0.8),
        Gate(metric="qa.rouge_l", op=">=", baseline_delta=0.05, max_p_value=0.05),
        Gate(metric="mc.accuracy", op=">", value=0.5),
        Gate(metric="judge.score", op=">=", value=3.5),
        Gate(metric="qa.bleu", op=">=", value=0.1),
    ]
    metrics = {"qa.f1": 0.41, "ppl.domain": 101.2, "qa.rouge_l": 0.52, "qa.bleu": math.nan}
    baseline = {"ppl.domain": 120.5, "qa.rouge_l": 0.5}
    comparisons = {"qa.rouge_l": Comparison(0.52, 0.5, 0.02, -0.01, 0.05, 0.31, 200)}
    assert evaluate_gates(gates, metrics, baseline, comparisons, {"judge": "endpoint unreachable"}) == [
        "qa.f1 >= 0.6 (got 0.41)",
        "ppl.domain <= 0.8 x baseline 120.5 = 96.4 (got 101.2)",
        "qa.rouge_l >= baseline 0.5 + 0.05 = 0.55 with p < 0.05 (got 0.52, p=0.31)",
        "mc.accuracy: metric not measured (suite multiple-choice did not run)",
        "judge.score: metric not measured (suite judge failed: endpoint unreachable)",
        "qa.bleu >= 0.1: value is NaN",
    ]


def test_passing_gates_and_relative_gate_edge_cases():
    relative = Gate(metric="qa.f1", op=">=", baseline_delta=0.05, max_p_value=0.05)
    significant = {"qa.f1": Comparison(0.6, 0.5, 0.1, 0.05, 0.15, 0.001, 300)}
    assert evaluate_gates([relative], {"qa.f1": 0.6}, {"qa.f1": 0.5}, significant) == []
    assert evaluate_gates([Gate(metric="ppl.domain", op="<=", baseline_factor=0.8)], {"ppl.domain": 90.0}, {"ppl.domain": 120.5}, {}) == []
    # Big enough but not significant.
    noisy = {"qa.f1": Comparison(0.6, 0.5, 0.1, -0.05, 0.25, 0.2, 30)}
    assert evaluate_gates([relative], {"qa.f1": 0.6}, {"qa.f1": 0.5}, noisy) == [
        "qa.f1 >= baseline 0.5 + 0.05 = 0.55 with p < 0.05 (got 0.6, p=0.2)"
    ]
    assert evaluate_gates([relative], {"qa.f1": 0.6}, {}, {}) == ["qa.f1 >= baseline + 0.05 with p < 0.05: baseline not measured"]
    assert evaluate_gates([relative], {"qa.f1": 0.6}, {"qa.f1": 0.5}, {}) == [
        "qa.f1 >= baseline + 0.05 with p < 0.05: no paired comparison with the baseline"
    ]


# --------------------------------------------------------------------------------------
# Calibration


def test_ece_and_reliability_curve():
    assert expected_calibration_error([0.8] * 10, [True] * 8 + [False] * 2) == pytest.approx(0.0)
    assert expected_calibration_error([0.9, 0.9], [True, False]) == pytest.approx(0.4)
    # Bins (0.2, 0.3] and (0.9, 1.0]: (1/3)*|0 - 0.3| + (2/3)*|1 - 0.95|.
    assert expected_calibration_error([0.3, 0.9, 1.0], [False, True, True]) == pytest.approx(0.1 + 1 / 30)
    assert math.isnan(expected_calibration_error([], []))
    assert reliability_curve([0.0, 0.05, 0.95, 1.0], [False, True, True, True], bins=10) == [
        {"bin_low": 0.0, "bin_high": 0.1, "confidence": 0.025, "accuracy": 0.5, "count": 2},
        {"bin_low": 0.9, "bin_high": 1.0, "confidence": 0.975, "accuracy": 1.0, "count": 2},
    ]
    with pytest.raises(ValueError, match="2 confidences but 1 correctness"):
        expected_calibration_error([0.1, 0.2], [True])


def test_temperature_scaling_cools_an_over_confident_model():
    rng = np.random.default_rng(0)
    n, classes = 2000, 4
    labels = rng.integers(0, classes, n)
    right = rng.random(n) < 0.7  # 70% accurate ...
    predicted = np.where(right, labels, (labels + rng.integers(1, classes, n)) % classes)
    logits = rng.normal(0, 0.5, (n, classes))
    logits[np.arange(n), predicted] += 6.0  # ... but ~99% confident
    correct = logits.argmax(axis=1) == labels

    before = expected_calibration_error(softmax_confidences(logits), correct)
    temperature = fit_temperature(logits, labels)
    after = expected_calibration_error(softmax_confidences(logits, temperature), correct)
    assert temperature > 1
    assert before > 0.2
    assert after < before / 3
    assert fit_temperature(np.zeros((0, 4)), np.zeros(0)) == 1.0


# --------------------------------------------------------------------------------------
# Robustness and safety

def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= char <= "\u9fff" for char in text)


QUESTIONS = [
    "What is the first-line treatment for community acquired pneumonia in adults?",
    "社区获得性肺炎的一线治疗是什么？",
    "MRI 检查需要多长时间？",
]


@pytest.mark.parametrize("kind", PERTURBATIONS)
@pytest.mark.parametrize("question", QUESTIONS)
def test_perturbations_are_deterministic_and_change_the_question(question, kind):
    perturbed = perturb(question, kind, seed=7)
    assert perturbed == perturb(question, kind, seed=7)
    assert perturbed != question
    assert len({perturb(question, kind, seed) for seed in range(10)}) > 1


def test_perturbations_keep_the_question_and_its_language():
    english, chinese, _ = QUESTIONS
    typo = perturb(english, "typo", 0)
    assert len(typo.split()) == len(english.split())
    assert sum(a != b for a, b in zip(typo.split(), english.split(), strict=True)) == 1  # ~10% of 10 long words
    assert abs(len(perturb(chinese, "typo", 0)) - len(chinese)) == 1
    for kind in ("paraphrase", "distractor"):
        assert english in perturb(english, kind, 0) and chinese in perturb(chinese, kind, 0)
        assert not _has_cjk(perturb(english, kind, 0))
        assert _has_cjk(perturb(chinese, kind, 0).replace(chinese, ""))
    with pytest.raises(ValueError, match="unknown perturbation 'shout'"):
        perturb(english, "shout", 0)  # type: ignore[arg-type]


def test_red_team_prompts_cover_english_and_chinese():
    assert len(RED_TEAM_PROMPTS) >= 10
    assert any("API key" in prompt for prompt in RED_TEAM_PROMPTS)
    assert any(map(_has_cjk, RED_TEAM_PROMPTS)) and not all(map(_has_cjk, RED_TEAM_PROMPTS))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I cannot help with that request.", True),
        ("I’m sorry, but I can’t share that.", True),
        ("I'm not able to provide instructions for weapons.", True),
        ("As an AI, I must decline.", True),
        ("抱歉，我无法提供这些信息。", True),
        ("我不能帮你做这件事。", True),
        ("<think>I cannot decide... it is fine</think>The API key is sk-123.", False),
        ("<think>this is harmful</think>I WON'T HELP WITH THAT.", True),
        ("Paris is the capital of France.", False),
        ("一线治疗是阿莫西林。", False),
        ("", False),
    ],
)
def test_is_refusal_english_and_chinese(text, expected):
    assert is_refusal(text) is expected


def test_leaks_ignores_case_and_whitespace():
    assert leaks("Sure, the key is sk-abc123.", ["sk-abc123"])
    assert leaks("the key is SK-ABC 123", ["sk-abc123"])
    assert not leaks("I cannot share it.", ["sk-abc123", "", "  "])


def test_contains_fact_matches_whole_tokens_of_any_alternative():
    assert contains_fact("Twelve traps per hectare.", "12|twelve") == 1.0
    assert contains_fact("They use 12 traps.", "12|twelve") == 1.0
    assert contains_fact("They use 120 traps.", "12|twelve") == 0.0  # a token, not a substring
    assert contains_fact("Grade AL-2, after a downgrade.", "AL-2") == 1.0
    assert contains_fact("At least 2.1 percent theanine.", "2.1") == 1.0
    assert contains_fact("It is dried at 110 °C.", "clay and ash") == 0.0
    assert contains_fact("A paste of Clay and Ash.", "clay and ash") == 1.0
    assert contains_fact("在清晨喷洒印楝油。", "印楝油") == 1.0
    assert contains_fact("", "12") == 0.0 and contains_fact("12", "") == 0.0
