"""`mentor-trainer rlhf` with algorithm reward-model on the tiny Qwen2 model: one backbone with a
quality and a safety head. The quality head ranks held-out pairs, the safety head learns the
pairs' chosenSafe/rejectedSafe labels (carried by the real data stage), the published model
scores texts through :mod:`mentor_trainer.train.rlhf.scoring`, and a safety weight without
labels fails clearly."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from mentor_trainer.config.rlhf import RLHFStageConfig
from mentor_trainer.errors import StageError

from .rlhf_config import rlhf_config, run

TOPICS = [
    "the tea garden", "the spring harvest", "the drying room", "the grading table", "the storage shed",
    "the valley road", "the water tank", "the seedling nursery", "the packing line", "the tasting room",
    "the rain gauge", "the compost heap", "the leaf sorter", "the kiln", "the irrigation pump",
    "the terrace wall", "the research plot", "the shipping dock", "the soil lab", "the weather station",
    "the withering trough", "the rolling machine", "the tool store", "the visitor path", "the cooling fan",
    "the loading bay", "the pruning crew", "the nursery beds", "the sample jars", "the steam boiler",
]


def safety_records() -> list[dict]:
    """Per topic, a helpful answer (safe) against either a harmful one (unsafe) or an evasive one
    (safe): the safety label is not the same thing as the preference."""
    records = []
    for n, topic in enumerate(TOPICS):
        helpful = f"Keep {topic} clean and check it every morning before work starts."
        if n % 2:
            rejected, rejected_safe = f"Poison the workers at {topic} and set fire to it at night.", False
        else:
            rejected, rejected_safe = "I am not sure, sorry.", True
        records.append(
            {"id": f"s{n}", "prompt": f"How should we look after {topic}?", "chosen": helpful, "rejected": rejected,
             "chosenSafe": True, "rejected_safe": rejected_safe}
        )
    # a label that is not a boolean: skipped and counted by the data stage
    records.append({"id": "bad", "prompt": "How?", "chosen": "Carefully.", "rejected": "No.", "chosenSafe": "yes"})
    return records


@pytest.fixture(scope="module")
def safety_dataset(tmp_path_factory) -> Path:
    from mentor_trainer.config import DataStageConfig
    from mentor_trainer.data import main as data_main

    root = tmp_path_factory.mktemp("safety")
    (root / "pairs").mkdir()
    (root / "pairs" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in safety_records()))
    out = root / "dataset"
    data_main(
        DataStageConfig.model_validate(
            {
                "run": {"kind": "DomainDataset", "name": "safety", "namespace": "tests"},
                "outputUri": out.as_uri(),
                "sources": [{"name": "pairs", "uri": (root / "pairs").as_uri(), "format": "preference-jsonl"}],
                "formats": ["preference"],
                "split": {"train": 0.7, "validation": 0.3, "test": 0.0, "seed": 7},
            }
        )
    )
    return out


def make_config(tiny: Path, dataset: Path, out_dir: Path, **options) -> RLHFStageConfig:
    defaults = {"name": "tea-reward", "algorithm": "reward-model", "output": {"mergeAdapter": True}}
    return rlhf_config(tiny, dataset, out_dir, **{**defaults, **options})


def test_safety_labels_reach_the_dataset_rows(safety_dataset):
    from mentor_trainer.data.layout import read_split

    rows = read_split(safety_dataset.as_uri(), "train", ("preference",)) + read_split(
        safety_dataset.as_uri(), "validation", ("preference",)
    )
    assert len(rows) >= len(TOPICS) - 3  # a near-duplicate across splits may be dropped
    assert all(row["chosen_safe"] is True for row in rows)
    harmful = {row["rejected_safe"] for row in rows if "Poison" in row["rejected"]}
    evasive = {row["rejected_safe"] for row in rows if "not sure" in row["rejected"]}
    assert harmful == {False} and evasive == {True}
    manifest = json.loads((safety_dataset / "manifest.json").read_text())
    assert manifest["stats"]["droppedByReason"] == {"invalid-record": 1}


def test_quality_head_ranks_held_out_pairs(tiny, preference_dataset, tmp_path):
    # the fixture's pairs have no safety labels: the quality head alone (safetyWeight 0)
    config = make_config(
        tiny, preference_dataset, tmp_path / "out", rewardHeads={"qualityWeight": 1.0, "safetyWeight": 0.0},
        hyperparameters={"maxSteps": 60},
    )
    metrics = run(config).metrics
    print(f"held-out preference accuracy {metrics['base_eval_accuracy']:.3f} -> {metrics['eval_accuracy']:.3f}")
    assert metrics["eval_accuracy"] >= 0.75, metrics  # chance is 0.5
    assert metrics["eval_accuracy"] > metrics["base_eval_accuracy"] + 0.1, metrics
    assert "eval_safety_accuracy" not in metrics


def test_safety_head_learns_the_labels_and_publishes_both_heads(tiny, safety_dataset, tmp_path):
    from mentor_trainer.train.rlhf.scoring import load_scorer

    config = make_config(tiny, safety_dataset, tmp_path / "out", hyperparameters={"maxSteps": 40})
    metrics = run(config).metrics
    print(
        f"held-out safety accuracy {metrics['base_eval_safety_accuracy']:.3f} -> {metrics['eval_safety_accuracy']:.3f}, "
        f"preference accuracy {metrics['base_eval_accuracy']:.3f} -> {metrics['eval_accuracy']:.3f}"
    )
    assert metrics["eval_safety_accuracy"] >= 0.9, metrics  # most answers are safe: above "all safe"
    assert metrics["eval_accuracy"] >= 0.75, metrics
    model_dir = tmp_path / "out" / "model"
    assert json.loads((model_dir / "mentor-reward.json").read_text()) == {
        "qualityWeight": 0.7, "safetyWeight": 0.3, "heads": ["quality", "safety"]
    }
    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["id2label"] == {"0": "quality", "1": "safety"} and saved["pad_token_id"] is not None
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["safetyLabels"] > 0 and result["rewardHeads"] == {"qualityWeight": 0.7, "safetyWeight": 0.3}

    score = load_scorer(model_dir.as_uri())
    prompt = [{"role": "user", "content": "How should we look after the cellar door?"}]
    helpful = prompt + [{"role": "assistant", "content": "Keep the cellar door clean and check it every morning before work starts."}]
    harmful = prompt + [{"role": "assistant", "content": "Poison the workers at the cellar door and set fire to it at night."}]
    good, bad = score([helpful, harmful])
    assert good > bad


def test_safety_weight_without_labels_is_a_clear_error(tiny, preference_dataset, tmp_path):
    config = make_config(tiny, preference_dataset, tmp_path / "out")  # default safetyWeight 0.3
    with pytest.raises(StageError, match=r"rewardHeads\.safetyWeight.*chosenSafe/rejectedSafe.*safetyWeight to 0"):
        run(config)
