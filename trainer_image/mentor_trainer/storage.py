"""One way to read and write artifacts, whatever the URI scheme.

Every stage reads its inputs and writes its outputs through this module:

- ``file:///abs/path`` (or ``file://rel/path``, relative to the working directory): local mode;
- ``pvc://claim/path``: a mounted PersistentVolumeClaim, i.e.
  ``${MENTOR_PVC_ROOT:-/mnt/pvc}/claim/path``;
- ``s3://bucket/key``: MinIO or any S3 through the ``minio`` client. The endpoint comes from
  ``MENTOR_S3_ENDPOINT`` (``host:port`` or ``http(s)://host:port``; see :func:`s3_settings`),
  the credentials from
  ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (optionally ``AWS_SESSION_TOKEN``). Secret
  values are never logged nor put in error messages.

Publishing is atomic: :func:`publish` hands out a local staging directory; on success every
file is written under the destination and a commit marker ``_SUCCESS`` is written *last*. A
prefix without the marker is treated as absent (:func:`exists_complete`), so a stage killed
half-way never leaves a half dataset that looks complete. On ``file://``/``pvc://`` the
staging directory is a hidden sibling of the destination and the commit is a rename.

Problems that make a stage's result meaningless (unreachable endpoint, wrong credentials,
missing bucket) raise :class:`~mentor_trainer.errors.StageError` with a message naming the
URI; ``permanent`` says whether retrying could help.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import logging
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import StageError
from .timestamps import utc_now

log = logging.getLogger(__name__)

SUCCESS_MARKER = "_SUCCESS"
SCHEMES = ("file", "pvc", "s3")
DEFAULT_PVC_ROOT = "/mnt/pvc"
# Leftover staging directories older than this are from killed runs and are removed.
STALE_STAGING_SECONDS = 3600
_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------
# URIs


@dataclass(frozen=True)
class Uri:
    """A parsed storage URI: scheme, bucket (s3) or claim (pvc), and the key/path inside."""

    scheme: str
    bucket: str  # s3 bucket, pvc claim; "" for file
    key: str  # path inside the bucket/claim (no leading slash); for file the full path

    def __str__(self) -> str:
        if self.scheme == "file":
            return "file://" + self.key
        return f"{self.scheme}://{self.bucket}/{self.key}" if self.key else f"{self.scheme}://{self.bucket}"

    def join(self, *parts: str) -> "Uri":
        key = self.key
        for part in parts:
            part = part.replace("\\", "/")
            for piece in part.split("/"):
                if piece in ("..",):
                    raise StageError(f"refusing '..' in a storage path below {self}")
            key = posixpath.join(key, part.lstrip("/")) if key else part.lstrip("/")
        return Uri(self.scheme, self.bucket, key)

    @property
    def name(self) -> str:
        return posixpath.basename(self.key.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return self.scheme in ("file", "pvc")


def parse(uri: str | Uri) -> Uri:
    """Parse ``s3://bucket/key``, ``pvc://claim/path`` or ``file://path``; anything else is a StageError."""
    if isinstance(uri, Uri):
        return uri
    scheme, sep, rest = str(uri).partition("://")
    if not sep or scheme not in SCHEMES or not rest:
        raise StageError(f"unsupported storage URI {uri!r}: expected s3://bucket/key, pvc://claim/path or file:///path")
    if scheme == "file":
        # file:///abs/path -> /abs/path; file://localhost/abs -> /abs; file://rel/path -> rel/path
        if rest.startswith("localhost/"):
            rest = rest[len("localhost"):]
        path = rest if rest.startswith("/") else os.path.join(os.getcwd(), rest)
        return Uri("file", "", os.path.normpath(path) + ("/" if rest.endswith("/") and len(rest) > 1 else ""))
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StageError(f"storage URI {uri!r} has no {'bucket' if scheme == 's3' else 'claim'}")
    if any(piece == ".." for piece in key.split("/")):
        raise StageError(f"refusing '..' in storage URI {uri!r}")
    return Uri(scheme, bucket, key)


def pvc_root() -> Path:
    return Path(os.environ.get("MENTOR_PVC_ROOT") or DEFAULT_PVC_ROOT)


def local_path(uri: str | Uri) -> Path:
    """The filesystem path of a file:// or pvc:// URI (s3:// has none: StageError)."""
    u = parse(uri)
    if u.scheme == "file":
        return Path(u.key)
    if u.scheme == "pvc":
        return pvc_root() / u.bucket / u.key
    raise StageError(f"{u} is not on a mounted filesystem")


# --------------------------------------------------------------------------------------
# S3 client


@dataclass(frozen=True)
class S3Settings:
    endpoint: str  # host[:port]
    secure: bool
    region: str | None


def s3_settings() -> S3Settings:
    """Endpoint settings from the environment (credentials are read by :func:`s3_client` only).

    ``MENTOR_S3_ENDPOINT``: ``http://host:port``, ``https://host:port`` or ``host:port``
    (https unless ``MENTOR_S3_SECURE`` is ``false``/``0``); default ``s3.amazonaws.com``.
    """
    raw = os.environ.get("MENTOR_S3_ENDPOINT", "").strip() or "s3.amazonaws.com"
    secure_env = os.environ.get("MENTOR_S3_SECURE", "").strip().lower()
    secure = secure_env not in ("0", "false", "no")
    if raw.startswith("http://"):
        raw, secure = raw[len("http://"):], False
    elif raw.startswith("https://"):
        raw, secure = raw[len("https://"):], True
    endpoint = raw.rstrip("/")
    if "/" in endpoint:
        raise StageError(f"MENTOR_S3_ENDPOINT must be host:port or http(s)://host:port, not a path ({endpoint!r})")
    return S3Settings(endpoint=endpoint, secure=secure, region=os.environ.get("AWS_REGION") or None)


_clients: dict[tuple, object] = {}


def s3_client():
    """A cached ``minio.Minio`` client for the current environment."""
    import urllib3
    from minio import Minio

    settings = s3_settings()
    access = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    token = os.environ.get("AWS_SESSION_TOKEN")
    # The cache key must change when credentials do, without keeping them readable in it.
    fingerprint = hashlib.sha256(f"{access}\0{secret}\0{token}".encode()).hexdigest()
    key = (settings, fingerprint)
    client = _clients.get(key)
    if client is None:
        timeout = float(os.environ.get("MENTOR_S3_TIMEOUT", "30"))
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout),
            maxsize=8,
            retries=urllib3.Retry(total=3, backoff_factor=0.3, status_forcelist=[500, 502, 503, 504]),
        )
        client = Minio(
            settings.endpoint,
            access_key=access,
            secret_key=secret,
            session_token=token,
            secure=settings.secure,
            region=settings.region,
            http_client=http,
        )
        _clients[key] = client
    return client


_PERMANENT_S3_CODES = {
    "AccessDenied": "access denied",
    "InvalidAccessKeyId": "the access key is not known to the server (check AWS_ACCESS_KEY_ID)",
    "SignatureDoesNotMatch": "the secret key does not match (check AWS_SECRET_ACCESS_KEY)",
    "NoSuchBucket": "the bucket does not exist",
    "InvalidBucketName": "the bucket name is invalid",
    "AllAccessDisabled": "access to the bucket is disabled",
}


@contextlib.contextmanager
def _s3_errors(uri: Uri | str, action: str):
    """Turn minio/urllib3 errors into StageErrors naming the URI (never the credentials)."""
    from minio.error import S3Error
    import urllib3.exceptions

    try:
        yield
    except S3Error as error:
        reason = _PERMANENT_S3_CODES.get(error.code)
        if reason:
            raise StageError(f"cannot {action} {uri}: {reason} ({error.code})") from None
        raise StageError(f"cannot {action} {uri}: {error.code}: {error.message}", permanent=False) from None
    except (urllib3.exceptions.HTTPError, OSError) as error:
        settings = s3_settings()
        scheme = "https" if settings.secure else "http"
        raise StageError(
            f"cannot {action} {uri}: S3 endpoint {scheme}://{settings.endpoint} unreachable ({type(error).__name__})",
            permanent=False,
        ) from None


@contextlib.contextmanager
def _s3_stream_errors(uri: Uri):
    """While a caller reads a response: only network errors are the store's fault."""
    import urllib3.exceptions

    try:
        yield
    except urllib3.exceptions.HTTPError as error:
        raise StageError(f"reading {uri} failed: {type(error).__name__}", permanent=False) from None


def _s3_not_found(error: Exception) -> bool:
    from minio.error import S3Error

    return isinstance(error, S3Error) and error.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound")


# --------------------------------------------------------------------------------------
# Listing and reading


@dataclass(frozen=True)
class ObjectInfo:
    """One object found under a prefix: its full URI, its name relative to the prefix, its size."""

    uri: str
    name: str
    size: int
    etag: str | None = None  # s3 only; a content fingerprint when the object was uploaded in one part


def list_objects(prefix: str | Uri, include: list[str] | None = None) -> Iterator[ObjectInfo]:
    """Stream every object at or below ``prefix`` in name order (a lazy generator).

    If ``prefix`` names a single object/file, that object alone is yielded (its name is its
    basename). ``include`` are glob patterns matched against the relative name (``*`` also
    matches ``/``) or the basename. A missing local path is a StageError; an S3 prefix
    without objects just yields nothing.
    """
    u = parse(prefix)

    def wanted(name: str) -> bool:
        if not include:
            return True
        base = posixpath.basename(name)
        return any(fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(base, pattern) for pattern in include)

    if u.is_local:
        yield from (info for info in _list_local(u) if wanted(info.name))
    else:
        yield from (info for info in _list_s3(u) if wanted(info.name))


def _list_local(u: Uri) -> Iterator[ObjectInfo]:
    root = local_path(u)
    if root.is_file():
        yield ObjectInfo(uri=str(u).rstrip("/"), name=root.name, size=root.stat().st_size)
        return
    if not root.is_dir():
        raise StageError(f"{u} does not exist ({root})")

    def walk(directory: Path, rel: str) -> Iterator[ObjectInfo]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as error:
            raise StageError(f"cannot list {u}: {error.strerror} ({directory})") from None
        for entry in entries:
            name = f"{rel}{entry.name}"
            if entry.is_dir(follow_symlinks=True):
                yield from walk(Path(entry.path), name + "/")
            elif entry.is_file(follow_symlinks=True):
                yield ObjectInfo(uri=str(u.join(name)), name=name, size=entry.stat().st_size)

    yield from walk(root, "")


def _list_s3(u: Uri) -> Iterator[ObjectInfo]:
    client = s3_client()
    key = u.key
    if key and not key.endswith("/"):
        # a single object?
        with _s3_errors(u, "read"):
            try:
                stat = client.stat_object(u.bucket, key)
            except Exception as error:  # noqa: BLE001 - only "not found" is expected here
                if not _s3_not_found(error):
                    raise
                stat = None
        if stat is not None:
            yield ObjectInfo(uri=str(u), name=posixpath.basename(key), size=stat.size or 0, etag=stat.etag)
            return
        key += "/"
    with _s3_errors(u, "list"):
        for obj in client.list_objects(u.bucket, prefix=key or None, recursive=True):
            if obj.is_dir:
                continue
            name = obj.object_name[len(key):]
            yield ObjectInfo(uri=str(Uri("s3", u.bucket, obj.object_name)), name=name, size=obj.size or 0, etag=obj.etag)


@contextlib.contextmanager
def open_read(uri: str | Uri) -> Iterator[BinaryIO]:
    """A binary stream of one object (not loaded in memory)."""
    u = parse(uri)
    if u.is_local:
        path = local_path(u)
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            raise StageError(f"{u} does not exist") from None
        except OSError as error:
            raise StageError(f"cannot read {u}: {error.strerror}") from None
        with handle:
            yield handle
        return
    client = s3_client()
    with _s3_errors(u, "read"):
        try:
            response = client.get_object(u.bucket, u.key)
        except Exception as error:  # noqa: BLE001
            if _s3_not_found(error):
                raise StageError(f"{u} does not exist") from None
            raise
    try:
        with _s3_stream_errors(u):
            yield response
    finally:
        response.close()
        response.release_conn()


def read_bytes(uri: str | Uri, limit: int | None = None) -> bytes:
    """The whole object (or its first ``limit`` bytes)."""
    with open_read(uri) as stream:
        return stream.read() if limit is None else stream.read(limit)


def read_text(uri: str | Uri, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def exists(uri: str | Uri) -> bool:
    """Whether one object/file exists at exactly this URI."""
    u = parse(uri)
    if u.is_local:
        return local_path(u).is_file()
    with _s3_errors(u, "read"):
        try:
            s3_client().stat_object(u.bucket, u.key)
            return True
        except Exception as error:  # noqa: BLE001
            if _s3_not_found(error):
                return False
            raise


# --------------------------------------------------------------------------------------
# Writing


def write_bytes(uri: str | Uri, data: bytes) -> None:
    """Write one object. Local writes go through a temporary file and a rename."""
    u = parse(uri)
    if u.is_local:
        path = local_path(u)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    with _s3_errors(u, "write"):
        s3_client().put_object(u.bucket, u.key, io.BytesIO(data), length=len(data))


def write_text(uri: str | Uri, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_file(uri: str | Uri, source: str | os.PathLike) -> None:
    """Copy a local file to ``uri`` (streamed)."""
    u = parse(uri)
    if u.is_local:
        path = local_path(u)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        shutil.copyfile(source, tmp)
        os.replace(tmp, path)
        return
    with _s3_errors(u, "write"):
        s3_client().fput_object(u.bucket, u.key, os.fspath(source))


def download(prefix: str | Uri, destination: str | os.PathLike) -> Path:
    """Copy every object under ``prefix`` into a local directory (keeping relative names)."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for info in list_objects(prefix):
        target = destination / info.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with open_read(info.uri) as stream, open(target, "wb") as out:
            shutil.copyfileobj(stream, out, _CHUNK)
    return destination


def delete_prefix(prefix: str | Uri) -> int:
    """Remove every object at or below ``prefix``; returns how many were removed."""
    u = parse(prefix)
    if u.is_local:
        path = local_path(u)
        if path.is_dir():
            count = sum(len(files) for _, _, files in os.walk(path))
            shutil.rmtree(path)
            return count
        if path.exists():
            path.unlink()
            return 1
        return 0
    from minio.deleteobjects import DeleteObject

    client = s3_client()
    key = u.key.rstrip("/") + "/" if u.key else ""
    with _s3_errors(u, "delete"):
        names = [obj.object_name for obj in client.list_objects(u.bucket, prefix=key or None, recursive=True)]
        # the prefix may also name one object; count it only if it is there
        if u.key and not u.key.endswith("/") and exists(u):
            names.append(u.key)
        errors = list(client.remove_objects(u.bucket, (DeleteObject(name) for name in names)))
    if errors:
        raise StageError(f"cannot delete {len(errors)} objects under {u}: {errors[0].code}", permanent=False)
    return len(names)


# --------------------------------------------------------------------------------------
# Atomic publishing


def exists_complete(uri: str | Uri) -> bool:
    """Whether a published directory exists at ``uri`` (its commit marker is present)."""
    return exists(parse(uri).join(SUCCESS_MARKER))


def read_marker(uri: str | Uri) -> dict | None:
    """The commit marker of a published directory (None when absent or incomplete)."""
    marker = parse(uri).join(SUCCESS_MARKER)
    if not exists(marker):
        return None
    try:
        return json.loads(read_bytes(marker) or b"{}")
    except ValueError:
        return {}


def _marker_payload(staging: Path, metadata: dict | None) -> bytes:
    files = {}
    for path in sorted(staging.rglob("*")):
        if path.is_file() and path.name != SUCCESS_MARKER:
            files[path.relative_to(staging).as_posix()] = path.stat().st_size
    payload = {"files": files, "committedAt": utc_now()}
    payload.update(metadata or {})
    return json.dumps(payload, indent=2, sort_keys=True).encode()


@contextlib.contextmanager
def publish(uri: str | Uri, metadata: dict | None = None) -> Iterator[Path]:
    """Write a directory atomically: ``with publish(uri) as staging: <write files in staging>``.

    On a clean exit the files become visible under ``uri`` with ``_SUCCESS`` (holding the file
    list and ``metadata``, which the caller may still fill inside the block) written last; on an exception nothing is committed and whatever was
    published before at ``uri`` is left as it was. Republishing replaces the old content.

    file:// and pvc://: the staging directory is a hidden sibling of the destination on the
    same filesystem; the commit is ``rename`` (the old directory, if any, is swapped out and
    removed). s3://: the staging directory is local; the commit removes the old marker, then
    the old objects, uploads every file and finally the marker.
    """
    u = parse(uri)
    metadata = metadata if metadata is not None else {}
    if u.is_local:
        dest = local_path(u)
        parent = dest.parent
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(parent, dest.name)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=parent))
        try:
            yield staging
            (staging / SUCCESS_MARKER).write_bytes(_marker_payload(staging, metadata))
            _fsync_tree(staging)
            old = None
            if dest.exists() or dest.is_symlink():
                old = parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(dest, old)
            os.rename(staging, dest)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return

    if not u.key.strip("/"):
        raise StageError(f"refusing to publish to the root of bucket {u}: give a prefix (s3://bucket/prefix)")
    staging = Path(tempfile.mkdtemp(prefix="mentor-publish-"))
    try:
        yield staging
        marker_bytes = _marker_payload(staging, metadata)
        client = s3_client()
        marker = u.join(SUCCESS_MARKER)
        with _s3_errors(u, "write"):
            # 1. the old output stops counting as complete, 2. stale objects go,
            # 3. the new files, 4. the marker, last.
            client.remove_object(marker.bucket, marker.key)
            delete_prefix(u)
            for path in sorted(staging.rglob("*")):
                if path.is_file():
                    target = u.join(path.relative_to(staging).as_posix())
                    client.fput_object(target.bucket, target.key, os.fspath(path))
            client.put_object(marker.bucket, marker.key, io.BytesIO(marker_bytes), length=len(marker_bytes))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_stale_staging(parent: Path, name: str) -> None:
    now = time.time()
    for pattern in (f".{name}.staging-*", f".{name}.old-*"):
        for path in parent.glob(pattern):
            try:
                if now - path.stat().st_mtime > STALE_STAGING_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass


def _fsync_tree(root: Path) -> None:
    """Flush the staged files to disk before the rename makes them visible."""
    for path in root.rglob("*"):
        if path.is_file():
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
