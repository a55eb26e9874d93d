"""mentor_trainer.storage on s3:// against a real MinIO server on loopback.

Setup and checks go through a separate `minio` client (`minio.client()`), so what is tested is
what storage.py does to a real S3 server, not what it says about itself.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mentor_trainer import storage
from mentor_trainer.errors import StageError
from tests.storage.minio import MinioServer

REPO = Path(__file__).resolve().parents[2]


def put(client, bucket: str, name: str, data: bytes) -> None:
    client.put_object(bucket, name, io.BytesIO(data), length=len(data))


def names(client, bucket: str, prefix: str | None = None) -> list[str]:
    return sorted(o.object_name for o in client.list_objects(bucket, prefix=prefix, recursive=True))


# --------------------------------------------------------------------------------------
# Reading and writing


def test_write_read_exists_and_overwrite(s3_env, bucket):
    client = s3_env.client()
    target = f"s3://{bucket}/a/b/c.bin"
    assert not storage.exists(target)
    storage.write_bytes(target, b"\x00\x01payload")
    assert client.get_object(bucket, "a/b/c.bin").read() == b"\x00\x01payload"
    assert storage.exists(target)
    assert not storage.exists(f"s3://{bucket}/a/b")  # a prefix is not an object
    assert storage.read_bytes(target) == b"\x00\x01payload"
    assert storage.read_bytes(target, limit=3) == b"\x00\x01p"
    storage.write_text(target, "second 版本")
    assert storage.read_text(target) == "second 版本"
    # a key with spaces and non-ASCII characters round-trips
    odd = f"s3://{bucket}/docs/zh/茶 叶 (v2).md"
    storage.write_text(odd, "茶")
    assert storage.read_text(odd) == "茶"
    assert [o.name for o in storage.list_objects(f"s3://{bucket}/docs/")] == ["zh/茶 叶 (v2).md"]


def test_reading_a_missing_object_names_it(s3_env, bucket):
    with pytest.raises(StageError) as error:
        storage.read_bytes(f"s3://{bucket}/nope.txt")
    assert f"s3://{bucket}/nope.txt does not exist" in str(error.value)
    assert error.value.permanent


def test_large_objects_stream_both_ways(s3_env, bucket, tmp_path):
    """12 MiB: a multipart upload, read back in 1 MiB blocks without loading it whole."""
    source = tmp_path / "big.bin"
    payload = os.urandom(12 << 20)
    source.write_bytes(payload)
    storage.write_file(f"s3://{bucket}/big/big.bin", source)
    stat = s3_env.client().stat_object(bucket, "big/big.bin")
    assert stat.size == len(payload)
    digest = hashlib.sha256()
    blocks = 0
    with storage.open_read(f"s3://{bucket}/big/big.bin") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            assert len(block) <= 1 << 20
            digest.update(block)
            blocks += 1
    assert blocks >= 12
    assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
    [info] = storage.list_objects(f"s3://{bucket}/big/")
    assert (info.name, info.size) == ("big.bin", len(payload)) and info.etag


def test_list_many_objects_streams_in_name_order(s3_env, bucket):
    """More objects than one ListObjects page (1,000): every one, in order, fetched lazily."""
    client = s3_env.client()
    count = 1100
    keys = [f"ds/part-{i:05d}.txt" for i in range(count)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: put(client, bucket, k, k.encode()), keys))
    # siblings that share the prefix string but not the directory
    put(client, bucket, "ds2/x.txt", b"no")
    put(client, bucket, "ds-other.txt", b"no")

    listing = storage.list_objects(f"s3://{bucket}/ds")
    assert not isinstance(listing, list)
    first = list(itertools.islice(listing, 1))
    # Written after the first page was fetched: a listing that was materialised up front
    # could not contain it; a streamed one fetches the second page only now.
    put(client, bucket, "ds/zzz-late.txt", b"late")
    rest = list(listing)
    objects = first + rest
    assert [o.name for o in objects] == [k[len("ds/"):] for k in keys] + ["zzz-late.txt"]
    assert objects[0].uri == f"s3://{bucket}/ds/part-00000.txt"
    assert all(o.size == len(f"ds/{o.name}") for o in objects[:-1])
    assert storage.read_text(objects[777].uri) == "ds/part-00777.txt"

    assert [o.name for o in storage.list_objects(f"s3://{bucket}/ds/", include=["*-0000[3-5].txt"])] == [
        "part-00003.txt", "part-00004.txt", "part-00005.txt"]
    # a URI naming one object lists that object alone
    single = list(storage.list_objects(f"s3://{bucket}/ds/part-00042.txt"))
    assert [(o.name, o.size, o.uri) for o in single] == [("part-00042.txt", 17, f"s3://{bucket}/ds/part-00042.txt")]
    # an empty prefix lists nothing (no error: S3 has no directories)
    assert list(storage.list_objects(f"s3://{bucket}/nothing/here/")) == []

    # delete_prefix removes every object below the prefix (more than one DeleteObjects batch)
    # and nothing beside it
    assert storage.delete_prefix(f"s3://{bucket}/ds") == count + 1
    assert names(client, bucket) == ["ds-other.txt", "ds2/x.txt"]


def test_download_keeps_relative_names(s3_env, bucket, tmp_path):
    client = s3_env.client()
    tree = {"x/1.txt": b"one", "2.txt": b"two", "x/y/3.bin": os.urandom(2048)}
    for name, data in tree.items():
        put(client, bucket, f"src/{name}", data)
    target = storage.download(f"s3://{bucket}/src", tmp_path / "dst")
    got = {p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert got == tree
    # a URI naming one object deletes that object alone
    assert storage.delete_prefix(f"s3://{bucket}/src/x/1.txt") == 1
    assert names(client, bucket) == ["src/2.txt", "src/x/y/3.bin"]


# --------------------------------------------------------------------------------------
# Atomic publishing


def test_publish_commits_files_then_marker(s3_env, bucket):
    client = s3_env.client()
    dest = f"s3://{bucket}/ns/DomainDataset/ds"
    assert not storage.exists_complete(dest)
    metadata = {"contentHash": "abc"}
    with storage.publish(dest, metadata) as staging:
        (staging / "train").mkdir()
        (staging / "train" / "a.parquet").write_bytes(b"PAR1")
        (staging / "manifest.json").write_text("{}")
        # nothing is visible before the commit
        assert names(client, bucket) == []
        assert not storage.exists_complete(dest)
        metadata["result"] = {"ok": True}  # may still be filled inside the block
    assert storage.exists_complete(dest)
    assert storage.exists_complete(dest + "/")
    assert names(client, bucket) == ["ns/DomainDataset/ds/_SUCCESS", "ns/DomainDataset/ds/manifest.json",
                                     "ns/DomainDataset/ds/train/a.parquet"]
    marker = storage.read_marker(dest)
    assert marker["contentHash"] == "abc" and marker["result"] == {"ok": True}
    assert marker["files"] == {"manifest.json": 2, "train/a.parquet": 4}
    assert storage.read_bytes(dest + "/train/a.parquet") == b"PAR1"
    # the marker is the last object written
    modified = {o.object_name: o.last_modified for o in client.list_objects(bucket, prefix="ns/", recursive=True)}
    assert modified["ns/DomainDataset/ds/_SUCCESS"] == max(modified.values())


def test_republish_replaces_old_content(s3_env, bucket):
    client = s3_env.client()
    dest = f"s3://{bucket}/ds"
    with storage.publish(dest, {"contentHash": "v1"}) as staging:
        (staging / "old.txt").write_text("old")
        (staging / "sub").mkdir()
        (staging / "sub" / "old.bin").write_bytes(b"x")
    put(client, bucket, "ds-sibling/keep.txt", b"keep")
    with storage.publish(dest, {"contentHash": "v2"}) as staging:
        (staging / "new.txt").write_text("new")
    assert names(client, bucket) == ["ds-sibling/keep.txt", "ds/_SUCCESS", "ds/new.txt"]
    assert storage.read_marker(dest)["contentHash"] == "v2"


def test_failed_publish_leaves_the_previous_output_intact(s3_env, bucket):
    client = s3_env.client()
    dest = f"s3://{bucket}/ds"
    with storage.publish(dest, {"contentHash": "v1"}) as staging:
        (staging / "data.txt").write_text("version 1")
    before = {o.object_name: o.etag for o in client.list_objects(bucket, recursive=True)}
    with pytest.raises(RuntimeError):
        with storage.publish(dest, {"contentHash": "v2"}) as staging:
            (staging / "data.txt").write_text("half of version 2")
            raise RuntimeError("failed half-way")
    assert {o.object_name: o.etag for o in client.list_objects(bucket, recursive=True)} == before
    assert storage.read_marker(dest)["contentHash"] == "v1"
    assert storage.read_text(dest + "/data.txt") == "version 1"


def test_a_prefix_without_marker_counts_as_absent(s3_env, bucket):
    client = s3_env.client()
    put(client, bucket, "ds/train/a.parquet", b"partial")
    put(client, bucket, "ds/manifest.json", b"{}")
    put(client, bucket, "ds/sub/_SUCCESS", b"{}")  # a marker one level down does not count
    assert not storage.exists_complete(f"s3://{bucket}/ds")
    assert storage.read_marker(f"s3://{bucket}/ds") is None
    put(client, bucket, "ds/_SUCCESS", b"")  # an empty marker still commits
    assert storage.exists_complete(f"s3://{bucket}/ds")
    assert storage.read_marker(f"s3://{bucket}/ds") == {}
    assert storage.delete_prefix(f"s3://{bucket}/ds") == 4
    assert not storage.exists_complete(f"s3://{bucket}/ds")
    assert storage.delete_prefix(f"s3://{bucket}/ds") == 0


_KILLED_PUBLISH = r"""
import os, signal, sys
from mentor_trainer import storage

dest, when = sys.argv[1], sys.argv[2]
client = storage.s3_client()
uploads = 0
real_fput = client.fput_object

def fput_then_die(*args, **kwargs):
    global uploads
    real_fput(*args, **kwargs)
    uploads += 1
    if when == "commit" and uploads == 5:
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a node loss would

client.fput_object = fput_then_die
with storage.publish(dest, {"contentHash": "v2"}) as staging:
    for i in range(20):
        (staging / f"part-{i:02d}.txt").write_text("version 2")
    if when == "staging":
        os.kill(os.getpid(), signal.SIGKILL)
print("not killed")
"""


def _publish_and_get_killed(server: MinioServer, dest: str, when: str) -> None:
    env = server.process_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "trainer_image"), env.get("PYTHONPATH", "")])
    process = subprocess.run([sys.executable, "-c", _KILLED_PUBLISH, dest, when], env=env,
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == -9, (process.returncode, process.stdout, process.stderr[-2000:])


def test_a_killed_publish_leaves_nothing_that_looks_complete(s3_env, bucket):
    client = s3_env.client()
    dest = f"s3://{bucket}/ds"
    with storage.publish(dest, {"contentHash": "v1"}) as staging:
        (staging / "data.txt").write_text("version 1")

    # killed while writing its staging directory: the previous output is untouched
    _publish_and_get_killed(s3_env, dest, "staging")
    assert storage.read_marker(dest)["contentHash"] == "v1"
    assert names(client, bucket) == ["ds/_SUCCESS", "ds/data.txt"]

    # killed half-way through uploading: some new objects are there, but no marker, so
    # neither the old nor the half-new output counts as complete
    _publish_and_get_killed(s3_env, dest, "commit")
    left = names(client, bucket)
    assert left == [f"ds/part-{i:02d}.txt" for i in range(5)]
    assert not storage.exists_complete(dest)
    assert storage.read_marker(dest) is None

    # the next publish clears what the killed one left
    with storage.publish(dest, {"contentHash": "v3"}) as staging:
        (staging / "final.txt").write_text("version 3")
    assert names(client, bucket) == ["ds/_SUCCESS", "ds/final.txt"]
    assert storage.read_marker(dest)["contentHash"] == "v3"


def test_publishing_to_a_bucket_root_is_refused(s3_env, bucket):
    with pytest.raises(StageError, match="root of bucket"):
        with storage.publish(f"s3://{bucket}") as staging:
            (staging / "f").write_text("x")
    assert names(s3_env.client(), bucket) == []


# --------------------------------------------------------------------------------------
# Failures: each a StageError naming the URI, permanent or not, never quoting a secret


def _all_text(error: BaseException) -> str:
    """The message and everything a traceback of it would print."""
    return str(error) + "".join(traceback.format_exception(type(error), error, error.__traceback__))


def _operations(bucket: str):
    uri = f"s3://{bucket}/ds/file.txt"
    return {
        "list": (f"s3://{bucket}/ds/", lambda: list(storage.list_objects(f"s3://{bucket}/ds/"))),
        "list-one": (uri, lambda: list(storage.list_objects(uri))),
        "read": (uri, lambda: storage.read_bytes(uri)),
        "exists": (uri, lambda: storage.exists(uri)),
        "write": (uri, lambda: storage.write_bytes(uri, b"x")),
        "exists_complete": (f"s3://{bucket}/ds", lambda: storage.exists_complete(f"s3://{bucket}/ds")),
        "publish": (f"s3://{bucket}/ds", lambda: _publish_one(f"s3://{bucket}/ds")),
    }


def _publish_one(dest: str) -> None:
    with storage.publish(dest) as staging:
        (staging / "f.txt").write_text("x")


@pytest.mark.parametrize("wrong", ["access-key", "secret-key"])
def test_wrong_credentials_are_permanent_and_never_quote_the_secret(s3_env, bucket, monkeypatch, wrong):
    put(s3_env.client(), bucket, "ds/file.txt", b"x")
    secret = "Wr0ng-Secret-" + os.urandom(8).hex()
    if wrong == "access-key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody-" + os.urandom(4).hex())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    expected = "InvalidAccessKeyId" if wrong == "access-key" else "SignatureDoesNotMatch"
    for operation, (uri, call) in _operations(bucket).items():
        with pytest.raises(StageError) as error:
            call()
        message = str(error.value)
        assert uri in message, (operation, message)
        assert expected in message, (operation, message)
        assert error.value.permanent, (operation, message)
        assert secret not in _all_text(error.value), operation
        assert s3_env.secret_key not in _all_text(error.value), operation
    # nothing was written with the wrong credentials
    assert names(s3_env.client(), bucket) == ["ds/file.txt"]


def test_missing_bucket_is_permanent_and_named(s3_env):
    bucket = "no-such-bucket-" + os.urandom(4).hex()
    for operation, (uri, call) in _operations(bucket).items():
        with pytest.raises(StageError) as error:
            call()
        message = str(error.value)
        assert uri in message and "bucket does not exist" in message, (operation, message)
        assert error.value.permanent, (operation, message)
        assert s3_env.secret_key not in _all_text(error.value)


def test_unreachable_endpoint_is_transient(s3_env, minio_bin, monkeypatch):
    with MinioServer(minio_bin) as gone:
        endpoint = gone.endpoint
        port = gone.port
    # the server was there a moment ago; now its port is closed
    monkeypatch.setenv("MENTOR_S3_ENDPOINT", endpoint)
    monkeypatch.setenv("MENTOR_S3_TIMEOUT", "2")
    for operation, (uri, call) in _operations("corpus").items():
        with pytest.raises(StageError) as error:
            call()
        message = str(error.value)
        assert uri in message and f"http://127.0.0.1:{port} unreachable" in message, (operation, message)
        assert error.value.permanent is False, (operation, message)
        assert s3_env.secret_key not in _all_text(error.value)
