"""`mentor-trainer rlhf` with algorithms grpo and ppo on the tiny Qwen2 model: the reward terms
on hand-written completions, the errors of broken terms (a raising term, a dead judge, a reward
model that does not load), and end-to-end runs whose reward rises.

The learning runs reward a word (the keywords term): the untrained tiny model says it in some
completions, so a group's rewards differ and there is something to learn. The format term
cannot be the learning signal here: the random model never closes a ``</think>`` block in a few
dozen sampled tokens, so every group scores 0 and GRPO has no advantage to follow; the format
term is covered on hand-written completions instead.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from transformers import TrainerCallback

from mentor_trainer.config.rlhf import RLHFStageConfig
from mentor_trainer.errors import StageError
from mentor_trainer.train.rlhf import rewards
from mentor_trainer.train.rlhf.context import RlhfRun
from mentor_trainer.train.rlhf.rewards import (
    accuracy_score,
    checked,
    format_score,
    keywords_score,
    length_score,
    prefilled_opening,
    reward_terms,
)
from mentor_trainer.train.rlhf.scoring import REWARD_FILE, reward_file
from tests.trainer.test_data_synthesis import TeacherServer, closed_port, url_of

from .rlhf_config import rlhf_config, run

WORD = "茶"  # "tea": the untrained tiny model writes it in roughly a quarter of its completions


def make_config(tiny: Path, dataset: Path, out_dir: Path, algorithm: str = "grpo", **options) -> RLHFStageConfig:
    defaults = {
        "name": "tea-rl",
        "algorithm": algorithm,
        # all weights: LoRA on the blocks moves the tiny model's word choice too slowly for a
        # test's budget, and TRL's GRPO does not train an adapter on lm_head
        "method": "full",
        "beta": 0.01,
        "rewardFunctions": [{"name": "keywords", "params": {"keywords": WORD}}],
        "generation": {"numGenerations": 8, "maxNewTokens": 16, "temperature": 1.0},
        "checkpointing": {"everySteps": 1000},
        "output": {"mergeAdapter": False},
    }
    hyperparameters = {"learningRate": 0.005, "perDeviceBatchSize": 16, "maxSeqLength": 2048, **options.pop("hyperparameters", {})}
    return rlhf_config(tiny, dataset, out_dir, **{**defaults, "hyperparameters": hyperparameters, **options})


class Curve(TrainerCallback):
    """Every logged value of the keys it watches, in order."""

    def __init__(self, *keys: str) -> None:
        self.values: dict[str, list[float]] = {key: [] for key in keys}

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key, values in self.values.items():
            if logs and key in logs:
                values.append(float(logs[key]))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def train(config: RLHFStageConfig, curve: Curve):
    return run(config, callbacks=(curve,))


# --------------------------------------------------------------------------------------
# It learns


def test_grpo_raises_the_reward(tiny, preference_dataset, tmp_path):
    curve = Curve("reward")
    result = train(make_config(tiny, preference_dataset, tmp_path / "out"), curve)
    rewards_seen = curve.values["reward"]
    print(f"grpo reward: {rewards_seen}")
    assert len(rewards_seen) == 30
    # from about a quarter of the completions to most of them; a wide margin, noise is +-0.15
    assert mean(rewards_seen[-5:]) >= mean(rewards_seen[:3]) + 0.3, rewards_seen
    metrics = result.metrics
    assert {"reward", "initial_reward", "rewards/keywords/mean", "kl"} <= set(metrics)
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["rewardTerms"] == [
        {"name": "keywords", "spec": "spec.rewardFunctions[0] keywords", "weight": 1.0, "rewards": f"mentions {WORD}"}
    ]
    assert saved["prompts"] > 0 and saved["algorithm"] == "grpo"
    assert "- Reward: 1 x keywords" in (tmp_path / "out" / "README.md").read_text()


def test_ppo_raises_the_reward_and_learns_its_value(tiny, preference_dataset, tmp_path):
    curve = Curve("reward", "value", "value_loss")
    config = make_config(tiny, preference_dataset, tmp_path / "out", "ppo", ppo={"updatesPerBatch": 2, "clipRange": 0.2})
    result = train(config, curve)
    seen = curve.values
    print(f"ppo reward: {seen['reward']}\nvalue: {seen['value']}\nvalue loss: {seen['value_loss']}")
    assert len(seen["reward"]) == 15  # a new batch every 2 updates
    assert mean(seen["reward"][-5:]) >= mean(seen["reward"][:3]) + 0.3, seen["reward"]
    # the value head starts at 0 and learns to expect the (positive) reward
    assert seen["value"][0] == 0.0 and mean(seen["value"][-5:]) > 0.3, seen["value"]
    assert all(math.isfinite(v) for v in seen["value_loss"])
    assert "value_loss" in result.metrics
    out = tmp_path / "out"
    assert (out / "model" / "_SUCCESS").is_file() and (out / "model" / "model.safetensors").is_file()
    assert "no GAE" in (out / "README.md").read_text()


@pytest.fixture(scope="module")
def reward_model(tiny, tmp_path_factory) -> Path:
    """The tiny model with two score heads (quality, safety), published as the reward-model
    algorithm publishes one: weights, tokenizer and mentor-reward.json."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("reward") / "model"
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=2)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / REWARD_FILE).write_text(reward_file(quality_weight=1.0, safety_weight=0.5))
    return out


def test_ppo_lora_on_a_reward_model_publishes_a_merged_model(tiny, preference_dataset, reward_model, tmp_path):
    curve = Curve("value_loss")
    config = make_config(
        tiny,
        preference_dataset,
        tmp_path / "out",
        "ppo",
        method="lora",
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
        rewardFunctions=[],
        rewardModel=reward_model.as_uri(),
        generation={"numGenerations": 4, "maxNewTokens": 8, "temperature": 1.0},
        hyperparameters={"maxSteps": 4, "perDeviceBatchSize": 8, "learningRate": 0.01},
        output={"mergeAdapter": True},
    )
    result = train(config, curve)
    assert "rewards/reward-model/mean" in result.metrics and len(curve.values["value_loss"]) == 4
    out = tmp_path / "out"
    assert (out / "adapter" / "_SUCCESS").is_file()
    assert (out / "model" / "_SUCCESS").is_file() and (out / "model" / "model.safetensors").is_file()
    saved = json.loads((out / "result.json").read_text())
    assert [term["spec"] for term in saved["rewardTerms"]] == ["spec.rewardModel"]


# --------------------------------------------------------------------------------------
# The terms on hand-written completions


def test_format_needs_a_closed_reasoning_block_then_an_answer():
    assert format_score("<think>\nThe guide says May.</think>\n\nIn May.") == 1.0
    assert format_score("The guide says May.</think>\n\nIn May.", prefill="<think>\n") == 1.0
    assert format_score("The guide says May.</think>\n\nIn May.") == 0.0  # no opening and none pre-filled
    assert format_score("<think>The guide says May.</think>") == 0.0  # no answer
    assert format_score("<think>\n</think>In May.") == 0.0  # no reasoning
    assert format_score("In May.") == 0.0
    assert format_score("Sure. <think>May.</think> In May.") == 0.0  # text before the reasoning
    assert format_score("<think>a</think> b <think>c</think> d") == 0.0
    assert format_score("<think>May.</think> In May.", prefill="<think>\n") == 0.0  # opened twice


def test_the_pre_filled_opening_is_read_from_the_chat_template(tiny):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    assert prefilled_opening(tokenizer, {"thinking": True}) == "<think>\n"
    assert prefilled_opening(tokenizer, {}) == ""


def test_accuracy_matches_the_final_answer():
    assert accuracy_score("<think>It is the capital.</think>Answer: Paris.", "paris", "exact") == 1.0
    assert accuracy_score("Paris, France", "Paris", "exact") == 0.0
    assert accuracy_score("<think>1,200 or so</think> About 1,400 metres.", "1400", "numeric") == 1.0
    assert accuracy_score("About 140 metres.", "1400 m", "numeric") == 0.0
    assert accuracy_score("No idea.", "3.5%", "numeric") == 0.0
    assert accuracy_score("Around 3.5 percent.", "3.5%", "numeric") == 1.0
    assert accuracy_score("Twelve.", "twelve traps", "numeric") is None  # no number to compare with
    partial = accuracy_score("<think>x</think>black tea is rolled", "green tea is rolled and dried", "f1")
    assert 0.3 < partial < 1.0
    assert accuracy_score("anything", None, "f1") is None


def test_length_and_keywords():
    assert length_score(8, 8) == 1.0 and length_score(4, 8) == pytest.approx(0.5) and length_score(20, 8) == 0.0
    assert keywords_score("Green TEA is rolled.", ["tea", "rolled", "oolong"]) == pytest.approx(2 / 3)
    assert keywords_score("A teapot.", ["tea"]) == 0.0  # whole words only
    assert keywords_score("春茶在四月采摘", ["春茶", "十月|四月"]) == 1.0


def run_for(tiny: Path, tmp_path: Path, functions: list[dict], **options) -> RlhfRun:
    import torch
    from transformers import AutoTokenizer

    config = RLHFStageConfig.model_validate(
        {
            "run": {"kind": "RLHFJob", "name": "terms", "namespace": "tests"},
            "outputUri": (tmp_path / "out").as_uri(),
            "policyModel": tiny.as_uri(),
            "datasetUri": (tmp_path / "dataset").as_uri(),
            "algorithm": options.pop("algorithm", "grpo"),
            "rewardFunctions": functions,
            **options,
        }
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    return RlhfRun(config, "cpu", "fp32", torch.float32, tokenizer, tmp_path / "checkpoints", [])


PROMPT = [{"role": "user", "content": "When is the first flush picked?"}]


def said(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_terms_score_conversational_completions_under_their_own_names(tiny, tmp_path):
    run = run_for(
        tiny,
        tmp_path,
        [
            {"name": "format", "weight": 0.5},
            {"name": "accuracy", "params": {"match": "exact"}},
            {"name": "length", "params": {"targetTokens": "4"}},
            {"name": "keywords", "params": {"keywords": "May, flush"}},
            {"name": "keywords", "params": {"keywords": "April"}},
        ],
        extra={"chat_template_kwargs": {"thinking": True}},
    )
    terms = reward_terms(run, {"thinking": True})
    assert [t.name for t in terms] == ["format", "accuracy", "length", "keywords", "keywords-2"]
    assert [t.function.__name__ for t in terms] == [t.name for t in terms]
    assert [t.weight for t in terms] == [0.5, 1.0, 1.0, 1.0, 1.0]
    completions = [said("Spring picking.</think>In May."), said("In May"), said("no idea")]
    columns = {"answer": ["in may", None, "in may"]}
    scores = {t.name: t.function(prompts=[PROMPT] * 3, completions=completions, **columns) for t in terms}
    assert scores["format"] == [1.0, 0.0, 0.0]  # the pre-filled <think> counts
    assert scores["accuracy"] == [1.0, None, 0.0]
    tokens = len(run.tokenizer("In May", add_special_tokens=False)["input_ids"])
    assert scores["length"][1] == pytest.approx(length_score(tokens, 4))
    assert scores["keywords"] == [0.5, 0.5, 0.0] and scores["keywords-2"] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "function, message",
    [
        ({"name": "accuracy", "params": {"match": "fuzzy"}}, r"spec.rewardFunctions\[0\] accuracy params.match is 'fuzzy'"),
        ({"name": "length", "params": {"targetTokens": "ten"}}, r"spec.rewardFunctions\[0\] length params.targetTokens"),
        ({"name": "length"}, r"spec.rewardFunctions\[0\] length needs params.targetTokens"),
        ({"name": "keywords", "params": {"keywords": " , "}}, r"spec.rewardFunctions\[0\] keywords params.keywords names no"),
    ],
)
def test_bad_params_name_the_term(tiny, tmp_path, function, message):
    with pytest.raises(StageError, match=message):
        reward_terms(run_for(tiny, tmp_path, [function]), {})


# --------------------------------------------------------------------------------------
# Broken terms stop the run, named


@pytest.mark.parametrize(
    "returned, message",
    [
        (ZeroDivisionError("division by zero"), "failed: ZeroDivisionError: division by zero"),
        ([float("nan")], r"returned a non-finite reward \(nan\)"),
        ([float("inf")], r"returned a non-finite reward \(inf\)"),
        ([], "returned 0 rewards for 1 completions"),
    ],
)
def test_a_broken_term_is_a_stage_error_naming_it(tiny, tmp_path, monkeypatch, returned, message):
    def broken(spec, label, run, prefill):
        def score(prompts, completions, **_):
            if isinstance(returned, Exception):
                raise returned
            return returned

        return score, "broken"

    monkeypatch.setitem(rewards.BUILDERS, "keywords", broken)
    run = run_for(tiny, tmp_path, [{"name": "format"}, {"name": "keywords", "params": {"keywords": "May"}}])
    term = reward_terms(run, {})[1]
    with pytest.raises(StageError, match=r"spec.rewardFunctions\[1\] keywords " + message):
        term.function(prompts=[PROMPT], completions=[said("May")])


def test_checked_passes_none_through():
    term = checked(lambda prompts, completions, **_: [None, 1], "accuracy", "spec.rewardFunctions[0] accuracy")
    assert term(prompts=[PROMPT] * 2, completions=[said("a"), said("b")]) == [None, 1.0]
    assert term.__name__ == "accuracy"


def judge_function(url: str) -> dict:
    return {"name": "judge", "judge": {"url": url, "model": "judge-7b", "timeoutSeconds": 5, "maxConcurrency": 2}}


def test_judge_scores_through_the_endpoint(tiny, tmp_path):
    def judge(prompt: str, body: dict) -> str:
        if "<reference>\nIn May.\n</reference>" not in prompt:
            return "I would rather not say."  # unusable: that completion scores nothing
        return '<think>Same month.</think>{"score": 5}' if "<answer>\nIn May.\n</answer>" in prompt else '{"score": 2}'

    with TeacherServer(judge) as server:
        run = run_for(tiny, tmp_path, [judge_function(url_of(server))])
        term = reward_terms(run, {})[0]
        scores = term.function(
            prompts=[PROMPT] * 3,
            completions=[said("<think>Spring.</think>In May."), said("In June."), said("In May.")],
            answer=["In May.", "In May.", None],
        )
    assert scores == [1.0, 0.25, None]


def test_a_judge_that_is_down_is_a_stage_error(tiny, tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    term = reward_terms(run_for(tiny, tmp_path, [judge_function(url)]), {})[0]
    with pytest.raises(StageError, match=rf"spec.rewardFunctions\[0\] judge: judge endpoint {url} .*failed \(unreachable"):
        term.function(prompts=[PROMPT], completions=[said("In May.")])


def test_the_reward_model_term_weighs_its_two_heads(tiny, reward_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = run_for(tiny, tmp_path, [{"name": "reward-model"}], rewardModel=reward_model.as_uri())
    completions = [said("<think>Spring.</think>In May."), said("I am not sure, sorry.")]
    scores = reward_terms(run, {})[0].function(prompts=[PROMPT] * 2, completions=completions)
    tokenizer = AutoTokenizer.from_pretrained(reward_model)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model)
    for completion, score in zip(completions, scores):
        text = tokenizer.apply_chat_template(PROMPT + completion, tokenize=False)
        quality, safety = model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0].tolist()
        assert score == pytest.approx(quality + 0.5 * safety, abs=1e-4)  # the weights of its mentor-reward.json


def test_a_reward_model_that_does_not_load_is_a_stage_error(tiny, tmp_path):
    broken = tmp_path / "broken-rm"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((tiny / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    run = run_for(tiny, tmp_path, [], algorithm="ppo", rewardModel=broken.as_uri())
    with pytest.raises(StageError, match=rf"spec.rewardModel.*{broken}"):
        reward_terms(run, {}, reward_model_term=True)
    missing = tmp_path / "no-such-model"
    run = run_for(tiny, tmp_path, [{"name": "reward-model"}], rewardModel=missing.as_uri())
    with pytest.raises(StageError, match=rf"spec.rewardModel.*{missing}"):
        reward_terms(run, {})
