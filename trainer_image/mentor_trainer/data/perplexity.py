"""Difficulty by the base model's perplexity (``difficulty.method: perplexity``).

The model at ``difficulty.modelUri`` (file://, pvc://, s3:// or hf://; loaded with
transformers' ``AutoModelForCausalLM`` and its own tokenizer) scores each example: the mean
negative log-likelihood per token (``nll``, in nats; perplexity = exp(nll)). The
``difficulty`` column is ``nll / (nll + NLL_SCALE)``, in [0, 1), so texts the base model
already predicts well come first in a curriculum.
"""

from __future__ import annotations

import math

from ..errors import StageError
from ..models import model_location, torch_device

NLL_SCALE = 3.0  # nll of 3 nats (perplexity ~20) -> difficulty 0.5
MAX_TOKENS = 1024
BATCH = 8


class PerplexityScorer:
    def __init__(self, uri: str) -> None:
        location = model_location(uri, "difficulty.modelUri")
        try:
            import torch
            import transformers
            from transformers import AutoModelForCausalLM, AutoTokenizer

            transformers.logging.set_verbosity_error()
            self.torch = torch
            self.device = torch_device()
            self.tokenizer = AutoTokenizer.from_pretrained(location)
            dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
            self.model = AutoModelForCausalLM.from_pretrained(location, torch_dtype=dtype).to(self.device).eval()
        except StageError:
            raise
        except Exception as error:  # noqa: BLE001 - the message must name the URI
            raise StageError(f"difficulty.modelUri: cannot load causal LM {uri}: {type(error).__name__}: {str(error)[:300]}") from None
        self.uri = uri
        self.scored = 0
        self.nll_total = 0.0

    def nll(self, texts: list[str]) -> list[float]:
        """Mean next-token negative log-likelihood of each text (0.0 for texts of < 2 tokens)."""
        torch = self.torch
        out: list[float] = []
        for start in range(0, len(texts), BATCH):
            batch = texts[start : start + BATCH]
            encoded = [self.tokenizer(t, add_special_tokens=False)["input_ids"][:MAX_TOKENS] for t in batch]
            bos = self.tokenizer.bos_token_id
            if bos is not None:
                encoded = [[bos] + ids[: MAX_TOKENS - 1] for ids in encoded]
            width = max(len(ids) for ids in encoded)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, ids in enumerate(encoded):
                input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                mask[i, : len(ids)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
            target = input_ids[:, 1:].to(self.device)
            token_nll = -logprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            valid = mask[:, 1:].to(self.device).float()
            for i in range(len(batch)):
                n = float(valid[i].sum())
                value = float((token_nll[i] * valid[i]).sum()) / n if n else 0.0
                out.append(value if math.isfinite(value) else 0.0)
        return out

    def difficulties(self, texts: list[str]) -> list[float]:
        """Difficulty of each text (scored in batches)."""
        values = self.nll(texts) if texts else []
        self.scored += len(values)
        self.nll_total += sum(values)
        return [round(v / (v + NLL_SCALE), 4) for v in values]

    def difficulty(self, text: str) -> float:
        return self.difficulties([text])[0]

    def summary(self) -> dict:
        mean = self.nll_total / self.scored if self.scored else 0.0
        return {"model": self.uri, "scored": self.scored, "meanNll": round(mean, 4), "meanPerplexity": round(math.exp(mean), 3)}
