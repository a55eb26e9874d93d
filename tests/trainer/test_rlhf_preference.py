"""`mentor-trainer rlhf` with DPO, ORPO and KTO on the tiny Qwen2 model and preference pairs
made by the real data stage: each learns the held-out preference, a killed run resumes, the
real CLI tracks in MLflow and reports progress, and pairs that teach nothing are counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from mentor_trainer.config.rlhf import RLHFStageConfig
from mentor_trainer.config.sft import TrainingResult
from mentor_trainer.errors import StageError

from .interrupt import Killed, kill_after_save, record_steps

from .rlhf_config import rlhf_config, run


def make_config(tiny: Path, dataset: Path, out_dir: Path, **options) -> RLHFStageConfig:
    return rlhf_config(tiny, dataset, out_dir, **{"algorithm": "dpo", "output": {"mergeAdapter": False}, **options})


# --------------------------------------------------------------------------------------
# It learns the preference, on pairs it never saw


def test_dpo_raises_the_held_out_margin(tiny, preference_dataset, tmp_path):
    result = run(make_config(tiny, preference_dataset, tmp_path / "out"))
    m = result.metrics
    # before training the policy is its own reference: DPO loss ln 2, margin 0
    assert m["base_eval_loss"] == pytest.approx(0.6931, abs=1e-3)
    # rewards/margins is beta x the gain in log p(chosen) - log p(rejected) over the reference
    assert m["eval_rewards/margins"] > 1.0, m
    assert m["eval_rewards/accuracies"] >= 0.75, m
    assert m["eval_loss"] < 0.45, m
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["algorithm"] == "dpo" and saved["referenceModel"] == "the policy's starting point"
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()
    assert "Algorithm: dpo" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("algorithm", ["kto", "orpo"])
def test_kto_and_orpo_learn(tiny, preference_dataset, tmp_path, algorithm):
    options = {"referenceModel": tiny.as_uri()} if algorithm == "kto" else {}  # an explicit reference
    result = run(make_config(tiny, preference_dataset, tmp_path / "out", algorithm=algorithm, hyperparameters={"maxSteps": 20}, **options))
    m = result.metrics
    if algorithm == "kto":  # desirable answers gain, undesirable ones lose, on held-out answers
        assert m["eval_rewards/margins"] > 0.5, m
        assert json.loads((tmp_path / "out" / "result.json").read_text())["referenceModel"] == tiny.as_uri()
    else:  # ORPO: the SFT term on chosen answers plus the odds ratio, no reference
        assert m["eval_loss"] < m["base_eval_loss"] - 0.4, m  # about 8.2 -> 7.4 in 15 steps
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()


# --------------------------------------------------------------------------------------
# Checkpoints


def test_killed_run_resumes_from_last_checkpoint(tiny, preference_dataset, tmp_path):
    options = dict(hyperparameters={"maxSteps": 8}, checkpointing={"everySteps": 4, "keepLast": 2})
    output = tmp_path / "out"
    with pytest.raises(Killed):
        run(make_config(tiny, preference_dataset, output, **options), callbacks=(kill_after_save(4),))
    assert (output / "checkpoints" / "checkpoint-4").is_dir() and not (output / "result.json").exists()
    steps: list[int] = []
    resumed = run(make_config(tiny, preference_dataset, output, **options), callbacks=(record_steps(steps),))
    assert steps[0] == 4 and steps[-1] == 7
    assert resumed.metrics["steps"] == 8
    assert json.loads((output / "result.json").read_text())["resumedFrom"] == "checkpoint-4"


# --------------------------------------------------------------------------------------
# The real CLI: termination message, MLflow, progress; bad input


def _cli(config: RLHFStageConfig, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_wire()))
    termination = tmp_path / "termination-log"
    env = {**os.environ, "MENTOR_TERMINATION_LOG": str(termination), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mentor_trainer.cli", "rlhf", "--config", str(path)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    return proc, termination


def test_cli_tracks_margins_and_reports_progress(tiny, preference_dataset, tmp_path):
    db = tmp_path / "mlflow.db"
    progress = tmp_path / "progress.json"
    config = make_config(
        tiny, preference_dataset, tmp_path / "out", hyperparameters={"maxSteps": 6},
        tracking={"uri": f"sqlite:///{db}"}, progressFile=str(progress),
    )
    proc, termination = _cli(config, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = TrainingResult.from_wire(json.loads(termination.read_text()))
    assert result.model_uri == result.adapter_uri == (tmp_path / "out" / "adapter").as_uri() + "/"

    state = json.loads(progress.read_text())
    assert state["phase"] == "done" and state["step"] == 6 and state["rewardMargin"] is not None

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    run_info = client.get_run(result.mlflow_run_id)
    assert run_info.data.tags["mentor.algorithm"] == "dpo" and run_info.data.params["beta"] == "0.1"
    assert len(client.get_metric_history(result.mlflow_run_id, "rewards/margins")) == 6  # every step
    assert "final_eval_rewards/accuracies" in run_info.data.metrics


def _dataset_of(pairs: list[dict], tmp_path: Path) -> Path:
    from mentor_trainer.config import DataStageConfig
    from mentor_trainer.data import main as data_main

    (tmp_path / "pairs").mkdir(parents=True)
    (tmp_path / "pairs" / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    out = tmp_path / "dataset"
    data_main(DataStageConfig.model_validate({
        "run": {"kind": "DomainDataset", "name": "pairs", "namespace": "tests"},
        "outputUri": out.as_uri(),
        "sources": [{"name": "pairs", "uri": (tmp_path / "pairs").as_uri(), "format": "preference-jsonl"}],
        "formats": ["preference"],
        "split": {"train": 1.0, "validation": 0.0, "test": 0.0},
    }))
    return out


def test_pairs_that_teach_nothing_are_counted_and_none_left_is_a_clear_error(tiny, tmp_path):
    same = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"Answer {i}."} for i in range(6)]
    useful = [{"prompt": f"Why {i}?", "chosen": f"Because of reason {i}.", "rejected": "No idea."} for i in range(6)]
    dataset = _dataset_of(same + useful, tmp_path / "mixed")
    run(make_config(tiny, dataset, tmp_path / "out", hyperparameters={"maxSteps": 2}))
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["skipped"] == {"chosen-equals-rejected": 6}

    # only useless pairs: a permanent failure naming the dataset and the reason, from the CLI
    dataset = _dataset_of(same, tmp_path / "same")
    proc, termination = _cli(make_config(tiny, dataset, tmp_path / "none"), tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    message = termination.read_text()
    assert "no usable preference pairs" in message and "6 skipped: chosen-equals-rejected" in message
    assert str(dataset.as_uri()) in message


def test_preference_algorithm_without_pairs(tiny, dataset, tmp_path):
    # the corpus dataset has QA but no preference format
    with pytest.raises(StageError, match="no usable preference pairs.*spec.formats"):
        run(make_config(tiny, dataset, tmp_path / "out"))


def test_reference_model_that_does_not_load(tiny, preference_dataset, tmp_path):
    with pytest.raises(StageError, match="reference model"):
        run(make_config(tiny, preference_dataset, tmp_path / "out", referenceModel=(tmp_path / "missing").as_uri()))


def test_unknown_extra_argument_names_spec_extra(tiny, preference_dataset, tmp_path):
    with pytest.raises(StageError, match=r"spec.extra has \['no_such_option'\].*DPOConfig"):
        run(make_config(tiny, preference_dataset, tmp_path / "out", extra={"no_such_option": 1}))
