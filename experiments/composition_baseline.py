"""Composition-only baseline for the protein ``property`` task: ridge regression on amino-acid
counts (fractions) and length, the same probe family bench uses, scored by Spearman rho.

    python experiments/composition_baseline.py [TRAIN.fasta TEST.fasta]

A property task that this baseline already solves cannot tell a protein model from a random one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.linear_model import RidgeCV

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "protein"
AA = "ACDEFGHIKLMNPQRSTVWY"


def read(path: Path) -> tuple[list[str], np.ndarray]:
    seqs, labels = [], []
    for block in path.read_text().split(">")[1:]:
        head, *body = block.strip().splitlines()
        seqs.append("".join(body))
        labels.append(float(head.split("|")[-1]))
    return seqs, np.array(labels)


def features(seqs: list[str]) -> np.ndarray:
    return np.array([[s.count(a) / len(s) for a in AA] + [len(s) / 100] for s in seqs])


def main() -> None:
    train, test = (Path(a) for a in sys.argv[1:3]) if len(sys.argv) == 3 else (
        SUITE / "data/property/train.fasta", SUITE / "data/property/test.fasta")
    (xs, y), (xt, yt) = read(train), read(test)
    ridge = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(features(xs), y)
    rho = spearmanr(ridge.predict(features(xt)), yt).statistic
    rng = np.random.default_rng(0)
    pred = ridge.predict(features(xt))
    boot = [spearmanr(pred[i], yt[i]).statistic for i in (rng.integers(0, len(yt), len(yt)) for _ in range(1000))]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    print(f"composition-only ridge: Spearman rho {rho:.3f} [{lo:.3f}, {hi:.3f}] on {len(yt)} test sequences")


if __name__ == "__main__":
    main()
