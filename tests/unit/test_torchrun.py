"""The multi-node launch command: torchrun through `mentor-trainer launch`, which exits 2 when a
rank failed permanently (plain torchrun exits 1, and the podFailurePolicy would retry a bad
config until the retries run out). tests/trainer/test_launch.py runs the launcher itself."""

from __future__ import annotations

import shlex

import pytest

from mentor_operator.builders.job import CONFIG_FILE, TORCHRUN_PORT, torchrun_command
from mentor_trainer.cli import COMMANDS


def launch_argv() -> list[str]:
    shell, flag, script = torchrun_command("sft", nodes=2, gpus_per_node=4, master_addr="ftj-sft-0.ftj-sft.ns.svc")
    assert (shell, flag) == ("/bin/sh", "-c")
    words = shlex.split(script.replace("$JOB_COMPLETION_INDEX", "1"))
    assert words[:3] == ["exec", "mentor-trainer", "launch"]
    assert "launch" in COMMANDS
    return words[3:]


def test_the_pod_runs_torchrun_through_the_launcher():
    torch_run = pytest.importorskip("torch.distributed.run")
    args = torch_run.parse_args(launch_argv())
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "4", 1)
    assert (args.master_addr, args.master_port) == ("ftj-sft-0.ftj-sft.ns.svc", TORCHRUN_PORT)
    assert args.module and args.training_script == "mentor_trainer.cli"
    assert args.training_script_args == ["sft", "--config", CONFIG_FILE]
