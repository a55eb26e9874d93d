"""The multi-node launch command: torchrun through `mentor-trainer launch`, which exits 2 when a
rank failed permanently (plain torchrun exits 1, and the podFailurePolicy would retry a bad
config until the retries run out). tests/trainer/test_launch.py runs the launcher itself."""

from __future__ import annotations

import shlex

from torch.distributed import run as torch_run

from mentor_operator.api import KINDS
from mentor_operator.builders import plan_job_children
from mentor_operator.builders.job import CONFIG_FILE, TORCHRUN_PORT, torchrun_command
from mentor_operator.settings import Settings
from mentor_trainer.cli import COMMANDS


def launch_argv() -> list[str]:
    shell, flag, script = torchrun_command("sft", nodes=2, gpus_per_node=4, master_addr="ftj-sft-0.ftj-sft.ns.svc")
    assert (shell, flag) == ("/bin/sh", "-c")
    words = shlex.split(script.replace("$JOB_COMPLETION_INDEX", "1"))
    assert words[:3] == ["exec", "mentor-trainer", "launch"]
    assert "launch" in COMMANDS
    return words[3:]


def test_the_pod_runs_torchrun_through_the_launcher():
    args = torch_run.parse_args(launch_argv())
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "4", 1)
    assert (args.master_addr, args.master_port) == ("ftj-sft-0.ftj-sft.ns.svc", TORCHRUN_PORT)
    assert args.module and args.training_script == "mentor_trainer.cli"
    assert args.training_script_args == ["sft", "--config", CONFIG_FILE]


def test_trainjob_nodes_run_the_launcher_with_the_runtime_s_torchrun_environment(monkeypatch):
    """Kubeflow's torch runtime passes the topology as PET_* variables, torchrun's defaults: one
    process per GPU, and the exit-code contract, as on an indexed Job."""
    spec = {"baseModel": "s3://m/b/", "datasetRef": {"name": "d"}, "distributed": {"nodes": 2, "gpusPerNode": 4}}
    body = {"apiVersion": "mentor.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "ft", "namespace": "a", "uid": "u"}, "spec": spec}
    plan = plan_job_children(body, KINDS["FineTuneJob"].spec.model_validate(spec), {"dataset_uri": "s3://a/d/"}, Settings(), True)
    command = plan.runner["spec"]["trainer"]["command"]
    assert command[:2] == ["mentor-trainer", "launch"]
    for key, value in {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "4", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "ft-node-0-0.ft", "PET_MASTER_PORT": "29400"}.items():
        monkeypatch.setenv(key, value)
    args = torch_run.parse_args(command[2:])
    assert (args.nnodes, args.nproc_per_node, args.node_rank, args.master_addr) == ("2", "4", 1, "ft-node-0-0.ft")
    assert args.module and args.training_script == "mentor_trainer.cli"
    assert args.training_script_args == ["sft", "--config-env", "MENTOR_CONFIG_JSON"]
