"""`mentor-trainer rlhf`: preference optimisation (DPO, ORPO, KTO), RL with rewards (GRPO, PPO),
reward models and distillation, on TRL.

main(config: RLHFStageConfig) -> TrainingResult (model, adapter, MLflow run, metrics). The
frame every algorithm shares is :mod:`.stage`; each algorithm is one module with
``build(run) -> Built`` (:mod:`.context`); their data comes through :mod:`.data`.
"""

from .stage import main, run

__all__ = ["main", "run"]
