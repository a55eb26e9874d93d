"""Multi-GPU settings from `spec.distributed`: the DeepSpeed ZeRO config handed to the
Trainer, and which process is the one that writes outputs and tracks.

The launch itself (torchrun with the rendezvous of the Kubeflow TrainJob or the indexed
Job + headless Service) is built by the operator; each process reads the usual torchrun
environment (RANK, WORLD_SIZE, LOCAL_RANK)."""

from __future__ import annotations

import os
from typing import Any


def world_size(distributed) -> int:
    return distributed.nodes * distributed.gpus_per_node


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def node_rank() -> int:
    """This node's index (torchrun's GROUP_RANK); 0 without torchrun."""
    return int(os.environ.get("GROUP_RANK", "0") or 0)


def is_main_process() -> bool:
    return rank() == 0


def deepspeed_config(distributed, precision: str) -> dict[str, Any] | None:
    """The DeepSpeed config for ZeRO stage 1-3 (None for stage 0: plain DDP).

    Batch sizes, accumulation and clipping are "auto" so the Trainer fills them from the
    hyper-parameters (one source of truth)."""
    ds = distributed.deepspeed
    if ds.stage == 0:
        return None
    zero: dict[str, Any] = {
        "stage": ds.stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if ds.stage >= 2:
        zero["allgather_bucket_size"] = 5e8
    if ds.stage == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_gather_16bit_weights_on_model_save=True,
        )
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "wall_clock_breakdown": False,
    }
