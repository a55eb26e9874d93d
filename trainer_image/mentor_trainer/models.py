"""Base models: loading from URIs, and the tiny Qwen2 model the tests and the quickstart train.

- :func:`load_model_and_tokenizer` resolves ``file://``, ``pvc://``, ``s3://`` (downloaded to a
  local cache through :mod:`mentor_trainer.storage`), ``mlflow://models/<name>/<version>`` (the
  MLflow model registry) and ``hf://org/name`` (the Hugging Face hub, where reachable), then
  loads with the real transformers code (safetensors, sharded checkpoints, remote code off by
  default). Anything that goes wrong is a :class:`StageError` that says what to change.
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


def cache_root() -> Path:
    return Path(os.environ.get("MENTOR_MODEL_CACHE") or Path.home() / ".cache" / "mentor" / "models")


def _cached_download(uri: str, purpose: str = "base model") -> Path:
    """Download a storage prefix once into the model cache (keyed by the URI, completed
    downloads marked), so a restarted pod does not fetch it again."""
    key = hashlib.sha256(uri.encode()).hexdigest()[:24]
    target = cache_root() / key
    done = target / ".mentor-complete"
    if done.exists():
        return target
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


def resolve_model_dir(uri: str, purpose: str = "base model") -> Path:
    """A local directory holding the checkpoint named by ``uri`` (hf:// is not handled here).
    ``purpose`` names the model in error messages (e.g. ``index.embeddingModel``)."""
    scheme = uri.partition("://")[0]
    if scheme in ("file", "pvc"):
        path = storage.local_path(uri)
        if not path.exists():
            raise StageError(f"{purpose} {uri} does not exist ({path}): build one (mentor-trainer tiny-model --out DIR) or fix the URI")
        return path
    if scheme == "s3":
        return _cached_download(uri, purpose)
    if scheme == "mlflow":
        return _mlflow_model_dir(uri)
    raise StageError(f"unsupported model URI {uri!r}: use s3://, pvc://, file://, mlflow://models/<name>/<version> or hf://org/name")


def model_location(uri: str, purpose: str) -> str:
    """What from_pretrained-style loaders take: a local directory, or a hub id for hf://."""
    if uri.startswith("hf://"):
        return uri[len("hf://") :]
    path = resolve_model_dir(uri, purpose)
    return str(path if path.is_dir() else path.parent)


def torch_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001 - no usable torch means CPU
        return "cpu"


def _mlflow_model_dir(uri: str) -> Path:
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
        return resolve_model_dir(source)
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}"))
    except MlflowException as error:
        raise StageError(f"cannot download {uri} from MLflow: {error.message}") from None


def _check_checkpoint(path: Path, uri: str, purpose: str = "base model") -> None:
    if path.is_file():
        raise StageError(f"{purpose} {uri} is a file; point it at the directory holding config.json")
    if not (path / "config.json").is_file():
        raise StageError(f"{purpose} {uri} has no config.json ({path}): it is not a saved transformers model")
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin")) + list(path.glob("*.safetensors.index.json"))
    if not weights:
        raise StageError(f"{purpose} {uri} has no weights (*.safetensors) next to config.json")


def load_tokenizer(source: str | Path, uri: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as error:  # noqa: BLE001 - any failure here means an unusable checkpoint
        raise StageError(f"cannot load the tokenizer of {uri}: {type(error).__name__}: {str(error)[:300]}") from None


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

    if uri.startswith("hf://"):
        name = uri[len("hf://"):].strip("/")
        try:
            tokenizer = _hub_tokenizer(name, trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs) if load_model else None
        except StageError:
            raise
        except Exception as error:  # noqa: BLE001
            raise StageError(
                f"cannot load {uri} from the Hugging Face hub (unreachable or unknown model: {type(error).__name__}); "
                "copy the model to object storage and use an s3://, pvc:// or file:// baseModel"
            ) from None
        return LoadedModel(model, tokenizer, Path(name), uri)

    path = resolve_model_dir(uri, purpose)
    _check_checkpoint(path, uri, purpose)
    tokenizer = load_tokenizer(path, uri, trust_remote_code)
    model = None
    if load_model:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except ValueError as error:
            if "trust_remote_code" in str(error):
                raise StageError(
                    f"{purpose} {uri} needs its own code (trust_remote_code); set trustRemoteCode: true only if you trust it"
                ) from None
            raise StageError(f"cannot load {purpose} {uri}: {str(error)[:300]}") from None
        except Exception as error:  # noqa: BLE001 - OSError, SafetensorError, RuntimeError (shapes) ...
            raise StageError(
                f"cannot load {purpose} {uri} (unreadable or corrupt weights, {type(error).__name__}): {str(error)[:300]}"
            ) from None
    return LoadedModel(model, tokenizer, path, uri)


def _hub_tokenizer(name: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)


def model_summary(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable": trainable, "trainableShare": round(trainable / max(total, 1), 6)}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
