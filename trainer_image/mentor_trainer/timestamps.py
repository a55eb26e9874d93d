"""UTC timestamps, as every status, manifest and commit marker writes them.

Standard library only: the operator imports it too.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone


def utc_now() -> str:
    """The current time in UTC, to the second: ``2024-05-01T12:00:00Z`` (RFC 3339)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def parse_utc(value: object) -> datetime | None:
    """An RFC 3339 time (``Z`` or an offset; naive means UTC) as an aware datetime, or None
    when it is missing or unreadable."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)
