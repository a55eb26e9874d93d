"""mentor_trainer.storage on file:// and pvc:// (real files), plus S3 error paths that need no server.

Round trips against a real S3 server (MinIO on loopback) come with the MinIO fixture.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from mentor_trainer import storage
from mentor_trainer.errors import StageError


def uri(path: Path) -> str:
    return "file://" + str(path)


# --------------------------------------------------------------------------------------
# URIs


def test_parse_file_pvc_and_s3_uris(tmp_path, monkeypatch):
    assert storage.parse("file:///data/x/y.txt") == storage.Uri("file", "", "/data/x/y.txt")
    monkeypatch.chdir(tmp_path)
    relative = storage.parse("file://corpus/docs")
    assert relative.key == str(tmp_path / "corpus" / "docs")
    assert storage.parse("file://localhost/srv/a").key == "/srv/a"
    s3 = storage.parse("s3://bucket/ns/DomainDataset/x/")
    assert (s3.scheme, s3.bucket, s3.key) == ("s3", "bucket", "ns/DomainDataset/x/")
    assert str(storage.parse("s3://bucket")) == "s3://bucket"
    pvc = storage.parse("pvc://claim/runs/a")
    assert (pvc.scheme, pvc.bucket, pvc.key) == ("pvc", "claim", "runs/a")
    assert str(s3.join("train", "a.parquet")) == "s3://bucket/ns/DomainDataset/x/train/a.parquet"


@pytest.mark.parametrize("bad", ["http://x/y", "/just/a/path", "s3://", "gs://bucket/key", "s3:///key", "s3://b/../etc"])
def test_parse_rejects_unsupported_uris(bad):
    with pytest.raises(StageError) as error:
        storage.parse(bad)
    assert bad.split("://")[0] in str(error.value) or bad in str(error.value)


def test_join_refuses_parent_segments():
    with pytest.raises(StageError, match=r"'\.\.'"):
        storage.parse("s3://bucket/out").join("../other")


def test_pvc_uri_maps_under_the_mount_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MENTOR_PVC_ROOT", str(tmp_path))
    assert storage.local_path("pvc://datasets/runs/a.txt") == tmp_path / "datasets" / "runs" / "a.txt"
    storage.write_text("pvc://datasets/runs/a.txt", "hello")
    assert (tmp_path / "datasets" / "runs" / "a.txt").read_text() == "hello"
    assert [o.name for o in storage.list_objects("pvc://datasets/runs")] == ["a.txt"]
    monkeypatch.delenv("MENTOR_PVC_ROOT")
    assert storage.local_path("pvc://c/p") == Path("/mnt/pvc/c/p")
    with pytest.raises(StageError, match="not on a mounted filesystem"):
        storage.local_path("s3://bucket/key")


# --------------------------------------------------------------------------------------
# Reading and writing


def test_write_read_exists_and_overwrite(tmp_path):
    target = uri(tmp_path / "a" / "b" / "c.bin")
    assert not storage.exists(target)
    storage.write_bytes(target, b"\x00\x01payload")
    assert storage.exists(target)
    assert storage.read_bytes(target) == b"\x00\x01payload"
    assert storage.read_bytes(target, limit=3) == b"\x00\x01p"
    storage.write_text(target, "second 版本")
    assert storage.read_text(target) == "second 版本"
    # writes go through a temporary file: nothing is left beside the target
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["c.bin"]


def test_write_file_streams_a_local_file(tmp_path):
    source = tmp_path / "big.txt"
    source.write_bytes(os.urandom(3 << 20))
    storage.write_file(uri(tmp_path / "copy" / "big.txt"), source)
    assert (tmp_path / "copy" / "big.txt").read_bytes() == source.read_bytes()


def test_open_read_streams(tmp_path):
    (tmp_path / "f.txt").write_bytes(b"x" * 100_000)
    with storage.open_read(uri(tmp_path / "f.txt")) as stream:
        assert stream.read(10) == b"x" * 10
        assert len(stream.read()) == 99_990


def test_reading_a_missing_object_names_it(tmp_path):
    missing = uri(tmp_path / "nope.txt")
    with pytest.raises(StageError, match="nope.txt does not exist"):
        storage.read_bytes(missing)


def test_list_objects_is_recursive_sorted_and_lazy(tmp_path):
    for name in ["b/2.txt", "a.md", "b/1.txt", "c/d/e.html", ".hidden/x", "_SUCCESS"]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    listing = storage.list_objects(uri(tmp_path))
    assert not isinstance(listing, list)  # a generator: objects stream, the listing is not materialised
    objects = list(listing)
    assert [o.name for o in objects] == [".hidden/x", "_SUCCESS", "a.md", "b/1.txt", "b/2.txt", "c/d/e.html"]
    first = objects[2]
    assert first.uri == uri(tmp_path / "a.md") and first.size == len("a.md")
    assert storage.read_text(objects[-1].uri) == "c/d/e.html"


def test_list_objects_include_globs_and_single_file(tmp_path):
    for name in ["a.md", "b/c.md", "b/d.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert [o.name for o in storage.list_objects(uri(tmp_path), include=["*.md"])] == ["a.md", "b/c.md"]
    assert [o.name for o in storage.list_objects(uri(tmp_path), include=["b/*.txt"])] == ["b/d.txt"]
    single = list(storage.list_objects(uri(tmp_path / "b" / "d.txt")))
    assert [(o.name, o.size) for o in single] == [("d.txt", 1)]


def test_list_objects_on_a_missing_prefix_names_it(tmp_path):
    with pytest.raises(StageError) as error:
        list(storage.list_objects(uri(tmp_path / "missing")))
    assert str(tmp_path / "missing") in str(error.value)


def test_download_and_delete_prefix(tmp_path):
    src = tmp_path / "src"
    for name in ["x/1.txt", "2.txt"]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name)
    target = storage.download(uri(src), tmp_path / "dst")
    assert (target / "x" / "1.txt").read_text() == "x/1.txt"
    assert storage.delete_prefix(uri(src)) == 2
    assert not src.exists()
    assert storage.delete_prefix(uri(src)) == 0


# --------------------------------------------------------------------------------------
# Atomic publishing


def test_publish_commits_files_and_marker_last(tmp_path):
    dest = uri(tmp_path / "out" / "ds")
    assert not storage.exists_complete(dest)
    with storage.publish(dest, {"contentHash": "abc"}) as staging:
        (staging / "train").mkdir()
        (staging / "train" / "a.parquet").write_bytes(b"PAR1")
        (staging / "manifest.json").write_text("{}")
        # nothing is visible at the destination before the commit
        assert not (tmp_path / "out" / "ds").exists()
        assert not storage.exists_complete(dest)
    assert storage.exists_complete(dest)
    marker = storage.read_marker(dest)
    assert marker["contentHash"] == "abc"
    assert marker["files"] == {"manifest.json": 2, "train/a.parquet": 4}
    assert storage.read_bytes(dest + "/train/a.parquet") == b"PAR1"
    # no staging directories are left behind
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ds"]


def test_publish_metadata_can_be_filled_inside_the_block(tmp_path):
    dest = uri(tmp_path / "ds")
    metadata = {"contentHash": "h"}
    with storage.publish(dest, metadata) as staging:
        (staging / "f").write_text("x")
        metadata["result"] = {"ok": True}
    assert storage.read_marker(dest)["result"] == {"ok": True}


def test_failed_publish_leaves_the_previous_output_intact(tmp_path):
    dest = uri(tmp_path / "ds")
    with storage.publish(dest, {"contentHash": "v1"}) as staging:
        (staging / "data.txt").write_text("version 1")
    with pytest.raises(RuntimeError):
        with storage.publish(dest, {"contentHash": "v2"}) as staging:
            (staging / "data.txt").write_text("half of version 2")
            raise RuntimeError("killed half-way")
    assert storage.read_marker(dest)["contentHash"] == "v1"
    assert (tmp_path / "ds" / "data.txt").read_text() == "version 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_republish_replaces_old_content(tmp_path):
    dest = uri(tmp_path / "ds")
    with storage.publish(dest) as staging:
        (staging / "old.txt").write_text("old")
    with storage.publish(dest) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["_SUCCESS", "new.txt"]


def test_a_prefix_without_marker_counts_as_absent(tmp_path):
    half = tmp_path / "ds"
    half.mkdir()
    (half / "train.parquet").write_bytes(b"partial")
    assert not storage.exists_complete(uri(half))
    assert storage.read_marker(uri(half)) is None


def test_stale_staging_directories_are_removed(tmp_path):
    stale = tmp_path / ".ds.staging-old"
    stale.mkdir()
    (stale / "x").write_text("left by a killed run")
    old = time.time() - 2 * storage.STALE_STAGING_SECONDS
    os.utime(stale, (old, old))
    fresh = tmp_path / ".ds.staging-fresh"  # possibly another writer right now: kept
    fresh.mkdir()
    with storage.publish(uri(tmp_path / "ds")) as staging:
        (staging / "f").write_text("x")
    assert not stale.exists()
    assert fresh.exists()


# --------------------------------------------------------------------------------------
# S3: settings and failures that need no server


def test_s3_endpoint_settings(monkeypatch):
    monkeypatch.setenv("MENTOR_S3_ENDPOINT", "http://minio.mentor.svc:9000")
    assert storage.s3_settings() == storage.S3Settings("minio.mentor.svc:9000", False, None)
    monkeypatch.setenv("MENTOR_S3_ENDPOINT", "https://s3.example.com/")
    assert storage.s3_settings().secure and storage.s3_settings().endpoint == "s3.example.com"
    monkeypatch.setenv("MENTOR_S3_ENDPOINT", "10.0.0.5:9000")
    monkeypatch.setenv("MENTOR_S3_SECURE", "false")
    assert storage.s3_settings() == storage.S3Settings("10.0.0.5:9000", False, None)
    monkeypatch.setenv("MENTOR_S3_ENDPOINT", "http://host:9000/path")
    with pytest.raises(StageError, match="MENTOR_S3_ENDPOINT"):
        storage.s3_settings()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_s3_endpoint_is_a_transient_stage_error_without_secrets(monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("MENTOR_S3_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "mentor-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value-123")
    monkeypatch.setenv("MENTOR_S3_TIMEOUT", "2")
    with pytest.raises(StageError) as error:
        list(storage.list_objects("s3://corpus/docs/"))
    message = str(error.value)
    assert f"127.0.0.1:{port}" in message and "unreachable" in message and "s3://corpus/docs/" in message
    assert error.value.permanent is False
    assert "very-secret-value-123" not in message and "mentor-access-key" not in message
    with pytest.raises(StageError, match="unreachable"):
        with storage.publish("s3://out/ds") as staging:
            (staging / "f").write_text("x")


def test_publishing_to_a_bucket_root_is_refused():
    with pytest.raises(StageError, match="root of bucket"):
        with storage.publish("s3://datasets") as staging:
            (staging / "f").write_text("x")
