"""Duplicate removal for `lmforge prepare`: exact (a digest of the normalized text) and near
(MinHash signatures of word or character shingles, found by datasketch's LSH).

`dedup_key` runs in worker processes: module-level, deterministic, and free of mutable
global state (the only cache holds the MinHash permutations, a constant of num_perm).
`Deduplicator` runs in the main process and sees documents in order.
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from lmforge.config import CleanConfig
from lmforge.data.clean import CleanStats
from lmforge.errors import DataError

_SCHEME = "affine64"  # datasketch >= 2: 64-bit shingle hashes in, uint64 hash values out
_MIX = np.uint64(0x9E3779B97F4A7C15)
_BATCH = 4096  # shingles per update_batch: its (shingles x num_perm) matrix stays ~4 MB


@dataclass(frozen=True, eq=False)
class DedupKey:
    digest: bytes  # blake2b-128 of the text casefolded with whitespace collapsed
    hashvalues: np.ndarray | None = None  # MinHash signature (uint64) when dedup_near


def _datasketch() -> ModuleType:
    import datasketch

    if int(datasketch.__version__.split(".")[0]) < 2:
        raise DataError(f"clean.dedup_near needs datasketch >= 2.0 (found "
                        f"{datasketch.__version__}): pip install -U 'datasketch>=2'")
    return datasketch


@functools.cache
def _permutations(num_perm: int) -> np.ndarray:
    # Drawing them costs more than hashing a paragraph; they depend on num_perm and seed only.
    return _datasketch().MinHash(num_perm=num_perm, seed=1, scheme=_SCHEME).permutations


def _splitmix(x: np.ndarray) -> np.ndarray:
    # Spread 32-bit ids (code points, CRCs) over 64 bits before they are combined.
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shingle_hashes(norm: str, n: int = 5) -> np.ndarray:
    """Distinct 64-bit hashes of word n-grams of `norm`, or of character n-grams when it has
    few words for its length (Chinese or Japanese without spaces, very short texts)."""
    words = norm.split(" ")
    if len(words) >= 10 and len(norm) <= 20 * len(words):
        # CRC-32 per distinct word: 5x cheaper than blake2b, and a rare collision between two
        # words of one document moves its Jaccard estimate by next to nothing.
        table = {w: zlib.crc32(w.encode("utf-8", "surrogatepass")) for w in set(words)}
        ids = np.fromiter(map(table.__getitem__, words), dtype=np.uint64, count=len(words))
    else:
        ids = np.frombuffer(norm.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    ids = _splitmix(ids.astype(np.uint64))
    n = max(1, min(n, len(ids)))
    m = len(ids) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    for k in range(n):  # polynomial hash of each window, wrapping mod 2^64
        h = h * _MIX + ids[k:k + m]
    return np.unique(h)


def dedup_key(text: str, cfg: CleanConfig) -> DedupKey:
    """What the Deduplicator compares: an exact digest and, with dedup_near, a MinHash."""
    norm = " ".join(text.casefold().split())
    digest = hashlib.blake2b(norm.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    if not cfg.dedup_near:
        return DedupKey(digest)
    # The shingles are already 64-bit hashes, so the hash function is the identity.
    mh = _datasketch().MinHash(num_perm=cfg.near_num_perm, seed=1, hashfunc=int, scheme=_SCHEME,
                               permutations=_permutations(cfg.near_num_perm))
    shingles = shingle_hashes(norm)
    for start in range(0, len(shingles), _BATCH):
        mh.update_batch(shingles[start:start + _BATCH].tolist())
    return DedupKey(digest, mh.hashvalues)


class Deduplicator:
    """Drops documents that repeat one already kept; fed in document order.

    Memory per kept document (measured, 128 permutations): ~105 bytes for the set of 16-byte
    digests; with dedup_near ~3.7 KB for datasketch's LSH index plus ~1.1 KB for the kept
    signature, which confirms LSH candidates by their estimated Jaccard similarity, since
    banding alone lets some below the threshold in.
    """

    def __init__(self, cfg: CleanConfig) -> None:
        self.cfg = cfg
        self._digests: set[bytes] = set()
        self._signatures: list[np.ndarray] = []
        self._lsh = None
        if cfg.dedup_near:
            ds = _datasketch()
            self._lsh = ds.MinHashLSH(threshold=cfg.near_threshold, num_perm=cfg.near_num_perm)
            self._lean = ds.LeanMinHash

    def check(self, doc_id: str, key: DedupKey, *, nbytes: int, stats: CleanStats) -> str | None:
        """'exact' or 'near' when `key` repeats a kept document, else None (and it is kept).

        `doc_id` is not stored: the LSH is keyed by arrival number, so repeated ids are safe.
        """
        cfg = self.cfg
        if cfg.dedup_exact:
            dup = key.digest in self._digests
            stats.count("dedup_exact", bytes_in=nbytes, bytes_out=None if dup else nbytes)
            if dup:
                return "exact"
        if self._lsh is not None:
            if key.hashvalues is None:
                raise ValueError(f"{doc_id}: DedupKey made without dedup_near")
            lean = self._lean(seed=1, hashvalues=key.hashvalues, scheme=_SCHEME)
            near = any(np.mean(self._signatures[c] == key.hashvalues) >= cfg.near_threshold
                       for c in self._lsh.query(lean))
            stats.count("dedup_near", bytes_in=nbytes, bytes_out=None if near else nbytes)
            if near:
                return "near"
            self._lsh.insert(len(self._signatures), lean, check_duplication=False)
            self._signatures.append(key.hashvalues)
        if cfg.dedup_exact:
            self._digests.add(key.digest)
        return None
