"""Triton python-backend model for an exported Mentor model (copied as ``<model>/1/model.py``).

This file is not imported by the package: :mod:`mentor_trainer.export.triton` copies it into a
Triton model repository, where Triton's python backend stub runs it. It needs only torch,
transformers and numpy in the stub's environment.

- ``initialize`` loads the HF directory ``1/model/`` (AutoModelForCausalLM, AutoTokenizer) on
  the instance's device: a GPU for ``KIND_GPU`` instances, the CPU otherwise.
- ``execute`` takes the requests Triton's dynamic batcher hands it. Every row of every request
  (``text_input`` [batch, 1] BYTES) is one user message, rendered with the tokenizer's chat
  template and the generation prompt; rows that share a temperature are generated together,
  left-padded. Temperature 0 (or none) is greedy; otherwise sampling. ``max_tokens`` caps a
  row's new tokens. ``text_output`` holds only the new text.
- A bad request (undecodable text, a non-positive ``max_tokens``, a prompt too long for the
  model) gets its own error response; the other requests of the batch are answered.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

try:  # present inside Triton's python backend stub only
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - lets tools import this file outside Triton
    pb_utils = None

HF_SUBDIR = "model"


class RequestError(ValueError):
    """What the client must fix: answered as that request's error, never raised to Triton."""


def _triton_error(message: str, invalid_argument: bool):
    code = getattr(pb_utils.TritonError, "INVALID_ARG" if invalid_argument else "INTERNAL", None)
    if code is None:
        return pb_utils.TritonError(message)
    return pb_utils.TritonError(message, code)


def _parameter(config: dict, key: str) -> str | None:
    value = config.get("parameters", {}).get(key)
    if value is None:
        return None
    text = value.get("string_value", "") if isinstance(value, dict) else str(value)
    return text if text != "" else None


class TritonPythonModel:
    def initialize(self, args):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        config = json.loads(args["model_config"])
        self.default_max_tokens = int(_parameter(config, "max_new_tokens") or 256)
        self.default_temperature = float(_parameter(config, "temperature") or 0.0)
        hf_dir = Path(args["model_repository"]) / args["model_version"] / HF_SUBDIR
        if not (hf_dir / "config.json").is_file():
            raise RuntimeError(f"no model at {hf_dir} (expected a Hugging Face directory with config.json)")

        if args.get("model_instance_kind") == "GPU":
            self.device = torch.device(f"cuda:{int(args.get('model_instance_device_id', 0))}")
            dtype = "auto"
        else:
            self.device = torch.device("cpu")
            quantized = "quantization_config" in json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
            dtype = "auto" if quantized else torch.float32
        threads = os.environ.get("MENTOR_TORCH_THREADS")
        if threads and self.device.type == "cpu":
            torch.set_num_threads(int(threads))

        self.tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).to(self.device)
        self.model.eval()
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)

    # --- parsing -------------------------------------------------------------------------------

    def _rows(self, request) -> list[tuple[list[int], int, float]]:
        """(prompt ids, max new tokens, temperature) for each row of one request."""
        tensor = pb_utils.get_input_tensor_by_name(request, "text_input")
        if tensor is None:
            raise RequestError("missing input 'text_input'")
        texts = tensor.as_numpy().reshape(-1)
        n = len(texts)
        if n == 0:
            raise RequestError("'text_input' is empty")
        max_tokens = self._optional(request, "max_tokens", n, self.default_max_tokens)
        temperatures = self._optional(request, "temperature", n, self.default_temperature)
        rows = []
        for i, raw in enumerate(texts):
            if isinstance(raw, bytes):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise RequestError(f"text_input[{i}] is not UTF-8: {err}") from None
            else:
                text = str(raw)
            limit = int(max_tokens[i])
            if limit < 1:
                raise RequestError(f"max_tokens[{i}] must be >= 1, got {limit}")
            temperature = float(temperatures[i])
            if not math.isfinite(temperature) or temperature < 0:
                raise RequestError(f"temperature[{i}] must be a finite number >= 0, got {temperature}")
            prompt = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if self.max_positions and len(ids) + limit > self.max_positions:
                raise RequestError(
                    f"text_input[{i}]: {len(ids)} prompt tokens + max_tokens {limit} exceed the model's "
                    f"{self.max_positions} positions"
                )
            rows.append((ids, limit, temperature))
        return rows

    @staticmethod
    def _optional(request, name: str, n: int, default):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return [default] * n
        values = tensor.as_numpy().reshape(-1)
        if len(values) == 1 and n > 1:
            return [values[0]] * n
        if len(values) != n:
            raise RequestError(f"'{name}' has {len(values)} values for {n} prompts")
        return list(values)

    # --- generation ----------------------------------------------------------------------------

    def _generate(self, rows: list[tuple[list[int], int, float]]) -> list[str]:
        """One left-padded batch of rows that share a temperature; the new text of each."""
        torch = self.torch
        temperature = rows[0][2]
        encoded = self.tokenizer.pad({"input_ids": [ids for ids, _, _ in rows]}, return_tensors="pt")
        input_ids = encoded["input_ids"].to(self.device)
        attention_mask = encoded["attention_mask"].to(self.device)
        kwargs = {
            "max_new_tokens": max(limit for _, limit, _ in rows),
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        with torch.inference_mode():
            output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        new = output[:, input_ids.shape[1] :].tolist()
        texts = []
        for tokens, (_, limit, _) in zip(new, rows):
            tokens = tokens[:limit]
            for j, token in enumerate(tokens):
                if token in self.eos_ids:
                    tokens = tokens[:j]
                    break
            texts.append(self.tokenizer.decode(tokens, skip_special_tokens=True))
        return texts

    def execute(self, requests):
        parsed: list = []
        for request in requests:
            try:
                parsed.append(self._rows(request))
            except RequestError as err:
                parsed.append(_triton_error(str(err), invalid_argument=True))
            except Exception as err:  # noqa: BLE001 - one bad request never fails the batch
                parsed.append(_triton_error(f"{type(err).__name__}: {err}", invalid_argument=True))

        groups: dict[float, list[tuple[int, int]]] = {}
        for r, rows in enumerate(parsed):
            if isinstance(rows, list):
                for i, (_, _, temperature) in enumerate(rows):
                    groups.setdefault(temperature, []).append((r, i))

        outputs: dict[tuple[int, int], str] = {}
        failed: dict[int, str] = {}
        for temperature, members in groups.items():
            try:
                texts = self._generate([parsed[r][i] for r, i in members])
            except Exception as err:  # noqa: BLE001
                for r, _ in members:
                    failed.setdefault(r, f"generation failed: {type(err).__name__}: {err}")
                continue
            outputs.update(zip(members, texts))

        responses = []
        for r, rows in enumerate(parsed):
            if not isinstance(rows, list):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=rows))
            elif r in failed:
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[], error=_triton_error(failed[r], invalid_argument=False))
                )
            else:
                texts = np.array([[outputs[(r, i)].encode("utf-8")] for i in range(len(rows))], dtype=object)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("text_output", texts)]))
        return responses

    def finalize(self):
        self.model = None
        self.tokenizer = None
