"""`mentor-trainer data` reading a served model's payload log (``format: payload-log``): logs
written by the real PayloadLogger, then the real data stage."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mentor_trainer.config import DataStageConfig
from mentor_trainer.config.deploy import PayloadLogging
from mentor_trainer.data import main
from mentor_trainer.data.ingest import iter_source
from mentor_trainer.errors import StageError
from mentor_trainer.serve.payload_log import PayloadLogger, PayloadRecord

SPLITS = ("train", "validation", "test")


def request(request_id: str, prompt: str, completion: str, minute: int, status: str = "ok") -> PayloadRecord:
    return PayloadRecord(
        request_id=request_id, endpoint="chat", prompt=prompt, completion=completion, retrieved_ids=[],
        retrieval_scores=[], latency_ms=12.0, ttft_ms=None, prompt_tokens=5, completion_tokens=7,
        model_version="v1", status=status, timestamp=f"2025-01-01T01:{minute:02d}:00Z",
    )


def write_log(root: Path, records: list[PayloadRecord], feedback: list[tuple], fmt: str = "jsonl") -> str:
    """Requests and (request_id, rating, correction) feedback lines, in order, through the logger."""
    uri = root.as_uri()
    logger = PayloadLogger(uri, PayloadLogging(flush_every=1000, flush_seconds=3600, format=fmt), "mentor")
    for record in records:
        logger.log(record)
    for request_id, rating, correction in feedback:
        logger.feedback(request_id, rating, correction)
    logger.close()
    assert logger.dropped == 0
    return uri


def traffic_source(uri: str, **options) -> dict:
    return {"name": "traffic", "uri": uri, "format": "payload-log", **options}


def run(tmp_path: Path, *sources: dict, **options) -> tuple[dict, list[dict], Path]:
    out = tmp_path / "dataset"
    config = DataStageConfig.model_validate({
        "run": {"kind": "DomainDataset", "name": "traffic", "namespace": "tests"},
        "outputUri": out.as_uri(), "sources": list(sources), "formats": ["sft", "preference"], **options,
    })
    main(config)
    manifest = json.loads((out / "manifest.json").read_text())
    dropped = [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]
    return manifest, dropped, out


def rows(out: Path, fmt: str) -> dict[str, dict]:
    """Every row of a format by its request id, with the split it is in."""
    found = {}
    for split in SPLITS:
        for path in sorted((out / split).glob(f"{fmt}-*.parquet")):
            for row in pq.read_table(path).to_pylist():
                found[row["doc_id"].rsplit("#", 1)[1]] = {**row, "split": split}
    return found


def reasons(dropped: list[dict]) -> dict[str, str]:
    return {d["id"].rsplit("#", 1)[1]: d["reason"] for d in dropped}


LABELLED = [
    request("fixed", "Which cultivar suits the north terrace?", "Copper Crown grows best there.", 1),
    request("liked", "When is the first flush plucked in the Veyra Valley?", "In early April, after the frost.", 2),
    request("meh", "How long does withering take for green tea?", "About a week of drying.", 3),
    request("silent", "What mulch do the gardens use between rows?", "Pruned tea branches.", 4),
    request("broken", "Why is the oxidation room kept humid?", "", 5, status="error"),
    request("confirmed", "Which bush yields the Mistral Bud leaf?", "The Mistral Bud comes from old bushes.", 6),
    request("changed", "How are the terraces of Aurelian irrigated?", "By rain alone, never by channels.", 7),
    request("private", "Please email jane.doe@example.com the plucking calendar for the east garden",
            "The calendar has been prepared for the east garden pickers.", 8),
]
FEEDBACK = [
    ("fixed", -1.0, "Silverleaf-7 suits the north terrace: it tolerates the cold wind."),
    ("liked", 1.0, None),
    ("meh", 0.0, None),
    ("confirmed", None, "The Mistral Bud comes from old bushes."),
    ("changed", None, "Through stone channels fed by the spring above the terraces."),
    ("changed", -0.5, None),  # the latest feedback line wins: the correction above no longer counts
    ("private", 1.0, "Send the plucking calendar to jane.doe@example.com or call +1 415 555 0100"),
]


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("traffic")
    uri = write_log(tmp / "payload-logs", LABELLED, FEEDBACK)
    return run(tmp, traffic_source(uri), split={"train": 0.4, "validation": 0.3, "test": 0.3})


def test_corrections_become_qa_and_preference_examples(labelled_run):
    _, _, out = labelled_run
    sft, preference = rows(out, "sft"), rows(out, "preference")
    fixed = sft["fixed"]["messages"]
    assert (fixed[0]["content"], fixed[1]["content"]) == (LABELLED[0].prompt, FEEDBACK[0][2])
    pair = preference["fixed"]
    assert (pair["prompt"], pair["chosen"], pair["rejected"]) == (LABELLED[0].prompt, FEEDBACK[0][2], LABELLED[0].completion)
    # a correction equal to the logged answer is a QA example, not a preference pair
    assert sft["confirmed"]["messages"][1]["content"] == LABELLED[5].completion
    assert "confirmed" not in preference
    # the QA and preference examples of one request are in one split
    assert all(preference[rid]["split"] == sft[rid]["split"] for rid in preference)


def test_well_rated_answers_become_qa_examples(labelled_run):
    _, _, out = labelled_run
    liked = rows(out, "sft")["liked"]
    assert liked["source"] == "traffic"
    assert [m["content"] for m in liked["messages"]] == [LABELLED[1].prompt, LABELLED[1].completion]
    assert set(rows(out, "sft")) == {"fixed", "liked", "confirmed", "private"}
    assert set(rows(out, "preference")) == {"fixed", "private"}


def test_unlabelled_low_rated_and_failed_requests_are_dropped_by_reason(labelled_run):
    manifest, dropped, _ = labelled_run
    assert reasons(dropped) == {
        "meh": "traffic-rated-low", "changed": "traffic-rated-low", "silent": "traffic-unlabelled", "broken": "traffic-failed",
    }
    stats = manifest["stats"]
    assert stats["droppedByReason"] == {"traffic-rated-low": 2, "traffic-unlabelled": 1, "traffic-failed": 1}
    assert manifest["droppedByKind"]["qa"] == stats["droppedByReason"]
    # 8 requests: 4 QA + 2 preference records kept, 4 dropped
    assert stats["documentsIn"] == stats["documentsKept"] + sum(stats["droppedByReason"].values()) == 10


def test_personal_data_in_prompts_and_corrections_is_redacted(labelled_run):
    manifest, _, out = labelled_run
    question, answer = (m["content"] for m in rows(out, "sft")["private"]["messages"])
    pair = rows(out, "preference")["private"]
    assert "jane.doe@example.com" not in question + answer + pair["prompt"] + pair["chosen"]
    assert "[email]" in question and "[email]" in answer and "[phone]" in pair["chosen"]
    assert manifest["cleaning"]["piiRedacted"]["email"] >= 2


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_since_until_and_max_records_pick_the_newest_in_the_window(tmp_path, fmt):
    records = [request(f"r{m}", f"Question number {m} about the terraces?", f"Answer number {m}.", m) for m in range(6)]
    uri = write_log(tmp_path / "log", records, [(r.request_id, 1.0, None) for r in records], fmt)
    window = traffic_source(uri, since="2025-01-01T01:01:00Z", until="2025-01-01T02:04:00+01:00", maxRecords=2)
    _, dropped, out = run(tmp_path, window, split={"train": 1.0, "validation": 0.0, "test": 0.0})
    assert set(rows(out, "sft")) == {"r3", "r4"} and dropped == []
    source = DataStageConfig.model_validate({
        "run": {"kind": "DomainDataset", "name": "t"}, "outputUri": (tmp_path / "o").as_uri(),
        "sources": [traffic_source(uri, since="2025-01-01T01:02:00Z")],
    }).sources[0]
    units = list(iter_source(source))
    assert [u.id.rsplit("#", 1)[1] for u in units] == ["r5", "r4", "r3", "r2"]  # newest first
    assert units[0].id == f"{uri}#r5" and units[0].split_key == "traffic:r5"


def test_corrupt_files_and_lines_are_counted_not_fatal(tmp_path):
    uri = write_log(tmp_path / "log", LABELLED[:2], FEEDBACK[:2])
    part = next((tmp_path / "log" / "requests").glob("date=*/part-*.jsonl"))
    with part.open("a") as handle:
        handle.write("{not json\n" + json.dumps({"request_id": "half"}) + "\n")
    (part.parent / "part-20250101T000000000000Z-bad.parquet").write_bytes(b"not a parquet file")
    manifest, dropped, out = run(tmp_path, traffic_source(uri))
    assert set(rows(out, "sft")) == {"fixed", "liked"}
    assert manifest["stats"]["droppedByReason"] == {"corrupt": 1, "invalid-record": 2}
    assert any(d["id"].endswith("-bad.parquet") and d["reason"] == "corrupt" for d in dropped)


def test_an_empty_log_is_an_empty_source(tmp_path):
    (tmp_path / "log").mkdir()
    # alone, like an empty prefix: the stage fails naming the source
    with pytest.raises(StageError, match=r"no documents found in the sources: traffic \(file://.*log\): 0 read"):
        run(tmp_path, traffic_source((tmp_path / "log").as_uri()))
    # next to other sources it adds nothing
    qa = tmp_path / "qa"
    qa.mkdir()
    (qa / "qa.jsonl").write_text(json.dumps({"id": "q1", "question": "What is Silverleaf-7?", "answer": "A cultivar."}))
    manifest, _, _ = run(tmp_path, traffic_source((tmp_path / "log").as_uri()), {"name": "qa", "uri": qa.as_uri()},
                         split={"train": 1.0, "validation": 0.0, "test": 0.0})
    assert manifest["sources"][0]["documents"] == 0 and manifest["stats"]["documentsKept"] == 1


def test_a_bad_window_time_is_a_stage_error_naming_the_field(tmp_path):
    (tmp_path / "log").mkdir()
    with pytest.raises(StageError, match=r"sources\[0\] \(traffic\): until must be an RFC 3339 time"):
        run(tmp_path, traffic_source((tmp_path / "log").as_uri(), until="yesterday"))
