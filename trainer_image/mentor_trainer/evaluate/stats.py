"""Candidate vs baseline: paired bootstrap confidence intervals and p-values, and gates.

Both models answer the same examples, so examples are resampled *in pairs*: the per-example
difference cancels how hard each example is, which makes the interval far tighter than
comparing two independent means.

p-value: two-sided, the standard percentile form ``2 * min(P(d <= 0), P(d >= 0))`` over the
resampled differences d, capped at 1 and floored at ``1 / (samples + 1)`` (a finite number of
resamples cannot show a smaller p).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Sequence

import numpy as np

from ..config.evaluate import METRICS, Gate

# Resample index blocks hold at most this many entries (~32 MiB of int64), whatever n is.
_BLOCK_ENTRIES = 1 << 22

_STATISTICS: dict[str, Callable[..., np.ndarray]] = {"mean": np.mean, "median": np.median}

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


@dataclass(frozen=True)
class Comparison:
    """A candidate metric against the baseline's on the same n examples."""

    candidate: float
    baseline: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int

    def to_status(self) -> dict[str, float]:
        """The custom resource's status form (camelCase, rounded)."""
        return {
            "candidate": round(self.candidate, 6),
            "baseline": round(self.baseline, 6),
            "delta": round(self.delta, 6),
            "ciLow": round(self.ci_low, 6),
            "ciHigh": round(self.ci_high, 6),
            "pValue": round(self.p_value, 6),
        }


def _columns(names: Sequence[str], *columns: Sequence[float]) -> tuple[list[np.ndarray], int]:
    """Equal-length float columns with every row holding a NaN dropped, and the rows kept."""
    arrays = [np.asarray(column, dtype=float) for column in columns]
    lengths = {name: len(array) for name, array in zip(names, arrays, strict=True)}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"paired bootstrap needs one value per example in each input, got lengths {lengths}")
    if not arrays[0].size:
        raise ValueError("paired bootstrap needs at least one example, got none")
    keep = ~np.any(np.isnan(np.vstack(arrays)), axis=0)
    if not keep.any():
        raise ValueError(f"all {len(keep)} examples have a NaN value")
    return [array[keep] for array in arrays], int(keep.sum())


def _resampled_deltas(
    delta: Callable[..., np.ndarray], arrays: list[np.ndarray], samples: int, seed: int
) -> np.ndarray:
    """`delta` of `samples` paired resamples; delta maps [m, n] resampled columns to [m]."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    block = max(1, _BLOCK_ENTRIES // n)
    deltas = []
    for start in range(0, samples, block):
        index = rng.integers(0, n, size=(min(block, samples - start), n))
        deltas.append(delta(*(array[index] for array in arrays)))
    return np.concatenate(deltas)


def _comparison(
    candidate: float, baseline: float, deltas: np.ndarray, confidence: float, n: int
) -> Comparison:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    tail = (1 - confidence) / 2
    low, high = np.quantile(deltas, [tail, 1 - tail])
    two_sided = 2 * min(np.mean(deltas <= 0), np.mean(deltas >= 0))
    p_value = min(1.0, max(float(two_sided), 1 / (len(deltas) + 1)))
    return Comparison(
        candidate=float(candidate),
        baseline=float(baseline),
        delta=float(candidate - baseline),
        ci_low=float(low),
        ci_high=float(high),
        p_value=p_value,
        n=n,
    )


def paired_bootstrap(
    candidate: Sequence[float],
    baseline: Sequence[float],
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    statistic: Literal["mean", "median"] = "mean",
) -> Comparison:
    """Difference of a per-example score's statistic (candidate - baseline), with a percentile CI.

    Pairs holding a NaN (an example either model failed to score) are dropped; n says how
    many remain.
    """
    reduce = _STATISTICS[statistic]
    (cand, base), n = _columns(("candidate", "baseline"), candidate, baseline)
    deltas = _resampled_deltas(
        lambda c, b: reduce(c, axis=1) - reduce(b, axis=1), [cand, base], samples, seed
    )
    return _comparison(reduce(cand), reduce(base), deltas, confidence, n)


def _perplexity(nll: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    return np.exp(nll.sum(axis=-1) / tokens.sum(axis=-1))


def paired_bootstrap_ratio(
    cand_nll: Sequence[float],
    cand_tokens: Sequence[float],
    base_nll: Sequence[float],
    base_tokens: Sequence[float],
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Corpus perplexity exp(sum nll / sum tokens) of each model, candidate - baseline.

    Perplexity is a ratio over the whole corpus, not a mean of per-example values, so each
    resample recomputes it from the resampled examples' summed NLL (nats) and token counts.
    Token counts are per model: the two tokenizers may split the same text differently.
    Examples with a NaN or without tokens in either model are dropped.
    """
    names = ("cand_nll", "cand_tokens", "base_nll", "base_tokens")
    columns = [np.array(column, dtype=float) for column in (cand_nll, cand_tokens, base_nll, base_tokens)]
    for tokens in (columns[1], columns[3]):
        tokens[tokens <= 0] = np.nan  # no tokens, no evidence; also keeps every resample's sum > 0
    (cn, ct, bn, bt), n = _columns(names, *columns)
    deltas = _resampled_deltas(
        lambda cn, ct, bn, bt: _perplexity(cn, ct) - _perplexity(bn, bt), [cn, ct, bn, bt], samples, seed
    )
    return _comparison(_perplexity(cn, ct), _perplexity(bn, bt), deltas, confidence, n)


# --------------------------------------------------------------------------------------
# Gates


def _number(value: float) -> str:
    return f"{value:.6g}"


def _rule(gate: Gate, reference: float | None = None) -> str:
    """The gate's rule; with the baseline's value, also the threshold it works out to."""
    if gate.value is not None:
        return f"{gate.metric} {gate.op} {_number(gate.value)}"
    threshold = "baseline" if reference is None else f"baseline {_number(reference)}"
    if gate.baseline_factor is not None:
        threshold = f"{_number(gate.baseline_factor)} x {threshold}"
    if gate.baseline_delta is not None:
        sign = "-" if gate.baseline_delta < 0 else "+"
        threshold = f"{threshold} {sign} {_number(abs(gate.baseline_delta))}"
    if reference is not None:
        threshold = f"{threshold} = {_number(_threshold(gate, reference))}"
    p_clause = f" with p < {_number(gate.max_p_value)}" if gate.max_p_value is not None else ""
    return f"{gate.metric} {gate.op} {threshold}{p_clause}"


def _threshold(gate: Gate, reference: float) -> float:
    return reference * (gate.baseline_factor or 1.0) + (gate.baseline_delta or 0.0)


def gate_text(gate: Gate) -> str:
    """The rule as people write it: `qa.f1 >= 0.6`, `ppl.domain <= 0.8 x baseline`,
    `qa.f1 >= baseline + 0.05 with p < 0.05`."""
    return _rule(gate)


def _gate_failure(
    gate: Gate,
    metrics: Mapping[str, float],
    baseline: Mapping[str, float],
    comparisons: Mapping[str, Comparison],
    suite_errors: Mapping[str, str],
) -> str | None:
    """Why the gate fails, or None when it passes."""
    if gate.metric not in metrics:
        suite = METRICS[gate.metric]
        why = f"failed: {suite_errors[suite]}" if suite in suite_errors else "did not run"
        return f"{gate.metric}: metric not measured (suite {suite} {why})"
    value = metrics[gate.metric]
    if math.isnan(value):
        return f"{gate_text(gate)}: value is NaN"
    passes = _OPERATORS[gate.op]
    if gate.value is not None:
        return None if passes(value, gate.value) else f"{gate_text(gate)} (got {_number(value)})"

    if gate.metric not in baseline:
        return f"{gate_text(gate)}: baseline not measured"
    reference = baseline[gate.metric]
    if math.isnan(reference):
        return f"{gate_text(gate)}: baseline value is NaN"
    if gate.max_p_value is None:
        if passes(value, _threshold(gate, reference)):
            return None
        return f"{_rule(gate, reference)} (got {_number(value)})"
    if gate.metric not in comparisons:
        return f"{gate_text(gate)}: no paired comparison with the baseline"
    p_value = comparisons[gate.metric].p_value
    if passes(value, _threshold(gate, reference)) and p_value < gate.max_p_value:
        return None
    return f"{_rule(gate, reference)} (got {_number(value)}, p={p_value:.2g})"


def evaluate_gates(
    gates: Sequence[Gate],
    metrics: Mapping[str, float],
    baseline: Mapping[str, float],
    comparisons: Mapping[str, Comparison],
    suite_errors: Mapping[str, str] | None = None,
) -> list[str]:
    """The failed gates, each as a sentence saying the rule and what was measured.

    A gate whose metric was not measured fails (a suite that crashed must not promote a
    model); `suite_errors` (suite -> error) says why. The p-value of a relative gate is the
    paired bootstrap's two-sided p of the difference from the baseline.
    """
    failures = (_gate_failure(gate, metrics, baseline, comparisons, suite_errors or {}) for gate in gates)
    return [failure for failure in failures if failure is not None]
