"""Attention for padding-free packed batches on CUDA: FlashAttention's variable-length kernel.

With packing (strategy bfd), TRL's collator flattens the whole batch into one row and passes the
sequence boundaries as ``cu_seq_lens_q`` / ``max_length_q``. Under plain SDPA, transformers turns
the packed ``position_ids`` into a dense block-diagonal boolean mask over that row, and a mask rules
out SDPA's flash kernel: the masked kernel then scores every query against every key of the whole
flattened batch (8,192 x 8,192 for 4 rows of 2,048) and throws most of it away. The variable-length
kernel computes each sequence's own causal block only, and never builds the mask.

Everything else (no boundaries, CPU tensors, a batch of several rows, sliding windows, fp32 without
autocast) goes to transformers' SDPA function with the SDPA mask, so results there are unchanged.
The kernel is ``aten::_flash_attention_forward`` (PyTorch's copy of FlashAttention-2, with autograd):
the flash-attn package is not in the image, and the public ``torch.nn.attention.varlen.varlen_attn``
changed how it takes causality between PyTorch releases, while this op's arguments have not.
"""

from __future__ import annotations

# Not "...flash...": transformers takes such names for the flash-attn package or a hub kernel.
NAME = "mentor_packed_varlen"


def packed_flash_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None, **kwargs):
    """transformers attention interface: query [1, heads, tokens, dim], key/value [1, kv heads,
    tokens, dim] (grouped-query heads are handled by the kernel); returns ([1, tokens, heads, dim], None)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    boundaries = kwargs.get("cu_seq_lens_q")
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else query.dtype
    if (
        boundaries is None
        or key.shape[2] != query.shape[2]  # keys from a cache: not a training batch
        or not query.is_cuda
        or query.shape[0] != 1
        or sliding_window is not None
        or not getattr(module, "is_causal", True)
        or dtype not in (torch.float16, torch.bfloat16)
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, sliding_window=sliding_window, **kwargs
        )

    def tokens_first(x):  # [1, heads, tokens, dim] -> [tokens, heads, dim], contiguous, in the kernel's dtype
        return x[0].transpose(0, 1).to(dtype, memory_format=torch.contiguous_format)

    # Keys are the queries' own tokens (checked above), so the query boundaries serve for both.
    boundaries = boundaries.to(device=query.device, dtype=torch.int32)
    longest = int(kwargs["max_length_q"])
    output = torch.ops.aten._flash_attention_forward(
        tokens_first(query), tokens_first(key), tokens_first(value), boundaries, boundaries, longest, longest,
        dropout, True, False, scale=scaling,
    )[0]
    return output.unsqueeze(0), None


def implementation(device: str) -> str:
    """The attn_implementation to load a model with for training on ``device``."""
    if device != "cuda":
        return "sdpa"
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, packed_flash_attention)
    # The SDPA fallback needs SDPA's mask (padding, or packed rows without boundaries).
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
