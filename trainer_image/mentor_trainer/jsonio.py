"""JSON documents as the stages write them to disk: indented, keys sorted, non-ASCII text
kept readable (UTF-8), a final newline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
