"""What trains: LoRA/DoRA/QLoRA adapters, full fine-tuning, frozen layers, and automatic
layer selection by gradient sensitivity (the design notes' "LoAR" idea).

:func:`apply_method` is the one entry point: it applies ``spec.method`` to a loaded model and
says what trains."""

from __future__ import annotations

import logging
import re

from ..errors import StageError

log = logging.getLogger(__name__)

ADAPTER_METHODS = ("lora", "qlora", "dora")

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_index(name: str) -> int | None:
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def num_layers(model) -> int:
    return int(model.config.get_text_config().num_hidden_layers)


def apply_lora(model, config, use_dora: bool, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig, get_peft_model

    lora = config.lora
    if lora is None:
        from ..config.common import LoraConfig as Defaults

        lora = Defaults()
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in lora.target_modules if m not in present]
    if len(missing) == len(lora.target_modules):
        raise StageError(
            f"lora.targetModules {lora.target_modules} match no module of the model; "
            f"modules it has include {sorted(n for n in present if n.endswith('proj'))[:12]}"
        )
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=[m for m in lora.target_modules if m in present],
        use_dora=use_dora,
        bias="none",
        task_type=task_type,
    )
    return get_peft_model(model, peft_config)


def apply_freeze(model, layers: set[int], train_embeddings: bool, train_head: bool) -> None:
    """Only the given transformer blocks (and the head / final norm, embeddings if asked) train."""
    total = num_layers(model)
    bad = sorted(i for i in layers if i >= total)
    if bad:
        raise StageError(f"freeze.layers {bad} do not exist: the model has {total} blocks (0..{total - 1})")
    for name, param in model.named_parameters():
        index = layer_index(name)
        if index is not None:
            param.requires_grad = index in layers
        elif "embed_tokens" in name:
            param.requires_grad = train_embeddings
        elif name.startswith("lm_head") or name.endswith("norm.weight"):  # head and final norm
            param.requires_grad = train_head
        else:
            param.requires_grad = False
    if not any(p.requires_grad for p in model.parameters()):
        raise StageError("freeze leaves nothing to train: give freeze.topLayers, freeze.layers or trainHead")


def freeze_layers_from_config(model, freeze) -> set[int]:
    total = num_layers(model)
    layers = set(freeze.layers)
    if freeze.top_layers:
        if freeze.top_layers > total:
            log.warning("freeze.topLayers %d > %d blocks: training all blocks", freeze.top_layers, total)
        layers |= set(range(max(0, total - freeze.top_layers), total))
    return layers


def gradient_sensitivity(model, batches) -> dict[int, float]:
    """Gradient L2 norm per transformer block, summed over ``batches`` (dicts of tensors)."""
    model.train()
    for param in model.parameters():
        param.requires_grad = True
    model.zero_grad(set_to_none=True)
    for batch in batches:
        out = model(**batch)
        out.loss.backward()
    norms: dict[int, float] = {}
    for name, param in model.named_parameters():
        index = layer_index(name)
        if index is not None and param.grad is not None:
            norms[index] = norms.get(index, 0.0) + float(param.grad.detach().float().pow(2).sum())
    model.zero_grad(set_to_none=True)
    return {i: v ** 0.5 for i, v in sorted(norms.items())}


def select_layers_by_gradient(model, batches, top_k: int) -> tuple[list[int], dict[int, float]]:
    norms = gradient_sensitivity(model, batches)
    if not norms:
        raise StageError("method auto found no transformer blocks (model.layers.N) to rank")
    ranked = sorted(norms, key=lambda i: -norms[i])
    return sorted(ranked[: min(top_k, len(ranked))]), norms


def sample_batches(model, tokenizer, rows: list[dict], count: int, max_length: int) -> list[dict]:
    """The first ``count`` training rows as single-example batches for :func:`gradient_sensitivity`."""
    import torch

    batches = []
    device = next(model.parameters()).device
    for row in rows[:count]:
        if "text" in row:
            ids = tokenizer(row["text"], truncation=True, max_length=max_length)["input_ids"]
        else:
            messages = row.get("messages") or (row["prompt"] + row["completion"])
            ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"][:max_length]
        tensor = torch.tensor([ids], device=device)
        batches.append({"input_ids": tensor, "labels": tensor})
    return batches


def apply_method(model, tokenizer, config, rows: list[dict], quantized: bool):
    """``config.method`` applied to ``model``: returns the model to train (a PEFT wrapper for
    adapters) and notes for result.json (the blocks that train, trainable and total parameters).
    ``rows`` are the training examples auto ranks blocks on; ``quantized``: a 4-bit (qlora) base."""
    notes: dict = {}
    hp = config.hyperparameters
    if config.method == "auto":
        batches = sample_batches(model, tokenizer, rows, config.auto_layers.sample_examples, hp.max_seq_length)
        chosen, norms = select_layers_by_gradient(model, batches, config.auto_layers.top_k)
        log.info("auto: gradient norm per block %s -> training blocks %s", {k: round(v, 4) for k, v in norms.items()}, chosen)
        apply_freeze(model, set(chosen), train_embeddings=False, train_head=True)
        notes["autoLayers"] = chosen
    elif config.method == "freeze":
        layers = freeze_layers_from_config(model, config.freeze)
        apply_freeze(model, layers, config.freeze.train_embeddings, config.freeze.train_head)
        notes["trainedLayers"] = sorted(layers)
    elif config.method in ADAPTER_METHODS:
        if quantized:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=hp.gradient_checkpointing)
        model = apply_lora(model, config, use_dora=config.method == "dora")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    notes["trainableParameters"], notes["parameters"] = trainable, total
    log.info("method %s: %d of %d parameters train (%.2f%%)", config.method, trainable, total, 100 * trainable / max(total, 1))
    return model, notes
