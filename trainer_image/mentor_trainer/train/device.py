"""Where and in which number formats a run trains: the device, the training precision, the
dtype the weights are kept in, and QLoRA's 4-bit quantisation of the base."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from ..config.sft import SftStageConfig
from ..errors import StageError
from .methods import ADAPTER_METHODS

log = logging.getLogger(__name__)


def check_device(config: SftStageConfig) -> str:
    """'cuda' or 'cpu'; qlora without CUDA fails here, before anything is loaded."""
    import torch

    cuda = torch.cuda.is_available()
    if config.method == "qlora" and not cuda:
        raise StageError("qlora needs a CUDA GPU; use method lora on CPU (or request nvidia.com/gpu in resources)")
    if config.method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        raise StageError("qlora needs the bitsandbytes package, which this trainer image lacks; use method lora or an image with it")
    return "cuda" if cuda else "cpu"


def torch_dtype(precision: str):
    """The torch dtype of a precision name (bf16, fp16, fp32)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def choose_precision(requested: str, device: str) -> tuple[str, Any]:
    import torch

    if device == "cpu":
        if requested != "fp32":
            log.info("precision %s requested; training in fp32 on CPU", requested)
        return "fp32", torch.float32
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16; training in fp16")
        return "fp16", torch.float16
    return requested, torch_dtype(requested)


def weights_dtype(method: str, dtype):
    """The dtype the model's weights are loaded (and kept) in.

    Adapters train on a base kept in the training dtype. Full/freeze keep fp32 master weights and
    autocast the matmuls: in bf16 weights (and torch AdamW's bf16 states) an update smaller than
    about 1/256 of a weight rounds away, which at fine-tuning learning rates (~1e-5 against weights
    of ~1e-2) is most updates. The fp32 copy costs memory (weights, gradients and AdamW states in
    fp32: 16 bytes a parameter against 8) and a little time: at the 1.5B shape on an H200, 15.5 GiB
    and 9% of the step, while bf16 weights trained visibly worse within 20 steps (bench/README.md)."""
    import torch

    return dtype if method in ADAPTER_METHODS else torch.float32


def quantization_config(config: SftStageConfig):
    """The BitsAndBytesConfig that loads a qlora base in 4 bits (spec.quantization, NF4 with
    double quantisation and bf16 compute by default); None for every other method."""
    if config.method != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    q = config.quantization
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type if q else "nf4",
        bnb_4bit_use_double_quant=q.double_quant if q else True,
        bnb_4bit_compute_dtype=torch_dtype(q.compute_dtype if q else "bf16"),
    )
