"""`mentor-trainer export`: a model URI (full checkpoint or adapter) -> a servable artefact.

Under ``output_uri``:

- ``model/``: a transformers directory any HF-style runtime serves from ``storageUri``
  (safetensors, tokenizer with its chat template, ``generation_config.json`` carrying the
  deployment's ``max_new_tokens`` and temperature, ``README.md`` model card). An adapter is
  merged into its base first (:mod:`.source`); ``quantization.method`` other than ``none``
  stores torchao weight-only weights that ``from_pretrained`` reloads (:mod:`.quantize`);
- ``triton/`` (``runtime: triton``): a Triton model repository over that directory
  (:mod:`.triton`);
- ``result.json``: the result with the details (device, dtype, source, texts measured).

What quantisation cost is measured, not guessed: the weights' size before and after, and the
perplexity on up to :data:`MAX_PERPLEXITY_TEXTS` validation texts of ``dataset_uri`` of the
unquantised model and of the exported directory reloaded from disk.

Runs on CPU unless a CUDA GPU is visible. Heavy imports happen inside the functions.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from .. import storage
from ..config.deploy import ExportResult, ExportStageConfig
from ..errors import StageError
from ..progress import ProgressReporter

log = logging.getLogger(__name__)

MAX_PERPLEXITY_TEXTS = 64
PERPLEXITY_MAX_TOKENS = 512
MODEL_DIR = "model"
TRITON_DIR = "triton"


def main(config: ExportStageConfig) -> ExportResult:
    with ProgressReporter.for_stage(config.progress_file) as progress:
        return ExportRun(config, progress).run()


def validation_texts(dataset_uri: str | None, limit: int = MAX_PERPLEXITY_TEXTS) -> list[str]:
    """Up to ``limit`` texts (pretrain chunks) of the dataset's validation split."""
    if not dataset_uri:
        return []
    from ..data.layout import read_split

    texts = [row["text"] for row in read_split(dataset_uri, "validation", ("pretrain",)) if row.get("text")]
    if not texts:
        log.warning("datasetUri %s has no validation texts (pretrain format): perplexity is not measured", dataset_uri)
    return texts[:limit]


def perplexity(model: Any, tokenizer: Any, texts: list[str], device: str) -> float | None:
    """exp(mean token negative log-likelihood) over ``texts`` (None without texts)."""
    if not texts:
        return None
    from ..evaluate.lm import LanguageModel, _context_length

    lm = LanguageModel(model, tokenizer, device=device, batch_size=8,
                       max_length=min(PERPLEXITY_MAX_TOKENS, _context_length(model, tokenizer)))
    scored = lm.token_nll(texts)
    tokens = sum(n for _, n in scored)
    if tokens == 0:
        return None
    value = math.exp(sum(nll for nll, _ in scored) / tokens)
    return round(value, 6) if math.isfinite(value) else None


class ExportRun:
    def __init__(self, config: ExportStageConfig, progress: ProgressReporter) -> None:
        self.config = config
        self.progress = progress

    def run(self) -> ExportResult:
        from ..models import torch_device
        from .card import model_card, served_temperature, serving_generation_config
        from .quantize import check_supported, quantize_saved, weights_size
        from .source import load_source

        config = self.config
        method = config.quantization.method
        device = torch_device()
        check_supported(method, device)  # before minutes of loading
        texts = validation_texts(config.dataset_uri)

        self.progress.update(force=True, phase="loading model")
        source = load_source(config.model_uri, dtype="auto", device=device)
        model, tokenizer = source.model.eval(), source.tokenizer
        base_uri, adapter_type = source.base_uri, source.adapter_type
        generation = serving_generation_config(model, tokenizer, config)
        model.generation_config = generation
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if not has_template:
            log.warning("the tokenizer of %s has no chat template: chat requests to the served model cannot be rendered", config.model_uri)

        self.progress.update(force=True, phase="measuring perplexity" if texts else "saving")
        unquantized_ppl = perplexity(model, tokenizer, texts, device)

        out = storage.parse(config.output_uri)
        model_uri = out.join(MODEL_DIR)
        metadata = {"kind": "model", "source": config.model_uri, "base": base_uri, "quantization": method}
        with tempfile.TemporaryDirectory(prefix="mentor-export-") as work, storage.publish(model_uri, metadata) as staging:
            if method == "none":
                save(model, tokenizer, staging)
                size = unquantized_size = weights_size(staging)
                ppl = unquantized_ppl
            else:
                plain = Path(work) / "unquantized"
                save(model, tokenizer, plain)
                unquantized_size = weights_size(plain)
                del model, source
                gc.collect()
                self.progress.update(force=True, phase=f"quantizing ({method})")
                quantized = quantize_saved(plain, method, device)
                quantized.generation_config = generation
                save(quantized, tokenizer, staging)
                del quantized
                gc.collect()
                size = weights_size(staging)
                if texts:
                    self.progress.update(force=True, phase="measuring perplexity (quantized)")
                ppl = self._reloaded_perplexity(staging, tokenizer, texts, device)
            result = ExportResult(
                model_uri=str(model_uri) + "/",
                quantization=method,
                size_bytes=size,
                unquantized_size_bytes=unquantized_size,
                perplexity=ppl,
                unquantized_perplexity=unquantized_ppl,
                temperature=served_temperature(generation),
            )
            card = model_card(config, result, base_uri=base_uri, adapter_type=adapter_type,
                              device=device, dtype=dtype, texts=len(texts), has_chat_template=has_template)
            (staging / "README.md").write_text(card)
            if config.runtime == "triton":
                result.model_uri = self._triton(staging, out)

        self.progress.update(force=True, phase="publishing")
        details = {
            **result.to_wire(),
            "exportedModelUri": str(model_uri) + "/",
            "sourceModelUri": config.model_uri,
            "adapterBaseUri": base_uri,
            "runtime": config.runtime,
            "device": device,
            "dtype": dtype,
            "perplexityTexts": len(texts),
        }
        storage.write_text(out.join("result.json"), json.dumps(details, indent=2, sort_keys=True))
        self._track(details, card)
        log.info(
            "exported %s -> %s (%s, %d bytes of weights, unquantized %d; perplexity %s, unquantized %s)",
            config.model_uri, result.model_uri, method, size, unquantized_size, ppl, unquantized_ppl,
        )
        self.progress.update(force=True, phase="done")
        return result

    # ------------------------------------------------------------------ steps

    def _reloaded_perplexity(self, directory: Path, tokenizer: Any, texts: list[str], device: str) -> float | None:
        """Reload what was written (the check that it reloads) and measure it."""
        from transformers import AutoModelForCausalLM

        try:
            reloaded = AutoModelForCausalLM.from_pretrained(directory, device_map=device if device == "cuda" else None)
        except Exception as error:  # noqa: BLE001 - an export that does not reload must not be published
            raise StageError(
                f"spec.quantization.method: the {self.config.quantization.method} export does not reload with transformers "
                f"({type(error).__name__}: {str(error)[:300]})",
                permanent=False,
            ) from None
        try:
            return perplexity(reloaded.eval(), tokenizer, texts, device)
        finally:
            del reloaded
            gc.collect()

    def _triton(self, model_dir: Path, out: storage.Uri) -> str:
        from .triton import write_repository

        config = self.config
        self.progress.update(force=True, phase="writing the triton repository")
        triton_uri = out.join(TRITON_DIR)
        with storage.publish(triton_uri, {"kind": "triton", "model": config.run.name}) as repo:
            write_repository(
                model_dir,
                repo,
                model_name=config.run.name,
                max_batch_size=config.batching.max_batch_size,
                max_wait_ms=config.batching.max_wait_ms,
                gpus=config.serving_gpus,
                max_new_tokens=config.max_new_tokens,
                temperature=config.temperature,
            )
        return str(triton_uri) + "/"

    def _track(self, details: dict, card: str) -> None:
        from ..tracking import Tracker

        tracker = Tracker(self.config)
        if not tracker.enabled:
            return
        metrics = {
            key: details[key]
            for key in ("sizeBytes", "unquantizedSizeBytes", "perplexity", "unquantizedPerplexity")
            if isinstance(details.get(key), (int, float))
        }
        with tracker.run({"mentor.kind": self.config.run.kind, "mentor.model": self.config.model_uri}):
            tracker.log_params({"runtime": self.config.runtime, "quantization": details["quantization"], "device": details["device"]})
            tracker.log_metrics(metrics)
            tracker.log_text(card, "README.md")
            tracker.log_text(json.dumps(details, indent=2, sort_keys=True), "result.json")


def save(model: Any, tokenizer: Any, directory: Path) -> None:
    """A servable transformers directory: safetensors weights, config, generation config, tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
