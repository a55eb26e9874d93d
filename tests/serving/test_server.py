"""`mentor-trainer serve` for real: the kserve ModelServer as a subprocess on loopback, driven
with the openai client (chat, completions, streaming, usage), tritonclient HTTP and gRPC
(Open Inference Protocol v2), raw HTTP for bad requests, /metrics, payload logs, SIGTERM.

Greedy outputs are compared on a server with ``maxBatchSize: 1`` (batched left-padded
generation may differ in the last float bits on the tiny random model)."""

from __future__ import annotations

import json
import signal
import threading

import httpx
import numpy as np
import openai
import pytest

from tests.serving.mentor_server import MentorServer, metric_value, serve_config

QUESTION = "How are Copper Crown leaves dried?"


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    """One request at a time (maxBatchSize 1): greedy outputs compare exactly."""
    work = tmp_path_factory.mktemp("serve-one")
    config = serve_config("tiny-one", tiny, work / "out", maxNewTokens=12, batching={"maxBatchSize": 1, "maxWaitMs": 0})
    with MentorServer(config, work) as running:
        yield running


def client(server: MentorServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.http_url}/v1", api_key="unused", max_retries=0, timeout=120)


def chat(server: MentorServer, question: str = QUESTION, **kwargs):
    return client(server).chat.completions.create(
        model=server.name, messages=[{"role": "user", "content": question}], temperature=0, **kwargs
    )


def test_models_and_chat_completion_with_usage(server, tiny):
    from transformers import AutoTokenizer

    api = client(server)
    assert [m.id for m in api.models.list().data] == [server.name]
    reply = chat(server, max_tokens=8)
    assert reply.object == "chat.completion" and reply.model == server.name
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    prompt_tokens = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    usage = reply.usage
    assert usage.prompt_tokens == prompt_tokens
    assert 1 <= usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    extra = reply.model_extra["mentor"]
    assert extra == {"retrieved": [], "rag": None}
    # the default length is the config's maxNewTokens
    assert chat(server).usage.completion_tokens <= 12


def test_streaming_matches_non_streaming(server):
    api = client(server)
    whole = chat(server, max_tokens=10)
    chunks = list(api.chat.completions.create(
        model=server.name, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=10,
        stream=True, stream_options={"include_usage": True},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens

    completion = api.completions.create(model=server.name, prompt="Copper Crown tea is", max_tokens=10, temperature=0)
    assert completion.object == "text_completion" and completion.usage.completion_tokens >= 1
    streamed = api.completions.create(model=server.name, prompt="Copper Crown tea is", max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == completion.choices[0].text


def test_sse_wire_format_ends_with_done(server):
    body = {"model": server.name, "prompt": "Tea", "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.http_url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"


def test_v2_infer_over_http_and_grpc_gives_the_greedy_text(server):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    expected = chat(server, max_tokens=8).choices[0].message.content
    other = chat(server, "What grade needs intact buds?", max_tokens=8).choices[0].message.content
    rows = np.array([[QUESTION.encode()], [b"What grade needs intact buds?"]], dtype=np.object_)

    for module, address in ((httpclient, server.http_address), (grpcclient, server.grpc_address)):
        triton = module.InferenceServerClient(url=address)
        assert triton.is_server_ready() and triton.is_model_ready(server.name)
        text = module.InferInput("text_input", [2, 1], "BYTES")
        text.set_data_from_numpy(rows)
        limit = module.InferInput("max_tokens", [1, 1], "INT32")
        limit.set_data_from_numpy(np.array([[8]], dtype=np.int32))
        temperature = module.InferInput("temperature", [1, 1], "FP32")
        temperature.set_data_from_numpy(np.array([[0.0]], dtype=np.float32))
        result = triton.infer(server.name, [text, limit, temperature], outputs=[module.InferRequestedOutput("text_output")])
        out = result.as_numpy("text_output")
        assert out.shape == (2, 1), module.__name__
        assert [v.decode() if isinstance(v, bytes) else v for v in out.reshape(-1)] == [expected, other], module.__name__
        triton.close()


@pytest.mark.parametrize(
    "path, body, status, words",
    [
        ("/v1/chat/completions", b"{not json", 400, "not valid JSON"),
        ("/v1/chat/completions", {"messages": []}, 400, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
        ("/v1/chat/completions", {"messages": [{"role": "system", "content": "hi"}]}, 400, "role 'user'"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, 400, "max_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 400, "temperature"),
        ("/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "not served here"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "tea " * 3000}]}, 400, "context"),
        ("/v1/chat/completions", b'{"messages": "' + b"x" * (2 << 20) + b'"}', 413, "over the limit"),
        ("/v1/completions", {"prompt": ""}, 400, "empty"),
        ("/v1/completions", {"prompt": ["a", "b"]}, 400, "one prompt"),
        ("/v1/completions", {"prompt": "hi", "n": 3}, 400, "n"),
        ("/v1/completions", [1, 2], 400, "JSON object"),
        ("/v1/feedback", {"request_id": "x", "rating": 1}, 404, "logging is off"),
    ],
)
def test_bad_openai_requests_get_4xx_with_a_message(server, path, body, status, words):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{server.http_url}{path}", content=content, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]
    assert httpx.get(f"{server.http_url}/v2/health/live", timeout=10).status_code == 200


def test_bad_v2_requests_get_4xx_and_grpc_invalid_argument(server):
    url = f"{server.http_url}/v2/models/{server.name}/infer"
    cases = [
        ({"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1, 1], "data": ["hi"]}]}, "text_input"),
        ({"inputs": [{"name": "text_input", "datatype": "INT32", "shape": [1, 1], "data": [1]}]}, "BYTES"),
        ({"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1, 1], "data": ["hi"]},
                     {"name": "max_tokens", "datatype": "INT32", "shape": [1, 1], "data": [0]}]}, "max_tokens"),
        ({"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [2, 1], "data": ["a", "b"]},
                     {"name": "max_tokens", "datatype": "INT32", "shape": [3, 1], "data": [1, 2, 3]}]}, "one per row"),
    ]
    for body, words in cases:
        response = httpx.post(url, json=body, timeout=60)
        assert 400 <= response.status_code < 500, response.text
        assert words in response.text

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    triton = grpcclient.InferenceServerClient(url=server.grpc_address)
    text = grpcclient.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"hi"]], dtype=np.object_))
    limit = grpcclient.InferInput("max_tokens", [1, 1], "INT32")
    limit.set_data_from_numpy(np.array([[10**7]], dtype=np.int32))
    with pytest.raises(InferenceServerException) as error:
        triton.infer(server.name, [text, limit])
    assert "INVALID_ARGUMENT" in str(error.value.status()) and "max_tokens" in error.value.message()
    triton.close()
    assert chat(server, max_tokens=2).usage.completion_tokens >= 1  # still serving


def test_metrics_has_the_families(server):
    chat(server, max_tokens=2)
    text = server.metrics()
    for family in (
        "mentor_requests_total", "mentor_request_errors_total", "mentor_request_latency_seconds_bucket",
        "mentor_time_to_first_token_seconds_bucket", "mentor_generated_tokens_total", "mentor_prompt_tokens_total",
        "mentor_batch_tokens_per_second_bucket", "mentor_tokens_per_second", "mentor_batch_size_bucket",
        "mentor_payload_logs_dropped_total", "mentor_payload_logs_written_total", "request_predict_seconds",
    ):
        assert f"\n{family}" in text, family
    assert metric_value(text, "mentor_requests_total", {"endpoint": "chat", "status": "200"}) >= 1
    assert metric_value(text, "mentor_batch_size_bucket", {"le": "1.0"}) == metric_value(text, "mentor_batch_size_count")


def test_concurrent_requests_are_batched_logged_and_flushed_on_sigterm(tiny, tmp_path):
    from mentor_trainer.serve.payload_log import read_feedback, read_records

    logs = tmp_path / "logs"
    config = serve_config(
        "tiny-batch", tiny, tmp_path / "out", maxNewTokens=8,
        batching={"maxBatchSize": 8, "maxWaitMs": 500},
        logging={"enabled": True, "flushEvery": 1000, "flushSeconds": 3600},
        payloadLogUri=logs.as_uri(), modelVersion="v-test",
        rag={"enabled": True, "topK": 3}, indexUri=(tmp_path / "no-index").as_uri(),
    )
    server = MentorServer(config, tmp_path / "work").start()
    try:
        replies, errors = [], []

        def ask(i: int) -> None:
            try:
                replies.append(chat(server, f"{QUESTION} ({i})", max_tokens=6))
            except Exception as error:  # noqa: BLE001
                errors.append(error)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors and len(replies) == 8
        text = server.metrics()
        batches = metric_value(text, "mentor_batch_size_count")
        single = metric_value(text, "mentor_batch_size_bucket", {"le": "1.0"})
        assert batches - single >= 1, "no batch had more than one request"
        assert batches < 8
        # sampled and greedy rows share a batch; the greedy row is what it is beside another greedy row
        def v2(temperatures: list[float]) -> list[str]:
            body = {"inputs": [
                {"name": "text_input", "datatype": "BYTES", "shape": [2, 1], "data": [QUESTION, "Tell me about tea."]},
                {"name": "temperature", "datatype": "FP32", "shape": [2, 1], "data": temperatures},
                {"name": "max_tokens", "datatype": "INT32", "shape": [1, 1], "data": [6]},
            ]}
            response = httpx.post(f"{server.http_url}/v2/models/{server.name}/infer", json=body, timeout=120)
            assert response.status_code == 200, response.text
            return response.json()["outputs"][0]["data"]

        mixed, greedy = v2([0.0, 1.5]), v2([0.0, 0.0])
        assert mixed[0] == greedy[0] and all(mixed)
        # RAG on with a missing index: answers without retrieval and says so
        assert replies[0].model_extra["mentor"]["rag"].startswith("unavailable: ")
        assert metric_value(text, "mentor_rag_available") == 0
        # feedback is stored beside the logs; bad feedback is a 400
        good = httpx.post(f"{server.http_url}/v1/feedback", json={"request_id": replies[0].id, "rating": 1, "correction": "On trays."})
        assert good.status_code == 200, good.text
        bad = httpx.post(f"{server.http_url}/v1/feedback", json={"request_id": replies[0].id, "rating": 7})
        assert bad.status_code == 400 and bad.json()["error"]["message"]
    finally:
        code = server.stop(signal.SIGTERM)
    assert code == 0, server.log()[-3000:]
    result = json.loads(server.termination_log.read_text())
    assert result["requestsServed"] == 12 and result["tokensGenerated"] >= 12
    assert result["rag"].startswith("unavailable: ")
    records = read_records(logs.as_uri())  # written at shutdown only (flushEvery 1000, flushSeconds 3600)
    assert len(records) == 12 and result["payloadLogsWritten"] >= 12
    assert sorted({r.endpoint for r in records}) == ["/v1/chat/completions", "/v2/models/tiny-batch/infer"]
    assert {r.model_version for r in records} == {"v-test"}
    assert all(r.completion_tokens >= 1 and r.latency_ms > 0 and r.ttft_ms is not None for r in records)
    (feedback,) = read_feedback(logs.as_uri())
    assert feedback["rating"] == 1 and feedback["request_id"] in {r.request_id for r in records}  # joins its request


def test_missing_model_exits_non_zero_with_a_termination_message(tmp_path):
    config = serve_config("nothing", tmp_path / "missing-model", tmp_path / "out")
    server = MentorServer(config, tmp_path / "work").start(wait=False)
    code = server.wait(120)
    assert code == 2, server.log()[-2000:]
    message = server.termination_log.read_text()
    assert "served model" in message and "missing-model" in message and "does not exist" in message


def test_smollm2_answers_in_real_language(tmp_path):
    from mentor_trainer.gguf import smollm2_dir

    config = serve_config("smollm2", smollm2_dir(), tmp_path / "out", maxNewTokens=24, batching={"maxBatchSize": 1, "maxWaitMs": 0})
    with MentorServer(config, tmp_path / "work", threads=2) as server:
        reply = chat(server, "What is the capital of France? Answer in one word.", max_tokens=12)
        answer = reply.choices[0].message.content
        assert "Paris" in answer, answer
        streamed = client(server).chat.completions.create(
            model=server.name, messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
            temperature=0, max_tokens=12, stream=True,
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == answer


def test_rag_returns_retrieved_ids_and_scores_with_the_answer(tiny, tmp_path):
    from tests.serving.test_rag import DOCS, LANTERN_QUESTION, build

    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    dataset = build(tmp_path / "dataset", docs, 512)
    config = serve_config(
        "tiny-rag", tiny, tmp_path / "out", maxNewTokens=4, batching={"maxBatchSize": 1, "maxWaitMs": 0},
        rag={"enabled": True, "topK": 2}, indexUri=dataset.as_uri(),
    )
    with MentorServer(config, tmp_path / "work") as server:
        reply = chat(server, LANTERN_QUESTION)
        mentor = reply.model_extra["mentor"]
        assert mentor["rag"] == "ok"
        assert 1 <= len(mentor["retrieved"]) <= 2
        assert all(set(hit) == {"id", "score", "source"} and isinstance(hit["score"], float) for hit in mentor["retrieved"])
        # the passages are in the prompt: far more prompt tokens than the bare question
        assert reply.usage.prompt_tokens > 40
        streamed = list(client(server).chat.completions.create(
            model=server.name, messages=[{"role": "user", "content": LANTERN_QUESTION}], temperature=0, stream=True,
        ))
        assert streamed[-1].model_extra["mentor"] == mentor
        # completions take the prompt as it is: no retrieval
        assert client(server).completions.create(model=server.name, prompt="Tea", max_tokens=2).model_extra["mentor"]["retrieved"] == []
        assert metric_value(server.metrics(), "mentor_rag_available") == 1


def test_chain_of_thought_returns_the_answer_alone_streamed_or_not():
    from mentor_trainer.serve.generator import AnswerFilter

    for text in ("<think>\nsteps here\n</think>\n\nTwelve traps.", "No thinking at all.", "<think>\nunfinished"):
        expected = AnswerFilter.answer(text, chain_of_thought=True)
        for size in (1, 3, 7):
            stream = AnswerFilter(chain_of_thought=True)
            pieces = [stream.feed(text[i:i + size]) for i in range(0, len(text), size)]
            assert "".join(pieces) + stream.finish() == expected
    assert AnswerFilter.answer("<think>\nx\n</think>\n\nTwelve traps.", True) == "Twelve traps."
    assert AnswerFilter.answer("<think>x</think>y", False) == "<think>x</think>y"


def test_default_temperature_is_the_deployments_else_the_exported_one_else_greedy():
    from transformers import GenerationConfig

    from mentor_trainer.serve.generator import default_temperature

    assert default_temperature(0.5, GenerationConfig(do_sample=True, temperature=0.8)) == 0.5
    assert default_temperature(None, GenerationConfig(do_sample=True, temperature=0.8)) == 0.8  # calibrated, from the export
    assert default_temperature(None, GenerationConfig()) == 0.0
    assert default_temperature(None, None) == 0.0
