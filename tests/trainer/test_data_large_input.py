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
