"""`mentor-trainer launch`: torchrun on 2 CPU processes that keeps the exit-code contract (2 =
permanent, which the Job's podFailurePolicy fails at once; torchrun alone exits 1) and reports
the failing rank's own error as the termination message."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mentor_trainer

LAUNCH = [sys.executable, "-m", "mentor_trainer.cli", "launch", "--standalone", "--nproc-per-node=2", "--monitor-interval=0.1"]


def launch(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, str]:
    termination = tmp_path / "termination-log"
    # the workers import mentor_trainer from this checkout, installed or not
    path = os.pathsep.join([str(Path(mentor_trainer.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "MENTOR_TERMINATION_LOG": str(termination), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*LAUNCH, *args], env=env, capture_output=True, text=True, timeout=120)
    return done, termination.read_text() if termination.exists() else ""


def test_a_bad_config_on_every_rank_exits_2_with_its_message(tmp_path):
    done, message = launch(["-m", "mentor_trainer.cli", "sft", "--config", str(tmp_path / "missing.json")], tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message.startswith(f"cannot read config {tmp_path / 'missing.json'}")


def test_the_permanent_rank_is_reported_not_the_last_to_write(tmp_path):
    """Rank 1 fails on bad input; rank 0 then fails as a consequence (here: it writes its error
    after rank 1's, as a collective broken by rank 1's exit would), and exits 1."""
    worker = tmp_path / "worker.py"
    worker.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            from pathlib import Path
            from mentor_trainer.cli import write_failure

            if os.environ["RANK"] == "1":
                write_failure("bad input on rank 1")
                sys.exit(2)
            log = Path(os.environ["MENTOR_TERMINATION_LOG"])
            while not log.exists():
                time.sleep(0.01)
            write_failure("RuntimeError: connection closed by peer")
            sys.exit(1)
            """
        )
    )
    done, message = launch([str(worker)], tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message == "bad input on rank 1"


def test_a_transient_failure_exits_1_naming_the_rank(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text("import os, sys\nsys.exit(1 if os.environ['RANK'] == '1' else 0)\n")
    done, message = launch([str(worker)], tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert message.startswith("rank 1 exited with code 1")
