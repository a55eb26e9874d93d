"""A causal LM as the evaluation suites use it: log-likelihoods and greedy/sampled answers.

Every method works in batches. Inputs are sorted by length first (longest first, so a batch
that does not fit in memory fails at once) to keep padding small, and results come back in
the caller's order. Padding never changes a result: scoring pads on the right (real tokens
keep positions 0..n-1 and never see padding through the causal mask), generation pads on the
left with an attention mask, from which ``generate`` derives the position ids. Inputs longer
than ``max_length`` are shortened; how many were is logged and counted in ``truncated``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from ..models import load_model_and_tokenizer, torch_device

log = logging.getLogger(__name__)

Messages = list[dict]


class LanguageModel:
    """A loaded causal LM and its tokenizer on one device, in eval mode."""

    def __init__(self, model: Any, tokenizer: Any, device: str | torch.device | None = None,
                 batch_size: int = 8, max_length: int | None = None) -> None:
        self.device = torch.device(device or torch_device())
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length or _context_length(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.truncated = 0  # inputs shortened to fit max_length, over all calls

    @classmethod
    def load(cls, uri: str, batch_size: int = 8, dtype: Any = None, purpose: str = "model") -> "LanguageModel":
        """Load from a model URI: bf16 on a GPU that has it, fp32 otherwise."""
        device = torch_device()
        if dtype is None:
            dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        loaded = load_model_and_tokenizer(uri, dtype=dtype, purpose=purpose)
        return cls(loaded.model, loaded.tokenizer, device=device, batch_size=batch_size)

    # ------------------------------------------------------------------ scoring

    @torch.inference_mode()
    def token_nll(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        """Per text: summed negative log-likelihood of its tokens and how many were predicted
        (every token after the first, BOS included when the tokenizer adds one)."""
        encoded = self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        self._count_truncated("token_nll", sum(len(ids) > self.max_length for ids in encoded), len(encoded))
        return self._nll([ids[: self.max_length] for ids in encoded], [1] * len(encoded))

    @torch.inference_mode()
    def completion_nll(self, prompts: Sequence[Messages], completions: Sequence[str]) -> list[tuple[float, int]]:
        """Per pair: summed negative log-likelihood of the assistant ``completion`` after the
        chat-rendered ``prompt`` (generation prompt added), and its number of tokens."""
        return self._conditional(self._render(prompts), list(completions), "completion_nll")

    @torch.inference_mode()
    def option_logprobs(self, prompts: Sequence[Messages], options: Sequence[Sequence[str]],
                        normalize: bool = False) -> list[list[float]]:
        """Per multiple-choice item: the log-probability of each option as the answer to its
        prompt; with ``normalize`` divided by the option's token count, so that a long option
        is not penalised for its length."""
        rendered = self._render(prompts)
        flat_prompts = [rendered[i] for i, opts in enumerate(options) for _ in opts]
        flat_options = [o for opts in options for o in opts]
        scored = iter(self._conditional(flat_prompts, flat_options, "option_logprobs"))
        result = []
        for opts in options:
            row = []
            for _ in opts:
                nll, n = next(scored)
                row.append(-nll / max(n, 1) if normalize else -nll)
            result.append(row)
        return result

    # ------------------------------------------------------------------ generation

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Messages], max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0) -> list[str]:
        """The assistant's answer to each chat prompt (new tokens only, special tokens
        dropped): greedy when ``temperature`` is 0, else sampled from the whole tempered
        distribution (the model's own top-k/top-p defaults are overridden, so that a setting
        means the same for every model) with a fixed ``seed`` (the global RNG is left as it was)."""
        from transformers import GenerationConfig

        limit = self.max_length - max_new_tokens
        if limit < 1:
            raise ValueError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt within max_length {self.max_length}")
        rendered = self._render(prompts)
        self._count_truncated("generate", sum(len(ids) > limit for ids in rendered), len(rendered))
        rendered = [ids[-limit:] for ids in rendered]  # keep the end: the question and the generation prompt
        eos = {self.tokenizer.eos_token_id, *_as_list(self.model.generation_config.eos_token_id)} - {None}
        # Every sampling field set: transformers fills unset ones from the model's own defaults.
        # Greedy gets the library's neutral values (anything else draws "flags ignored" warnings).
        if temperature > 0:
            sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        else:
            sampling = dict(do_sample=False, temperature=1.0, top_k=50, top_p=1.0)
        config = GenerationConfig(max_new_tokens=max_new_tokens, pad_token_id=self.pad_id, eos_token_id=sorted(eos), **sampling)
        answers = [""] * len(rendered)
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            for batch in self._batches(range(len(rendered)), lambda i: len(rendered[i])):
                ids, mask = self._pad([rendered[i] for i in batch], left=True)
                out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
                texts = self.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
                for i, text in zip(batch, texts):
                    answers[i] = text
        return answers

    # ------------------------------------------------------------------ internals

    def _render(self, prompts: Sequence[Messages]) -> list[list[int]]:
        texts = [self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]  # the template carries BOS

    def _conditional(self, prompt_ids: list[list[int]], completions: list[str], what: str) -> list[tuple[float, int]]:
        """Summed negative log-likelihood and token count of each completion after its prompt's ids.
        Token ids are concatenated (not the texts re-tokenised), so the boundary is exact;
        an over-long pair loses the start of its prompt, then the end of its completion."""
        completion_ids = self.tokenizer(completions, add_special_tokens=False)["input_ids"]
        sequences, starts, cut = [], [], 0
        for prompt, full in zip(prompt_ids, completion_ids):
            completion = full[: self.max_length - 1]
            keep = self.max_length - len(completion)
            cut += len(prompt) > keep or len(completion) < len(full)
            prompt = prompt[-keep:]
            sequences.append(prompt + completion)
            starts.append(max(len(prompt), 1))
        self._count_truncated(what, cut, len(sequences))
        return self._nll(sequences, starts)

    def _nll(self, sequences: list[list[int]], starts: list[int]) -> list[tuple[float, int]]:
        """Summed negative log-likelihood of ``sequence[start:]`` (each token given all before
        it) and the number of those tokens, per sequence."""
        result = [(0.0, 0)] * len(sequences)
        todo = [i for i in range(len(sequences)) if len(sequences[i]) > starts[i]]
        for batch in self._batches(todo, lambda i: len(sequences[i])):
            ids, mask = self._pad([sequences[i] for i in batch], left=False)
            logits = self.model(input_ids=ids, attention_mask=mask).logits
            sums = []
            for row, i in enumerate(batch):
                start, end = starts[i], len(sequences[i])
                sums.append(F.cross_entropy(logits[row, start - 1 : end - 1].float(), ids[row, start:end], reduction="sum"))
            for i, nll in zip(batch, torch.stack(sums).tolist()):
                result[i] = (nll, len(sequences[i]) - starts[i])
        return result

    def _batches(self, indices: Iterable[int], length: Callable[[int], int]) -> Iterable[list[int]]:
        ordered = sorted(indices, key=length, reverse=True)
        for begin in range(0, len(ordered), self.batch_size):
            yield ordered[begin : begin + self.batch_size]

    def _pad(self, rows: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for n, r in enumerate(rows):
            span = slice(width - len(r), width) if left else slice(0, len(r))
            ids[n, span] = torch.tensor(r, dtype=torch.long)
            mask[n, span] = 1
        return ids.to(self.device), mask.to(self.device)

    def _count_truncated(self, what: str, cut: int, total: int) -> None:
        if cut:
            self.truncated += cut
            log.warning("%s: %d of %d inputs were longer than max_length %d tokens and were truncated",
                        what, cut, total, self.max_length)


def _context_length(model: Any, tokenizer: Any) -> int:
    """The model's position limit, or the tokenizer's when that is smaller (and real)."""
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    real = [int(n) for n in limits if n and n < 10**7]  # tokenizers without a limit report ~1e30
    return min(real) if real else 4096


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
