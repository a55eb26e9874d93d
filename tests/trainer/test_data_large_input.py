"""A 200 MB text file goes through the data stage in bounded memory (streamed in parts)."""

from __future__ import annotations

import json
import random
import subprocess
import sys

SIZE = 200 * 1024 * 1024
# Runs the real CLI and reports the process's own peak RSS, whatever the exit. VmHWM, not
# ru_maxrss: Linux carries ru_maxrss over exec from the forked parent (pytest, large by then).
RUNNER = (
    "import re, sys\n"
    "from mentor_trainer.cli import main\n"
    "try:\n"
    "    code = main(sys.argv[1:])\n"
    "finally:\n"
    "    hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
    "    print('PEAK_RSS_KB', hwm, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def test_200_mb_text_file_is_streamed_in_bounded_memory(tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    rng = random.Random(0)
    words = "tea terrace harvest oolong leaf cultivar altitude rainfall oxidation roast picker wither".split()
    with open(big / "huge.txt", "w") as f:
        written = 0
        while written < SIZE:
            paragraph = " ".join(rng.choice(words) for _ in range(rng.randint(40, 120))) + ".\n\n"
            f.write(paragraph)
            written += len(paragraph)
    notes = tmp_path / "notes"
    notes.mkdir()
    def prose(n_words: int) -> str:
        return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(n_words))

    for i in range(3):  # small ordinary documents beside it, which must survive
        (notes / f"note-{i}.md").write_text(f"# Note {i}\n\n{prose(150)}.\n")
    config = {
        "run": {"kind": "DomainDataset", "name": "big"},
        "outputUri": (tmp_path / "out").as_uri() + "/",
        "sources": [{"name": "big", "uri": big.as_uri() + "/"}, {"name": "notes", "uri": notes.as_uri() + "/"}],
        "formats": ["pretrain"],
        "index": {"enabled": False},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    termination = tmp_path / "termination"
    run = subprocess.run(
        [sys.executable, "-c", RUNNER, "data", "--config", str(tmp_path / "config.json")],
        capture_output=True, text=True, timeout=540,
        env={**__import__("os").environ, "MENTOR_TERMINATION_LOG": str(termination)},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    stats = json.loads(termination.read_text())["stats"]
    assert stats["documentsIn"] >= 200 + 3  # the big file arrives as ~200 parts of 1M characters
    assert stats["documentsKept"] >= 3
    assert stats["droppedByReason"]["near-duplicate"] >= 190
    peak_mb = int(run.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) / 1024
    # reading the file whole would take >= 400 MB for its bytes and its text alone
    assert peak_mb < 400, f"peak RSS {peak_mb:.0f} MB"


def test_lines_are_split_once_and_an_over_long_line_keeps_only_its_length():
    from mentor_trainer.data.ingest import LongLine, _lines

    blocks = ["a\nbb", "b", "b\n", "c" * 10, "c" * 10, "\nd"]
    assert list(_lines(blocks, limit=15)) == ["a", "bbbb", LongLine(20), "d"]
    assert list(_lines(["x" * 30], limit=15)) == [LongLine(30)]  # the last line, unterminated
    assert list(_lines(["", "\n", "e"], limit=15)) == ["", "e"]


def test_a_huge_record_line_and_a_zip_bomb_are_skipped_and_counted(tmp_path, monkeypatch):
    import zipfile

    from mentor_trainer.data import ingest
    from mentor_trainer.data.ingest import Dropped, iter_source

    monkeypatch.setattr(ingest, "MAX_LINE_CHARS", 1 << 20)
    monkeypatch.setattr(ingest, "MAX_PARSED_BYTES", 8 << 20)
    src = tmp_path / "src"
    src.mkdir()
    good = {"question": "Where is the tea grown?", "answer": "In the valley."}
    with open(src / "qa.jsonl", "w") as f:  # a 3 MB record between two good ones, on one line
        f.write(json.dumps(good) + "\n" + json.dumps({"question": "q" * (3 << 20), "answer": "a"}) + "\n" + json.dumps(good) + "\n")
    (src / "rows.csv").write_text("question,answer\n" + "What?,That.\n" + "x" * (2 << 20) + ",y\n")
    with zipfile.ZipFile(src / "bomb.docx", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", b"\0" * (16 << 20))  # 16 MB of zeros, ~16 KB packed
    assert (src / "bomb.docx").stat().st_size < 100_000

    from mentor_trainer.config.data import Source

    units = list(iter_source(Source(name="src", uri=src.as_uri())))
    dropped = [(u.id.rsplit("/", 1)[-1], u.reason) for u in units if isinstance(u, Dropped)]
    assert ("qa.jsonl#L2", "too-large") in dropped
    assert ("rows.csv", "too-large") in dropped
    assert ("bomb.docx", "too-large") in dropped
    kept = [u for u in units if not isinstance(u, Dropped)]
    assert len(kept) == 3  # the two good JSONL records and the good CSV row
