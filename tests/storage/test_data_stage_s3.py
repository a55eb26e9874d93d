"""The real data stage (`python -m mentor_trainer.cli data`) reading from and publishing to MinIO.

The example corpus is uploaded to a bucket; the stage reads it over S3 and publishes the
dataset to another bucket. Results are checked through a separate `minio` client.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mentor_trainer.config import DataStageConfig
from tests.storage.minio import MinioServer
from tests.trainer.test_data_stage import PLANTED_PII, SPLITS, corpus_options

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "examples" / "corpus"
# every kind of bad input planted in the corpus, once each (see examples/corpus/README.md)
PLANTED_DROPS = {
    "binary": 1, "corrupt": 1, "digit-ratio": 1, "empty": 1, "exact-duplicate": 3, "invalid-record": 1,
    "irrelevant": 1, "language": 1, "near-duplicate": 2, "repeated-ngrams": 1, "symbol-ratio": 1, "too-short": 1,
}


def run_cli(server: MinioServer, config: DataStageConfig, workdir: Path, **env_overrides: str):
    """`mentor-trainer data --config FILE` as the Job runs it; returns (process, termination log text, seconds)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config.to_wire()))
    termination = workdir / "termination-log"
    termination.unlink(missing_ok=True)
    env = server.process_env()
    env.update(env_overrides)
    env["MENTOR_TERMINATION_LOG"] = str(termination)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "trainer_image"), env.get("PYTHONPATH", "")])
    start = time.monotonic()
    process = subprocess.run(
        [sys.executable, "-m", "mentor_trainer.cli", "data", "--config", str(config_path)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )
    seconds = time.monotonic() - start
    return process, termination.read_text() if termination.exists() else "", seconds


def upload_tree(client, bucket: str, root: Path, prefix: str) -> list[str]:
    keys = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(root).as_posix()}"
        client.fput_object(bucket, key, str(path))
        keys.append(key)
    return keys


def objects(client, bucket: str, prefix: str) -> dict[str, tuple[str, object, int]]:
    """name below prefix -> (etag, last modified, size)."""
    return {
        o.object_name[len(prefix):]: (o.etag, o.last_modified, o.size)
        for o in client.list_objects(bucket, prefix=prefix, recursive=True)
    }


def corpus_config(corpus_bucket: str, output_uri: str, progress: Path | None = None) -> DataStageConfig:
    wire = {
        "run": {"kind": "DomainDataset", "name": "aurelian", "namespace": "tests"},
        "outputUri": output_uri,
        "sources": [
            {"name": "docs", "uri": f"s3://{corpus_bucket}/examples/corpus/docs/"},
            {"name": "qa", "uri": f"s3://{corpus_bucket}/examples/corpus/qa/"},
        ],
        **corpus_options(),
    }
    if progress is not None:
        wire["progressFile"] = str(progress)
    return DataStageConfig.model_validate(wire)


@pytest.fixture(scope="module")
def s3_corpus(minio, tmp_path_factory):
    """The whole example corpus in a bucket, and one run of the stage over it."""
    client = minio.client()
    corpus_bucket = minio.make_bucket(f"corpus-{uuid.uuid4().hex[:8]}")
    out_bucket = minio.make_bucket(f"datasets-{uuid.uuid4().hex[:8]}")
    uploaded = upload_tree(client, corpus_bucket, CORPUS, "examples/corpus")
    work = tmp_path_factory.mktemp("s3-stage")
    prefix = "tests/DomainDataset/aurelian/"
    config = corpus_config(corpus_bucket, f"s3://{out_bucket}/{prefix.rstrip('/')}", work / "progress.json")
    process, termination, seconds = run_cli(minio, config, work / "first")
    assert process.returncode == 0, process.stderr[-3000:]
    print(f"\ndata stage over S3: first run {seconds:.1f}s")
    return {
        "minio": minio, "client": client, "corpus_bucket": corpus_bucket, "out_bucket": out_bucket, "prefix": prefix,
        "uploaded": uploaded, "config": config, "process": process, "termination": termination,
        "seconds": seconds, "work": work,
    }


def test_result_is_the_termination_message(s3_corpus):
    result = json.loads(s3_corpus["termination"])
    assert result == json.loads(s3_corpus["process"].stdout)
    assert result["outputUri"] == s3_corpus["config"].output_uri
    stats = result["stats"]
    # the planted bad inputs are dropped, each for its reason, exactly as from local files
    assert stats["droppedByReason"] == PLANTED_DROPS
    assert stats["documentsIn"] == stats["documentsKept"] + sum(PLANTED_DROPS.values())
    assert all(stats["examplesPerSplit"][s] > 0 for s in SPLITS)
    assert len(result["contentHash"]) >= 32
    assert json.loads((s3_corpus["work"] / "progress.json").read_text())["phase"] == "done"


def test_dataset_is_published_to_the_bucket_and_loads_with_pyarrow(s3_corpus, tmp_path):
    client, bucket, prefix = s3_corpus["client"], s3_corpus["out_bucket"], s3_corpus["prefix"]
    result = json.loads(s3_corpus["termination"])
    listed = objects(client, bucket, prefix)
    parquet = sorted(name for name in listed if name.endswith(".parquet"))
    assert {"_SUCCESS", "manifest.json", "README.md", "inputs.jsonl", "dropped.jsonl"} <= set(listed)
    assert set(SPLITS) <= {name.split("/")[0] for name in parquet}
    # the commit marker lists every other object with its size, and carries the result
    marker = json.loads(client.get_object(bucket, prefix + "_SUCCESS").read())
    assert marker["files"] == {name: size for name, (_, _, size) in listed.items() if name != "_SUCCESS"}
    assert marker["contentHash"] == result["contentHash"] and marker["result"] == result

    local = tmp_path / "dataset"
    for name in listed:
        client.fget_object(bucket, prefix + name, str(local / name))
    manifest = json.loads((local / "manifest.json").read_text())
    assert manifest["result"] == result and manifest["contentHash"] == result["contentHash"]
    assert manifest["cleaning"]["piiRedacted"] == PLANTED_PII
    total = 0
    for split in SPLITS:
        for fmt, info in manifest["splits"][split].items():
            rows = sum(pq.read_table(p).num_rows for p in sorted((local / split).glob(f"{fmt}-*.parquet")))
            assert rows == info["examples"], (split, fmt)
            total += rows
    assert total == sum(result["stats"]["examplesPerSplit"].values())
    pretrain = [r for p in sorted(local.glob("*/pretrain-*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert pretrain and all(r["doc_id"].startswith(f"s3://{s3_corpus['corpus_bucket']}/examples/corpus/docs/") for r in pretrain)
    assert "field.office@atri.example" not in "\n".join(r["text"] for r in pretrain)
    # every input object was fingerprinted by its ETag (no re-download to hash it)
    inputs = [json.loads(line) for line in (local / "inputs.jsonl").read_text().splitlines()]
    read_keys = {k for k in s3_corpus["uploaded"] if k.startswith(("examples/corpus/docs/", "examples/corpus/qa/"))}
    assert len(inputs) == manifest["inputs"]["files"] == len(read_keys)
    assert all(entry["content"].startswith("etag:") for entry in inputs)


def test_rerun_with_unchanged_inputs_does_no_work(s3_corpus):
    client, bucket, prefix = s3_corpus["client"], s3_corpus["out_bucket"], s3_corpus["prefix"]
    before = objects(client, bucket, prefix)
    process, termination, seconds = run_cli(s3_corpus["minio"], s3_corpus["config"], s3_corpus["work"] / "rerun")
    assert process.returncode == 0, process.stderr[-3000:]
    print(f"\ndata stage over S3: first run {s3_corpus['seconds']:.1f}s, re-run {seconds:.1f}s")
    assert json.loads(termination) == json.loads(s3_corpus["termination"])  # same content hash, same result
    assert "nothing to do" in process.stderr
    progress = json.loads((s3_corpus["work"] / "progress.json").read_text())
    assert progress["phase"] == "done" and progress.get("reused") is True
    # not one object was rewritten
    assert objects(client, bucket, prefix) == before


def test_changed_input_object_changes_the_hash_and_republishes(s3_env, tmp_path):
    """A small dataset run in-process: editing one input object in the bucket is a new dataset."""
    from mentor_trainer.data import main

    client = s3_env.client()
    src = s3_env.make_bucket(f"src-{uuid.uuid4().hex[:8]}")
    out = s3_env.make_bucket(f"out-{uuid.uuid4().hex[:8]}")
    facts = ["terraces are rebuilt after floods", "withering rooms are held at 14 °C", "pluckers take two leaves and a bud",
             "lantern oaks shade the bushes", "the lab measures theanine by HPLC", "chests hold forty kilograms"]
    for i, fact in enumerate(facts):
        data = f"Document {i} of the Aurelian tea guide says that {fact}, as every grower knows.".encode()
        client.put_object(src, f"docs/d{i}.txt", io.BytesIO(data), length=len(data))
    config = DataStageConfig.model_validate({
        "run": {"kind": "DomainDataset", "name": "h"}, "outputUri": f"s3://{out}/ds",
        "sources": [{"name": "docs", "uri": f"s3://{src}/docs/"}], "dedup": {"near": {"enabled": False}},
    })
    first = main(config)
    assert main(config) == first
    marker_before = client.stat_object(out, "ds/_SUCCESS")
    data = b"Document 0 was edited: Aurelian tea is withered at 14 degrees for nine hours in a cool room."
    client.put_object(src, "docs/d0.txt", io.BytesIO(data), length=len(data))
    edited = main(config)
    assert edited.content_hash != first.content_hash
    assert json.loads(client.get_object(out, "ds/_SUCCESS").read())["contentHash"] == edited.content_hash
    assert client.stat_object(out, "ds/_SUCCESS").etag != marker_before.etag


def test_wrong_credentials_fail_the_stage_permanently_without_leaking_the_secret(minio, tmp_path):
    bucket = minio.make_bucket(f"corpus-{uuid.uuid4().hex[:8]}")
    secret = "Wr0ng-" + uuid.uuid4().hex
    config = DataStageConfig.model_validate({
        "run": {"kind": "DomainDataset", "name": "creds"}, "outputUri": f"s3://{bucket}/out",
        "sources": [{"name": "docs", "uri": f"s3://{bucket}/docs/"}],
    })
    process, termination, _ = run_cli(minio, config, tmp_path, AWS_SECRET_ACCESS_KEY=secret)
    assert process.returncode == 2, (process.returncode, process.stderr[-2000:])
    assert "sources[0] (docs)" in termination and f"s3://{bucket}/docs/" in termination
    assert "SignatureDoesNotMatch" in termination
    for text in (termination, process.stdout, process.stderr):
        assert secret not in text and minio.secret_key not in text


def test_missing_output_bucket_fails_permanently_naming_it(minio, tmp_path):
    src = minio.make_bucket(f"corpus-{uuid.uuid4().hex[:8]}")
    data = b"Aurelian tea is withered at 14 degrees for nine hours before rolling in the Veyra Valley."
    minio.client().put_object(src, "docs/a.txt", io.BytesIO(data), length=len(data))
    missing = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    config = DataStageConfig.model_validate({
        "run": {"kind": "DomainDataset", "name": "nobucket"}, "outputUri": f"s3://{missing}/out",
        "sources": [{"name": "docs", "uri": f"s3://{src}/docs/"}]
    })
    process, termination, _ = run_cli(minio, config, tmp_path)
    assert process.returncode == 2, (process.returncode, process.stderr[-2000:])
    assert f"s3://{missing}/out" in termination and "bucket does not exist" in termination
    assert minio.secret_key not in termination + process.stderr
