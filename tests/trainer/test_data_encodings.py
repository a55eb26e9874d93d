"""Wrong and mixed encodings: decoded where the bytes allow it, otherwise skipped and counted,
never kept as mojibake and never a crash."""

from __future__ import annotations

import random

import pytest

from mentor_trainer.config import DataStageConfig
from mentor_trainer.data import main
from mentor_trainer.errors import StageError

HANZI = "茶园位于海拔千二百米的山坡上每年春季采摘嫩芽经萎凋杀青揉捻和干燥制成乌龙红绿白黄黑香气滋味汤色叶底品种土壤气候雨水温度湿度工艺发酵烘焙"
rng = random.Random(3)


def zh(chars: int) -> str:
    """Varied Chinese prose (no repeated n-grams), in sentences."""
    sentences = ("".join(rng.choice(HANZI) for _ in range(rng.randint(12, 30))) + "。" for _ in range(chars // 20))
    return "\n\n".join(sentences)


def en(words: int) -> str:
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(words)) + "."


def run(tmp_path, sources):
    config = DataStageConfig.model_validate(
        {"run": {"kind": "DomainDataset", "name": "enc"}, "outputUri": (tmp_path / "out").as_uri() + "/",
         "sources": sources, "formats": ["pretrain"], "index": {"enabled": False}, "filters": {"minChars": 10}}
    )
    return main(config).to_wire()  # what the termination message carries


def test_wrongly_declared_and_mixed_encodings(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.txt").write_text(en(200) + "\n\n" + zh(400), encoding="utf-8")
    (docs / "gb.txt").write_bytes(zh(2000).encode("gb18030"))
    # UTF-8 beyond the encoding sniff, then GB18030: one file, two encodings
    (docs / "mixed.txt").write_bytes(zh(40000).encode("utf-8") + zh(40000).encode("gb18030"))
    auto = run(tmp_path / "auto", [{"name": "docs", "uri": docs.as_uri() + "/"}])
    stats = auto["stats"]
    assert stats["documentsIn"] == 3
    assert stats["droppedByReason"].get("undecodable") == 1  # the mixed file: detected as UTF-8, the rest does not decode
    assert stats["documentsKept"] == 2  # the GB18030 file is detected and decoded

    # the same GB18030 bytes declared as UTF-8: counted, not kept as mojibake; with nothing
    # else left the stage fails naming why
    with pytest.raises(StageError, match="no documents left .* undecodable 1"):
        run(tmp_path / "declared", [{"name": "docs", "uri": docs.as_uri() + "/", "encoding": "utf-8", "include": ["gb.txt"]}])
