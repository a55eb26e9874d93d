"""Synthetic QA / CoT / preference examples from a teacher behind a real OpenAI-compatible endpoint.

The teacher is a real HTTP server in the test process (stdlib ``http.server`` on 127.0.0.1)
implementing ``POST /v1/chat/completions`` with answers derived deterministically from the
prompt; the stage talks to it with the ``openai`` client, as it would to vLLM or a hosted API.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mentor_trainer.config import DataStageConfig
from mentor_trainer.data.synthesis import PASSAGE_END, PASSAGE_START, parse_pairs
from mentor_trainer.errors import StageError

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "examples" / "corpus"
DOCS = ["en/withering.md", "en/pruning.md", "en/cultivars.md", "zh/brewing.md"]
SPLITS = ("train", "validation", "test")
API_KEY = "teacher-s3cret-value"
DRAFT = "I am not sure, maybe it depends."


def sentences(passage: str) -> list[str]:
    parts = re.split(r"(?<=[.。!?！？])\s*", passage)
    return [p.strip() for p in parts if len(p.strip()) > 8 and not p.strip().startswith("#")]


class Teacher(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out first
            pass

    def do_POST(self) -> None:  # noqa: N802
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if self.path != "/v1/chat/completions":
            return self._reply(404, {"error": {"message": f"no route {self.path}"}})
        with server.lock:
            server.requests.append({"auth": self.headers.get("Authorization"), "body": body})
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            time.sleep(server.delay)
            content = server.answer(body["messages"][-1]["content"], body)
        finally:
            with server.lock:
                server.in_flight -= 1
        self._reply(200, {
            "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })


def good_answer(prompt: str, body: dict) -> str:
    if prompt.startswith("Answer in one short sentence"):
        return DRAFT
    passage = prompt.split(PASSAGE_START + "\n", 1)[1].rsplit("\n" + PASSAGE_END, 1)[0]
    n = int(re.search(r"Write (\d+) question", prompt).group(1))
    found = sentences(passage) or [passage.strip()]
    pairs = []
    for i in range(n):
        sentence = found[i % len(found)]
        item = {"question": f"Q{i}: what does the guide state about '{sentence[:40]}'?", "answer": sentence}
        if '"reasoning"' in prompt:
            item["reasoning"] = f"The passage says: {sentence}"
        pairs.append(item)
    # a reasoning model's habits: a think block and a fenced JSON reply
    return "<think>I list facts from the passage.</think>\n```json\n" + json.dumps(pairs, ensure_ascii=False) + "\n```"


def garbage_answer(prompt: str, body: dict) -> str:
    passage = prompt.split(PASSAGE_START + "\n", 1)[-1]
    if len(passage) % 2:
        return "Sure! Here are some great questions about tea (no JSON, sorry)."
    return json.dumps([{"question": "What is withering?"}, {"answer": "no question"}, "just a string"])


class TeacherServer:
    def __init__(self, answer, delay: float = 0.02) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Teacher)
        self.httpd.daemon_threads = True
        self.httpd.answer = answer
        self.httpd.delay = delay
        self.httpd.lock = threading.Lock()
        self.httpd.requests = []
        self.httpd.in_flight = 0
        self.httpd.max_in_flight = 0
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self.httpd

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def url_of(httpd) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}/v1"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config(out: Path, url: str, formats=("pretrain", "sft", "cot", "preference"), docs=DOCS, **synthesis) -> DataStageConfig:
    teacher = {"url": url, "model": "teacher-7b", "maxConcurrency": 2, "timeoutSeconds": 5,
               "apiKeySecret": {"name": "teacher", "key": "token"}}
    teacher.update(synthesis.pop("teacher", {}))
    return DataStageConfig.model_validate({
        "run": {"kind": "DomainDataset", "name": "syn", "namespace": "tests"},
        "outputUri": f"file://{out}",
        "sources": [{"name": "docs", "uri": f"file://{CORPUS / 'docs'}", "include": list(docs)}],
        "formats": list(formats),
        "chunking": {"maxTokens": 160, "overlapTokens": 0},
        "index": {"enabled": False},
        "synthesis": {"teacher": teacher, "questionsPerChunk": 2, **synthesis},
    })


def rows(out: Path, fmt: str) -> dict[str, list[dict]]:
    return {s: [r for p in sorted((out / s).glob(f"{fmt}-*.parquet")) for r in pq.read_table(p).to_pylist()] for s in SPLITS}


def run_stage(cfg):
    from mentor_trainer.data import main

    return main(cfg).to_wire()  # what the termination message carries


def test_teacher_examples_for_every_chunk(tmp_path, monkeypatch):
    monkeypatch.setenv("MENTOR_SECRET_TEACHER_TOKEN", API_KEY)
    out = tmp_path / "ds"
    with TeacherServer(good_answer) as server:
        cfg = config(out, url_of(server), chainOfThought=True, preferencePairs=True)
        result = run_stage(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    synthesis = manifest["synthesis"]
    pretrain = rows(out, "pretrain")
    chunks = sum(len(v) for v in pretrain.values())
    assert synthesis["chunks"] == chunks == manifest["steps"]["chunks"] > 4
    assert synthesis["pairs"] == 2 * chunks and synthesis["skippedByReason"] == {} and synthesis["failures"] == 0
    # one QA request per chunk and one draft request per pair, never more than maxConcurrency at once
    qa_requests = [r for r in server.requests if PASSAGE_START in r["body"]["messages"][-1]["content"]]
    assert len(qa_requests) == chunks and len(server.requests) == chunks + 2 * chunks
    assert 1 <= server.max_in_flight <= 2
    assert {r["auth"] for r in server.requests} == {f"Bearer {API_KEY}"}
    assert {r["body"]["model"] for r in server.requests} == {"teacher-7b"}
    assert API_KEY not in (out / "manifest.json").read_text() and API_KEY not in json.dumps(result)

    sft = [r for v in rows(out, "sft").values() for r in v]
    cot = [r for v in rows(out, "cot").values() for r in v]
    preference = [r for v in rows(out, "preference").values() for r in v]
    assert len(sft) == len(cot) == len(preference) == 2 * chunks
    assert {r["origin"] for r in sft + cot + preference} == {"synthetic"}
    assert {r["origin"] for v in pretrain.values() for r in v} == {"source"}
    texts = "\n".join(r["text"] for v in pretrain.values() for r in v)
    for r in sft:
        assert r["messages"][0]["role"] == "user" and r["messages"][0]["content"].startswith("Q")
        assert r["messages"][1]["content"] in texts  # the deterministic teacher answers with a sentence of the chunk
    for r in cot:
        assert re.fullmatch(r"<think>\nThe passage says: .+\n</think>\n\n.+", r["messages"][1]["content"], re.S)
    for r in preference:
        assert r["rejected"] == DRAFT and r["chosen"] in texts and r["prompt"].startswith("Q")
    # synthetic examples stay in the split of the document they come from
    split_of = {r["doc_id"]: s for s, v in pretrain.items() for r in v}
    for split, v in rows(out, "sft").items():
        assert all(split_of[r["doc_id"]] == split for r in v)
    card = (out / "README.md").read_text()
    assert "## Synthetic examples" in card and f"{2 * chunks} question-answer pairs" in card
    assert result["stats"]["examplesPerSplit"] == {
        s: len(pretrain[s]) + sum(len(rows(out, f)[s]) for f in ("sft", "cot", "preference")) for s in SPLITS
    }


def test_max_examples_and_no_chain_of_thought(tmp_path):
    out = tmp_path / "ds"
    with TeacherServer(good_answer) as server:
        url = url_of(server)
        run_stage(config(out, url, formats=("sft", "cot"), chainOfThought=False, maxExamples=5, teacher={"maxConcurrency": 1}))
        assert server.max_in_flight == 1
        assert all('"reasoning"' not in r["body"]["messages"][-1]["content"] for r in server.requests)
        assert all(r["auth"] == "Bearer none" for r in server.requests)  # no secret in the environment: no real key
    manifest = json.loads((out / "manifest.json").read_text())
    sft = [r for v in rows(out, "sft").values() for r in v]
    assert len(sft) == manifest["synthesis"]["pairs"] == 5
    assert sum(len(v) for v in rows(out, "cot").values()) == 0  # no reasoning asked for, none invented
    assert manifest["stats"]["documentsKept"] == len(DOCS)  # documents are kept for synthesis without pretrain


def test_garbage_replies_are_skipped_and_counted(tmp_path):
    out = tmp_path / "ds"
    with TeacherServer(garbage_answer) as server:
        url = url_of(server)
        result = run_stage(config(out, url))
    manifest = json.loads((out / "manifest.json").read_text())
    synthesis = manifest["synthesis"]
    chunks = manifest["steps"]["chunks"]
    odd = sum(1 for v in rows(out, "pretrain").values() for r in v if (len(r["text"]) + 1) % 2)
    # a non-JSON reply counts once; a JSON list counts each of its three invalid items
    assert synthesis["skippedByReason"] == {"synthesis-invalid": odd + 3 * (chunks - odd)}
    assert synthesis["pairs"] == 0 and synthesis["failures"] == 0
    assert sum(len(v) for v in rows(out, "sft").values()) == 0
    assert result["stats"]["examplesPerSplit"]["train"] > 0  # the pretrain chunks are still there
    with TeacherServer(garbage_answer) as server:
        with pytest.raises(StageError) as error:  # nothing but garbage: the message says where it came from
            run_stage(config(tmp_path / "only", url_of(server), formats=("sft",)))
    assert f"the teacher at {url_of(server)} gave no usable examples (synthesis-invalid" in str(error.value)


def test_unreachable_teacher_is_counted_when_other_examples_exist(tmp_path):
    out = tmp_path / "ds"
    url = f"http://127.0.0.1:{closed_port()}/v1"
    start = time.monotonic()
    result = run_stage(config(out, url))
    assert time.monotonic() - start < 45  # a dead teacher stops synthesis early
    synthesis = json.loads((out / "manifest.json").read_text())["synthesis"]
    assert synthesis["skippedByReason"]["synthesis-unreachable"] == synthesis["chunks"] == synthesis["failures"] > 0
    assert synthesis["stoppedEarly"] and synthesis["pairs"] == 0
    assert "Connection" in synthesis["lastError"]
    assert result["stats"]["examplesPerSplit"]["train"] > 0


def test_unreachable_teacher_fails_the_stage_when_it_is_the_only_source(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with pytest.raises(StageError) as error:
        run_stage(config(tmp_path / "ds", url, formats=("sft",)))
    assert url in str(error.value) and "only source" in str(error.value)
    assert not error.value.permanent
    assert not (tmp_path / "ds").exists()


def test_slow_teacher_times_out(tmp_path):
    out = tmp_path / "ds"
    with TeacherServer(good_answer, delay=2.5) as server:
        url = url_of(server)
        run_stage(config(out, url, docs=["en/withering.md"], teacher={"timeoutSeconds": 1}))
    synthesis = json.loads((out / "manifest.json").read_text())["synthesis"]
    assert synthesis["skippedByReason"].get("synthesis-timeout", 0) > 0
    assert synthesis["pairs"] == 0


def test_parse_pairs_is_lenient_but_strict_on_fields():
    pairs, invalid = parse_pairs('{"pairs": [{"question": "Q?", "answer": "<think>because</think> A."}]}', True)
    assert pairs == [{"question": "Q?", "answer": "A.", "reasoning": "because"}] and invalid == 0
    pairs, invalid = parse_pairs('Here you go: [{"question": "Q?", "answer": "A.", "reasoning": "R"}, {"question": ""}] thanks', False)
    assert pairs == [{"question": "Q?", "answer": "A.", "reasoning": ""}] and invalid == 1
    assert parse_pairs("[not json", True) == ([], 1)
    assert parse_pairs("", True) == ([], 1)
