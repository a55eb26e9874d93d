"""Mixing domain / general / scenario training examples by weight, by sampling.

Only the training split is mixed (validation and test keep every example, so evaluation sees
each group). Training examples are spooled per group; then each group's target is

- ``totalExamples`` x its normalised weight when ``totalExamples`` is set (a group with too
  few examples is oversampled: whole repeats plus a sampled remainder), or
- otherwise the largest mixed set the scarcest weighted group allows without repeats
  (``min(available / weight)``), times each weight.

Weights are normalised over the groups that have examples; a group with weight 0 is left
out. Targets are rounded with the largest-remainder method so they sum to the total. Which
examples are kept is decided by a seeded hash (the split seed) of each example's position:
the same inputs and seed keep the same examples.

Mixing applies when ``totalExamples`` is set or the weights differ from the default
(domain 1, general 0, scenario 0); with the defaults every group is kept as it is and the
realised proportions are only reported.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Iterator

from ..errors import StageError

GROUPS = ("domain", "general", "scenario")
DEFAULT_WEIGHTS = {"domain": 1.0, "general": 0.0, "scenario": 0.0}


def weights_of(mixture) -> dict[str, float]:
    return {"domain": mixture.domain, "general": mixture.general, "scenario": mixture.scenario}


def mixing_requested(mixture) -> bool:
    return mixture.total_examples is not None or weights_of(mixture) != DEFAULT_WEIGHTS


def largest_remainder(shares: dict[str, float], total: int) -> dict[str, int]:
    raw = {g: share * total for g, share in shares.items()}
    counts = {g: int(math.floor(v)) for g, v in raw.items()}
    left = total - sum(counts.values())
    for g in sorted(raw, key=lambda g: (-(raw[g] - counts[g]), g))[:left]:
        counts[g] += 1
    return counts


def plan(available: dict[str, int], weights: dict[str, float], total: int | None) -> tuple[dict[str, int], dict[str, float]]:
    """(target per group, normalised weights) for the groups with examples."""
    active = {g: w for g, w in weights.items() if w > 0 and available.get(g, 0) > 0}
    if not active:
        having = ", ".join(f"{g} {n}" for g, n in sorted(available.items()) if n) or "none"
        raise StageError(
            f"mixture: every group with training examples has weight 0 (examples: {having}; weights: "
            + ", ".join(f"{g} {w}" for g, w in weights.items())
            + ")"
        )
    norm = sum(active.values())
    shares = {g: w / norm for g, w in active.items()}
    if total is None:
        total = int(math.floor(min(available[g] / share for g, share in shares.items()) + 1e-9))
    targets = largest_remainder(shares, total)
    return {g: targets.get(g, 0) for g in available}, shares


def _rank(seed: int, group: str, position: int) -> bytes:
    return hashlib.sha256(f"mixture\0{seed}\0{group}\0{position}".encode()).digest()


def select(n: int, target: int, seed: int, group: str) -> dict[int, int]:
    """How many times each position 0..n-1 is kept: whole repeats plus a seeded sample."""
    if n == 0 or target <= 0:
        return {}
    repeats, remainder = divmod(target, n)
    counts = {i: repeats for i in range(n)} if repeats else {}
    if remainder:
        for i in sorted(range(n), key=lambda i: _rank(seed, group, i))[:remainder]:
            counts[i] = counts.get(i, 0) + 1
    return counts


class Mixer:
    """Training examples spooled per group, then sampled to the configured weights."""

    def __init__(self, mixture, seed: int, work: Path) -> None:
        self.weights = weights_of(mixture)
        self.total = mixture.total_examples
        self.seed = seed
        self.work = Path(work)
        self.handles: dict[str, object] = {}
        self.available: dict[str, int] = {}

    def add(self, fmt: str, row: dict) -> None:
        group = row["group"]
        handle = self.handles.get(group)
        if handle is None:
            handle = self.handles[group] = open(self.work / f"mixture-{group}.jsonl", "w", encoding="utf-8")
        handle.write(json.dumps({"format": fmt, "row": row}, ensure_ascii=False) + "\n")
        self.available[group] = self.available.get(group, 0) + 1

    def mix(self) -> Iterator[tuple[str, dict]]:
        """The kept (format, row) pairs; :attr:`report` is filled once exhausted."""
        for handle in self.handles.values():
            handle.close()
        if not self.available:
            self.report = self._report({}, {}, {})
            return
        targets, shares = plan(self.available, self.weights, self.total)
        kept: dict[str, int] = {}
        for group in sorted(self.available):
            counts = select(self.available[group], targets[group], self.seed, group)
            path = self.work / f"mixture-{group}.jsonl"
            with open(path, encoding="utf-8") as handle:
                for position, line in enumerate(handle):
                    times = counts.get(position, 0)
                    if not times:
                        continue
                    entry = json.loads(line)
                    for _ in range(times):
                        kept[group] = kept.get(group, 0) + 1
                        yield entry["format"], entry["row"]
            path.unlink(missing_ok=True)
        self.report = self._report(targets, shares, kept)

    def _report(self, targets: dict, shares: dict, kept: dict) -> dict:
        total = sum(kept.values()) or 1
        return {
            "sampled": True,
            "totalExamples": self.total,
            "normalisedWeights": {g: round(s, 4) for g, s in sorted(shares.items())},
            "availablePerGroup": dict(sorted(self.available.items())),
            "targetPerGroup": dict(sorted(targets.items())),
            "oversampledPerGroup": {g: targets[g] - self.available[g] for g in sorted(targets) if targets[g] > self.available[g]},
            "droppedPerGroup": {g: self.available[g] - kept.get(g, 0) for g in sorted(self.available) if self.available[g] > kept.get(g, 0)},
            "groupsWithoutExamples": sorted(g for g, w in self.weights.items() if w > 0 and not self.available.get(g)),
            "realisedFromSampling": {g: round(n / total, 4) for g, n in sorted(kept.items())},
        }
