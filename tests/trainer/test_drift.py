"""`mentor-trainer drift`: the calibrated drift check on the example corpus's real questions.

Reference-vs-reference windows (disjoint random halves of the in-domain questions) must say
"not drifted" in >= 95% of 20 splits; planted shifts (another topic, another language, much
longer prompts) must be detected. Embeddings are computed once per session with the local
MiniLM model; the end-to-end tests go through payload log files, a DomainDataset-like split,
main() and the CLI."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from mentor_trainer.config.deploy import DRIFT_SIGNALS, Drift, DriftResult, DriftStageConfig
from mentor_trainer.drift import Traffic, compare, main
from mentor_trainer.drift import signals as sig
from mentor_trainer.serve.payload_log import PayloadRecord, record_row

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "examples" / "corpus"


def in_domain() -> list[str]:
    questions = [json.loads(line)["question"] for line in (CORPUS / "qa" / "qa.jsonl").read_text().splitlines() if line.strip()]
    questions += [json.loads(line)["question"] for line in (CORPUS / "eval" / "heldout.jsonl").read_text().splitlines() if line.strip()]
    questions += [json.loads(line)["prompt"] for line in (CORPUS / "qa" / "preference.jsonl").read_text().splitlines() if line.strip()]
    with open(CORPUS / "qa" / "faq.csv", newline="") as handle:
        questions += [row["question"] for row in csv.DictReader(handle)]
    return questions


TOPIC = [
    "How do I reset the password of my home Wi-Fi router?",
    "What is the best way to learn Python list comprehensions?",
    "Which tyres should I buy for winter driving in the mountains?",
    "How many goals did the national team score in the last World Cup?",
    "Can you recommend a good laptop for video editing under 1500 dollars?",
    "How do I bake sourdough bread without a Dutch oven?",
    "What are the symptoms of a vitamin D deficiency?",
    "How can I change the oil in a 2015 Honda Civic?",
    "What is the difference between a Roth IRA and a traditional IRA?",
    "How do I fix a merge conflict in git?",
    "Which programming language is fastest for numerical simulations?",
    "What time does the stock market open in New York?",
    "How do I train for my first marathon in four months?",
    "What is the capital city of Australia?",
    "How do I unclog a kitchen sink without chemicals?",
    "Why is my phone battery draining so quickly after the update?",
    "What are good exercises for lower back pain?",
    "How do I write a cover letter for a software engineering job?",
    "Which streaming service has the most documentaries?",
    "How do I set up a Kubernetes ingress with TLS?",
    "What is the plot of the latest superhero movie?",
    "How much does it cost to replace a car windscreen?",
    "What are the rules of chess castling?",
    "How do I convert Celsius to Fahrenheit in Excel?",
    "Which dog breeds are best for small apartments?",
    "How do I cancel my gym membership?",
    "What causes inflation to rise?",
    "How do I install a ceiling fan safely?",
    "Which cryptocurrency wallets support hardware keys?",
    "How do I make my houseplants grow faster?",
    "What is the best pizza dough hydration?",
    "How can I improve my credit score quickly?",
    "How do I export a PowerPoint presentation to video?",
    "What are the visa requirements for travelling to Japan?",
    "How do I tune a guitar by ear?",
    "Which SQL join returns rows from both tables?",
    "How do I remove a red wine stain from a carpet?",
    "What is the weather forecast for the weekend?",
    "How do I compute a mortgage payment?",
    "What is the best strategy for a job interview?",
]

LANGUAGE = [
    "Wo wird der aurelianische Hochlandtee angebaut?",
    "Wer hat den ersten Teegarten gepflanzt und wann?",
    "Bei welcher Temperatur wird Silverleaf-7 gewelkt?",
    "Wie viele Pheromonfallen pro Hektar werden gegen den Frostspanner eingesetzt?",
    "Welche Insektizide dürfen in registrierten Gärten verwendet werden?",
    "Wie hoch werden die Büsche beim Rückschnitt geschnitten?",
    "Wie lange dauert die Oxidation der Blätter nach dem Rollen?",
    "Welcher Anteil intakter Knospen ist für die Güteklasse AL-1 erforderlich?",
    "Wann beginnt die erste Ernte des Jahres im Tal?",
    "Wie wird der Tee für den Versand verpackt und gelagert?",
    "Où est cultivé le thé des hautes terres aurélien ?",
    "Qui a planté le premier jardin de thé, et quand ?",
    "À quelle température le Silverleaf-7 est-il flétri ?",
    "Combien de pièges à phéromones par hectare utilise-t-on contre la phalène ?",
    "Quels insecticides peuvent être utilisés dans les jardins enregistrés ?",
    "À quelle hauteur les buissons sont-ils taillés ?",
    "Combien de temps dure l'oxydation des feuilles après le roulage ?",
    "Quelle part de bourgeons intacts faut-il pour la qualité AL-1 ?",
    "Quand commence la première récolte de l'année dans la vallée ?",
    "Comment le thé est-il emballé et stocké pour l'expédition ?",
    "¿Dónde se cultiva el té aureliano de las tierras altas?",
    "¿Quién plantó el primer jardín de té y cuándo?",
    "¿A qué temperatura se marchita el Silverleaf-7?",
    "¿Cuántas trampas de feromonas por hectárea se usan contra la polilla?",
    "¿Qué insecticidas se pueden usar en los jardines registrados?",
    "¿A qué altura se podan los arbustos?",
    "¿Cuánto dura la oxidación de las hojas después del enrollado?",
    "¿Qué proporción de brotes intactos exige el grado AL-1?",
    "¿Cuándo empieza la primera cosecha del año en el valle?",
    "¿Cómo se empaqueta y almacena el té para el envío?",
    "Dove viene coltivato il tè aureliano degli altipiani?",
    "Chi ha piantato il primo giardino di tè e quando?",
    "A quale temperatura viene appassito il Silverleaf-7?",
    "Quante trappole a feromoni per ettaro si usano contro la falena?",
    "Quali insetticidi si possono usare nei giardini registrati?",
    "A che altezza vengono potati i cespugli?",
    "Quanto dura l'ossidazione delle foglie dopo la rullatura?",
    "Quale quota di gemme intatte richiede il grado AL-1?",
    "Quando inizia il primo raccolto dell'anno nella valle?",
    "Come viene imballato e conservato il tè per la spedizione?",
]


def longer(questions: list[str]) -> list[str]:
    """In-domain questions preceded by ~1,500 characters of the corpus's own documents."""
    text = " ".join((CORPUS / "docs" / "en" / name).read_text() for name in ("overview.md", "cultivars.md", "withering.md", "pruning.md"))
    text = " ".join(text.split())
    out = []
    for i, question in enumerate(questions):
        start = (i * 977) % max(1, len(text) - 1600)
        out.append(f"Here are my notes: {text[start:start + 1500]}\n\nWith that in mind: {question}")
    return out


@pytest.fixture(scope="session")
def embedded():
    """prompt -> MiniLM embedding, for every prompt the tests compare (computed once)."""
    from mentor_trainer.drift import _embed

    prompts = sorted(set(in_domain() + TOPIC + LANGUAGE + longer(in_domain()[:40])))
    vectors = _embed(prompts)
    table = dict(zip(prompts, vectors))
    return lambda texts: np.stack([table[t] for t in texts])


def verdict(current: list[str], reference: list[str], embed, threshold: float, seed: int = 0):
    found, _ = compare(Traffic(current), Traffic(reference), embed=embed, seed=seed)
    drifted, score = sig.decide(found, threshold)
    return drifted, score, {s.name: s for s in found}


# the share of drifted signals above which a check drifts: below 1/4 of the four signals
# judged on prompts alone, so one drifted signal is drift (the family-wise rate is held by
# the Bonferroni-corrected tests inside decide())
ANY = 0.2


def test_reference_against_reference_rarely_drifts(embedded):
    prompts = in_domain()
    alarms, worst = 0, {}
    for split in range(20):
        order = np.random.default_rng(100 + split).permutation(len(prompts))
        half = len(prompts) // 2
        drifted, _, found = verdict([prompts[i] for i in order[:half]], [prompts[i] for i in order[half:]], embedded, ANY, seed=split)
        alarms += bool(drifted)
        if drifted:
            print("alarm", split, {n: (s.score, s.p_value) for n, s in found.items() if s.drifted})
        for name, s in found.items():
            if s.score is not None:
                worst[name] = max(worst.get(name, 0.0), s.score)
    print(f"false alarms: {alarms}/20; largest null scores: {worst}")
    assert alarms <= 1  # >= 95% "not drifted"
    assert worst["domain.classifier_auc"] < 0.8  # judged in every split, and no separable halves


def test_domain_classifier_is_calibrated_and_powerful():
    """Its permutation p-value holds its level on same-distribution samples (a rank test of
    pooled out-of-fold scores did not), and it finds a small mean shift in many dimensions."""
    rng = np.random.default_rng(0)
    nulls = [sig.domain_classifier(rng.normal(size=(30, 20)), rng.normal(size=(40, 20)), seed=i, permutations=99) for i in range(100)]
    assert sum(s.p_value < 0.05 for s in nulls) <= 12  # 5% expected; binomial(100, 0.05) exceeds 12 with p < 0.001
    assert all(s.n == (30, 40) for s in nulls)
    shifted = sig.domain_classifier(rng.normal(0.3, 1, size=(200, 20)), rng.normal(size=(200, 20)))
    assert shifted.score > 0.7 and shifted.p_value < 0.01
    assert sig.domain_classifier(np.zeros((3, 4)), np.zeros((30, 4))).score is None  # fewer rows than folds


def test_non_letter_shares_match_their_definition():
    texts = ["", "   ", "abc", "a1 b2", "Héllo, wörld! \U0001F600", "\ud800x", "\u00a0\u3000日本語。", "42"]

    def share(text):  # the definition, one character at a time
        chars = [c for c in text if not c.isspace()]
        return sum(not c.isalpha() for c in chars) / len(chars) if chars else 0.0

    expected = [share(t) for t in texts]
    assert np.allclose(sig.non_letter_shares(texts), expected)
    assert np.allclose(sig.non_letter_shares(texts, chunk=3), expected)  # chunk borders change nothing


def test_samples_bound_the_costly_signals(embedded, monkeypatch):
    """Language and embeddings take a seeded sample per side (its n is said); descriptors every row."""
    import mentor_trainer.drift as drift

    monkeypatch.setattr(drift, "LANGUAGE_SAMPLE", 15)
    monkeypatch.setattr(drift, "EMBEDDED_SAMPLE", 25)
    prompts = in_domain()
    found, _ = compare(Traffic(TOPIC), Traffic(prompts), embed=embedded)
    n = {s.name: s.n for s in found}
    assert n["prompt.length"] == n["prompt.non_letter_share"] == (len(TOPIC), len(prompts))
    assert n["prompt.language"] == (15, 15)
    assert n["embedding.mmd"] == n["domain.classifier_auc"] == (25, 25)
    assert all(s.as_dict()["n"] == {"current": s.n[0], "reference": s.n[1]} for s in found if s.n)


@pytest.mark.parametrize("shift", ["topic", "language", "length"])
def test_planted_shift_is_detected(embedded, shift):
    reference = in_domain()
    current = {"topic": TOPIC, "language": LANGUAGE, "length": longer(reference[:40])}[shift]
    drifted, score, found = verdict(current, reference, embedded, ANY)
    print(shift, score, {n: (s.score, s.p_value, s.drifted) for n, s in found.items()})
    assert drifted is True
    expected = {"topic": "embedding.mmd", "language": "prompt.language", "length": "prompt.length"}[shift]
    assert found[expected].drifted is True
    assert found["domain.classifier_auc"].drifted is True  # every shift is separable


# ---------------------------------------------------------------- end to end: files, main(), CLI


def write_log(root: Path, prompts: list[str], *, completions=None, scores=None, ratings=None, files: int = 2, hour: int = 12) -> None:
    """Payload log part files (as the payload logger writes them) holding one record per prompt."""
    rows = []
    for i, prompt in enumerate(prompts):
        rows.append(record_row(PayloadRecord(
            request_id=f"r-{hour}-{i}-{uuid.uuid4().hex[:6]}", endpoint="/v1/chat/completions", prompt=prompt,
            completion=(completions or ["The terraces lie at 1,400 to 1,900 metres."] * len(prompts))[i],
            retrieved_ids=["c1"] if scores else [], retrieval_scores=[scores[i]] if scores else [],
            latency_ms=120.0, ttft_ms=None, prompt_tokens=10, completion_tokens=12, model_version="v1",
            timestamp=f"2026-01-10T{hour:02d}:{i % 60:02d}:00Z",
        )))
    folder = root / "requests" / "date=2026-01-10"
    folder.mkdir(parents=True, exist_ok=True)
    for part in range(files):
        chunk = rows[part::files]
        (folder / f"part-20260110T{hour:02d}{part:02d}00000000Z-{uuid.uuid4().hex}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in chunk))
    if ratings:
        feedback = root / "feedback" / "date=2026-01-10"
        feedback.mkdir(parents=True, exist_ok=True)
        (feedback / f"part-20260110T{hour:02d}5900000000Z-{uuid.uuid4().hex}.jsonl").write_text("".join(
            json.dumps({"request_id": r["request_id"], "rating": ratings[i], "correction": None,
                        "timestamp": f"2026-01-10T{hour:02d}:59:00Z", "model_name": "m"}) + "\n"
            for i, r in enumerate(rows[: len(ratings)])))


def write_dataset(root: Path, prompts: list[str]) -> Path:
    """A DomainDataset's validation split of sft rows (messages) for these prompts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "validation").mkdir(parents=True)
    rows = [{"messages": [{"role": "system", "content": "You answer questions about Aurelian tea."},
                          {"role": "user", "content": p}, {"role": "assistant", "content": "An answer."}]} for p in prompts]
    pq.write_table(pa.Table.from_pylist(rows), root / "validation" / "sft-00000.parquet")
    return root


def config(tmp_path: Path, logs: Path, reference: Path | None, **drift) -> DriftStageConfig:
    return DriftStageConfig.model_validate({
        "run": {"kind": "ModelDeployment", "name": "mentor", "namespace": "tests"},
        "outputUri": (tmp_path / "out").as_uri(),
        "drift": {"minRequests": 20, "threshold": ANY, **drift},
        "payloadLogUri": logs.as_uri(),
        **({"referenceUri": reference.as_uri()} if reference else {}),
    })


def test_skipped_without_enough_input(tmp_path):
    reference = write_dataset(tmp_path / "dataset", in_domain())
    empty = tmp_path / "no-logs"
    empty.mkdir()
    result = main(config(tmp_path, empty, reference))
    assert result.drifted is None and result.skipped.startswith("no logged requests") and result.requests == 0
    assert result.window_start is None and result.window_end is None

    few = tmp_path / "few"
    write_log(few, TOPIC[:5])
    result = main(config(tmp_path, few, reference))
    assert result.drifted is None and "fewer than minRequests 20" in result.skipped and result.requests == 5
    assert (result.window_start, result.window_end) == ("2026-01-10T12:00:00Z", "2026-01-10T12:04:00Z")

    logs = tmp_path / "logs"
    write_log(logs, TOPIC)
    result = main(config(tmp_path, logs, None))
    assert result.drifted is None and "no reference" in result.skipped
    assert result.window_end == "2026-01-10T12:39:00Z"
    result = main(config(tmp_path, logs, tmp_path / "missing"))
    assert result.drifted is None and "holds no prompts" in result.skipped and result.reference_rows == 0
    (tmp_path / "empty-dataset" / "validation").mkdir(parents=True)
    result = main(config(tmp_path, logs, tmp_path / "empty-dataset"))
    assert result.drifted is None and "holds no prompts" in result.skipped
    assert not (tmp_path / "out").exists()  # nothing decided, nothing written


def test_window_skips_unreadable_timestamps():
    from types import SimpleNamespace

    from mentor_trainer.drift import _window

    records = [SimpleNamespace(timestamp=t) for t in ("garbage", "2026-01-10T12:00:00Z", "2026-01-10T12:05:00+00:00", "")]
    assert _window(records) == {"window_start": "2026-01-10T12:00:00Z", "window_end": "2026-01-10T12:05:00+00:00"}
    assert _window(records[:1]) == _window([]) == {}


def test_topic_shift_end_to_end_with_corrupt_files(tmp_path, tiny):
    reference = write_dataset(tmp_path / "dataset", in_domain())
    logs = tmp_path / "logs"
    write_log(logs, TOPIC, completions=["I'm sorry, I can only answer questions about Aurelian tea."] * len(TOPIC))
    folder = logs / "requests" / "date=2026-01-10"
    (folder / f"part-20260110T110000000000Z-{uuid.uuid4().hex}.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    (folder / f"part-20260110T110100000000Z-{uuid.uuid4().hex}.parquet").write_bytes(b"not parquet")
    cfg = config(tmp_path, logs, reference).model_copy(update={"tokenizer_uri": tiny.as_uri()})
    result = main(cfg)
    assert isinstance(result, DriftResult)
    assert result.drifted is True and result.requests == len(TOPIC) and result.reference_rows == len(in_domain())
    assert result.labelled_requests == 0  # no feedback: nothing a retraining could learn from
    # the oldest and newest of the 40 requests (minutes 0..39), found across both part files
    assert (result.window_start, result.window_end) == ("2026-01-10T12:00:00Z", "2026-01-10T12:39:00Z")
    names = {s.name: s for s in result.signals}
    assert names["embedding.mmd"].drifted is True
    assert names["completion.refusal_share"].drifted is True  # every answer refuses, none in the reference
    assert names["prompt.oov_share"].score is not None  # judged with the tiny model's tokenizer
    assert names["payload_log.skipped_files"].score == 2 and names["payload_log.skipped_files"].drifted is None
    assert len(json.dumps(result.to_wire())) < 3000
    report = Path(result.report_uri.removeprefix("file://"))
    assert report.name == "report.html" and report.stat().st_size > 10000
    summary = json.loads((report.parent / "drift.json").read_text())
    assert summary["drifted"] is True and len(summary["skipped_log_files"]) == 2
    assert (summary["window_start"], summary["window_end"]) == (result.window_start, result.window_end)
    assert {s["name"] for s in summary["signals"]} >= {"prompt.length", "prompt.language", "embedding.mmd"}
    for s in summary["signals"]:
        assert set(s) >= {"name", "score", "threshold", "p_value", "drifted"}
        if s["score"] is not None:
            assert s["n"]["current"] > 0 and s["n"]["reference"] > 0
    assert names["domain.classifier_auc"].drifted is True


def test_cli_in_domain_against_reference_traffic(tmp_path, monkeypatch):
    """Reference: a payload log of in-domain traffic with retrieval scores and ratings; current:
    other in-domain questions, same score and rating distributions -> not drifted."""
    from mentor_trainer import cli

    prompts = in_domain()
    order = np.random.default_rng(5).permutation(len(prompts))
    rng = np.random.default_rng(6)
    reference, logs = tmp_path / "reference", tmp_path / "logs"
    write_log(reference, [prompts[i] for i in order[:38]], scores=list(rng.uniform(0.5, 0.9, 38)), ratings=[1.0, 0.5, 1.0] * 5)
    write_log(logs, [prompts[i] for i in order[38:]], scores=list(rng.uniform(0.5, 0.9, 39)), ratings=[1.0, 1.0, 0.5] * 5)
    file = tmp_path / "config.json"
    file.write_text(json.dumps(config(tmp_path, logs, reference, threshold=0.5).to_wire()))
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("MENTOR_TERMINATION_LOG", str(termination))
    assert cli.main(["drift", "--config", str(file)]) == 0
    message = termination.read_text()
    assert len(message) < 3000
    result = DriftResult.model_validate_json(message)
    assert result.drifted is False and result.skipped is None and result.requests == 39 and result.reference_rows == 38
    assert result.labelled_requests == 15  # every rating given is >= 0.5, the payload-log source's minRating
    names = {s.name: s for s in result.signals}
    assert names["retrieval.top_score"].drifted is False and names["feedback.rating"].drifted is False
    assert names["prompt.oov_share"].drifted is None  # no tokenizer configured


def test_the_design_notes_rules_are_options_on_stated_scales(embedded):
    """drift.thresholds: the notes' KL rule (prompt lengths, 0.15 nats) and MMD threshold (0.3)."""
    prompts = in_domain()
    notes = {"prompt.length_kl": 0.15, "embedding.mmd": 0.3}
    found, _ = compare(Traffic(longer(prompts[:40])), Traffic(prompts[40:]), embed=embedded, thresholds=notes)
    named = {s.name: s for s in found}
    assert named["embedding.mmd"].threshold == 0.3 and named["prompt.length_kl"].threshold == 0.15
    drifted, _ = sig.decide(found, ANY)
    assert drifted is True and named["prompt.length_kl"].drifted is True and named["prompt.length_kl"].score > 1.0
    order = np.random.default_rng(2).permutation(len(prompts))
    same, _ = compare(Traffic([prompts[i] for i in order[:60]]), Traffic([prompts[i] for i in order[60:]]), embed=embedded, thresholds=notes)
    sig.decide(same, ANY)
    assert {s.name: s for s in same}["prompt.length_kl"].drifted is False
    assert "prompt.length_kl" not in {s.name for s in compare(Traffic(prompts[:40]), Traffic(prompts[40:]), embed=embedded)[0]}


def test_threshold_names_are_the_signals():
    assert set(sig.THRESHOLDS) == set(DRIFT_SIGNALS)
    with pytest.raises(ValueError, match="unknown signal.*embeddings.mmd"):
        Drift(thresholds={"embeddings.mmd": 0.3})
