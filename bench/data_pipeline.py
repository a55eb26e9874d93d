"""Data pipeline benchmark (not a timed test): clean + exact dedup + MinHash dedup, ours vs datatrove.

A deterministic corpus (``--docs``, default 100,000 documents; mixed English / Chinese / mixed
paragraphs of a few hundred to a few thousand characters, with HTML remnants, full-width forms,
boilerplate lines, PII and symbol lines as cleaning work) is generated with 20% planted
near-duplicates (copies with a few words replaced / inserted / deleted and whitespace changes)
and a handful of exact copies; which document copies which is recorded as ground truth.

Both sides then run in their own subprocess, one after the other, on the same JSONL file:

* ours: the functions the ``mentor-trainer data`` stage calls, in the stage's order and with
  the defaults of ``Cleaning()`` / ``Dedup()`` (pass 1: ``_normalize_unit`` -> ``exact_key`` ->
  ``NearDuplicateIndex.check_and_add`` -> ``LineCounter.add`` -> spool; pass 2: boilerplate
  ``remove_lines`` -> ``PiiRedactor`` -> output JSONL). Quality filters, language detection,
  chunking and parquet writing are not part of this benchmark.
* datatrove: ``SymbolLinesFormatter`` + ``PIIFormatter`` (its cleaning formatters that run
  offline; FTFY is not installed), its 3-stage exact dedup and its 4-stage MinHash dedup
  (signatures, buckets, cluster, filter) with ours' LSH shape (datasketch's choice for
  threshold 0.8 / 128 permutations: 9 bands x 13 rows) and the same shingles (5 characters; a
  character "word tokenizer" is passed to MinhashDedupSignature, since its default word
  tokenizers need spaCy/NLTK data that are not available offline and would not split Chinese).
  Every stage runs under ``LocalPipelineExecutor(workers=1)``: tasks=1, except the buckets
  stage, which datatrove requires to run one task per band (9 tasks, run one after another in
  the same process, so still one core).

Measured per side: wall time, CPU time (user+sys of the process and its reaped children),
documents per CPU-second ("per core"), peak RSS (VmHWM of the side's process), and duplicate
recall / precision against the planted ground truth. A planted group is an original and its
copies (g documents); if k >= 1 of them are kept, g - k planted duplicates count as found
(for a pair: found when exactly one of original/duplicate is kept); recall = found / (sum g-1).
Precision = removals inside planted groups that leave one member kept / all removals.

    python bench/data_pipeline.py --docs 20000
    python bench/data_pipeline.py                  # 100k documents
    python bench/data_pipeline.py --docs 20000 --profile   # cProfile of our side

Target (DESIGN.md section 5): >= 2x datatrove's documents/s per core, with equal or better recall.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "trainer_image"))

THRESHOLD_BANDS, THRESHOLD_ROWS = 9, 13  # datasketch MinHashLSH(threshold=0.8, num_perm=128).b, .r

# --------------------------------------------------------------------------------------
# Corpus

_EN_COMMON = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
    "they you were their one all we can her has there been if more when will would who so no data model system "
    "training results method students learning research analysis process value design network policy market "
    "service patient treatment energy water health support information development management report "
    "performance quality customer product price growth country government project community program study "
    "however therefore because although while during between through under against without within across "
    "important significant different available several various particular general local national public "
    "increase reduce provide require include develop improve measure observe describe explain compare "
    "first second new large small high low early late long short recent current future previous common"
).split()
_SYLLABLES = (
    "ka ro mi tan ver sel pol lin dor gra ben fis mol tur nex bar cal den fer gol hal jor kel lam mar nor pra "
    "qui ras sta tor ula vin wes yor zan ex in con pre pro sub trans ment tion ing able ic al ous ive ize ity"
).split()
_ZH_CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后"
    "多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合"
    "还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只"
    "没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边"
    "流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造"
    "百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例"
    "真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且"
    "究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何"
    "除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满"
    "县局照参红细引听该铁价严龙飞"
)
_BOILERPLATE = [
    "Copyright © 2025 Northwind Learning Ltd. All rights reserved.",
    "Click here to subscribe to our weekly newsletter for more articles like this.",
    "本文版权归作者所有，未经许可不得转载。",
    "Share this article on social media: Facebook | Twitter | LinkedIn",
    "扫描二维码关注我们的公众号，获取更多行业资讯。",
    "Disclaimer: the views expressed here are those of the author alone.",
    "Related posts: How to get started | Frequently asked questions | Contact us",
    "免责声明：本网站内容仅供参考，不构成任何投资建议。",
]
_SYMBOL_LINES = ["* * * * *", "-----", "=====", "• • •", "~~~~~~"]


def _zipf_weights(n: int, s: float = 1.07) -> list[float]:
    total, cum = 0.0, []
    for i in range(n):
        total += 1.0 / (i + 1) ** s
        cum.append(total)
    return cum


class Vocab:
    def __init__(self, rng: random.Random) -> None:
        en = list(_EN_COMMON)
        seen = set(en)
        while len(en) < 6000:
            word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 2, 3, 3, 4))))
            if word not in seen:
                seen.add(word)
                en.append(word)
        zh, seen = [], set()
        while len(zh) < 8000:
            word = "".join(rng.choice(_ZH_CHARS) for _ in range(rng.choice((1, 2, 2, 2, 3, 4))))
            if word not in seen:
                seen.add(word)
                zh.append(word)
        self.en, self.zh = en, zh
        self.en_cum, self.zh_cum = _zipf_weights(len(en)), _zipf_weights(len(zh))

    def en_words(self, rng: random.Random, k: int) -> list[str]:
        return rng.choices(self.en, cum_weights=self.en_cum, k=k)

    def zh_words(self, rng: random.Random, k: int) -> list[str]:
        return rng.choices(self.zh, cum_weights=self.zh_cum, k=k)


def _en_sentence(vocab: Vocab, rng: random.Random) -> str:
    words = vocab.en_words(rng, rng.randint(6, 24))
    if len(words) > 8 and rng.random() < 0.5:
        words[rng.randint(3, len(words) - 3)] += ","
    if rng.random() < 0.05:
        words.insert(rng.randint(0, len(words)), str(rng.randint(2, 2030)))
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice(".....?!")


def _zh_sentence(vocab: Vocab, rng: random.Random, english: bool = False) -> str:
    words = vocab.zh_words(rng, rng.randint(5, 16))
    if len(words) > 6 and rng.random() < 0.7:
        words[rng.randint(2, len(words) - 2)] += "，"
    if english and rng.random() < 0.5:
        words.insert(rng.randint(0, len(words)), " " + " ".join(vocab.en_words(rng, rng.randint(1, 2))) + " ")
    return "".join(words) + rng.choice("。。。。？！")


def _paragraph(vocab: Vocab, rng: random.Random, lang: str) -> str:
    n = rng.randint(2, 7)
    if lang == "en":
        return " ".join(_en_sentence(vocab, rng) for _ in range(n))
    return "".join(_zh_sentence(vocab, rng, english=lang == "mixed") for _ in range(n))


def _noise(text: str, rng: random.Random) -> str:
    """Things the cleaning step has to deal with."""
    paragraphs = text.split("\n\n")
    r = rng.random()
    if r < 0.06:  # HTML remnants
        paragraphs = [f"<p>{p.replace(' and ', ' &amp; ', 1)}</p>" for p in paragraphs]
        paragraphs.insert(0, '<div class="nav">&nbsp;</div>')
    if rng.random() < 0.05:  # PII
        i = rng.randrange(len(paragraphs))
        user = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9)))
        phone = "1" + rng.choice("3456789") + "".join(rng.choice("0123456789") for _ in range(9))
        paragraphs[i] += f" Contact {user}@example{rng.randint(1, 99)}.com 或致电 {phone}。"
    if rng.random() < 0.03:  # full-width forms, zero-width characters, CRLF
        paragraphs.append("ＦＡＱ：ｖｅｒｓｉｏｎ １２３\u200b")
        paragraphs = [p.replace("\n", "\r\n") for p in paragraphs]
    if rng.random() < 0.04:  # symbol-only separator line
        paragraphs.insert(rng.randint(1, len(paragraphs)), rng.choice(_SYMBOL_LINES))
    if rng.random() < 0.10:  # boilerplate lines shared across documents
        if rng.random() < 0.5:
            paragraphs.insert(0, rng.choice(_BOILERPLATE))
        else:
            paragraphs.append(rng.choice(_BOILERPLATE))
    return "\n\n".join(paragraphs)


def make_document(vocab: Vocab, rng: random.Random) -> str:
    lang = rng.choices(("en", "zh", "mixed"), weights=(45, 40, 15))[0]
    target = min(6000, max(250, int(rng.lognormvariate(7.0, 0.7))))  # median ~1100 characters
    paragraphs, size = [], 0
    while size < target:
        para_lang = lang if lang != "mixed" else rng.choice(("en", "zh", "mixed"))
        p = _paragraph(vocab, rng, para_lang)
        paragraphs.append(p)
        size += len(p) + 2
    return _noise("\n\n".join(paragraphs), rng)


_UNIT = re.compile(r"[A-Za-z]+|[\u4e00-\u9fff]{1,2}")


def near_copy(text: str, vocab: Vocab, rng: random.Random) -> str:
    """A copy with a few words replaced / inserted / deleted and whitespace changes."""
    units = list(_UNIT.finditer(text))
    if rng.random() < 0.9 and units:
        n = max(1, int(len(units) * rng.uniform(0.004, 0.03)))
        out, last = [], 0
        for m in sorted(rng.sample(units, min(n, len(units))), key=lambda m: m.start()):
            out.append(text[last : m.start()])
            word = m.group(0)
            new = vocab.en_words(rng, 1)[0] if word.isascii() else vocab.zh_words(rng, 1)[0]
            op = rng.random()
            if op < 0.45:  # replace
                out.append(new)
            elif op < 0.75:  # insert
                out.append(word + (" " + new if word.isascii() else new))
            # else: delete
            last = m.end()
        out.append(text[last:])
        text = "".join(out)
    if rng.random() < 0.6:  # whitespace changes
        lines = text.split("\n")
        for i in rng.sample(range(len(lines)), max(1, len(lines) // 4)):
            lines[i] = rng.choice(("  ", "\t", "")) + lines[i].replace(" ", "  ", rng.randint(1, 3)) + rng.choice(("", " ", "  "))
        text = "\n".join(lines)
        if rng.random() < 0.5:
            text = text.replace("\n\n", "\n\n\n", 2)
    return text


def generate(n_docs: int, seed: int, folder: Path) -> dict:
    """Write corpus/00000.jsonl and truth.json; return the ground truth."""
    rng = random.Random(seed)
    vocab = Vocab(rng)
    n_near = round(n_docs * 0.20)
    n_exact = max(5, round(n_docs * 0.005))
    n_orig = n_docs - n_near - n_exact
    texts = [make_document(vocab, rng) for _ in range(n_orig)]
    origin = list(range(n_orig))  # index of the original each text copies (itself for originals)
    kinds = ["original"] * n_orig
    for kind, count in (("near", n_near), ("exact", n_exact)):
        for _ in range(count):
            src = rng.randrange(n_orig)
            texts.append(near_copy(texts[src], vocab, rng) if kind == "near" else texts[src])
            origin.append(src)
            kinds.append(kind)
    order = list(range(len(texts)))
    rng.shuffle(order)
    ids = {old: f"doc-{new:07d}" for new, old in enumerate(order)}
    (folder / "corpus").mkdir(parents=True, exist_ok=True)
    chars = 0
    with open(folder / "corpus" / "00000.jsonl", "w", encoding="utf-8") as out:
        for old in order:
            chars += len(texts[old])
            out.write(json.dumps({"id": ids[old], "text": texts[old]}, ensure_ascii=False) + "\n")
    groups: dict[str, list[str]] = {}
    for old in range(len(texts)):
        if kinds[old] != "original":
            groups.setdefault(ids[origin[old]], []).append(ids[old])
    truth = {
        "seed": seed,
        "documents": len(texts),
        "characters": chars,
        "bytes": (folder / "corpus" / "00000.jsonl").stat().st_size,
        "groups": groups,
        "kinds": {ids[old]: kinds[old] for old in range(len(texts)) if kinds[old] != "original"},
    }
    (folder / "truth.json").write_text(json.dumps(truth))
    return truth


# --------------------------------------------------------------------------------------
# Scoring


def score(truth: dict, kept_ids: list[str]) -> dict:
    kept = set(kept_ids)
    removed = truth["documents"] - len(kept)
    planted = found = correct = exactly_one = 0
    for original, copies in truth["groups"].items():
        members = [original, *copies]
        k = sum(m in kept for m in members)
        planted += len(members) - 1
        exactly_one += k == 1
        if k >= 1:
            found += len(members) - k
            correct += len(members) - k
    return {
        "kept": len(kept),
        "removed": removed,
        "planted": planted,
        "found": found,
        "recall": found / planted if planted else 1.0,
        "precision": correct / removed if removed else 1.0,
        "groupsClean": exactly_one / len(truth["groups"]) if truth["groups"] else 1.0,
    }


# --------------------------------------------------------------------------------------
# Sides (each runs in its own subprocess)


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _vm_mb(field: str = "VmHWM") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(corpus: Path, work: Path) -> dict:
    from mentor_trainer.config.data import Cleaning, Dedup
    from mentor_trainer.data import clean
    from mentor_trainer.data.dedup import NearDuplicateIndex, exact_key
    from mentor_trainer.data.pipeline import Spool, _incomplete, _normalize_unit, _redact_unit
    from mentor_trainer.data.records import TEXT, Document, from_json, unit_text

    cleaning, dedup = Cleaning(), Dedup()
    near = dedup.near
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    # pass 1, as DataStage.ingest: normalise, exact, near-duplicate, line counts, spool
    index = NearDuplicateIndex(near.threshold, near.num_perm, near.shingle_size) if near.enabled else None
    seen: set[bytes] = set()
    lines = clean.LineCounter()
    spool = Spool(work / "pass1.jsonl")
    counts = {"in": 0, "exact": 0, "near": 0, "empty": 0}
    with open(corpus / "00000.jsonl", encoding="utf-8") as handle:
        for raw in handle:
            data = json.loads(raw)
            counts["in"] += 1
            unit = Document(id=data["id"], source="bench", group="domain", text=data["text"], format="text", split_key=data["id"])
            _normalize_unit(unit, cleaning)
            if _incomplete(unit):
                counts["empty"] += 1
                continue
            text = unit_text(unit)
            if dedup.exact:
                key = exact_key(unit.kind + "\0" + text)
                if key in seen:
                    counts["exact"] += 1
                    continue
                seen.add(key)
            if index is not None and unit.kind == TEXT:
                if index.check_and_add(text, unit.id) is not None:
                    counts["near"] += 1
                    continue
            lines.add(unit.text)
            spool.write(unit.to_json())
    t1 = time.perf_counter()
    stages["pass1 normalise+exact+minhash"] = t1 - t0
    # pass 2, as DataStage.clean_and_filter (cleaning part): boilerplate, drop patterns, PII
    boilerplate = lines.boilerplate(cleaning.boilerplate_min_documents)
    del lines
    patterns = clean.compile_patterns(cleaning.drop_patterns)
    pii = cleaning.pii
    redactor = clean.PiiRedactor(pii.kinds, pii.replacement) if pii.enabled else None
    out = Spool(work / "pass2.jsonl")
    kept: list[str] = []
    removed_lines = 0
    for data in spool.read():
        unit = from_json(data)
        unit.text, n_boiler, n_pattern = clean.remove_lines(unit.text, boilerplate, patterns)
        removed_lines += n_boiler + n_pattern
        if redactor is not None:
            _redact_unit(unit, redactor)
        out.write(unit.to_json())
        kept.append(unit.id)
    out.handle.close()
    spool.remove()
    stages["pass2 boilerplate+PII"] = time.perf_counter() - t1
    return {
        "kept_ids": kept,
        "stages": stages,
        "notes": {**counts, "boilerplateLinesRemoved": removed_lines, "pii": dict(redactor.counts) if redactor else {}},
    }


def dt_exact_content(doc) -> str:
    """Datatrove exact-dedup key: case and whitespace do not matter (as ours)."""
    return "".join(doc.text.lower().split())


def run_datatrove(corpus: Path, work: Path) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.formatters import PIIFormatter, SymbolLinesFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashes import xxhash as dt_xxhash
    from datatrove.utils.word_tokenizers import WordTokenizer

    import xxhash

    # xxhash >= 4 refuses str ("Strings must be encoded before hashing"); datatrove 0.10.1 passes
    # str from its MinHash shingles and str content getters. Encode as older xxhash did (UTF-8).
    def _xx32(data):
        return xxhash.xxh32_intdigest(data.encode("utf-8") if isinstance(data, str) else data)

    def _xx64(data):
        return xxhash.xxh64_intdigest(data.encode("utf-8") if isinstance(data, str) else data)

    dt_xxhash.xxhash32, dt_xxhash.xxhash64 = _xx32, _xx64

    class CharTokenizer(WordTokenizer):
        """Characters as tokens: n_grams=5 gives 5-character shingles, like ours (any script)."""

        def word_tokenize(self, text: str) -> list[str]:
            return [c for c in text if not c.isspace()]

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    from mentor_trainer.config.data import Dedup

    near = Dedup().near
    assert near.shingle_size == 5 and near.num_perm == 128 and near.threshold == 0.8, "update the LSH shape"
    exact_cfg = ExactDedupConfig(content_getter=dt_exact_content)
    mh_cfg = MinhashConfig(n_grams=near.shingle_size, num_buckets=THRESHOLD_BANDS, hashes_per_bucket=THRESHOLD_ROWS)
    d = {name: str(work / name) for name in ("clean", "exact_sigs", "exact_dups", "exact", "mh_sigs", "mh_buckets", "mh_remove", "final", "logs")}
    writer = lambda folder: JsonlWriter(folder, compression=None)  # noqa: E731
    runs = [
        ("A read+clean+write+exact sigs", 1, [
            JsonlReader(str(corpus)), SymbolLinesFormatter(), PIIFormatter(), writer(d["clean"]),
            ExactDedupSignature(d["exact_sigs"], exact_cfg),
        ]),
        ("B exact find dups", 1, [ExactFindDedups(d["exact_sigs"], d["exact_dups"], exact_cfg)]),
        ("C read+exact filter+write+minhash sigs", 1, [
            JsonlReader(d["clean"]), ExactDedupFilter(d["exact_dups"], exact_cfg), writer(d["exact"]),
            MinhashDedupSignature(d["mh_sigs"], mh_cfg, language=CharTokenizer()),
        ]),
        ("D minhash buckets", THRESHOLD_BANDS, [MinhashDedupBuckets(d["mh_sigs"], d["mh_buckets"], config=mh_cfg)]),
        ("E minhash cluster", 1, [MinhashDedupCluster(d["mh_buckets"], d["mh_remove"], config=mh_cfg)]),
        ("F read+minhash filter+write", 1, [JsonlReader(d["exact"]), MinhashDedupFilter(d["mh_remove"]), writer(d["final"])]),
    ]
    stages: dict[str, float] = {}
    for i, (name, tasks, pipeline) in enumerate(runs):
        t = time.perf_counter()
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=f"{d['logs']}/{i}", skip_completed=False).run()
        stages[name] = time.perf_counter() - t
    kept = []
    for path in sorted(glob.glob(f"{d['final']}/**/*.jsonl", recursive=True)):
        with open(path, encoding="utf-8") as handle:
            kept.extend(json.loads(line)["id"] for line in handle)
    return {"kept_ids": kept, "stages": stages, "notes": {}}


def child(side: str, corpus: Path, work: Path, result: Path, profile: bool) -> None:
    runner = run_ours if side == "ours" else run_datatrove
    if side == "ours":  # import cost is not part of the measurement (datatrove's neither)
        import mentor_trainer.data.pipeline  # noqa: F401
        import datasketch  # noqa: F401
    else:
        import datatrove.pipeline.dedup  # noqa: F401
        import datatrove.executor  # noqa: F401
    rss0 = _vm_mb("VmRSS")
    cpu0, wall0 = _cpu(), time.perf_counter()
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        out = profiler.runcall(runner, corpus, work)
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(30)
    else:
        out = runner(corpus, work)
    wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out.update(wall=wall, cpu=cpu, peak_mb=_vm_mb(), rss_after_imports_mb=rss0, children_peak_mb=children_peak)
    result.write_text(json.dumps(out))


# --------------------------------------------------------------------------------------
# Driver


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cores} cores ({model}){mem}, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--sides", default="ours,datatrove")
    parser.add_argument("--profile", action="store_true", help="cProfile our side (timings then include profiler overhead)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (corpus is reused when present)")
    parser.add_argument("--child", choices=("ours", "datatrove"), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.corpus, args.work, args.result, args.profile)
        return 0

    holder = None
    if args.keep:
        base = Path(args.keep)
        base.mkdir(parents=True, exist_ok=True)
    else:
        holder = tempfile.TemporaryDirectory(prefix="mentor-bench-data-")
        base = Path(holder.name)
    truth_file = base / "truth.json"
    t = time.perf_counter()
    truth = json.loads(truth_file.read_text()) if args.keep and truth_file.exists() else None
    if truth is None or (truth["documents"], truth.get("seed")) != (args.docs, args.seed):
        truth = generate(args.docs, args.seed, base)
    n = truth["documents"]
    planted_near = sum(1 for k in truth["kinds"].values() if k == "near")
    planted_exact = sum(1 for k in truth["kinds"].values() if k == "exact")
    print(
        f"corpus: {n} documents, {truth['characters'] / n:.0f} chars/doc on average, {truth['bytes'] / 2**20:.1f} MiB JSONL; "
        f"planted {planted_near} near-duplicates + {planted_exact} exact copies of {len(truth['groups'])} originals "
        f"(seed {args.seed}, generated in {time.perf_counter() - t:.1f} s)",
        flush=True,
    )
    results = {}
    for side in [s.strip() for s in args.sides.split(",") if s.strip()]:
        work = base / f"work-{side}"
        if work.exists():
            subprocess.run(["rm", "-rf", str(work)], check=True)
        work.mkdir()
        result = base / f"result-{side}.json"
        log = base / f"{side}.log"
        cmd = [sys.executable, __file__, "--child", side, "--corpus", str(base / "corpus"), "--work", str(work), "--result", str(result)]
        if args.profile and side == "ours":
            cmd.append("--profile")
        with open(log, "w") as log_handle:
            proc = subprocess.run(cmd, stdout=log_handle, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            print(f"{side} failed (exit {proc.returncode}); last lines of {log}:")
            print("\n".join(log.read_text().splitlines()[-40:]))
            return 1
        if args.profile and side == "ours":
            print(log.read_text())
        r = json.loads(result.read_text())
        r["score"] = score(truth, r.pop("kept_ids"))
        results[side] = r
        subprocess.run(["rm", "-rf", str(work)], check=True)
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in r["stages"].items())
        print(f"{side}: {stages}" + (f"; {r['notes']}" if r["notes"] else ""), flush=True)

    print(f"\nmachine: {machine()}")
    header = f"{'':<10} {'wall s':>8} {'CPU s':>8} {'docs/s':>8} {'docs/CPU-s':>11} {'peak MB':>8} {'kept':>7} {'recall':>7} {'precision':>9} {'groups 1 kept':>13}  (RSS after imports)"
    print(header)
    print("-" * len(header))
    for side, r in results.items():
        s = r["score"]
        print(
            f"{side:<10} {r['wall']:>8.1f} {r['cpu']:>8.1f} {n / r['wall']:>8.0f} {n / r['cpu']:>11.0f} {r['peak_mb']:>8.0f} "
            f"{s['kept']:>7} {s['recall']:>7.4f} {s['precision']:>9.4f} {s['groupsClean']:>13.4f}  ({r['rss_after_imports_mb']:.0f} MB)"
        )
    if "ours" in results and "datatrove" in results:
        o, d = results["ours"], results["datatrove"]
        per_core = (n / o["cpu"]) / (n / d["cpu"])
        print(
            f"{'ours/dt':<10} {o['wall'] / d['wall']:>8.2f} {o['cpu'] / d['cpu']:>8.2f} {d['wall'] / o['wall']:>8.2f} {per_core:>11.2f} "
            f"{o['peak_mb'] / d['peak_mb']:>8.2f} {'':>7} {o['score']['recall'] - d['score']['recall']:>+7.4f} "
            f"{o['score']['precision'] - d['score']['precision']:>+9.4f}   (recall/precision: difference)"
        )
        ok = per_core >= 2.0 and o["score"]["recall"] >= d["score"]["recall"]
        print(
            f"\ntarget >= 2x datatrove docs per CPU-second with equal or better recall: "
            f"{per_core:.2f}x, recall {o['score']['recall']:.4f} vs {d['score']['recall']:.4f} -> {'MET' if ok else 'NOT MET'}"
        )
    if holder is not None:
        holder.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
