"""UTC timestamps, as every status, manifest and commit marker writes them.

Standard library only: the operator imports it too.
"""

from __future__ import annotations

import time


def utc_now() -> str:
    """The current time in UTC, to the second: ``2024-05-01T12:00:00Z`` (RFC 3339)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
