"""Weight quantisation of an exported model with torchao, in the form transformers saves as
safetensors and reloads with ``from_pretrained`` (the quantisation config travels in
config.json):

- ``int8``: weight-only int8, per output row (``Int8WeightOnlyConfig``); runs anywhere,
  CPU included;
- ``int4``: weight-only int4 in groups, packed for the tinygemm kernels of CUDA GPUs with
  compute capability 8.0 or newer (Ampere, bf16);
- ``fp8``: weight-only float8 e4m3, per row; CUDA GPUs with compute capability 8.9 or newer
  (Ada, Hopper).

Where the hardware cannot run a method, :func:`check_supported` raises a :class:`StageError`
naming ``spec.quantization.method`` before anything is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import StageError

FIELD = "spec.quantization.method"
# method -> (minimum CUDA compute capability, what needs it)
CUDA_ONLY = {
    "int4": ((8, 0), "int4 weights run on the tinygemm kernels of CUDA GPUs with compute capability >= 8.0 (Ampere or newer)"),
    "fp8": ((8, 9), "fp8 (e4m3) weights need a CUDA GPU with compute capability >= 8.9 (Ada, Hopper or newer)"),
}
INT4_GROUP_SIZES = (128, 64, 32)


def cuda_capability() -> tuple[int, int] | None:
    try:
        import torch

        return tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - no usable CUDA
        return None


def check_supported(method: str, device: str) -> None:
    """Raise a StageError naming the field when ``method`` cannot run on this machine."""
    if method not in CUDA_ONLY:
        return
    needed, why = CUDA_ONLY[method]
    capability = cuda_capability() if device == "cuda" else None
    if capability is None:
        raise StageError(
            f"{FIELD}: {method} is not available here: {why}, and this export runs on CPU "
            "(no CUDA GPU visible). Use int8 (runs on CPU) or none, or give the deployment such a GPU "
            "(spec.resources.gpus: an int4/fp8 export runs on the replica's GPUs)"
        )
    if capability < needed:
        raise StageError(
            f"{FIELD}: {method} is not available here: {why}; this GPU has compute capability "
            f"{capability[0]}.{capability[1]}. Use int8 or none, or run the export on a newer GPU"
        )


def _int4_group_size(model_config: Any) -> int:
    dims = [getattr(model_config, name, None) for name in ("hidden_size", "intermediate_size")]
    dims = [d for d in dims if d]
    for size in INT4_GROUP_SIZES:
        if all(d % size == 0 for d in dims):
            return size
    raise StageError(
        f"{FIELD}: int4 needs layer widths divisible by 32 (this model: {', '.join(map(str, dims))}); use int8 or none"
    )


def torchao_config(method: str, model_config: Any):
    """transformers' TorchAoConfig for a method (not ``none``)."""
    from transformers import TorchAoConfig

    if method == "int8":
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    if method == "int4":
        from torchao.quantization import Int4WeightOnlyConfig

        return TorchAoConfig(Int4WeightOnlyConfig(group_size=_int4_group_size(model_config), int4_packing_format="tile_packed_to_4d"))
    if method == "fp8":
        from torchao.quantization import Float8WeightOnlyConfig

        return TorchAoConfig(Float8WeightOnlyConfig())
    raise ValueError(f"no torchao config for quantization method {method!r}")


def quantize_saved(unquantized_dir: Path, method: str, device: str):
    """Load a saved model with ``method`` applied to its linear weights (embeddings and the
    output head stay as they are, as transformers' torchao integration does by default)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.from_pretrained(unquantized_dir)
    kwargs: dict[str, Any] = {"quantization_config": torchao_config(method, model_config)}
    if method == "int4":
        kwargs["dtype"] = torch.bfloat16  # the tinygemm kernels take bf16 activations
    else:
        kwargs["dtype"] = "auto"
    if device == "cuda":
        kwargs["device_map"] = "cuda"
    try:
        return AutoModelForCausalLM.from_pretrained(unquantized_dir, **kwargs)
    except StageError:
        raise
    except Exception as error:  # noqa: BLE001 - kernel or shape problems: name the field
        raise StageError(
            f"{FIELD}: {method} quantisation failed on this model ({type(error).__name__}: {str(error)[:300]}); use int8 or none",
            permanent=False,
        ) from None


def weights_size(directory: Path) -> int:
    """Bytes of the model weights in a saved directory (safetensors or .bin files)."""
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin"))
