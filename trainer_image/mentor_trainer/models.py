"""Base models: loading from URIs, and the tiny Qwen2 model the tests and the quickstart train.

- :func:`resolve_model` is the one resolver every stage uses for model and tokenizer URIs:
  ``file://``, ``pvc://``, ``s3://`` (downloaded to a local cache through
  :mod:`mentor_trainer.storage`), ``mlflow://models/<name>/<version>`` (the MLflow model
  registry) and ``hf://org/name`` (the Hugging Face hub, where reachable). A URI naming a
  ``.gguf`` file (any scheme) resolves to its converted transformers directory
  (:mod:`mentor_trainer.gguf`, cached by the file's content hash).
- :func:`load_model_and_tokenizer` and :func:`load_tokenizer` load what it found with the real
  transformers code (safetensors, sharded checkpoints, remote code off by default). Anything
  that goes wrong is a :class:`StageError` that says what to change.
- :func:`build_tiny_model` writes a tiny Qwen2-architecture model with a locally trained
  byte-level BPE tokenizer carrying a DeepSeek-R1-Distill style chat template, so everything
  trains on a CPU in seconds with nothing downloaded.
- :func:`qwen2_1p5b_config` is the DeepSeek-R1-Distill-Qwen-1.5B shape (random weights) for
  GPU throughput work.

Heavy imports (torch, transformers) happen inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from . import storage
from .errors import StageError

log = logging.getLogger(__name__)

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
PAD = "<｜▁pad▁｜>"
THINK, END_THINK = "<think>", "</think>"
# transformers loads Qwen2-architecture tokenizers as Qwen2Tokenizer, which adds this one when
# missing; having it in the vocabulary keeps len(tokenizer) == the model's vocab_size.
QWEN_EOT = "<|endoftext|>"

# DeepSeek-R1-Distill chat template (written here, not copied): system text first, then
# <｜User｜>question<｜Assistant｜>answer<｜end▁of▁sentence｜> per turn. The reasoning block of
# earlier assistant turns is dropped (as the R1 template does); the last assistant turn keeps
# its <think>...</think> block, so chain-of-thought examples train with their reasoning.
# The generation prompt is <｜Assistant｜> alone, so a rendered prompt is always a prefix of
# the rendered prompt + answer (completion-only loss relies on that); pass
# `thinking=true` to open a <think> block for inference.
CHAT_TEMPLATE = (
    "{%- if add_generation_prompt is not defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{%- set ns = namespace(system='') %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{%- set ns.system = ns.system + (message['content'] if ns.system == '' else '\\n\\n' + message['content']) %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{{- bos_token + ns.system }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}"
    "{{- '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{%- set content = message['content'] %}"
    "{%- if not loop.last and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip() %}"
    "{%- endif %}"
    "{{- '<｜Assistant｜>' + content + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<｜Assistant｜>' }}"
    "{%- if thinking is defined and thinking %}{{- '<think>\\n' }}{% endif %}"
    "{%- endif %}"
)

# Built-in training text for the tiny tokenizer (general English and Chinese, chat markup), so
# it covers both languages even without the example corpus.
_BUILTIN_TEXT = """
The quick brown fox jumps over the lazy dog. A model learns the words of a domain from examples.
Questions and answers: What is the capital of France? Paris is the capital of France.
How many days are in a week? There are seven days in a week. Explain the reasoning step by step.
Temperature, humidity, altitude, soil, water, harvest, leaf, garden, valley, mountain, research.
The institute publishes guidelines for cultivation, processing, grading, storage and shipping.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 15 20 25 30 50 100 1,000 2023 2024 3.5% 18°C 1,400 metres.
机器学习模型从数据中学习。问题：法国的首都是哪里？答案：巴黎是法国的首都。
一周有几天？一周有七天。请一步一步地解释推理过程。温度、湿度、海拔、土壤、水分、采摘、叶片。
研究所发布种植、加工、分级、储存和运输的指南。茶叶在山谷的梯田上种植，春季采摘新芽。
<think>
The question asks for a fact. The document gives it directly.
</think>

The answer is given in the document.
"""

TINY_DEFAULTS = dict(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=1024,
    # Larger than Qwen2's 0.02 so that the random head gives adapters something to steer:
    # with 0.02 the logits are near-uniform and a LoRA on the blocks barely moves them.
    initializer_range=0.1,
)


# --------------------------------------------------------------------------------------
# Model shapes


def qwen2_1p5b_config():
    """A Qwen2Config with the DeepSeek-R1-Distill-Qwen-1.5B dimensions (for GPU throughput work)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=131072,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        use_sliding_window=False,
        bos_token_id=151646,
        eos_token_id=151643,
    )


def _corpus_texts(paths: Iterable[Path]) -> Iterable[str]:
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if path.suffix.lower() not in (".md", ".txt", ".jsonl", ".csv", ".html"):
                continue
            try:
                yield path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue


def default_corpus_dirs() -> list[Path]:
    """The example corpus when running from a checkout (the image has none)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "examples" / "corpus"
        if candidate.is_dir():
            return [candidate / "docs", candidate / "qa"]
    return []


def build_tokenizer(texts: Iterable[str], vocab_size: int = 3072):
    """A byte-level BPE tokenizer trained here on ``texts``, with the chat template and the
    DeepSeek-R1 special tokens (BOS/EOS/User/Assistant, <think>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, USER, ASSISTANT, PAD, QWEN_EOT]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Like the DeepSeek tokenizer: plain text gets BOS in front (chat renderings carry their own).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=TINY_DEFAULTS["max_position_embeddings"],
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.add_tokens([THINK, END_THINK])  # whole tokens, but not special: they are part of answers
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(
    out_dir: str | os.PathLike,
    *,
    vocab_size: int = 3072,
    seed: int = 0,
    corpus_dirs: list[Path] | None = None,
    **shape: Any,
) -> Path:
    """Write a tiny Qwen2ForCausalLM + tokenizer (safetensors) to ``out_dir``; returns it."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = [_BUILTIN_TEXT] * 3 + list(_corpus_texts(default_corpus_dirs() if corpus_dirs is None else corpus_dirs))
    tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
    dims = {**TINY_DEFAULTS, **shape}
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_act="silu",
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        use_sliding_window=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **dims,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(
        "# mentor tiny model\n\nA randomly initialised Qwen2-architecture model "
        f"({sum(p.numel() for p in model.parameters()):,} parameters, {dims['num_hidden_layers']} layers, "
        f"hidden {dims['hidden_size']}) with a byte-level BPE tokenizer trained locally ({len(tokenizer)} tokens) "
        "and a DeepSeek-R1-Distill style chat template. Built by `mentor-trainer tiny-model` for tests and "
        "the quickstart; it knows nothing until fine-tuned.\n"
    )
    return out


# --------------------------------------------------------------------------------------
# Loading


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
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a model URI (see the module doc)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
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
            model = AutoModelForCausalLM.from_pretrained(resolved.location, **kwargs)
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


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
