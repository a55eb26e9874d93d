"""A PDF has a parse time limit (MENTOR_DATA_MAX_PDF_SECONDS): a parse that runs past it is
stopped, and the file is skipped as too-slow and counted, like any unusable input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mentor_trainer.config import DataStageConfig

PDF = Path(__file__).resolve().parents[2] / "examples" / "corpus" / "docs" / "en" / "quality-lab.pdf"


def run_stage(docs: Path, out: Path) -> tuple[dict, list[dict]]:
    from mentor_trainer.data import main

    config = DataStageConfig.model_validate(
        {
            "run": {"kind": "DomainDataset", "name": "pdfs", "namespace": "tests"},
            "outputUri": out.as_uri(),
            "sources": [{"name": "docs", "uri": docs.as_uri()}],
            "formats": ["pretrain"],
            "index": {"enabled": False},
        }
    )
    stats = main(config).to_wire()["stats"]
    dropped = [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]
    return stats, dropped


def test_a_pdf_past_the_time_limit_is_skipped_as_too_slow(tmp_path, monkeypatch):
    from mentor_trainer.data import ingest

    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(PDF, docs / "report.pdf")
    shutil.copy(PDF.parent / "withering.md", docs)  # an ordinary document beside it

    # no parse can finish within a microsecond: the stage stops it and goes on
    monkeypatch.setattr(ingest, "MAX_PDF_SECONDS", 1e-6)
    stats, dropped = run_stage(docs, tmp_path / "slow")
    assert stats["droppedByReason"].get("too-slow") == 1
    assert [(Path(d["id"]).name, d["reason"]) for d in dropped] == [("report.pdf", "too-slow")]

    # the same file within the default limit: it parses (in a new worker) and is kept
    monkeypatch.undo()
    stats, dropped = run_stage(docs, tmp_path / "ok")
    assert "too-slow" not in stats["droppedByReason"] and stats["documentsKept"] == 2
