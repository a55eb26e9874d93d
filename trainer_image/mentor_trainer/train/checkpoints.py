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

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "mentor-config.sha256"


def checkpoint_directory(config: SftStageConfig) -> Path:
    """The trainer's output_dir: <output_uri>/checkpoints/ on a local or pvc output; for object
    stores a fresh local directory holding the latest published checkpoint (to resume from)."""
    out = storage.parse(config.output_uri)
    if out.is_local:
        directory = storage.local_path(out.join("checkpoints"))
    else:
        directory = Path(tempfile.mkdtemp(prefix="mentor-ckpt-"))
        _download_latest_checkpoint(out.join("checkpoints"), directory)
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


def resume_point(config: SftStageConfig, directory: Path) -> str | None:
    """The latest checkpoint in ``directory`` made with this configuration, if resuming is on.
    Checkpoints of another configuration (same output URI, edited spec) are deleted: the run
    starts over."""
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
            if directory.is_dir():
                (directory / FINGERPRINT_FILE).write_text(fingerprint)

    return Fingerprint()


def _sync_callback(remote: storage.Uri):
    """After each checkpoint save, publish it under ``remote`` (<output_uri>/checkpoints/)."""
    from transformers import TrainerCallback

    class Sync(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            name = f"checkpoint-{state.global_step}"
            local = Path(args.output_dir) / name
            if local.is_dir():
                with storage.publish(remote.join(name), {"step": state.global_step}) as staging:
                    shutil.copytree(local, staging, dirs_exist_ok=True)
                # keep only what the trainer keeps locally
                kept = {p.name for p in Path(args.output_dir).glob("checkpoint-*")}
                for info in _remote_checkpoints(remote):
                    if info not in kept:
                        storage.delete_prefix(remote.join(info))

    return Sync()


def _remote_checkpoints(remote: storage.Uri) -> list[str]:
    names = set()
    try:
        for info in storage.list_objects(remote):
            head = info.name.split("/", 1)[0]
            if head.startswith("checkpoint-") and info.name.endswith(storage.SUCCESS_MARKER):
                names.add(head)
    except StageError:
        return []
    return sorted(names, key=lambda n: int(n.split("-")[1]))


def _download_latest_checkpoint(remote: storage.Uri, local: Path) -> None:
    names = _remote_checkpoints(remote)
    if names:
        latest = names[-1]
        log.info("downloading %s to resume", remote.join(latest))
        storage.download(remote.join(latest), local / latest)
        (local / latest / storage.SUCCESS_MARKER).unlink(missing_ok=True)
