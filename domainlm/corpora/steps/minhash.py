"""Near-duplicates in ``corpus prepare``: datatrove's MinHash stages with our shingles. Stage 1 is
:class:`Signature` (batched, same bytes on disk as datatrove's); buckets and clusters are datatrove's own stages."""

from __future__ import annotations

import numpy as np
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.hashing import HashConfig

from domainlm.corpora.steps.base import Whitespace


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) for a MinHash LSH tuned to ``threshold``: datasketch's rule (minimise the
    false-positive plus false-negative areas under the S-curve), computed here so the LSH needs no
    datasketch. datatrove's own default (14 bands x 8 rows) is tuned for ~0.72 on web 5-grams."""
    s = np.linspace(0.0, 1.0, 401)
    below, above = s <= threshold, s >= threshold
    best, best_err = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            p = 1.0 - (1.0 - s**r) ** b
            fp = np.trapezoid(p[below], s[below])
            fn = np.trapezoid(1.0 - p[above], s[above])
            if fp + fn < best_err:
                best, best_err = (b, r), fp + fn
    return best


def minhash_config(threshold: float, num_perm: int) -> MinhashConfig:
    bands, rows = lsh_bands(threshold, num_perm)
    # 32-bit signature values: our shingle hashes are 32-bit, and it halves the signature files.
    return MinhashConfig(n_grams=1, num_buckets=bands, hashes_per_bucket=rows, seed=1,
                         hash_config=HashConfig(precision=32))


def mod_mersenne61(x: np.ndarray) -> np.ndarray:
    """``x % (2**61 - 1)`` in place on a uint64 array, as (x & p) + (x >> 61), less p when that reaches p: integer
    division is the slowest step of the MinHash permutation, these are a few cheap passes (same values)."""
    p = np.uint64((1 << 61) - 1)
    high = x >> np.uint64(61)
    x &= p
    x += high
    np.subtract(x, p, out=high)  # wraps above x unless x >= p, so the minimum is the reduced value
    np.minimum(x, high, out=x)
    return x


class Signature(MinhashDedupSignature):
    """datatrove's MinHash stage 1, shingling as before: lower-cased word trigrams, residue 5-mers for proteins
    (datatrove's shingles are word n-grams of one language, which would make every protein one shingle)."""

    def __init__(self, output_folder: str, config: MinhashConfig) -> None:
        super().__init__(output_folder, config=config, language=Whitespace())

    # Shingles per batch: the permuted hashes of a batch are (shingles x bands*rows) uint64, ~4 MB at 128
    # permutations (measured: a batch that fits the cache is faster than a bigger one).
    BATCH_SHINGLES = 1 << 12

    def run(self, data, rank: int = 0, world_size: int = 1):
        """datatrove's stage 1 with the same bytes on disk, batched: datatrove permutes each document's shingles
        and writes one ``struct.pack`` per band and document; here the permutation and minimum run over many
        documents at once (``np.minimum.reduceat``) and each band gets one write per batch. datatrove's own
        ``run`` then sorts and verifies the band files (it skips writing when they already hold whole records)."""
        from datatrove.utils.typeshelper import StatHints

        from domainlm.corpora.clean import shingle_hashes

        cfg = self.config
        rows = cfg.hashes_per_bucket
        dtype = np.dtype([(f"field{i + 1}", f"<{cfg.hash_config.struct_format}") for i in range(rows)]
                         + [(f"field{rows + 1}", "<I")])
        a, b = self.parameters
        with self.track_time():
            buckets = [self.output_folder.open(f"bucket_{bi:03d}/{rank:05d}.minhash.sig", mode="wb")
                       for bi in range(cfg.num_buckets)]
            shingles: list[np.ndarray] = []
            indices: list[int] = []
            pending = 0

            def flush() -> None:
                starts = np.cumsum([0] + [len(s) for s in shingles[:-1]])
                # (x * a + b) % p as datatrove computes it: the product wraps at 2^64, then the Mersenne modulo.
                phv = np.concatenate(shingles).reshape(-1, 1) * a
                phv += b
                mod_mersenne61(phv)
                if cfg.hash_config.precision == 32:
                    phv &= np.uint64(cfg.hash_config.max)
                sig = np.minimum.reduceat(phv, starts, axis=0).astype(cfg.hash_config.np_dtype)
                rec = np.empty(len(indices), dtype=dtype)
                rec[f"field{rows + 1}"] = indices
                for bi, fh in enumerate(buckets):
                    for j in range(rows):
                        rec[f"field{j + 1}"] = sig[:, bi * rows + j]
                    fh.write(rec.tobytes())
                shingles.clear()
                indices.clear()

            for doc_idx, doc in enumerate(data):
                self.stat_update(StatHints.total)
                sh = shingle_hashes(doc.text, doc.metadata.get("kind", "text")).astype(np.uint64)
                if sh.size == 0:
                    continue
                shingles.append(sh)
                indices.append(doc_idx)
                pending += sh.size
                if pending >= self.BATCH_SHINGLES:
                    flush()
                    pending = 0
            if indices:
                flush()
            for fh in buckets:
                fh.close()
        self.skip_existing_sigs = True  # the files are complete: datatrove's run only sorts and verifies them
        try:
            super().run(iter(()), rank, world_size)
        finally:
            self.skip_existing_sigs = False
