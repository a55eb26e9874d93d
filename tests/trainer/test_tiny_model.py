"""The tiny model builder: a Qwen2 model and tokenizer with the DeepSeek-R1 chat template that
loads back through the production loader, the 1.5B shape, and `mentor-trainer tiny-model`."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail at once instead of waiting

from mentor_trainer.models import load_model_and_tokenizer
from mentor_trainer.tiny_model import ASSISTANT, BOS, EOS, USER, qwen2_1p5b_config


def test_tiny_model_builds_and_loads_back(tiny):
    files = {p.name for p in tiny.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    loaded = load_model_and_tokenizer(tiny.as_uri())
    model, tok = loaded.model, loaded.tokenizer
    assert model.config.model_type == "qwen2"
    assert model.config.num_hidden_layers == 4 and model.config.num_key_value_heads == 2
    assert model.config.vocab_size == len(tok)
    assert 100_000 < model.num_parameters() < 2_000_000
    import torch

    ids = tok("Aurelian tea grows in the Veyra Valley. 奥瑞兰高山茶。", return_tensors="pt")
    with torch.no_grad():
        out = model(**ids, labels=ids["input_ids"])
    assert torch.isfinite(out.loss)
    # the tokenizer was trained here on both languages: round-trip and real compression
    text = "Withering takes 14 hours. 萎凋需要十四小时。"
    encoded = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(encoded) == text
    assert len(encoded) < len(text.encode("utf-8")) / 2


def test_chat_template_renders_deepseek_r1_turns(tiny):
    tok = load_model_and_tokenizer(tiny.as_uri(), load_model=False).tokenizer
    messages = [
        {"role": "system", "content": "You are a tea expert."},
        {"role": "user", "content": "Where is Aurelian tea grown?"},
        {"role": "assistant", "content": "<think>\nThe overview says so.\n</think>\n\nIn the Veyra Valley."},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == (
        f"{BOS}You are a tea expert.{USER}Where is Aurelian tea grown?{ASSISTANT}"
        f"<think>\nThe overview says so.\n</think>\n\nIn the Veyra Valley.{EOS}"
    )
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(ASSISTANT) and text.startswith(prompt)
    # an earlier turn's reasoning is dropped from the history, as in DeepSeek-R1
    history = tok.apply_chat_template(messages + [{"role": "user", "content": "And?"}], tokenize=False)
    assert "<think>" not in history and "In the Veyra Valley." in history
    thinking = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True, thinking=True)
    assert thinking.endswith(f"{ASSISTANT}<think>\n")
    # <think> is one token, not spelled out
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert tok.convert_tokens_to_ids("<think>") in ids and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id


def test_qwen2_1p5b_shape():
    config = qwen2_1p5b_config()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (1536, 28, 12, 2)
    assert (config.intermediate_size, config.vocab_size, config.max_position_embeddings) == (8960, 151936, 131072)
    assert config.tie_word_embeddings is False and config.rope_theta == 10000.0 if hasattr(config, "rope_theta") else True
    # parameter count from the shape (not instantiated): ~1.78B like DeepSeek-R1-Distill-Qwen-1.5B
    h, i, v, layers, kv = 1536, 8960, 151936, 28, 2 * 128
    per_layer = h * h + h + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h
    total = layers * per_layer + 2 * v * h + h
    assert 1.7e9 < total < 1.9e9


def test_cli_tiny_model(tmp_path):
    from mentor_trainer.cli import main

    assert main(["tiny-model", "--out", str(tmp_path / "m")]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
