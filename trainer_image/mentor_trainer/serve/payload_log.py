"""Payload logging of the model server: what was asked, answered and retrieved, and the feedback.

The input of the drift check (``mentor-trainer drift``) and of the canary analysis.

Writing (:class:`PayloadLogger`) never fails nor slows a request: :meth:`PayloadLogger.log`
and :meth:`PayloadLogger.feedback` put a copy of the record on a bounded in-memory queue and
return; one background thread writes batches through :mod:`mentor_trainer.storage`
(``file://``, ``pvc://``, ``s3://``), after ``options.flush_every`` requests or
``options.flush_seconds`` seconds, whichever comes first. When the queue is full or the sink
is down (a batch fails, is retried once after a short pause, and fails again) the records are
dropped and counted (:attr:`PayloadLogger.dropped`), with a warning at most every
``warn_every`` seconds.

Layout under the log URI (``date`` is the UTC day the batch was written; ``<time>`` is the
write time ``YYYYMMDDTHHMMSSffffffZ``, so file names sort by write time)::

    <uri>/requests/date=YYYY-MM-DD/part-<time>-<uuid>.jsonl   (or .parquet: options.format)
    <uri>/feedback/date=YYYY-MM-DD/part-<time>-<uuid>.jsonl   (always JSON lines)

A request line (or parquet row) holds exactly the fields of :class:`PayloadRecord`, with
these types (parquet schema: :func:`request_schema`): strings ``request_id``, ``endpoint``,
``prompt``, ``completion``, ``status``, ``timestamp`` (RFC 3339 UTC to the second, as
:func:`mentor_trainer.timestamps.utc_now`), nullable strings ``model_version``, ``error``;
``retrieved_ids`` a list of strings, ``retrieval_scores`` a list of floats; ``latency_ms``
a float, ``ttft_ms`` a float or null; ``prompt_tokens``, ``completion_tokens`` integers.

A feedback line holds ``request_id``, ``rating`` (a float in [-1, 1] or null),
``correction`` (a string or null), ``timestamp`` and ``model_name``.

**Rating scale**: ``-1`` (bad) .. ``0`` (neutral) .. ``+1`` (good); a thumbs up/down is
``+1``/``-1``. A 1-5 star rating ``s`` maps to ``(s - 3) / 2``.

**Sampling** (``options.sample_rate``) is deterministic per request id: a request is kept when
the first 8 bytes of SHA-256(request_id), read as a fraction of 2^64, are below the rate.
Feedback follows the same rule, so a kept request keeps its feedback and the feedback of a
request that was not logged is not logged either. No seed, same answer in every replica.

Reading (:func:`read_records`, :func:`read_feedback`, :func:`scan_records`) skips files that
cannot be parsed and lines that are not a valid record, and counts them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import posixpath
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .. import storage
from ..config.deploy import PayloadLogging
from ..timestamps import parse_utc, utc_now

log = logging.getLogger(__name__)

REQUESTS_DIR = "requests"
FEEDBACK_DIR = "feedback"
RATING_MIN, RATING_MAX = -1.0, 1.0
MAX_CORRECTION_CHARS = 100_000
DEFAULT_QUEUE_SIZE = 10_000
RETRY_PAUSE_SECONDS = 0.5


@dataclass
class PayloadRecord:
    """One served request, as logged."""

    request_id: str
    endpoint: str
    prompt: str
    completion: str
    retrieved_ids: list[str]
    retrieval_scores: list[float]
    latency_ms: float
    ttft_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    model_version: str | None
    status: str = "ok"
    error: str | None = None
    timestamp: str = field(default_factory=utc_now)


RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(PayloadRecord))
FEEDBACK_FIELDS = ("request_id", "rating", "correction", "timestamp", "model_name")


def request_schema():
    """The parquet schema of a request batch (pyarrow is imported on first use)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("request_id", pa.string()),
            ("endpoint", pa.string()),
            ("prompt", pa.string()),
            ("completion", pa.string()),
            ("retrieved_ids", pa.list_(pa.string())),
            ("retrieval_scores", pa.list_(pa.float64())),
            ("latency_ms", pa.float64()),
            ("ttft_ms", pa.float64()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("model_version", pa.string()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("timestamp", pa.string()),
        ]
    )


# --------------------------------------------------------------------------------------
# Records <-> rows


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _finite(value: Any, name: str) -> float | None:
    number = _opt_float(value)
    if number is not None and not math.isfinite(number):
        raise ValueError(f"{name} is not a finite number")
    return number


def record_row(record: PayloadRecord) -> dict:
    """The typed row written for a record (copies the lists; raises on values of a wrong type)."""
    if record.latency_ms is None:
        raise ValueError("latency_ms is missing")
    ids = record.retrieved_ids or []
    scores = record.retrieval_scores or []
    if isinstance(ids, (str, bytes)) or isinstance(scores, (str, bytes)):
        raise TypeError("retrieved_ids and retrieval_scores must be lists")
    return {
        "request_id": str(record.request_id),
        "endpoint": str(record.endpoint),
        "prompt": str(record.prompt),
        "completion": str(record.completion),
        "retrieved_ids": [str(i) for i in ids],
        "retrieval_scores": [_finite(s, "a retrieval score") for s in scores],
        "latency_ms": _finite(record.latency_ms, "latency_ms"),
        "ttft_ms": _finite(record.ttft_ms, "ttft_ms"),
        "prompt_tokens": int(record.prompt_tokens),
        "completion_tokens": int(record.completion_tokens),
        "model_version": _opt_str(record.model_version),
        "status": str(record.status),
        "error": _opt_str(record.error),
        "timestamp": str(record.timestamp),
    }


def record_from_row(row: dict) -> PayloadRecord:
    """A record from a logged row (unknown extra keys are ignored; a missing field is a KeyError)."""
    return PayloadRecord(
        request_id=str(row["request_id"]),
        endpoint=str(row["endpoint"]),
        prompt=str(row["prompt"]),
        completion=str(row["completion"]),
        retrieved_ids=[str(i) for i in (row["retrieved_ids"] or [])],
        retrieval_scores=[float(s) for s in (row["retrieval_scores"] or [])],
        latency_ms=float(row["latency_ms"]),
        ttft_ms=_opt_float(row["ttft_ms"]),
        prompt_tokens=int(row["prompt_tokens"]),
        completion_tokens=int(row["completion_tokens"]),
        model_version=_opt_str(row["model_version"]),
        status=str(row.get("status") or "ok"),
        error=_opt_str(row.get("error")),
        timestamp=str(row["timestamp"]),
    )


def sampled(request_id: str, rate: float) -> bool:
    """Whether ``request_id`` is in the sample of this rate (deterministic, no seed)."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.sha256(str(request_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < rate


def validate_feedback(request_id: str, rating: float | None, correction: str | None) -> tuple[str, float | None, str | None]:
    """Check feedback; returns it normalised. ValueError names what is wrong."""
    if not isinstance(request_id, str) or not request_id.strip():
        raise ValueError("feedback needs the request_id of a served request")
    if rating is not None:
        if isinstance(rating, bool) or not isinstance(rating, (int, float)):
            raise ValueError(f"rating must be a number in [{RATING_MIN:g}, {RATING_MAX:g}], not {type(rating).__name__}")
        rating = float(rating)
        if not math.isfinite(rating) or not RATING_MIN <= rating <= RATING_MAX:
            raise ValueError(f"rating must be in [{RATING_MIN:g}, {RATING_MAX:g}] (-1 bad, 0 neutral, 1 good), not {rating:g}")
    if correction is not None:
        if not isinstance(correction, str):
            raise ValueError(f"correction must be a string, not {type(correction).__name__}")
        if len(correction) > MAX_CORRECTION_CHARS:
            raise ValueError(f"correction is longer than {MAX_CORRECTION_CHARS} characters")
        if not correction.strip():
            correction = None
    if rating is None and correction is None:
        raise ValueError("feedback needs a rating or a correction (both are empty)")
    return request_id.strip(), rating, correction


# --------------------------------------------------------------------------------------
# Writing


_STOP = object()


class PayloadLogger:
    """Batches payload records and feedback to object storage on a background thread.

    ``uri``: where the logs go (``None``: nothing is logged). ``options``: the deployment's
    ``spec.logging`` (``enabled``, ``sample_rate``, ``format``, ``flush_every``,
    ``flush_seconds``; ``options.uri`` is not read: the caller resolves the URI).
    ``model_name``: written with feedback and named in warnings.

    :attr:`written` and :attr:`dropped` count request records and feedback entries together
    (:meth:`stats` splits them); sampled-out requests are neither.
    """

    def __init__(
        self,
        uri: str | None,
        options: PayloadLogging,
        model_name: str,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        warn_every: float = 60.0,
    ) -> None:
        self.options = options if options is not None else PayloadLogging(enabled=False)
        self.model_name = model_name
        self.uri = uri.rstrip("/") if uri else None
        self.enabled = bool(self.options.enabled and self.uri)
        self.warn_every = warn_every
        self._lock = threading.Lock()
        self._counts = {"written": 0, "dropped": 0, "written_feedback": 0, "dropped_feedback": 0, "failed_batches": 0}
        self._last_warning = -math.inf
        self._suppressed = 0
        self._closed = False
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._thread: threading.Thread | None = None
        if self.enabled:
            storage.parse(self.uri)  # a malformed URI is the caller's error, at start
            self._thread = threading.Thread(target=self._run, name=f"payload-log-{model_name}", daemon=True)
            self._thread.start()

    # ---- the request path

    def log(self, record: PayloadRecord) -> None:
        """Queue one record (sampled); never raises, never blocks."""
        try:
            if not self.enabled or not sampled(record.request_id, self.options.sample_rate):
                return
            if self._closed:
                self._drop("request", 1, "the payload logger is closed")
                return
            row = record_row(record)
        except Exception as error:  # noqa: BLE001 - logging must never fail a request
            self._drop("request", 1, f"cannot log a record: {type(error).__name__}: {error}")
            return
        self._put(("request", row))

    def feedback(self, request_id: str, rating: float | None, correction: str | None) -> None:
        """Queue feedback on a served request. ValueError for invalid input; else never raises.

        ``rating``: -1 (bad) .. 1 (good), or None; ``correction``: the right answer, or None.
        Kept when the request is in the sample (the same deterministic rule as :meth:`log`)."""
        request_id, rating, correction = validate_feedback(request_id, rating, correction)
        try:
            if not self.enabled or not sampled(request_id, self.options.sample_rate):
                return
            if self._closed:
                self._drop("feedback", 1, "the payload logger is closed")
                return
            row = {"request_id": request_id, "rating": rating, "correction": correction, "timestamp": utc_now(),
                   "model_name": self.model_name}
        except Exception as error:  # noqa: BLE001
            self._drop("feedback", 1, f"cannot log feedback: {type(error).__name__}: {error}")
            return
        self._put(("feedback", row))

    def _put(self, item: tuple[str, dict]) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._drop(item[0], 1, f"the payload log queue is full ({self._queue.maxsize} records)")

    # ---- counters

    @property
    def written(self) -> int:
        with self._lock:
            return self._counts["written"] + self._counts["written_feedback"]

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._counts["dropped"] + self._counts["dropped_feedback"]

    def stats(self) -> dict[str, int]:
        """Counters: written/dropped requests and feedback, failed batches, queued now."""
        with self._lock:
            return {**self._counts, "queued": self._queue.qsize()}

    def _drop(self, kind: str, count: int, why: str) -> None:
        with self._lock:
            self._counts["dropped" if kind == "request" else "dropped_feedback"] += count
            now = time.monotonic()
            if now - self._last_warning < self.warn_every:
                self._suppressed += count
                return
            suppressed, self._suppressed = self._suppressed, 0
            self._last_warning = now
        more = f" ({suppressed} more dropped since the last warning)" if suppressed else ""
        log.warning("payload log of %s: dropped %d %s record(s): %s%s", self.model_name, count, kind, why, more)

    def _count_written(self, kind: str, count: int) -> None:
        with self._lock:
            self._counts["written" if kind == "request" else "written_feedback"] += count

    # ---- the writer thread

    def _run(self) -> None:
        buffers: dict[str, list[dict]] = {"request": [], "feedback": []}
        first_at: float | None = None
        flush_every = self.options.flush_every
        flush_seconds = float(self.options.flush_seconds)
        stopping = False
        while not stopping:
            timeout = None if first_at is None else max(0.0, first_at + flush_seconds - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                stopping = True
            elif item is not None:
                buffers[item[0]].append(item[1])
                if first_at is None:
                    first_at = time.monotonic()
            due = first_at is not None and time.monotonic() - first_at >= flush_seconds
            if stopping or due or len(buffers["request"]) >= flush_every:
                for kind in ("request", "feedback"):
                    if buffers[kind]:
                        try:
                            self._write_batch(kind, buffers[kind])
                        except Exception as error:  # noqa: BLE001 - the writer must outlive any batch
                            self._drop(kind, len(buffers[kind]), f"{type(error).__name__}: {error}")
                        buffers[kind] = []
                first_at = None

    def _write_batch(self, kind: str, rows: list[dict]) -> None:
        try:
            data, uri = self._encode(kind, rows)
        except Exception as error:  # noqa: BLE001 - a batch that cannot be encoded is dropped
            self._drop(kind, len(rows), f"cannot encode a batch: {type(error).__name__}: {error}")
            return
        for attempt in (1, 2):
            try:
                storage.write_bytes(uri, data)
            except Exception as error:  # noqa: BLE001 - the sink is down: retry once, then drop
                if attempt == 1:
                    time.sleep(RETRY_PAUSE_SECONDS)
                    continue
                with self._lock:
                    self._counts["failed_batches"] += 1
                self._drop(kind, len(rows), f"cannot write {uri}: {type(error).__name__}: {str(error)[:300]}")
                return
            self._count_written(kind, len(rows))
            return

    def _encode(self, kind: str, rows: list[dict]) -> tuple[bytes, str]:
        now = datetime.now(timezone.utc)
        parquet = kind == "request" and self.options.format == "parquet"
        name = f"part-{now.strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex}.{'parquet' if parquet else 'jsonl'}"
        folder = REQUESTS_DIR if kind == "request" else FEEDBACK_DIR
        uri = f"{self.uri}/{folder}/date={now.strftime('%Y-%m-%d')}/{name}"
        if parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            buffer = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(rows, schema=request_schema()), buffer, compression="zstd")
            return buffer.getvalue(), uri
        text = "".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in rows)
        return text.encode("utf-8"), uri

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued and stop the writer (idempotent). Blocks up to ``timeout``
        seconds (from an event loop: ``await asyncio.to_thread(logger.close)``); what is still
        queued then is counted as dropped. Records logged after close() are dropped and counted."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                self._queue.put(_STOP, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            left: dict[str, int] = {}
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    left[item[0]] = left.get(item[0], 0) + 1
            for kind, count in left.items():
                self._drop(kind, count, f"not written within the {timeout:g} s of close()")
            try:  # let the writer end once its current batch is done
                self._queue.put_nowait(_STOP)
            except queue.Full:
                pass

    def __enter__(self) -> "PayloadLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------
# Reading


@dataclass
class RecordScan:
    """What :func:`scan_records` read: the records (oldest first) and what it skipped."""

    records: list[PayloadRecord]
    files: int = 0
    skipped_files: list[str] = field(default_factory=list)  # unreadable or corrupt files (their URIs)
    skipped_rows: int = 0  # rows that are not a valid record


def _epoch(timestamp: str) -> float | None:
    parsed = parse_utc(timestamp)
    return parsed.timestamp() if parsed else None


def _part_files(uri: str, folder: str) -> list[storage.ObjectInfo]:
    """The part files under ``<uri>/<folder>/``, oldest written first (by name)."""
    prefix = f"{uri.rstrip('/')}/{folder}/"
    try:
        found = [
            info for info in storage.list_objects(prefix)
            if posixpath.basename(info.name).startswith("part-")
            and info.name.endswith((".jsonl", ".parquet"))
        ]
    except Exception as error:  # noqa: BLE001 - a missing prefix means no logs yet
        if isinstance(error, storage.StageError) and "does not exist" in str(error):
            return []
        raise
    return sorted(found, key=lambda info: (_partition(info.name), posixpath.basename(info.name)))


def _partition(name: str) -> str:
    for piece in name.split("/"):
        if piece.startswith("date="):
            return piece[len("date="):]
    return ""


def _written_at(name: str) -> float | None:
    """The write time in a part file's name (``part-<YYYYmmddTHHMMSSffffffZ>-...``)."""
    stem = posixpath.basename(name)[len("part-"):].split("-", 1)[0]
    try:
        return datetime.strptime(stem, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def _read_rows(info: storage.ObjectInfo) -> tuple[list[dict], int]:
    """The rows of one part file and how many lines were not JSON objects."""
    data = storage.read_bytes(info.uri)
    if info.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data)).to_pylist(), 0
    rows, bad = [], 0
    for line in data.decode("utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def scan_records(uri: str, limit: int | None = None, since: str | None = None) -> RecordScan:
    """The logged requests under ``uri`` (newest last), with counts of what was skipped.

    ``since``: an RFC 3339 time; only records at or after it. ``limit``: only the newest
    ``limit`` records. Files are read newest first and reading stops once older files cannot
    hold one of the newest ``limit`` records (a file is written after all of its records)."""
    if limit is not None and limit <= 0:
        return RecordScan(records=[])
    since_epoch = _epoch(since) if since else None
    if since and since_epoch is None:
        raise ValueError(f"since must be an RFC 3339 time such as 2024-05-01T12:00:00Z, not {since!r}")
    since_day = datetime.fromtimestamp(since_epoch, timezone.utc).strftime("%Y-%m-%d") if since_epoch is not None else None
    scan = RecordScan(records=[])
    keyed: list[tuple[float, int, int, PayloadRecord]] = []
    files = _part_files(uri, REQUESTS_DIR)
    for order in range(len(files) - 1, -1, -1):
        info = files[order]
        if since_day and _partition(info.name) and _partition(info.name) < since_day:
            break  # written before the day of `since`: every record in it is older
        written = _written_at(info.name)
        if limit is not None and len(keyed) >= limit and written is not None:
            keyed.sort(key=lambda k: (k[0], k[1], k[2]))
            keyed = keyed[-limit:]
            if math.floor(written) < keyed[0][0]:
                break
        scan.files += 1
        try:
            rows, bad = _read_rows(info)
        except Exception as error:  # noqa: BLE001 - a corrupt file is skipped and counted
            log.warning("skipping payload log file %s: %s: %s", info.uri, type(error).__name__, str(error)[:200])
            scan.skipped_files.append(info.uri)
            continue
        scan.skipped_rows += bad
        for index, row in enumerate(rows):
            try:
                record = record_from_row(row)
            except (KeyError, TypeError, ValueError):
                scan.skipped_rows += 1
                continue
            at = _epoch(record.timestamp)
            if at is None:
                at = written if written is not None else 0.0
            if since_epoch is not None and at < since_epoch:
                continue
            keyed.append((at, order, index, record))
    keyed.sort(key=lambda k: (k[0], k[1], k[2]))
    if limit is not None:
        keyed = keyed[-limit:]
    scan.records = [k[3] for k in keyed]
    if scan.skipped_files or scan.skipped_rows:
        log.warning("payload logs under %s: skipped %d corrupt file(s) and %d invalid row(s)",
                    uri, len(scan.skipped_files), scan.skipped_rows)
    return scan


def read_records(uri: str, limit: int | None = None, since: str | None = None) -> list[PayloadRecord]:
    """The logged requests under ``uri``, newest last (see :func:`scan_records`)."""
    return scan_records(uri, limit=limit, since=since).records


def read_feedback(uri: str) -> list[dict]:
    """Every feedback entry under ``uri`` (oldest first): dicts with request_id, rating,
    correction, timestamp, model_name. Corrupt files and lines are skipped."""
    entries: list[tuple[float, int, int, dict]] = []
    for order, info in enumerate(_part_files(uri, FEEDBACK_DIR)):
        try:
            rows, _ = _read_rows(info)
        except Exception as error:  # noqa: BLE001
            log.warning("skipping feedback file %s: %s: %s", info.uri, type(error).__name__, str(error)[:200])
            continue
        for index, row in enumerate(rows):
            if not isinstance(row.get("request_id"), str):
                continue
            entry = {key: row.get(key) for key in FEEDBACK_FIELDS}
            entries.append((_epoch(entry["timestamp"] or "") or 0.0, order, index, entry))
    entries.sort(key=lambda e: (e[0], e[1], e[2]))
    return [e[3] for e in entries]
