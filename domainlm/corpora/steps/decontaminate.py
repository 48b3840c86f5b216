"""Test-set decontamination in ``corpus prepare --decontaminate``: datatrove's n-gram index of the bench suites'
test texts (:func:`build_decont_index`) and its filter (:class:`Decontaminate`), asked per document by the read
stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datatrove.pipeline.decont.n_grams import NGramsDecontConfig, NGramsDecontFilter
from datatrove.utils.hashing import HashConfig

from domainlm.corpora.steps.base import Whitespace


def decont_config(n: int) -> NGramsDecontConfig:
    # sha1, not datatrove's default xxhash: the filter hashes str n-grams, and xxhash >= 3.6 accepts only bytes.
    return NGramsDecontConfig(n_grams=n, find_query_ngrams=True, find_overlap_ngrams=False,
                              hash_config=HashConfig(precision=64, hash_fc="sha1"))


def build_decont_index(folder: Path, sources: dict[str, list[str]], n: int) -> dict[str, int]:
    """Write datatrove's decontamination index (``<task>.index.hashes``) for each named list of test texts;
    returns the number of distinct n-grams per task. Texts shorter than n words cannot match and add none."""
    from datatrove.utils.text import ngrams, simplify_text

    cfg = decont_config(n)
    probe = NGramsDecontFilter(str(folder), config=cfg, language=Whitespace())
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for task, texts in sources.items():
        hashes = set()
        for text in texts:
            words = probe.tokenizer.word_tokenize(simplify_text(text, cfg.norm_config))
            hashes.update(probe.hash_func(" ".join(g)) for g in ngrams(words, n))
        arr = np.array(sorted(hashes), dtype=cfg.hash_config.np_descr)
        with open(folder / f"{task.replace(' ', '_').replace('/', '_')}.index.hashes", "wb") as fh:
            arr.tofile(fh)
        sizes[task] = len(arr)
    return sizes


class Decontaminate(NGramsDecontFilter):
    """datatrove's n-gram decontamination filter, asked per document by the read stage (``filter``); the documents
    it flags are dropped and counted by task at packing."""

    def __init__(self, index_folder: str, n: int, work: str) -> None:
        super().__init__(index_folder, config=decont_config(n), language=Whitespace())
        self.work = work
