"""What an exported directory says about itself: the generation config (serving defaults) and
the model card (README.md)."""

from __future__ import annotations

from typing import Any

from ..config.deploy import ExportResult, ExportStageConfig


def serving_generation_config(model: Any, tokenizer: Any, config: ExportStageConfig):
    """The model's own generation config with the deployment's defaults: ``max_new_tokens``,
    and with a temperature sampling at that temperature (``do_sample``); without one the
    model's own sampling settings stay."""
    from transformers import GenerationConfig

    generation = GenerationConfig.from_dict(model.generation_config.to_dict()) if model.generation_config else GenerationConfig()
    generation.max_new_tokens = config.max_new_tokens
    generation.max_length = None
    if config.temperature is not None:
        generation.do_sample = True
        generation.temperature = config.temperature
    if generation.eos_token_id is None and tokenizer.eos_token_id is not None:
        generation.eos_token_id = tokenizer.eos_token_id
    if generation.pad_token_id is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        generation.pad_token_id = pad
    if generation.bos_token_id is None and tokenizer.bos_token_id is not None:
        generation.bos_token_id = tokenizer.bos_token_id
    return generation


def served_temperature(generation: Any) -> float | None:
    """The default sampling temperature of the served model (None when it decodes greedily)."""
    if not getattr(generation, "do_sample", False):
        return None
    return float(generation.temperature) if generation.temperature is not None else 1.0


def human_size(n: int | None) -> str:
    if n is None:
        return "unknown"
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{n:,} B" if unit == "B" else f"{value:.1f} {unit} ({n:,} B)"


def _ppl(value: float | None) -> str:
    return "not measured (no datasetUri)" if value is None else f"{value:.4g}"


def model_card(config: ExportStageConfig, result: ExportResult, *, base_uri: str | None, adapter_type: str | None,
               device: str, dtype: str, texts: int, has_chat_template: bool) -> str:
    c = config
    source = f"`{c.model_uri}`"
    if base_uri:
        source += f" ({adapter_type or 'PEFT'} adapter, merged into its base `{base_uri}`)"
    quant = result.quantization or "none"
    lines = [
        f"# {c.run.name}",
        "",
        f"Exported by `mentor-trainer export` for {c.run.kind} `{c.run.namespace}/{c.run.name}` "
        f"(generation {c.run.generation}) for the `{c.runtime}` runtime.",
        "",
        f"- Source model: {source}",
        f"- Quantisation: {quant}" + (" (torchao, weight-only; reload with transformers `from_pretrained`, torchao installed)" if quant != "none" else ""),
        f"- Weights: {human_size(result.size_bytes)}"
        + (f", unquantised {human_size(result.unquantized_size_bytes)}" if quant != "none" else ""),
        f"- Perplexity on {texts} validation texts of `{c.dataset_uri}`: {_ppl(result.perplexity)}"
        + (f", unquantised {_ppl(result.unquantized_perplexity)}" if quant != "none" else "")
        if c.dataset_uri
        else "- Perplexity: not measured (no datasetUri)",
        f"- Serving defaults (generation_config.json): max_new_tokens {c.max_new_tokens}, "
        + (f"sampling at temperature {result.temperature:g}" if result.temperature is not None else "greedy decoding"),
        f"- Chat template: {'included' if has_chat_template else 'none (the tokenizer has no chat template)'}",
        f"- Exported on {device} in {dtype}",
        "",
        "## Files",
        "",
        "- `model.safetensors` (or shards), `config.json`, `generation_config.json`",
        "- tokenizer files and chat template",
        "",
    ]
    return "\n".join(lines)
