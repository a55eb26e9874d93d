"""The model an export starts from: any model URI :func:`mentor_trainer.models.resolve_model`
takes, full checkpoint or PEFT adapter (LoRA, DoRA, QLoRA), loaded unquantised with its
tokenizer; an adapter is merged into its base (peft ``merge_and_unload``), so what is exported
is one plain transformers model.

An adapter directory holds ``adapter_config.json`` and no ``config.json``. Its base is the
URI the training stage recorded in the directory's commit marker (``"base"``, what
``train/publish`` writes), else the adapter config's ``base_model_name_or_path`` (a local
directory, or a hub id tried as ``hf://``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import storage
from ..errors import StageError
from ..models import ResolvedModel, load_model_and_tokenizer, load_tokenizer, resolve_model

log = logging.getLogger(__name__)

PURPOSE = "model to export (modelUri)"
ADAPTER_CONFIG = "adapter_config.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class SourceModel:
    model: Any
    tokenizer: Any
    uri: str  # the model URI asked for
    base_uri: str | None = None  # the base an adapter was merged into (None for a full model)
    adapter_type: str | None = None  # LORA (DoRA is LORA with use_dora) ...


def is_adapter_dir(path: Path | None) -> bool:
    return path is not None and path.is_dir() and (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def adapter_base_uri(uri: str, adapter_dir: Path) -> str:
    """The base model an adapter was trained on, as a model URI."""
    try:
        marker = storage.read_marker(uri) if uri.partition("://")[0] in storage.SCHEMES else None
    except StageError:
        marker = None
    if marker is None and (adapter_dir / storage.SUCCESS_MARKER).is_file():  # a downloaded or registered copy
        try:
            marker = json.loads((adapter_dir / storage.SUCCESS_MARKER).read_text() or "{}")
        except ValueError:
            marker = None
    base = (marker or {}).get("base")
    if base:
        return base
    try:
        recorded = json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except ValueError as error:
        raise StageError(f"{PURPOSE} {uri}: {ADAPTER_CONFIG} is not valid JSON ({error})") from None
    if not recorded:
        raise StageError(
            f"{PURPOSE} {uri} is an adapter that names no base model (no base_model_name_or_path in {ADAPTER_CONFIG}, "
            "no commit marker from a training run): export the merged model instead, or set it"
        )
    if Path(recorded).is_dir():
        return Path(recorded).resolve().as_uri()
    if "://" in recorded:
        return recorded
    return f"hf://{recorded}"


def load_source(uri: str, *, dtype: Any = "auto", device: str = "cpu") -> SourceModel:
    """The model behind ``uri``, unquantised, on ``device``, an adapter merged into its base."""
    resolved: ResolvedModel = resolve_model(uri, PURPOSE)
    if not is_adapter_dir(resolved.path):
        loaded = load_model_and_tokenizer(uri, dtype=dtype, purpose=PURPOSE)
        return SourceModel(loaded.model.to(device), loaded.tokenizer, uri)

    adapter_dir = resolved.path
    base_uri = adapter_base_uri(uri, adapter_dir)
    log.info("%s is an adapter: merging it into its base %s", uri, base_uri)
    base = load_model_and_tokenizer(base_uri, dtype=dtype, purpose=f"base model {base_uri} of the adapter {uri}")
    tokenizer = base.tokenizer
    if any((adapter_dir / name).is_file() for name in _TOKENIZER_FILES):
        # the training run saves its tokenizer (pad token, chat template) beside the adapter
        tokenizer = load_tokenizer(ResolvedModel(uri, adapter_dir), f"tokenizer of the adapter {uri}")
    from peft import PeftConfig, PeftModel

    try:
        peft_config = PeftConfig.from_pretrained(str(adapter_dir))
        model = PeftModel.from_pretrained(base.model.to(device), str(adapter_dir), is_trainable=False)
    except Exception as error:  # noqa: BLE001 - shapes, missing modules, bad files: all the user's to fix
        raise StageError(
            f"cannot apply the adapter {uri} to its base {base_uri} ({type(error).__name__}: {str(error)[:300]}): "
            "the adapter must come from a run on that base model"
        ) from None
    merged = model.merge_and_unload()
    adapter_type = str(getattr(peft_config, "peft_type", "") or "").rsplit(".", 1)[-1] or None
    if getattr(peft_config, "use_dora", False):
        adapter_type = "DORA"
    return SourceModel(merged, tokenizer, uri, base_uri=base_uri, adapter_type=adapter_type)
