"""The drift signals: per-request descriptors, their effect sizes and the calibrated decision.

Every signal compares the current window with the reference and yields

- a **score**, an effect size on the signal's stated scale (below), which does not shrink to
  zero or grow without bound with the sample size (unlike a p-value), and
- a **p-value** of a two-sample test of "same distribution".

A signal has **drifted** when ``score > threshold`` **and** ``p < ALPHA / k`` (Bonferroni over
the ``k`` signals evaluated in this check). The effect-size floor keeps the check quiet at 100k
rows, where any test rejects for a harmless difference; the corrected test keeps it quiet on
small windows, where effect sizes are noisy. So, with no drift, the chance that *any* signal
drifts is at most ``ALPHA`` (5%), whatever the window size. A signal that cannot be judged (no
tokenizer, no retrieval scores, too few ratings, nothing on one side) is listed with
``drifted=None`` and does not count.

Scales and thresholds:

==========================  ======================================================  =========
signal                      score                                                   threshold
==========================  ======================================================  =========
prompt.length               Wasserstein-1 of prompt length (characters) divided by     0.75
                            the reference's std (floor 1 char); KS test
prompt.non_letter_share     the same on the share of non-whitespace characters that    0.75
                            are not letters (std floor 0.02); KS test
prompt.language             Jensen-Shannon distance (base 2, 0..1) of the language     0.2
                            distributions (``detect_language``); chi-square test,
                            a permutation test when a count is < 5
prompt.oov_share            W1/std (floor 0.02) of the share of a prompt's tokens      0.75
                            that are unknown or byte-fallback pieces; KS test
completion.refusal_share    absolute difference (0..1) of the share of empty or        0.1
                            refusing completions; Fisher exact test
retrieval.top_score         W1/std (floor 0.02) of the best retrieval score; KS test   0.75
feedback.rating             W1/std (floor 0.1) of ratings (>= 10 each side); KS test   0.75
embedding.mmd               unbiased MMD^2 of MiniLM prompt embeddings, RBF kernel     0.03
                            with the median heuristic; permutation test
domain.classifier_auc       cross-validated ROC AUC (0.5: indistinguishable, 1:        0.55
                            separable) of a ridge linear classifier telling current
                            from reference rows on the embeddings plus log length
                            and non-letter share; permutation test
==========================  ======================================================  =========

Sample sizes: the scalar descriptors (length, non-letter share, OOV share, refusals, retrieval
scores, ratings) use every row; language detection and the embeddings (MMD, classifier) a
seeded random sample per side (``drift/__init__.py``: ``LANGUAGE_SAMPLE``, ``EMBEDDED_SAMPLE``),
because langdetect and MiniLM cost milliseconds per prompt on a CPU. Each signal says its
``n`` per side in ``drift.json``.

Out-of-vocabulary share, defined: a prompt's tokens (the served model's tokenizer, without
special tokens) that are the unknown token, a SentencePiece byte-fallback piece (``<0xNN>``),
or a byte-level piece that is not a whole character (it decodes to U+FFFD alone); divided by
the prompt's token count (0 for an empty prompt).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
PERMUTATIONS = 300
FOLDS = 5  # of the domain classifier's cross-validation
RIDGE = 1.0  # its L2 penalty per training row, on standardised features
MIN_RATINGS = 10

THRESHOLDS = {
    "prompt.length": 0.75,
    "prompt.non_letter_share": 0.75,
    "prompt.language": 0.2,
    "prompt.oov_share": 0.75,
    "completion.refusal_share": 0.1,
    "retrieval.top_score": 0.75,
    "feedback.rating": 0.75,
    "embedding.mmd": 0.03,
    "domain.classifier_auc": 0.55,
    "prompt.length_kl": 0.15,  # the design notes' rule; computed only when drift.thresholds names it
}
KL_BINS = 10
STD_FLOORS = {
    "prompt.length": 1.0,
    "prompt.non_letter_share": 0.02,
    "prompt.oov_share": 0.02,
    "retrieval.top_score": 0.02,
    "feedback.rating": 0.1,
}

_REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry,|i can(?:'|no)t|i cannot|i am (?:not able|unable)|i'?m (?:not able|unable)"
    r"|as an ai|i do(?:n'| no)t know|i don'?t have (?:that|enough) information|unfortunately,? i)",
    re.IGNORECASE,
)


@dataclass
class Signal:
    name: str
    score: float | None = None
    threshold: float | None = None
    p_value: float | None = None
    drifted: bool | None = None
    note: str | None = None  # why it was not judged, or a figure worth knowing
    n: tuple[int, int] | None = None  # values compared (current, reference)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "score": _round(self.score),
            "threshold": self.threshold,
            "p_value": _round(self.p_value),
            "drifted": self.drifted,
            **({"n": {"current": self.n[0], "reference": self.n[1]}} if self.n else {}),
            **({"note": self.note} if self.note else {}),
        }


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


# ---------------------------------------------------------------- descriptors


def non_letter_shares(texts: list[str], chunk: int = 4096) -> np.ndarray:
    """Per text: the share of its non-whitespace characters that are not letters (0 when it has
    none). Vectorised over the code points of ``chunk`` texts at a time (memory stays bounded
    for long prompts); each distinct character is classified once by str.isspace/isalpha."""
    out = np.zeros(len(texts))
    for start in range(0, len(texts), chunk):
        part = texts[start:start + chunk]
        codes = np.frombuffer("".join(part).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        if not len(codes):
            continue
        space = np.zeros(int(codes.max()) + 1, bool)
        letter = np.zeros_like(space)
        for code in np.flatnonzero(np.bincount(codes)):
            space[code], letter[code] = chr(code).isspace(), chr(code).isalpha()
        ends = np.cumsum(np.fromiter(map(len, part), np.int64, len(part)))
        bounds = np.r_[0, ends]
        visible = np.diff(np.r_[0, np.cumsum(~space[codes])][bounds])
        letters = np.diff(np.r_[0, np.cumsum(letter[codes])][bounds])
        out[start:start + len(part)] = np.divide(visible - letters, visible, out=np.zeros(len(part)), where=visible > 0)
    return out


def is_refusal(completion: str) -> bool:
    return not completion.strip() or bool(_REFUSAL.match(completion))


def languages(texts: list[str]) -> list[str]:
    from ..data.filters import detect_language

    return [detect_language(t) if t.strip() else "und" for t in texts]


def oov_shares(texts: list[str], tokenizer) -> np.ndarray:
    """Per text: the share of its tokens that are unknown or byte pieces (see module docs)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    cache: dict[int, bool] = {}

    def bad(token_id: int) -> bool:
        if token_id not in cache:
            piece = tokenizer.convert_ids_to_tokens(token_id) or ""
            cache[token_id] = (
                token_id == unk
                or bool(re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece))
                or tokenizer.decode([token_id]) == "\ufffd"
            )
        return cache[token_id]

    out = np.zeros(len(texts))
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        out[i] = sum(bad(t) for t in ids) / len(ids) if ids else 0.0
    return out


# ---------------------------------------------------------------- comparisons


def numeric(name: str, current, reference) -> Signal:
    from scipy.stats import ks_2samp, wasserstein_distance

    cur, ref = np.asarray(current, float), np.asarray(reference, float)
    cur, ref = cur[np.isfinite(cur)], ref[np.isfinite(ref)]
    signal = Signal(name, threshold=THRESHOLDS[name], n=(len(cur), len(ref)))
    if len(cur) < 2 or len(ref) < 2:
        signal.note = f"too few values (current {len(cur)}, reference {len(ref)})"
        return signal
    scale = max(float(np.std(ref)), STD_FLOORS[name])
    signal.score = wasserstein_distance(cur, ref) / scale
    signal.p_value = float(ks_2samp(cur, ref).pvalue)
    return signal


def length_kl(current, reference) -> Signal:
    """KL(current || reference) in nats of the prompt lengths over ``KL_BINS`` bins at the
    reference's quantiles (add-one smoothed), with a chi-square test of the two histograms."""
    from scipy.stats import chi2_contingency

    cur, ref = np.asarray(current, float), np.asarray(reference, float)
    signal = Signal("prompt.length_kl", threshold=THRESHOLDS["prompt.length_kl"], n=(len(cur), len(ref)))
    if len(cur) < 2 or len(ref) < 2:
        signal.note = f"too few values (current {len(cur)}, reference {len(ref)})"
        return signal
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, KL_BINS + 1)[1:-1]))
    counts = np.stack([np.bincount(np.searchsorted(edges, side_, side="right"), minlength=len(edges) + 1) for side_ in (cur, ref)])
    p, q = ((c + 1) / (c + 1).sum() for c in counts)
    signal.score = float(np.sum(p * np.log(p / q)))
    filled = counts[:, counts.sum(axis=0) > 0]
    signal.p_value = float(chi2_contingency(filled).pvalue) if filled.shape[1] > 1 else 1.0
    return signal


def categorical(name: str, current: list[str], reference: list[str], seed: int = 0) -> Signal:
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import chi2_contingency

    signal = Signal(name, threshold=THRESHOLDS[name], n=(len(current), len(reference)))
    if not current or not reference:
        signal.note = "nothing to compare"
        return signal
    cats = sorted(set(current) | set(reference))
    table = np.array([[current.count(c) for c in cats], [reference.count(c) for c in cats]], float)
    signal.score = float(jensenshannon(table[0] / table[0].sum(), table[1] / table[1].sum(), base=2))
    if len(cats) < 2:
        signal.p_value = 1.0
    elif table.min() >= 5:
        signal.p_value = float(chi2_contingency(table)[1])
    else:  # small counts: the chi-square approximation is anti-conservative; permute instead
        codes = np.array([cats.index(c) for c in current] + [cats.index(c) for c in reference])
        rng, m, exceed = np.random.default_rng(seed), len(current), 0
        for _ in range(PERMUTATIONS):
            shuffled = rng.permutation(codes)
            a = np.bincount(shuffled[:m], minlength=len(cats))
            b = np.bincount(shuffled[m:], minlength=len(cats))
            exceed += jensenshannon(a / a.sum(), b / b.sum(), base=2) >= signal.score - 1e-12
        signal.p_value = (exceed + 1) / (PERMUTATIONS + 1)
    top = sorted(zip(table[0], cats), reverse=True)[:3]
    signal.note = "current: " + ", ".join(f"{c} {n / table[0].sum():.0%}" for n, c in top)
    return signal


def proportion(name: str, current: list[bool], reference: list[bool]) -> Signal:
    from scipy.stats import fisher_exact

    signal = Signal(name, threshold=THRESHOLDS[name], n=(len(current), len(reference)))
    if not current or not reference:
        signal.note = "nothing to compare"
        return signal
    a, b = sum(current), sum(reference)
    signal.score = abs(a / len(current) - b / len(reference))
    signal.p_value = float(fisher_exact([[a, len(current) - a], [b, len(reference) - b]])[1])
    signal.note = f"current {a / len(current):.1%}, reference {b / len(reference):.1%}"
    return signal


def mmd(current: np.ndarray, reference: np.ndarray, seed: int = 0, permutations: int = PERMUTATIONS) -> Signal:
    """Unbiased MMD^2 with an RBF kernel (bandwidth: median pairwise distance of the pooled
    sample), and its permutation p-value. The kernel is (m+n)^2: callers pass a bounded sample."""
    signal = Signal("embedding.mmd", threshold=THRESHOLDS["embedding.mmd"], n=(len(current), len(reference)))
    rng = np.random.default_rng(seed)
    if len(current) < 2 or len(reference) < 2:
        signal.note = "too few prompts to embed"
        return signal
    pooled = np.concatenate([current, reference]).astype(np.float64)
    sq = np.sum(pooled**2, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * pooled @ pooled.T, 0.0)
    n = len(pooled)
    median = float(np.median(d2[np.triu_indices(n, 1)]))
    kernel = np.exp(-d2 / max(median, 1e-12))
    np.fill_diagonal(kernel, 0.0)
    m = len(current)

    # every permutation at once: for an indicator x of the current side (y = 1 - x),
    # x'Kx, x'Ky = x'r - x'Kx and y'Ky = total - x'Kx - 2 x'Ky with r = K1 (one matrix product)
    labels = np.zeros((n, permutations + 1))
    labels[:m, 0] = 1.0
    for column in range(1, permutations + 1):
        labels[rng.permutation(n)[:m], column] = 1.0
    rows, total = kernel.sum(axis=1), kernel.sum()
    kxx = np.einsum("ip,ip->p", labels, kernel @ labels)
    kxy = labels.T @ rows - kxx
    kyy = total - kxx - 2 * kxy
    ny = n - m
    stats = kxx / (m * (m - 1)) + kyy / (ny * (ny - 1)) - 2 * kxy / (m * ny)
    observed = float(stats[0])
    exceed = int(np.sum(stats[1:] >= observed - 1e-12))
    signal.score = observed
    signal.p_value = (exceed + 1) / (permutations + 1)
    return signal


def domain_classifier(current: np.ndarray, reference: np.ndarray, seed: int = 0, permutations: int = PERMUTATIONS) -> Signal:
    """Can a classifier tell the sides apart? A ridge (least-squares) linear classifier on the
    standardised features, scored out of fold (``FOLDS`` random folds); the score is the ROC AUC
    of the out-of-fold scores, the p-value a permutation test of it.

    A ridge fit is linear in the labels, so every permutation's out-of-fold scores come from one
    solve per fold (the permutation test is exact; a rank test of pooled out-of-fold scores is
    not: the folds' models differ, and it alarmed 3-4x too often at the corrected level)."""
    from scipy.stats import rankdata

    m, n = len(current), len(reference)
    signal = Signal("domain.classifier_auc", threshold=THRESHOLDS["domain.classifier_auc"], n=(m, n))
    if min(m, n) < FOLDS:
        signal.note = f"fewer than {FOLDS} rows on a side"
        return signal
    features = np.concatenate([current, reference]).astype(np.float64)
    features = (features - features.mean(axis=0)) / np.maximum(features.std(axis=0), 1e-9)
    rng = np.random.default_rng(seed)
    observed = np.r_[np.ones(m), np.zeros(n)]
    labels = np.column_stack([observed] + [rng.permutation(observed) for _ in range(permutations)])
    fold = rng.permutation(m + n) % FOLDS
    scores = np.empty_like(labels)
    for k in range(FOLDS):
        train, test = fold != k, fold == k
        centre = features[train].mean(axis=0)
        centred = features[train] - centre
        gram = centred.T @ centred + RIDGE * train.sum() * np.eye(features.shape[1])
        weights = np.linalg.solve(gram, centred.T @ labels[train])  # one column per labelling
        scores[test] = (features[test] - centre) @ weights + labels[train].mean(axis=0)
    ranks = rankdata(scores, axis=0)
    aucs = ((ranks * labels).sum(axis=0) - m * (m + 1) / 2) / (m * n)
    signal.score = float(aucs[0])
    signal.p_value = (int(np.sum(aucs[1:] >= aucs[0] - 1e-12)) + 1) / (permutations + 1)
    return signal


def decide(signals: list[Signal], share: float) -> tuple[bool | None, float | None]:
    """Mark each judged signal drifted or not (effect size and Bonferroni-corrected test) and
    return (drifted, share of judged signals that drifted): drifted when that share > ``share``."""
    judged = [s for s in signals if s.score is not None and s.p_value is not None]
    if not judged:
        return None, None
    alpha = ALPHA / len(judged)
    for s in judged:
        s.drifted = bool(s.score > s.threshold and s.p_value < alpha)
    fraction = sum(s.drifted for s in judged) / len(judged)
    return fraction > share, fraction
