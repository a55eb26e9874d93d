"""The Open Inference Protocol v2 model (REST ``/v2/models/<name>/infer`` and gRPC
``ModelInfer``, both kserve's): the same tensors as the export's Triton repository, so one
``tritonclient`` call works against both runtimes.

- ``text_input`` BYTES ``[batch, 1]``: one question per row, rendered with the chat template
  (no retrieval: the Triton model has none, and the two must answer alike);
- ``max_tokens`` INT32 and ``temperature`` FP32 (optional): one value for all rows or one per
  row; temperature 0 (the default unless the deployment sets one) is greedy;
- ``text_output`` BYTES ``[batch, 1]``: the generated text only.

Each row is its own generation, so the rows of one request (and of concurrent requests)
share the dynamic batches.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from .generator import RequestError
from .service import MentorService

log = logging.getLogger(__name__)

TEXT_INPUT, TEXT_OUTPUT = "text_input", "text_output"
MAX_TOKENS, TEMPERATURE = "max_tokens", "temperature"
MAX_ROWS = 256


class MentorModel(Model):
    """kserve.Model named after the deployment (``config.run.name``)."""

    def __init__(self, service: MentorService):
        super().__init__(service.name)
        self.service = service

    def load(self) -> bool:
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:
        return [
            {"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1, 1]},
            {"name": MAX_TOKENS, "datatype": "INT32", "shape": [-1, 1], "optional": True},
            {"name": TEMPERATURE, "datatype": "FP32", "shape": [-1, 1], "optional": True},
        ]

    def get_output_types(self) -> list[dict]:
        return [{"name": TEXT_OUTPUT, "datatype": "BYTES", "shape": [-1, 1]}]

    async def predict(self, payload: Any, headers: dict[str, str] | None = None, response_headers: dict | None = None) -> InferResponse:
        service = self.service
        try:
            if not isinstance(payload, InferRequest):
                raise InvalidInput("this model speaks the v2 protocol: POST /v2/models/<name>/infer with a text_input tensor")
            prompts = _texts(payload)
            max_tokens = _per_row(payload, MAX_TOKENS, len(prompts), int)
            temperatures = _per_row(payload, TEMPERATURE, len(prompts), float)
            generations = []
            for text, limit, temperature in zip(prompts, max_tokens, temperatures):
                generations.append(service.generator.submit(service.question_prompt(text), limit, temperature))
        except (InvalidInput, RequestError) as error:
            service.finished("v2", None, prompt="", status=400, error=str(error))
            raise error if isinstance(error, InvalidInput) else InvalidInput(str(error)) from None
        results = await asyncio.gather(*(service.generator.complete(g) for g in generations), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        for text, generation, result in zip(prompts, generations, results):
            if isinstance(result, BaseException):
                service.finished("v2", generation, prompt=text, status=500, error=f"{type(result).__name__}: {result}")
            else:
                service.finished("v2", generation, prompt=text, completion=result)
        if failed:
            raise failed[0]
        output = InferOutput(TEXT_OUTPUT, [len(results), 1], "BYTES")
        # serialised up front: kserve's to_grpc tests an ndarray's truth value (fails for 2+ rows)
        output.set_data_from_numpy(np.array([[r.encode()] for r in results], dtype=np.object_), binary_data=True)
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            model_version=service.model_version,
            infer_outputs=[output],
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )


def _input(payload: InferRequest, name: str):
    return next((tensor for tensor in payload.inputs if tensor.name == name), None)


def _texts(payload: InferRequest) -> list[str]:
    known = {TEXT_INPUT, MAX_TOKENS, TEMPERATURE}
    unknown = sorted({tensor.name for tensor in payload.inputs} - known)
    if unknown:
        raise InvalidInput(f"unknown input(s) {', '.join(unknown)}: this model takes text_input (BYTES), max_tokens (INT32), temperature (FP32)")
    tensor = _input(payload, TEXT_INPUT)
    if tensor is None:
        raise InvalidInput("missing input text_input (BYTES, shape [batch, 1]: one prompt per row)")
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"text_input must be BYTES, got {tensor.datatype}")
    try:
        values = tensor.as_numpy().reshape(-1).tolist()
    except Exception as error:  # noqa: BLE001 - shape and data disagree, undecodable bytes
        raise InvalidInput(f"cannot read text_input: {error}") from None
    if not values:
        raise InvalidInput("text_input is empty")
    if len(values) > MAX_ROWS:
        raise InvalidInput(f"text_input has {len(values)} rows; at most {MAX_ROWS} per request")
    texts = []
    for value in values:
        try:
            texts.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
        except UnicodeDecodeError:
            raise InvalidInput("text_input must be UTF-8 text") from None
    return texts


def _per_row(payload: InferRequest, name: str, rows: int, kind: type) -> list:
    tensor = _input(payload, name)
    if tensor is None:
        return [None] * rows
    try:
        values = [kind(v) for v in tensor.as_numpy().reshape(-1).tolist()]
    except Exception as error:  # noqa: BLE001
        raise InvalidInput(f"cannot read {name}: {error}") from None
    if len(values) == 1:
        return values * rows
    if len(values) != rows:
        raise InvalidInput(f"{name} has {len(values)} values for {rows} prompts: give one, or one per row")
    return values
