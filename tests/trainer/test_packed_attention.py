"""The sft stage's attention for packed batches (train/packed_attention.py): SDPA on CPU, each
packed sequence attending to itself only. The CUDA varlen kernel is checked against SDPA per
sequence (outputs and gradients) on a GPU by bench/gpu_profile.py (check_packed_attention)."""

from __future__ import annotations

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
