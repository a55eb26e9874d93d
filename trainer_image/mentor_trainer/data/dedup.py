"""Deduplication: exact (hash of the normalised text) and near-duplicate (MinHash LSH).

MinHash signatures are computed with numpy over character shingles (``shingle_size``
characters of the lower-cased, whitespace-collapsed text): shingles are hashed with a
vectorised polynomial hash and a 64-bit mixer (truncated to 32 bits), then permuted
``num_perm`` times with datasketch's "affine32" scheme (``a*h + b mod 2^32``, ``a`` odd: a
bijection, so permutations add no collisions). Candidate pairs come from a
``datasketch.MinHashLSH`` index tuned for the configured Jaccard threshold; each candidate is
confirmed by its estimated Jaccard similarity before a unit is called a duplicate, so LSH
false positives never drop a document.
"""

from __future__ import annotations

import hashlib

import numpy as np

_MAX_HASH = np.uint64((1 << 32) - 1)
_MAX32 = np.uint32((1 << 32) - 1)
SCHEME = "affine32"
_BASE = np.uint64(1_000_003)
_BATCH = 4096


def exact_key(text: str) -> bytes:
    """Key of exact duplicates: case and whitespace do not matter."""
    return hashlib.blake2b("".join(text.lower().split()).encode("utf-8"), digest_size=16).digest()


def _mix64(x: np.ndarray) -> np.ndarray:
    # splitmix64 finaliser: spreads the polynomial hash over all bits
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class MinHasher:
    """MinHash signatures of texts over character shingles."""

    def __init__(self, num_perm: int = 128, shingle_size: int = 5, seed: int = 1) -> None:
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.seed = seed
        generator = np.random.RandomState(seed)
        self.a = generator.randint(0, 1 << 32, size=num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
        self.b = generator.randint(0, 1 << 32, size=num_perm, dtype=np.uint64).astype(np.uint32)

    def shingles(self, text: str) -> np.ndarray:
        """32-bit hashes (uint32) of the shingles of a text (repeats included: the minimum
        over them is the same, and skipping a unique() saves a sort per document)."""
        text = " ".join(text.lower().split())
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        k = self.shingle_size
        if len(codes) == 0:
            return np.zeros(1, dtype=np.uint32)
        if len(codes) <= k:
            k = len(codes)
        n = len(codes) - k + 1
        h = np.zeros(n, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(k):
                h = h * _BASE + codes[j : j + n]
            h = (_mix64(h) & _MAX_HASH).astype(np.uint32)
        return h

    def signature(self, text: str) -> np.ndarray:
        """The MinHash signature (num_perm uint32 values)."""
        hashes = self.shingles(text)
        signature = np.full(self.num_perm, _MAX32, dtype=np.uint32)
        with np.errstate(over="ignore"):
            for start in range(0, len(hashes), _BATCH):
                # (num_perm x batch): in-place add and a contiguous row-wise minimum
                permuted = self.a[:, None] * hashes[None, start : start + _BATCH]  # wraps modulo 2^32
                permuted += self.b[:, None]
                np.minimum(signature, permuted.min(axis=1), out=signature)
        return signature


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Estimated Jaccard similarity of two signatures."""
    return float(np.count_nonzero(a == b)) / len(a)


class NearDuplicateIndex:
    """An LSH index that answers "is this text a near-duplicate of one already added?"."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle_size: int = 5, seed: int = 1) -> None:
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.hasher = MinHasher(num_perm=num_perm, shingle_size=shingle_size, seed=seed)
        # datasketch needs a threshold strictly inside (0, 1)
        self.lsh = MinHashLSH(threshold=min(max(threshold, 0.01), 0.99), num_perm=num_perm)
        self.signatures: list[np.ndarray] = []
        self.labels: list[str] = []

    def __len__(self) -> int:
        return len(self.signatures)

    def _lean(self, signature: np.ndarray):
        from datasketch import LeanMinHash

        return LeanMinHash(seed=self.hasher.seed, hashvalues=signature, scheme=SCHEME)

    def find(self, signature: np.ndarray) -> str | None:
        """Label of an indexed text whose estimated Jaccard similarity is >= threshold."""
        if not self.signatures:
            return None
        best, best_label = -1.0, None
        for key in self.lsh.query(self._lean(signature)):
            score = jaccard(signature, self.signatures[key])
            if score >= self.threshold and score > best:
                best, best_label = score, self.labels[key]
        return best_label

    def add(self, signature: np.ndarray, label: str) -> None:
        key = len(self.signatures)
        self.lsh.insert(key, self._lean(signature), check_duplication=False)
        self.signatures.append(signature)
        self.labels.append(label)

    def check_and_add(self, text: str, label: str) -> str | None:
        """Add ``text`` unless it near-duplicates an indexed one; returns that one's label."""
        signature = self.hasher.signature(text)
        duplicate_of = self.find(signature)
        if duplicate_of is None:
            self.add(signature, label)
        return duplicate_of
