"""Base models: loading from URIs.

- :func:`resolve_model` is the one resolver every stage uses for model and tokenizer URIs:
  ``file://``, ``pvc://``, ``s3://`` (downloaded to a local cache through
  :mod:`mentor_trainer.storage`), ``mlflow://models/<name>/<version>`` (the MLflow model
  registry) and ``hf://org/name`` (the Hugging Face hub, where reachable). A URI naming a
  ``.gguf`` file (any scheme) resolves to its converted transformers directory
  (:mod:`mentor_trainer.gguf`, cached by the file's content hash).
- :func:`load_model_and_tokenizer` and :func:`load_tokenizer` load what it found with the real
  transformers code (safetensors, sharded checkpoints, remote code off by default). Anything
  that goes wrong is a :class:`StageError` that says what to change.

The tiny model the tests and the quickstart train is :mod:`mentor_trainer.tiny_model`.
Heavy imports (torch, transformers) happen inside the functions.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import storage
from .errors import StageError

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    local_dir: Path  # where the checkpoint was read from (a cache dir for remote URIs)
    uri: str


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model URI's checkpoint is, as :func:`resolve_model` found it."""

    uri: str
    path: Path | None  # the local file or directory the URI names (after download or GGUF conversion); None for hf://
    hub_id: str | None = None  # hf:// only: the hub repository

    @property
    def location(self) -> str:
        """What from_pretrained-style loaders take: a local directory, or a hub id."""
        if self.hub_id is not None:
            return self.hub_id
        return str(self.path if self.path.is_dir() else self.path.parent)


def cache_root() -> Path:
    return Path(os.environ.get("MENTOR_MODEL_CACHE") or Path.home() / ".cache" / "mentor" / "models")


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".ckpt", ".h5", ".msgpack")


def _is_weights(name: str) -> bool:
    """Model weights (not needed to tokenize); files with "token" in the name never are."""
    lower = name.lower().rsplit("/", 1)[-1]
    return lower.endswith(_WEIGHT_SUFFIXES) and "token" not in lower


def _cached_download(uri: str, purpose: str = "base model") -> Path:
    """Download a storage prefix (or one object) once into the model cache (keyed by the URI,
    and for a single .gguf object also by its ETag and size; completed downloads marked), so a
    restarted pod does not fetch it again."""
    identity = uri
    infos = None
    if uri.lower().endswith(".gguf"):
        infos = list(storage.list_objects(uri))
        identity += "".join(f"\0{info.etag}\0{info.size}" for info in infos)
    key = hashlib.sha256(identity.encode()).hexdigest()[:24]
    target = cache_root() / key
    done = target / ".mentor-complete"
    if done.exists():
        return target
    if infos is None:
        infos = list(storage.list_objects(uri))
    if not infos:
        raise StageError(f"{purpose} {uri} is empty or missing: write a saved model there (config.json, *.safetensors, tokenizer) or fix the URI")
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    storage.download(uri, tmp)
    if target.exists():
        import shutil

        shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    done.write_text(uri)
    return target


def _tokenizer_download(uri: str, purpose: str, workdir: str | os.PathLike | None) -> Path:
    """The tokenizer files under an object-storage prefix (weights skipped), in a fresh
    directory under ``workdir``; a prefix holding only a GGUF goes through the model cache."""
    import tempfile

    infos = list(storage.list_objects(uri))
    names = {info.name for info in infos}
    if "config.json" not in names and any(name.lower().endswith(".gguf") for name in names):
        return _cached_download(uri, purpose)  # the tokenizer is inside the GGUF
    target = Path(tempfile.mkdtemp(prefix="mentor-tokenizer-", dir=workdir))
    for info in infos:
        if _is_weights(info.name):
            continue
        relative = Path(info.name)
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        (target / relative).write_bytes(storage.read_bytes(info.uri))
    if not any(target.iterdir()):
        raise StageError(f"{purpose} {uri} holds no files: write a saved model or tokenizer there or fix the URI")
    return target


def _local_model(path: Path, uri: str, purpose: str) -> ResolvedModel:
    """A local checkpoint; a GGUF file (or a directory holding just one) is converted first."""
    from . import gguf

    source = gguf.find_gguf(path)
    if source is not None:
        path = gguf.convert_gguf(source, label=f"{purpose} {uri}")
    return ResolvedModel(uri, path)


def resolve_model(
    uri: str,
    purpose: str = "base model",
    *,
    tokenizer_only: bool = False,
    workdir: str | os.PathLike | None = None,
) -> ResolvedModel:
    """THE model resolver every stage uses (base models, tokenizers, embedding and scoring
    models): ``file://`` and ``pvc://`` paths, ``s3://`` prefixes (downloaded once to the model
    cache), ``mlflow://models/<name>/<version-or-alias>`` (the MLflow registry) and
    ``hf://org/name`` (a hub id, left to transformers). A URI naming a ``.gguf`` file, or a
    prefix holding one and no config.json, resolves to its converted directory
    (:mod:`mentor_trainer.gguf`, cached by the file's content hash).

    ``purpose`` names the model in error messages (e.g. ``index.embeddingModel``).
    ``tokenizer_only``: only the tokenizer is needed, so an s3:// prefix is fetched without its
    weights into a fresh directory under ``workdir`` instead of the shared cache."""
    scheme = uri.partition("://")[0]
    if scheme == "hf":
        repo = uri[len("hf://"):].strip("/")
        if not repo:
            raise StageError(f"{purpose} {uri!r} names no model: use hf://org/name")
        return ResolvedModel(uri, None, hub_id=repo)
    if scheme in ("file", "pvc"):
        path = storage.local_path(uri)
        if not path.exists():
            raise StageError(f"{purpose} {uri} does not exist ({path}): build one (mentor-trainer tiny-model --out DIR) or fix the URI")
        return _local_model(path, uri, purpose)
    if scheme == "s3":
        path = _tokenizer_download(uri, purpose, workdir) if tokenizer_only else _cached_download(uri, purpose)
        return _local_model(path, uri, purpose)
    if scheme == "mlflow":
        return _mlflow_model(uri, purpose, tokenizer_only, workdir)
    raise StageError(f"unsupported model URI {uri!r}: use s3://, pvc://, file://, mlflow://models/<name>/<version> or hf://org/name")


def model_location(uri: str, purpose: str) -> str:
    """What from_pretrained-style loaders take for ``uri``: a local directory, or a hub id."""
    return resolve_model(uri, purpose).location


def _mlflow_model(uri: str, purpose: str, tokenizer_only: bool, workdir) -> ResolvedModel:
    rest = uri[len("mlflow://"):].strip("/")
    parts = rest.split("/")
    if len(parts) != 3 or parts[0] != "models":
        raise StageError(f"model URI {uri!r} must look like mlflow://models/<name>/<version>")
    _, name, version = parts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient()
        if not version.isdigit():  # an alias such as "champion"
            mv = client.get_model_version_by_alias(name, version)
        else:
            mv = client.get_model_version(name, version)
    except MlflowException as error:
        raise StageError(f"model {uri} is not in the MLflow registry ({error.error_code}): check the name and version") from None
    source = mv.source
    if source.partition("://")[0] in ("file", "pvc", "s3"):
        resolved = resolve_model(source, f"{purpose} {uri} (registered source)", tokenizer_only=tokenizer_only, workdir=workdir)
        return ResolvedModel(uri, resolved.path)
    import mlflow

    try:
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}"))
    except MlflowException as error:
        raise StageError(f"cannot download {uri} from MLflow: {error.message}") from None
    return _local_model(path, uri, purpose)


def _dir_fingerprint(path: Path) -> str:
    """A hash of what tokenization depends on in a checkpoint directory (all files but weights)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if _is_weights(relative) or file.name == ".mentor-complete":
            continue  # model weights do not change tokenization; the cache's marker is bookkeeping
        digest.update(relative.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def tokenizer_fingerprint(resolved: ResolvedModel) -> str:
    """A short content hash of a resolved model's tokenizer (hf://: the hub id), for content
    hashes that must change when the tokenizer does."""
    if resolved.hub_id is not None:
        return f"hf:{resolved.hub_id}"
    return _dir_fingerprint(Path(resolved.location))


def torch_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001 - no usable torch means CPU
        return "cpu"


def _check_checkpoint(path: Path, uri: str, purpose: str = "base model") -> None:
    if path.is_file():
        raise StageError(f"{purpose} {uri} is a file; point it at the directory holding config.json (or at a .gguf file)")
    if not (path / "config.json").is_file():
        raise StageError(f"{purpose} {uri} has no config.json ({path}): it is not a saved transformers model")
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin")) + list(path.glob("*.safetensors.index.json"))
    if not weights:
        raise StageError(f"{purpose} {uri} has no weights (*.safetensors) next to config.json")


def _hub_error(uri: str, error: Exception) -> StageError:
    return StageError(
        f"cannot load {uri} from the Hugging Face hub (unreachable or unknown model: {type(error).__name__}); "
        "copy the model to object storage and use an s3://, pvc:// or file:// URI (a .gguf file works too)"
    )


def load_tokenizer(model: ResolvedModel | str, purpose: str = "tokenizer", *, trust_remote_code: bool = False, workdir=None):
    """The transformers tokenizer of a model URI (or of what :func:`resolve_model` returned)."""
    import transformers
    from transformers import AutoTokenizer

    resolved = model if isinstance(model, ResolvedModel) else resolve_model(model, purpose, tokenizer_only=True, workdir=workdir)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.location, trust_remote_code=trust_remote_code)
    except Exception as error:  # noqa: BLE001 - any failure here means an unusable checkpoint
        if resolved.hub_id is not None:
            raise _hub_error(resolved.uri, error) from None
        raise StageError(f"cannot load the tokenizer of {purpose} {resolved.uri}: {type(error).__name__}: {str(error)[:300]}") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    return tokenizer


def load_model_and_tokenizer(
    uri: str,
    *,
    trust_remote_code: bool = False,
    dtype: Any = None,
    quantization_config: Any = None,
    device_map: Any = None,
    attn_implementation: str | None = None,
    load_model: bool = True,
    purpose: str = "base model",
    model_class: Any = None,
    model_kwargs: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a model (a causal LM unless ``model_class`` says otherwise, e.g.
    AutoModelForSequenceClassification with ``model_kwargs`` num_labels) and its tokenizer
    from a model URI (see the module doc)."""
    from transformers import AutoModelForCausalLM

    model_class = model_class or AutoModelForCausalLM
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, **(model_kwargs or {})}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation

    resolved = resolve_model(uri, purpose)
    if resolved.hub_id is None:
        _check_checkpoint(resolved.path, uri, purpose)
    tokenizer = load_tokenizer(resolved, purpose, trust_remote_code=trust_remote_code)
    model = None
    if load_model:
        try:
            model = model_class.from_pretrained(resolved.location, **kwargs)
        except ValueError as error:
            if "trust_remote_code" in str(error):
                raise StageError(
                    f"{purpose} {uri} needs its own code (trust_remote_code); set trustRemoteCode: true only if you trust it"
                ) from None
            if resolved.hub_id is not None:
                raise _hub_error(uri, error) from None
            raise StageError(f"cannot load {purpose} {uri}: {str(error)[:300]}") from None
        except Exception as error:  # noqa: BLE001 - OSError, SafetensorError, RuntimeError (shapes) ...
            if resolved.hub_id is not None:
                raise _hub_error(uri, error) from None
            raise StageError(
                f"cannot load {purpose} {uri} (unreadable or corrupt weights, {type(error).__name__}): {str(error)[:300]}"
            ) from None
    local_dir = Path(resolved.hub_id) if resolved.hub_id is not None else resolved.path
    return LoadedModel(model, tokenizer, local_dir, uri)


def model_summary(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable": trainable, "trainableShare": round(trainable / max(total, 1), 6)}
