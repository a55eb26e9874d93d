"""Checkpoints: where the trainer writes them (under <output_uri>/checkpoints/, or a local
directory mirrored there for object stores), the configuration fingerprint each carries, and
which one a restarted run resumes from."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

from .. import storage
from ..config.sft import SftStageConfig
from ..errors import StageError
from . import distributed

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "mentor-config.sha256"


def checkpoint_directory(config: SftStageConfig) -> Path:
    """The trainer's output_dir: <output_uri>/checkpoints/ on a local or pvc output (shared by
    every rank); for object stores a local directory per node, named after the output so that
    the node's ranks agree on it without talking (the process group does not exist yet).
    :func:`resume_point` fills it."""
    out = storage.parse(config.output_uri)
    if out.is_local:
        directory = storage.local_path(out.join("checkpoints"))
    else:
        name = hashlib.sha256(str(out).encode()).hexdigest()[:16]
        directory = Path(tempfile.gettempdir()) / "mentor-checkpoints" / name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def checkpoint_callbacks(config: SftStageConfig) -> list:
    """TrainerCallbacks that stamp each checkpoint with the config fingerprint and, for object
    stores, publish it (the fingerprint first, so it travels with the checkpoint)."""
    callbacks = [_fingerprint_callback(config_fingerprint(config))]
    out = storage.parse(config.output_uri)
    if not out.is_local:
        callbacks.append(_sync_callback(out.join("checkpoints")))
    return callbacks


def resume_point(config: SftStageConfig, directory: Path, args) -> str | None:
    """The latest checkpoint in ``directory`` made with this configuration, if resuming is on.
    For object stores the local main process of each node first empties the node's directory
    (a leftover of an earlier run is not this run's) and downloads the node's part of the
    latest complete checkpoint; the node's other ranks wait for it (``args``: the trainer's
    TrainingArguments). Checkpoints of another configuration (same output URI, edited spec)
    are deleted: the run starts over."""
    with args.main_process_first(local=True, desc="checkpoint download"):
        out = storage.parse(config.output_uri)
        if not out.is_local and args.local_process_index == 0:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            if config.checkpointing.resume:
                _download_latest_checkpoint(out.join("checkpoints"), directory)
        return _latest_resumable(config, directory)


def _latest_resumable(config: SftStageConfig, directory: Path) -> str | None:
    if not config.checkpointing.resume:
        return None
    from transformers.trainer_utils import get_last_checkpoint

    latest = get_last_checkpoint(str(directory))
    if latest and _read_fingerprint(latest) != config_fingerprint(config):
        log.warning("ignoring checkpoints in %s: they were made with a different configuration", directory)
        for old_checkpoint in directory.glob("checkpoint-*"):
            shutil.rmtree(old_checkpoint, ignore_errors=True)
        return None
    return latest


def config_fingerprint(config: SftStageConfig) -> str:
    """What a checkpoint must match to be resumed from: the training config (not tracking,
    progress or the resource's generation)."""
    wire = config.model_dump(mode="json", exclude={"progress_file", "tracking", "run"})
    return hashlib.sha256(json.dumps(wire, sort_keys=True).encode()).hexdigest()


def _read_fingerprint(checkpoint: str) -> str | None:
    try:
        return (Path(checkpoint) / FINGERPRINT_FILE).read_text().strip()
    except OSError:
        return None


def _fingerprint_callback(fingerprint: str):
    from transformers import TrainerCallback

    class Fingerprint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if args.should_save and directory.is_dir():  # the process that writes the checkpoint's shared files
                (directory / FINGERPRINT_FILE).write_text(fingerprint)

    return Fingerprint()


def _sync_callback(remote: storage.Uri):
    """After each checkpoint save, publish it under ``remote`` (<output_uri>/checkpoints/), once
    and complete: every node holds a whole checkpoint (save_on_each_node) with its own ranks'
    files (RNG states, DeepSpeed shards), so each node publishes its directory as
    checkpoint-N/node-K/ after all its ranks have written, and rank 0 marks checkpoint-N
    complete (its _SUCCESS) once every node has published. Ranks never write the same prefix."""
    from transformers import TrainerCallback

    class Sync(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            name = f"checkpoint-{state.global_step}"
            marker = remote.join(name, storage.SUCCESS_MARKER)
            if state.is_world_process_zero:  # not resumable while its parts change
                storage.delete_prefix(marker)
            args.distributed_state.wait_for_everyone()  # every rank has written its files and the marker is gone
            if state.is_local_process_zero:
                local = Path(args.output_dir) / name
                _add_deepspeed_latest(local)
                with storage.publish(remote.join(name, _node_part()), {"step": state.global_step}) as staging:
                    shutil.copytree(local, staging, dirs_exist_ok=True)
            args.distributed_state.wait_for_everyone()  # every node has published its part
            if state.is_world_process_zero:
                storage.write_text(marker, json.dumps({"step": state.global_step}))
                # keep only what the trainer keeps locally (every node rotates the same way)
                kept = {p.name for p in Path(args.output_dir).glob("checkpoint-*")}
                for old in _remote_checkpoints(remote):
                    if old not in kept:
                        storage.delete_prefix(remote.join(old, storage.SUCCESS_MARKER))
                        storage.delete_prefix(remote.join(old))

    return Sync()


def _node_part() -> str:
    return f"node-{distributed.node_rank()}"


def _add_deepspeed_latest(checkpoint: Path) -> None:
    """DeepSpeed names the tag to resume in a `latest` file written by global rank 0 only, even
    with node-local storage; without it the other nodes cannot load their part."""
    tags = [path.name for path in checkpoint.glob("global_step*")]  # one per checkpoint
    if len(tags) == 1 and not (checkpoint / "latest").exists():
        (checkpoint / "latest").write_text(tags[0])


def _remote_checkpoints(remote: storage.Uri) -> list[str]:
    """The complete checkpoints under ``remote`` (their own marker, not only a node's), oldest first."""
    names = set()
    try:
        for info in storage.list_objects(remote):
            head, _, rest = info.name.partition("/")
            if head.startswith("checkpoint-") and rest == storage.SUCCESS_MARKER:
                names.add(head)
    except StageError:
        return []
    return sorted(names, key=lambda n: int(n.split("-")[1]))


def _download_latest_checkpoint(remote: storage.Uri, local: Path) -> None:
    """This node's part of the latest complete checkpoint, into local/checkpoint-N."""
    names = _remote_checkpoints(remote)
    if not names:
        return
    part = remote.join(names[-1], _node_part())
    if not storage.exists_complete(part):
        log.warning("%s is missing: starting over (was the checkpoint made with another number of nodes?)", part)
        return
    log.info("downloading %s to resume", part)
    storage.download(part, local / names[-1])
    (local / names[-1] / storage.SUCCESS_MARKER).unlink(missing_ok=True)
