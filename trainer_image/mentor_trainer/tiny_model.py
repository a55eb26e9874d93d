"""The tiny Qwen2 model the tests and the quickstart train, and the 1.5B shape for GPU work.

- :func:`build_tiny_model` writes a tiny Qwen2-architecture model with a locally trained
  byte-level BPE tokenizer carrying a DeepSeek-R1-Distill style chat template, so everything
  trains on a CPU in seconds with nothing downloaded (`mentor-trainer tiny-model`).
- :func:`qwen2_1p5b_config` is the DeepSeek-R1-Distill-Qwen-1.5B shape (random weights) for
  GPU throughput work.

Production model loading is :mod:`mentor_trainer.models`. Heavy imports (torch,
transformers, tokenizers) happen inside the functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

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
