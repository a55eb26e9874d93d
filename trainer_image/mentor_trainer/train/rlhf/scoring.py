"""Scoring texts with a published reward model (an RLHFJob with algorithm reward-model).

    score = load_scorer("s3://bucket/runs/rm/model/")
    score(["<rendered chat text>", [{"role": "user", ...}, {"role": "assistant", ...}]])  # -> [float, float]

The model is one backbone with two logits, quality (0) and safety (1); a text's score is
``qualityWeight x quality + safetyWeight x safety``, the weights from the model's
``mentor-reward.json`` unless ``reward_heads`` overrides them. A conversation (a list of
messages) is rendered with the model's chat template, as in training; a string is scored as is.
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


def _weights(model_dir: Path, uri: str, reward_heads) -> tuple[float, float]:
    if reward_heads is not None:
        return float(reward_heads.quality_weight), float(reward_heads.safety_weight)
    try:
        saved = json.loads((model_dir / REWARD_FILE).read_text())
    except (OSError, ValueError):
        raise StageError(
            f"reward model {uri} has no readable {REWARD_FILE}: use the output of an RLHFJob with algorithm reward-model"
        ) from None
    return float(saved["qualityWeight"]), float(saved["safetyWeight"])


def load_scorer(
    uri: str, reward_heads=None, *, trust_remote_code: bool = False, device: str | None = None, batch_size: int = 8
) -> Callable[[Sequence[Text]], list[float]]:
    """A function scoring texts with the reward model at ``uri`` (a model URI or directory);
    ``reward_heads`` (a config RewardHeads) replaces the published weights when given."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ...models import load_model_and_tokenizer

    loaded = load_model_and_tokenizer(
        str(uri), trust_remote_code=trust_remote_code, purpose="reward model", model_class=AutoModelForSequenceClassification
    )
    if loaded.model.config.num_labels != len(HEADS):
        raise StageError(f"reward model {uri} has {loaded.model.config.num_labels} outputs, not the two heads {list(HEADS)}")
    weights = torch.tensor(_weights(Path(loaded.local_dir), str(uri), reward_heads))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = loaded.model.to(device).eval()
    tokenizer = loaded.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token

    @torch.no_grad()
    def score(texts: Sequence[Text]) -> list[float]:
        rendered = [t if isinstance(t, str) else tokenizer.apply_chat_template(t, tokenize=False) for t in texts]
        scores: list[float] = []
        for start in range(0, len(rendered), batch_size):
            batch = tokenizer(rendered[start : start + batch_size], add_special_tokens=False, padding=True, return_tensors="pt")
            logits = model(**batch.to(device)).logits.float().cpu()
            scores.extend((logits @ weights).tolist())
        return scores

    return score
