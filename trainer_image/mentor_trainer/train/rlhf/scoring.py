"""Scoring texts with a published reward model (an RLHFJob with algorithm reward-model).

    score = load_scorer("s3://bucket/runs/rm/model/")
    score(["<rendered chat text>", [{"role": "user", ...}, {"role": "assistant", ...}]])  # -> [float, float]

A reward model trained here is one backbone with two logits, quality (0) and safety (1); a
text's score is ``qualityWeight x quality + safetyWeight x safety``, the weights from the
model's ``mentor-reward.json`` (else the caller's fallback). A single-logit reward model's
score is its logit. A conversation (a list of messages) is rendered with the model's chat
template, as in training; a string is scored as is. The GRPO/PPO ``reward-model`` term and
anything else that scores with a reward model use this one loader.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from ...errors import StageError

REWARD_FILE = "mentor-reward.json"
HEADS = ("quality", "safety")  # the order of the reward model's logits

Text = str | list[dict]


def reward_file(quality_weight: float, safety_weight: float) -> str:
    """The ``mentor-reward.json`` published beside a reward model's weights."""
    return json.dumps({"qualityWeight": quality_weight, "safetyWeight": safety_weight, "heads": list(HEADS)}, indent=2)


def head_weights(model_dir: Path, num_labels: int, uri: str, purpose: str, fallback=None) -> list[float]:
    """How the logits combine into one score. One head: its logit. Two (quality, safety): the
    weights the model was trained with (its mentor-reward.json), else ``fallback`` (a config
    RewardHeads)."""
    if num_labels == 1:
        return [1.0]
    if num_labels != len(HEADS):
        raise StageError(f"the {purpose} {uri} has {num_labels} outputs: expected 1 or 2 ({', '.join(HEADS)})")
    saved = model_dir / REWARD_FILE
    if saved.is_file():
        try:
            data = json.loads(saved.read_text())
            return [float(data["qualityWeight"]), float(data["safetyWeight"])]
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise StageError(f"the {purpose} {uri} has an unreadable {REWARD_FILE}: {type(error).__name__}: {error}") from None
    if fallback is None:
        raise StageError(f"the {purpose} {uri} has two heads but no {REWARD_FILE}: use the output of an RLHFJob with algorithm reward-model")
    return [float(fallback.quality_weight), float(fallback.safety_weight)]


def load_scorer(
    uri: str,
    fallback_heads=None,
    *,
    purpose: str = "reward model",
    trust_remote_code: bool = False,
    dtype=None,
    device: str | None = None,
    batch_size: int = 8,
) -> Callable[[Sequence[Text]], list[float]]:
    """A function scoring texts with the reward model at ``uri`` (a model URI or directory);
    ``fallback_heads`` (a config RewardHeads) weighs two heads when the model has no
    mentor-reward.json; ``purpose`` names the model in errors (e.g. "reward model (spec.rewardModel)")."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ...models import load_model_and_tokenizer

    loaded = load_model_and_tokenizer(
        str(uri), trust_remote_code=trust_remote_code, dtype=dtype, purpose=purpose, model_class=AutoModelForSequenceClassification
    )
    weights = torch.tensor(head_weights(Path(loaded.local_dir), loaded.model.config.num_labels, str(uri), purpose, fallback_heads))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = loaded.model.to(device).eval().requires_grad_(False)
    tokenizer = loaded.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token

    def render(text: Text) -> str:
        if isinstance(text, str):
            return text
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(text, tokenize=False)
        return "\n".join(m["content"] for m in text)

    @torch.inference_mode()
    def score(texts: Sequence[Text]) -> list[float]:
        rendered = [render(t) for t in texts]
        scores: list[float] = []
        for start in range(0, len(rendered), batch_size):
            batch = tokenizer(rendered[start : start + batch_size], add_special_tokens=False, padding=True, return_tensors="pt")
            logits = model(**batch.to(device)).logits.float().cpu()
            scores.extend((logits @ weights).tolist())
        return scores

    return score
