"""The schema of ``domainlm vocab extend``: every recipe key is a field here."""

from __future__ import annotations

from dataclasses import dataclass

from domainlm.config import opt


@dataclass
class ExtendConfig:
    model: str = opt(help="base model: local folder, packaged name (smollm2, minilm), tiny-* or a Hub id")
    corpus: str = opt(help="domain text: a corpus card name (e.g. pubmed-sample), a prepared corpus folder (its "
                      "documents are decoded back to text), or a raw input file, folder or glob")
    add: int = opt(help="how many domain words to add to the base vocabulary")
    out: str = opt("runs/vocab", "output folder: extended model + tokenizer + manifest.json, usable as adapt's model")
    held_out: str | None = opt(None, "held-out domain text for the fragmentation report (a file, folder, glob or "
                               "card name); default: the card's held-out sample, or the prepared "
                               "corpus's validation split")
    format: str = opt("auto", "input format of raw corpus/held_out files (see `domainlm corpus prepare --help`)")
    text_field: str = opt("text", "JSONL/CSV field holding the text of raw inputs")
    domain_vocab_size: int = opt(32000, "vocabulary size of the domain tokenizer trained on the corpus; ~30k is the "
                                 "size of SciBERT's and PubMedBERT's domain vocabularies")
    min_frequency: int = opt(5, "a word must occur this often in the corpus to be added: rarer words get too few "
                             "gradient updates to learn a useful embedding")
    max_documents: int | None = opt(None, "read at most this many corpus documents (null: all; the text is held "
                                    "in memory, so cap it for corpora of many GB)")
    overwrite: bool = opt(False, "replace an existing output folder")
    allow_pickle: bool = opt(False, "allow loading pickle (.bin) weights; pickle can execute code")
    trust_remote_code: bool = opt(False, "allow model code from the model folder to run")

    def problems(self) -> list[str]:
        out = []
        if self.add < 1:
            out.append(f"'add' must be at least 1, got {self.add}")
        if self.min_frequency < 1:
            out.append(f"'min_frequency' must be at least 1, got {self.min_frequency}")
        if self.domain_vocab_size < 100:
            out.append(f"'domain_vocab_size' must be at least 100, got {self.domain_vocab_size}")
        if self.max_documents is not None and self.max_documents < 1:
            out.append(f"'max_documents' must be at least 1, got {self.max_documents}")
        if not self.corpus:
            out.append("'corpus' is empty: name a corpus card, a prepared corpus folder or input files")
        return out
