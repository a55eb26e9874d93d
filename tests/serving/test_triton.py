"""The export's Triton model repository on the REAL tritonserver (the binary the
nvidia-pytriton wheel ships, started by tests/serving/tritonserver.py), queried with
tritonclient over HTTP and gRPC: the same text as transformers' own greedy generation,
batches, concurrency, per-request errors that leave the server up; config.pbtxt checked
against Triton's own ModelConfig schema.

The test process never imports kserve (its protobuf symbols clash with tritonclient.grpc's).
"""

from __future__ import annotations

import concurrent.futures
import re
import time
from pathlib import Path

import numpy as np
import pytest

from mentor_trainer.export.triton import render_config, write_repository

from .tritonserver import TritonDist, TritonServer

MODEL = "tea-expert"
MAX_NEW_TOKENS = 12
PROMPTS = [
    "What is a frost moth?",
    "How many pheromone traps per hectare are used against the frost moth?",
    "x",
    "Explain the harvest calendar of the Aurelian valley in detail.",
]


# --------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def repo(tiny, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("triton") / "repo"
    write_repository(
        tiny,
        repo,
        model_name=MODEL,
        max_batch_size=8,
        max_wait_ms=50,
        gpus=0,
        max_new_tokens=MAX_NEW_TOKENS,
        temperature=None,
    )
    (repo / "_SUCCESS").write_text("{}")  # what storage.publish leaves beside the model: ignored
    return repo


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    TritonDist.locate()  # the dev extra installs it: its absence is a broken install, not a skip
    triton = TritonServer(repo, tmp_path_factory.mktemp("tritonserver"))
    triton.start(timeout=300)
    pid = triton.process.pid
    try:
        yield triton
    finally:
        for client in _CLIENTS:  # open keep-alive connections hold up Triton's shutdown
            client.close()
        _CLIENTS.clear()
        triton.stop()
        # a clean shutdown (the stubs free their shared memory), and no leaked processes
        assert triton.returncode == 0, triton.log()[-3000:]
        _assert_group_gone(pid)
        assert not list(Path("/dev/shm").glob(f"{triton.shm_prefix}*"))


def _assert_group_gone(pgid: int) -> None:
    import os

    left = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            left.append(int(entry.name))
    assert not left, f"tritonserver processes left: {left}"
    assert os.getpgid(os.getpid()) != pgid


@pytest.fixture(scope="module")
def reference(tiny):
    """transformers' own greedy generation of the chat-templated prompt, one prompt at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    cache: dict[tuple[str, int], str] = {}

    def generate(prompt: str, max_new_tokens: int = MAX_NEW_TOKENS) -> str:
        key = (prompt, max_new_tokens)
        if key not in cache:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
            with torch.inference_mode():
                out = model.generate(
                    **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
                )
            cache[key] = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        return cache[key]

    return generate


_CLIENTS: list = []


def _http(server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url, concurrency=8, network_timeout=120.0)
    _CLIENTS.append(client)
    return client


def _grpc(server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    _CLIENTS.append(client)
    return client


def _inputs(module, prompts, max_tokens=None, temperature=None):
    texts = np.array([[p.encode("utf-8") if isinstance(p, str) else p] for p in prompts], dtype=object)
    text = module.InferInput("text_input", list(texts.shape), "BYTES")
    text.set_data_from_numpy(texts)
    inputs = [text]
    if max_tokens is not None:
        arr = np.array([[m] for m in max_tokens], dtype=np.int32)
        tensor = module.InferInput("max_tokens", list(arr.shape), "INT32")
        tensor.set_data_from_numpy(arr)
        inputs.append(tensor)
    if temperature is not None:
        arr = np.array([[t] for t in temperature], dtype=np.float32)
        tensor = module.InferInput("temperature", list(arr.shape), "FP32")
        tensor.set_data_from_numpy(arr)
        inputs.append(tensor)
    return inputs


def _texts(result) -> list[str]:
    out = result.as_numpy("text_output")
    return [row[0].decode("utf-8") for row in out]


# --------------------------------------------------------------------------------------
# config.pbtxt and the repository layout (no server)


def test_config_text():
    """The fields, as text (the real server parses the same renderer's output below)."""
    text = render_config(
        model_name=MODEL, max_batch_size=16, max_wait_ms=7, gpus=0, max_new_tokens=64, temperature=0.7
    )
    assert f'name: "{MODEL}"\nbackend: "python"\nmax_batch_size: 16\n' in text
    assert "max_queue_delay_microseconds: 7000" in text
    assert '{ name: "text_input", data_type: TYPE_STRING, dims: [ 1 ] }' in text
    assert '{ name: "max_tokens", data_type: TYPE_INT32, dims: [ 1 ], optional: true }' in text
    assert '{ name: "temperature", data_type: TYPE_FP32, dims: [ 1 ], optional: true }' in text
    assert 'output [\n  { name: "text_output", data_type: TYPE_STRING, dims: [ 1 ] }\n]' in text
    assert "{ count: 1, kind: KIND_CPU }" in text and "KIND_GPU" not in text
    assert 'key: "max_new_tokens"\n  value: { string_value: "64" }' in text
    assert 'key: "temperature"\n  value: { string_value: "0.7" }' in text


def test_gpus_choose_gpu_instances_and_no_temperature_means_greedy():
    text = render_config(model_name="m", max_batch_size=4, max_wait_ms=0, gpus=2, max_new_tokens=8, temperature=None)
    assert "{ count: 1, kind: KIND_GPU, gpus: [ 0, 1 ] }" in text and "KIND_CPU" not in text
    assert '"temperature"\n' not in text  # no default temperature parameter: greedy
    assert "max_queue_delay_microseconds: 0" in text


@pytest.mark.parametrize(
    "bad",
    [
        {"model_name": ""},
        {"model_name": "a/b"},
        {"max_batch_size": 0},
        {"max_wait_ms": -1},
        {"gpus": -1},
        {"max_new_tokens": 0},
        {"temperature": -0.5},
    ],
)
def test_render_config_rejects_bad_values(bad):
    args = dict(model_name="m", max_batch_size=4, max_wait_ms=5, gpus=0, max_new_tokens=8, temperature=None)
    with pytest.raises(ValueError):
        render_config(**{**args, **bad})


def test_repository_layout(tiny, tmp_path):
    repo = tmp_path / "repo"
    for _ in range(2):  # rewriting over an existing repository replaces the model
        write_repository(
            tiny, repo, model_name="m", max_batch_size=2, max_wait_ms=1, gpus=1, max_new_tokens=4, temperature=1.5
        )
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "config.pbtxt"]
    assert sorted(p.name for p in (repo / "m" / "1").iterdir()) == ["model", "model.py"]
    copied = repo / "m" / "1" / "model"
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in tiny.iterdir())
    model_py = (repo / "m" / "1" / "model.py").read_text()
    assert "class TritonPythonModel" in model_py
    compile(model_py, "model.py", "exec")  # Python, whatever its packaged name
    assert "KIND_GPU" in (repo / "m" / "config.pbtxt").read_text()

    with pytest.raises(FileNotFoundError, match="config.json"):
        write_repository(
            tmp_path, tmp_path / "r2", model_name="m", max_batch_size=2, max_wait_ms=1, gpus=0,
            max_new_tokens=4, temperature=None,
        )


# --------------------------------------------------------------------------------------
# the real server


def test_gpu_instances_as_triton_reads_them(tiny, tmp_path):
    """A gpus > 0 repository on the real server: Triton parses config.pbtxt and either loads
    GPU instances (where it has a GPU) or refuses them naming the GPU (here: none), never
    falling back to the CPU."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    TritonDist.locate()  # the dev extra installs it: its absence is a broken install, not a skip
    repo = tmp_path / "repo"
    write_repository(tiny, repo, model_name="on-device", max_batch_size=2, max_wait_ms=1, gpus=1,
                     max_new_tokens=4, temperature=None)
    triton = TritonServer(repo, tmp_path / "server", extra_args=["--model-control-mode=explicit"])
    triton.start(timeout=120)
    client = httpclient.InferenceServerClient(triton.http_url)
    try:
        try:
            client.load_model("on-device")
        except InferenceServerException as err:
            # here: "instance group on-device_0 ... specifies invalid or unsupported gpu id 0"
            assert re.search(r"(?i)\bgpus?\b", str(err)), err
            assert not client.is_model_ready("on-device")
        else:
            config = client.get_model_config("on-device")
            assert [g["kind"] for g in config["instance_group"]] == ["KIND_GPU"]
        assert client.is_server_live()
    finally:
        client.close()
        triton.stop()
    assert triton.returncode == 0, triton.log()[-3000:]


def test_server_serves_the_written_config(server):
    client = _http(server)
    assert client.is_server_ready() and client.is_model_ready(MODEL)
    config = client.get_model_config(MODEL)
    assert config["backend"] == "python" and config["max_batch_size"] == 8
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 50000
    assert [g["kind"] for g in config["instance_group"]] == ["KIND_CPU"]
    assert {i["name"]: i["data_type"] for i in config["input"]} == {
        "text_input": "TYPE_STRING",
        "max_tokens": "TYPE_INT32",
        "temperature": "TYPE_FP32",
    }
    metadata = client.get_model_metadata(MODEL)
    assert [o["name"] for o in metadata["outputs"]] == ["text_output"]


def test_http_text_equals_transformers_greedy(server, reference):
    import tritonclient.http as httpclient

    result = _http(server).infer(MODEL, _inputs(httpclient, PROMPTS[:1]))
    assert _texts(result) == [reference(PROMPTS[0])]
    assert reference(PROMPTS[0])  # the tiny model says something


def test_grpc_text_equals_transformers_greedy(server, reference):
    import tritonclient.grpc as grpcclient

    client = _grpc(server)
    assert client.is_model_ready(MODEL)
    result = client.infer(MODEL, _inputs(grpcclient, PROMPTS[1:2]))
    assert _texts(result) == [reference(PROMPTS[1])]


def test_a_batch_in_one_request(server, reference):
    import tritonclient.grpc as grpcclient

    result = _grpc(server).infer(MODEL, _inputs(grpcclient, PROMPTS))
    assert _texts(result) == [reference(p) for p in PROMPTS]


def test_max_tokens_per_row(server, reference):
    import tritonclient.http as httpclient

    result = _http(server).infer(MODEL, _inputs(httpclient, PROMPTS[:3], max_tokens=[3, 20, 1]))
    assert _texts(result) == [reference(PROMPTS[0], 3), reference(PROMPTS[1], 20), reference(PROMPTS[2], 1)]


def test_temperature_samples_and_zero_is_greedy(server, reference):
    import tritonclient.http as httpclient

    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[3]]
    result = _http(server).infer(MODEL, _inputs(httpclient, prompts, temperature=[0.0, 1.5, 0.0]))
    greedy0, sampled, greedy3 = _texts(result)
    assert greedy0 == reference(PROMPTS[0]) and greedy3 == reference(PROMPTS[3])
    assert isinstance(sampled, str)


def test_concurrent_requests_are_batched(server, reference):
    import tritonclient.http as httpclient

    client = _http(server)
    before = client.get_inference_statistics(MODEL)["model_stats"][0]
    prompts = PROMPTS * 3
    pending = [client.async_infer(MODEL, _inputs(httpclient, [p])) for p in prompts]
    texts = [_texts(p.get_result())[0] for p in pending]
    assert texts == [reference(p) for p in prompts]
    deadline = time.monotonic() + 30
    while True:  # Triton updates its statistics after the responses have gone out
        after = client.get_inference_statistics(MODEL)["model_stats"][0]
        inferences = int(after["inference_count"]) - int(before["inference_count"])
        executions = int(after["execution_count"]) - int(before["execution_count"])
        if inferences >= len(prompts) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert inferences == len(prompts)
    assert executions < inferences  # the dynamic batcher put requests together


def test_grpc_concurrent_clients(server, reference):
    import tritonclient.grpc as grpcclient

    def ask(prompt):
        return _texts(_grpc(server).infer(MODEL, _inputs(grpcclient, [prompt])))[0]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(ask, PROMPTS))
    assert texts == [reference(p) for p in PROMPTS]


def _still_serving(server, reference):
    import tritonclient.http as httpclient

    assert server.alive() and server.ready()
    result = _http(server).infer(MODEL, _inputs(httpclient, PROMPTS[2:3]))
    assert _texts(result) == [reference(PROMPTS[2])]


def test_malformed_requests_get_errors_and_the_server_stays_up(server, reference):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    http = _http(server)
    # text_input as INT32: Triton rejects the datatype
    wrong = httpclient.InferInput("text_input", [1, 1], "INT32")
    wrong.set_data_from_numpy(np.array([[7]], dtype=np.int32))
    with pytest.raises(InferenceServerException, match="(?i)data.?type|expected"):
        http.infer(MODEL, [wrong])

    # no text_input at all
    only_tokens = httpclient.InferInput("max_tokens", [1, 1], "INT32")
    only_tokens.set_data_from_numpy(np.array([[4]], dtype=np.int32))
    with pytest.raises(InferenceServerException, match="text_input"):
        http.infer(MODEL, [only_tokens])

    # a batch larger than max_batch_size
    with pytest.raises(InferenceServerException, match="(?i)batch"):
        http.infer(MODEL, _inputs(httpclient, ["x"] * 9))

    # the model's own checks: bad max_tokens, not UTF-8, too long for the model, bad temperature
    with pytest.raises(InferenceServerException, match="max_tokens"):
        http.infer(MODEL, _inputs(httpclient, ["hi"], max_tokens=[0]))
    with pytest.raises(InferenceServerException, match="UTF-8"):
        http.infer(MODEL, _inputs(httpclient, [b"\xff\xfe bad"]))
    with pytest.raises(InferenceServerException, match="positions"):
        http.infer(MODEL, _inputs(httpclient, ["hi"], max_tokens=[5000]))
    grpc = _grpc(server)
    with pytest.raises(InferenceServerException, match="temperature"):
        grpc.infer(MODEL, _inputs(grpcclient, ["hi"], temperature=[float("nan")]))

    _still_serving(server, reference)


def test_a_bad_request_does_not_fail_its_batch(server, reference):
    """Bad and good requests arriving together (one dynamic batch): only the bad one fails."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = _http(server)
    good = [client.async_infer(MODEL, _inputs(httpclient, [p])) for p in PROMPTS[:2]]
    bad = client.async_infer(MODEL, _inputs(httpclient, ["hi"], max_tokens=[-3]))
    more = client.async_infer(MODEL, _inputs(httpclient, PROMPTS[3:4]))
    assert [_texts(p.get_result())[0] for p in good] == [reference(p) for p in PROMPTS[:2]]
    with pytest.raises(InferenceServerException, match="max_tokens"):
        bad.get_result()
    assert _texts(more.get_result()) == [reference(PROMPTS[3])]
    _still_serving(server, reference)


def test_stub_runs_in_this_environment(server):
    """The server's log names no failure of the python backend stub."""
    log = server.log()
    assert "Stub process" not in log and "error_already_set" not in log


# --------------------------------------------------------------------------------------
# the export stage's repository next to the `mentor` runtime


def test_exported_repository_gives_the_mentor_runtime_text(tiny, tmp_path, reference):
    """`mentor-trainer export` with runtime triton, served by the real tritonserver, and
    `mentor-trainer serve` on the same export: one tritonclient request (HTTP, then gRPC) gives
    the same text from both, and the same as transformers. Temperature 0 is asked for: the
    export records a calibrated temperature (0.8 here), the default of both runtimes."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from mentor_trainer.config.deploy import ExportStageConfig
    from mentor_trainer.export import main as export

    from .mentor_server import MentorServer, serve_config

    out = tmp_path / "export"
    config = ExportStageConfig.model_validate(
        {
            "run": {"kind": "ModelDeployment", "name": MODEL, "namespace": "tests"},
            "outputUri": out.as_uri(),
            "progressFile": str(tmp_path / "progress.json"),
            "modelUri": tiny.as_uri(),
            "runtime": "triton",
            "maxNewTokens": 8,
            "temperature": 0.8,
            "batching": {"maxBatchSize": 4, "maxWaitMs": 5},
        }
    )
    result = export(config)
    repo = out / "triton"
    assert result.model_uri == config.output_uri + "/triton/"

    prompts = PROMPTS[:2]
    triton = TritonServer(repo, tmp_path / "tritonserver")
    mentor = MentorServer(serve_config(MODEL, out / "model", tmp_path / "serve-out"), tmp_path / "mentor")
    mentor.start(wait=False)  # both load at once
    clients = []
    try:
        triton.start(timeout=300)
        mentor.wait_ready(300)
        config = httpclient.InferenceServerClient(triton.http_url)
        clients.append(config)
        params = config.get_model_config(MODEL)["parameters"]  # as Triton parsed config.pbtxt
        assert params["max_new_tokens"]["string_value"] == "8"
        assert float(params["temperature"]["string_value"]) == 0.8
        answers = {}
        for module, addresses in (
            (httpclient, (triton.http_url, mentor.http_address)),
            (grpcclient, (triton.grpc_url, mentor.grpc_address)),
        ):
            for runtime, address in zip(("triton", "mentor"), addresses):
                client = module.InferenceServerClient(address)
                clients.append(client)
                inputs = _inputs(module, prompts, max_tokens=[8, 8], temperature=[0.0, 0.0])
                answers[(module.__name__, runtime)] = _texts(client.infer(MODEL, inputs))
        expected = [reference(p, 8) for p in prompts]
        assert all(texts == expected for texts in answers.values()), answers
    finally:
        for client in clients:
            client.close()
        mentor.stop()
        triton.stop()
    assert triton.returncode == 0
