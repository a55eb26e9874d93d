"""The sft stage's attention for packed batches (train/packed_attention.py): SDPA on CPU, each
packed sequence attending to itself only, and on CUDA the varlen kernel matching SDPA."""

from __future__ import annotations

import types

import pytest
import torch

from mentor_trainer.train import packed_attention

LENGTHS = [10, 1, 12, 7]


def packed_batch(vocab: int):
    torch.manual_seed(0)
    ids = torch.randint(5, vocab, (1, sum(LENGTHS)))
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    boundaries = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    return ids, positions, boundaries


def test_cpu_trains_with_sdpa_and_packed_sequences_stay_apart(tiny):
    from transformers import AutoModelForCausalLM

    assert packed_attention.implementation("cpu") == "sdpa"
    name = packed_attention.implementation("cuda")  # registers it; loading needs no GPU
    model = AutoModelForCausalLM.from_pretrained(tiny, attn_implementation=name)
    reference = AutoModelForCausalLM.from_pretrained(tiny, attn_implementation="sdpa")
    ids, positions, boundaries = packed_batch(model.config.vocab_size)
    packed = dict(position_ids=positions, cu_seq_lens_q=boundaries, cu_seq_lens_k=boundaries, max_length_q=12, max_length_k=12)
    logits = model(input_ids=ids, use_cache=False, **packed).logits
    assert torch.equal(logits, reference(input_ids=ids, use_cache=False, **packed).logits)  # CPU: SDPA itself
    for start, end in zip(boundaries[:-1].tolist(), boundaries[1:].tolist()):
        alone = reference(input_ids=ids[:, start:end]).logits
        assert torch.allclose(logits[:, start:end], alone, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the varlen kernel is CUDA only")
def test_cuda_varlen_matches_sdpa_per_sequence():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = types.SimpleNamespace(is_causal=True, num_key_value_groups=3, layer_idx=0, training=True)
    _, _, boundaries = packed_batch(100)
    boundaries = boundaries.cuda()
    total = int(boundaries[-1])
    q, k, v = (torch.randn(1, h, total, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for h in (6, 2, 2))
    out, _ = packed_attention.packed_flash_attention(
        module, q, k, v, None, cu_seq_lens_q=boundaries, cu_seq_lens_k=boundaries, max_length_q=max(LENGTHS)
    )
    pieces = [
        sdpa_attention_forward(module, q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], None)[0]
        for s, e in zip(boundaries[:-1].tolist(), boundaries[1:].tolist())
    ]
    reference = torch.cat(pieces, dim=1)
    assert (out.float() - reference.float()).abs().max() < 2e-2
    got = torch.autograd.grad(out.float().sum(), (q, k, v))
    want = torch.autograd.grad(reference.float().sum(), (q, k, v))
    for g, w in zip(got, want):
        assert (g.float() - w.float()).abs().max() < 5e-2
