"""A served model's payload log as a source (``format: payload-log``): logged requests, joined
with their feedback, become question-answer and preference records.

The requests read are those logged within ``[since, until]`` (both optional, inclusive), at
most the newest ``maxRecords`` of them, yielded newest first. Each is joined with its latest
feedback line (a later line replaces an earlier one) and becomes:

- with a correction: a QA record (prompt -> correction) and, when the logged completion is
  not empty and differs from it, a preference record (chosen: the correction, rejected: the
  completion);
- without one, rated at least ``minRating``: a QA record (prompt -> logged completion);
- otherwise a :class:`Dropped` unit: ``traffic-rated-low``, ``traffic-unlabelled``, and
  ``traffic-failed`` (status not ok) or ``traffic-no-prompt`` before any feedback is looked at.

Corrupt log files and invalid request lines (the reader skips them) are dropped as ``corrupt``
and ``invalid-record``. A log without requests yields nothing, as an empty prefix does.

Ids are ``<uri>#<request_id>`` and the split key is the source and the request id, so the
records of one request share a split, wherever the log is mirrored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterator

from ..errors import StageError
from ..serve import payload_log
from ..serve.payload_log import PayloadRecord
from ..timestamps import parse_utc
from .records import QA, Dropped, PreferenceRecord, QARecord, Unit


def iter_traffic(source) -> Iterator[Unit | Dropped]:
    """The units of one payload-log source (see the module docstring)."""
    until = _time(source, "until")
    _time(source, "since")  # checked here for a message naming the field; scan_records filters by it
    # without `until` the reader can stop at the newest maxRecords; with it, they are cut after the window
    scan = payload_log.scan_records(source.uri, since=source.since, limit=None if until else source.max_records)
    yield from _skipped(scan, source)
    requests = [r for r in scan.records if until is None or _logged_by(r, until)]
    if source.max_records is not None:
        requests = requests[-source.max_records:]
    feedback = latest_feedback(payload_log.read_feedback(source.uri))
    for record in reversed(requests):  # newest first: of two duplicates, the newest is kept
        yield from _units(record, feedback.get(record.request_id), source)


def _time(source, field: str) -> datetime | None:
    value = getattr(source, field)
    if value is None:
        return None
    parsed = parse_utc(value)
    if parsed is None:
        raise StageError(f"{field} must be an RFC 3339 time such as 2026-11-30T01:00:00Z, not {value!r}")
    return parsed


def _logged_by(record: PayloadRecord, until: datetime) -> bool:
    at = parse_utc(record.timestamp)
    return at is not None and at <= until  # an unreadable time cannot be shown to be in the window


def _skipped(scan: payload_log.RecordScan, source) -> Iterator[Dropped]:
    for uri in scan.skipped_files:
        yield Dropped(uri, source.name, "corrupt", "unreadable payload log file", kind=QA)
    for number in range(scan.skipped_rows):  # the reader counts invalid lines without naming them
        yield Dropped(f"{source.uri.rstrip('/')}#invalid-{number}", source.name, "invalid-record",
                      "not a payload record", kind=QA)


def latest_feedback(entries: list[dict]) -> dict[str, tuple[float | None, str | None]]:
    """(rating, correction) per request id, from the latest valid line of a payload log's
    feedback (`payload_log.read_feedback`)."""
    latest = {}
    for entry in entries:  # oldest first
        try:
            request_id, rating, correction = payload_log.validate_feedback(
                entry["request_id"], entry["rating"], entry["correction"]
            )
        except ValueError:
            continue  # a line the logger would have refused is no feedback
        latest[request_id] = (rating, correction)
    return latest


def learnable_requests(records: list[PayloadRecord], feedback: dict[str, tuple[float | None, str | None]], min_rating: float) -> int:
    """How many of `records` would become an example (the drift check says this, so a window
    with nothing to learn from starts no retraining)."""
    return sum(
        r.status == "ok" and bool(r.prompt.strip()) and _teaches(*feedback.get(r.request_id, (None, None)), min_rating)
        for r in records
    )


def _teaches(rating: float | None, correction: str | None, min_rating: float) -> bool:
    return correction is not None or (rating is not None and rating >= min_rating)


def _units(record: PayloadRecord, feedback: tuple[float | None, str | None] | None, source) -> Iterator[Unit | Dropped]:
    rid = f"{source.uri.rstrip('/')}#{record.request_id}"
    key = f"{source.name}:{record.request_id}"
    if record.status != "ok":
        yield Dropped(rid, source.name, "traffic-failed", f"status {record.status}", kind=QA)
        return
    if not record.prompt.strip():
        yield Dropped(rid, source.name, "traffic-no-prompt", kind=QA)
        return
    rating, correction = feedback or (None, None)
    if correction is not None:
        yield QARecord(rid, source.name, source.group, record.prompt, correction, key)
        if record.completion.strip() and record.completion.strip() != correction.strip():
            yield PreferenceRecord(rid, source.name, source.group, record.prompt, correction, record.completion, key)
    elif rating is None:
        yield Dropped(rid, source.name, "traffic-unlabelled", "no rating nor correction", kind=QA)
    elif rating >= source.min_rating:
        yield QARecord(rid, source.name, source.group, record.prompt, record.completion, key)
    else:
        yield Dropped(rid, source.name, "traffic-rated-low", f"rating {rating:g} < {source.min_rating:g}", kind=QA)
