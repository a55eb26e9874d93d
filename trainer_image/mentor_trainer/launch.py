"""`mentor-trainer launch <torchrun arguments> -m mentor_trainer.cli STAGE ...`: torchrun that
keeps the stage's exit-code contract.

torchrun (``torch.distributed.run``) exits 1 whatever its workers exited with, so a permanent
failure (exit 2: bad config or input), which the Job's podFailurePolicy fails at once, would
burn every retry. This runs the same launcher in-process and reads the per-rank exit codes
from its ChildFailedError: the pod exits 2 when any local rank did, else 1. Each worker also
leaves its error in torchelastic's per-rank error file (see cli.write_failure), so the
termination message is the failing rank's own error, not whichever rank wrote last (a rank
that fails first makes the others fail with connection errors).
"""

from __future__ import annotations

import os
import sys

from .cli import EXIT_PERMANENT, EXIT_TRANSIENT, write_termination


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as error:
        rank, failure = reported_failure(error)
        print(f"mentor-trainer launch: rank {rank} failed with exit code {failure.exitcode}", file=sys.stderr)
        write_termination(failure_message(rank, failure))
        return EXIT_PERMANENT if failure.exitcode == EXIT_PERMANENT else EXIT_TRANSIENT
    return 0


def reported_failure(error):
    """The (rank, ProcessFailure) to report: the lowest rank that failed permanently, else the
    first to fail (its error is the cause; later ones are usually its consequence)."""
    permanent = sorted(rank for rank, failure in error.failures.items() if failure.exitcode == EXIT_PERMANENT)
    if permanent:
        return permanent[0], error.failures[permanent[0]]
    return error.get_first_failure()


def failure_message(rank: int, failure) -> str:
    """The worker's own error when it wrote one; torchelastic's description otherwise (a
    signal, or a crash before the stage could report)."""
    if os.path.isfile(failure.error_file):
        return str(failure.message)
    return f"rank {rank} exited with code {failure.exitcode}: {failure.message}"
