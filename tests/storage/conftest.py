"""Fixtures: one real MinIO server per session, and a test environment pointed at it.

The binary is `$MENTOR_MINIO` when set, else what tests/storage/build-minio.sh builds (once
per machine, cached outside the clone; a no-op when cached).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.storage.minio import MinioServer

HERE = Path(__file__).resolve().parent


def minio_binary() -> str:
    binary = os.environ.get("MENTOR_MINIO")
    if binary:
        return binary
    process = subprocess.run(
        ["bash", str(HERE / "build-minio.sh")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        timeout=3600,
    )
    if process.returncode != 0:
        raise RuntimeError(f"build-minio.sh failed ({process.returncode}):\n{process.stderr[-4000:]}")
    return process.stdout.strip().splitlines()[-1]


_build: dict[str, object] = {}


def pytest_collection_finish(session):
    """Build MinIO (first use on a machine: minutes) before the tests start, so the build is
    not counted against the first test's timeout; only when a storage test was selected."""
    if os.environ.get("MENTOR_MINIO") or not any(HERE in Path(str(item.path)).parents for item in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("tests/storage: bash tests/storage/build-minio.sh (a no-op once built)")
    try:
        _build["path"] = minio_binary()
    except Exception as error:  # reported by the fixture, as the tests' error
        _build["error"] = error


@pytest.fixture(scope="session")
def minio_bin() -> str:
    if "error" in _build:
        raise _build["error"]
    return str(_build.get("path") or minio_binary())


@pytest.fixture(scope="session")
def minio(minio_bin, tmp_path_factory):
    """A running MinIO server for the whole session."""
    server = MinioServer(minio_bin, workdir=tmp_path_factory.mktemp("minio"))
    with server:
        yield server


@pytest.fixture
def s3_env(minio, monkeypatch):
    """Point mentor_trainer.storage at the session's MinIO for this test; returns the server."""
    for name in MinioServer.UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in minio.env().items():
        monkeypatch.setenv(name, value)
    return minio


@pytest.fixture
def bucket(minio) -> str:
    """A fresh, empty bucket for one test."""
    return minio.make_bucket(f"t-{uuid.uuid4().hex[:12]}")
