"""The options of the ``domainlm corpus`` verbs: prepare (:class:`PrepareConfig`), stats and download.

They sit on their own floor so that corpus cards (which validate their ``prepare:`` mapping against
:class:`PrepareConfig`) and the prepare run both import them without importing each other."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from domainlm.config import at_least, opt

Executor = Literal["local", "slurm", "ray"]


@dataclass
class PrepareConfig:
    """Options of ``domainlm corpus prepare`` (a recipe YAML may set any of them)."""

    inputs: list[str] = opt(factory=list, help="files, folders or globs to read, in order (.gz read transparently; "
                                               "PubMed update files go after the baseline)")
    # A str, not a Literal of the built-ins, so that a reader added with register_reader can be named.
    format: str = opt("auto", "input format: auto (decided per file from its content and name), pubmed-xml, "
                              "medline, arxiv, text (a document per line), paragraphs (documents separated by "
                              "blank lines), jsonl, csv, txt-folder, fasta, swissprot, or a registered reader")
    text_field: str = opt("text", "JSONL key / CSV column holding the text")
    id_field: str | None = opt(None, "JSONL key / CSV column holding a document id (default: 'id' when present, "
                                     "else a hash of the text)")
    categories: list[str] | None = opt(None, "arXiv categories to keep (globs allowed), e.g. cond-mat.mtrl-sci")
    model: str = opt("", "base model whose tokenizer packs the corpus (a folder, Hub id, minilm, smollm2, tiny-*)")
    block_size: int = opt(256, "tokens per packed block (training sequence length)")
    out: str = opt("", "output folder")
    validation_fraction: float = opt(0.05, "share of documents held out for validation, chosen by a hash of the "
                                           "document id (stable when files are added)")
    unicode_form: Literal["NFC", "NFKC", "none"] = opt("NFC", "Unicode normalisation; NFKC would turn x² into x2")
    detokenize: bool = opt(False, "undo word tokenisation in text taken from NER/CoNLL corpora (spaces around "
                                  "punctuation, split hyphens and slashes: 'IL - 2 ( 10 ng / ml )' -> 'IL-2 (10 "
                                  "ng/ml)'); a model trained on the spaced form learns the spacing "
                                  "(experiments/DAPT_BIOMED.md)")
    reading_comprehension: bool = opt(False, "follow each document with question/answer tasks mined from it "
                                              "alone (title, definitions, cause/effect/contrast, keywords, "
                                              "completion; AdaptLLM): keeps a chat model promptable while it learns "
                                              "the field (domainlm/corpora/comprehension.py)")
    reading_comprehension_layout: Literal["auto", "chat", "plain"] = opt(
        "auto", "how the mined tasks are written: chat (the model's chat template), plain ('Question: ... Answer: "
                "...'), or auto (chat when the tokenizer has a template)")
    min_chars: int = opt(20, "drop text documents shorter than this many characters (after cleaning)")
    max_chars: int | None = opt(None, "drop text documents longer than this many characters")
    keep_title_only: bool = opt(False, "keep PubMed records that have a title but no abstract (counted as "
                                       "no_abstract and dropped by default, as BioGPT and PubMedBERT did)")
    dedup: bool = opt(True, "drop exact duplicates (64-bit hash of the cleaned text; the first one is kept)")
    near_dup: bool = opt(True, "drop near-duplicates with datatrove's on-disk MinHash stages (word trigrams / "
                               "residue 5-mers); memory is bounded by the task size, not the corpus")
    near_dup_threshold: float = opt(0.8, "Jaccard similarity the LSH bands are tuned for (bands and rows chosen "
                                         "as datasketch does: fewest false positives plus false negatives)")
    near_dup_num_perm: int = opt(128, "MinHash permutations (bands x rows use at most this many)")
    decontaminate: list[str] = opt(factory=list, help="bench suites (biomed, general, ...) or files whose test texts "
                                                      "must not appear in training: a document sharing an n-gram "
                                                      "with any of them is dropped (counted, with examples)")
    decontaminate_ngram: int = opt(13, "n-gram length (words) for --decontaminate (13, as GPT-3 and datatrove)")
    min_length: int = opt(20, "proteins: drop sequences with fewer residues")
    max_length: int | None = opt(None, "proteins: drop sequences with more residues (long ones are otherwise "
                                       "continued across blocks)")
    ambiguous: Literal["keep", "to-x", "drop"] = opt("keep", "proteins: U/O/B/Z/J/X residues: keep them, rewrite "
                                                               "them to X (ProtTrans), or drop the sequence")
    shard_size: int = opt(20000, "kept documents per documents/ file (each task writes its own files; blocks go to "
                                 "one train/ and one validation/ file per task)")
    executor: Executor = opt("local", "where the datatrove stages run: local (processes on this machine), slurm "
                                      "(sbatch jobs; needs --partition) or ray (the cluster ray.init() reaches; "
                                      "pip install 'domainlm[ray]')")
    tasks: int | None = opt(None, "datatrove tasks per stage; each reads a contiguous run of input files (default: "
                                  "one per CPU up to 8, at most one per file; 1 for inputs under 4 MB)")
    workers: int | None = opt(None, "tasks running at once (default: all of them, at most one per CPU)")
    partition: str | None = opt(None, "slurm: the partition to submit to")
    time: str = opt("12:00:00", "slurm: the time limit of each job (sbatch --time)")
    overwrite: bool = opt(False, "replace an existing prepared folder made with different settings")
    card: str | None = opt(None, "a corpus card (corpora/<name>.yaml) whose prepare: settings fill in every option "
                                 "left at its default")

    def problems(self) -> list[str]:
        out = []
        if not self.inputs and not self.card:
            out.append("'inputs' is empty: name files, folders or globs to read (or a corpus card with 'card')")
        out += at_least(self, block_size=8, near_dup_num_perm=16, tasks=1, workers=1)
        if not 0 <= self.validation_fraction < 1:
            out.append(f"'validation_fraction' must be in [0, 1), got {self.validation_fraction}")
        if self.min_chars < 0 or self.min_length < 0:
            out.append("'min_chars' and 'min_length' cannot be negative")
        if self.max_chars is not None and self.max_chars <= self.min_chars:
            out.append(f"'max_chars' ({self.max_chars}) must be larger than 'min_chars' ({self.min_chars})")
        if self.max_length is not None and self.max_length <= self.min_length:
            out.append(f"'max_length' ({self.max_length}) must be larger than 'min_length' ({self.min_length})")
        if not 0 < self.near_dup_threshold < 1:
            out.append(f"'near_dup_threshold' must be between 0 and 1, got {self.near_dup_threshold}")
        if self.decontaminate_ngram < 5:
            out.append(f"'decontaminate_ngram' must be at least 5 words, got {self.decontaminate_ngram}")
        if self.shard_size < 1:
            out.append(f"'shard_size' must be positive, got {self.shard_size}")
        if self.executor == "slurm" and not self.partition:
            out.append("--executor slurm needs --partition (the slurm partition to submit the jobs to)")
        if self.executor != "slurm" and self.partition:
            out.append(f"'partition' is a slurm setting, but 'executor' is '{self.executor}'")
        if self.format != "auto":
            # Imported here, not at the top: the registry loads every reader (and Bio), which `--help` need not.
            from domainlm.documents.registry import reader_names
            from domainlm.errors import did_you_mean

            if self.format not in reader_names():
                out.append(f"unknown 'format' '{self.format}'{did_you_mean(self.format, reader_names())}; known: "
                           f"auto, {', '.join(reader_names())} (or add one with register_reader)")
        if self.categories and self.format not in ("auto", "arxiv"):
            out.append(f"'categories' filters arXiv metadata, but 'format' is '{self.format}'")
        if self.reading_comprehension_layout != "auto" and not self.reading_comprehension:
            out.append(f"'reading_comprehension_layout' is '{self.reading_comprehension_layout}' but "
                       "'reading_comprehension' is off; turn it on (--reading-comprehension) or drop the layout")
        if not self.text_field:
            out.append("'text_field' cannot be empty")
        return out


@dataclass
class StatsConfig:
    """Options of ``domainlm corpus stats``."""

    corpus: str = opt("", "a prepared corpus folder, a corpus card name, or input files/folders/globs "
                          "(comma-separated)")
    model: str | None = opt(None, "tokenizer for token counts and fragmentation (default: the tokenizer the "
                                  "corpus was prepared with)")
    general: str | None = opt("general-english-sample", "general-language reference (card name or files) that "
                                                        "frequent terms are contrasted with; 'none' ranks by "
                                                        "frequency alone")
    out: str | None = opt(None, "folder for stats.json and length_histogram.png (default: CORPUS/stats for a "
                                "prepared folder, else ./corpus-stats)")
    format: str = opt("auto", "input format when CORPUS names raw files (see corpus prepare --format)")
    text_field: str = opt("text", "JSONL key / CSV column with the text, for raw files")
    top_k: int = opt(30, "how many terms and worst-split words to list")
    min_count: int = opt(5, "a word must occur this often to be listed")
    max_documents: int = opt(20000, "documents read for terms and fragmentation (the first N)")

    def problems(self) -> list[str]:
        out = []
        if not self.corpus:
            out.append("'corpus' is required: a prepared folder, a card name or input files")
        if self.top_k < 1 or self.min_count < 1 or self.max_documents < 1:
            out.append("'top_k', 'min_count' and 'max_documents' must be positive")
        return out


Source = Literal["pubmed-baseline", "pubmed-updates", "uniprot-sprot"]


@dataclass
class DownloadConfig:
    """Options of ``domainlm corpus download``."""

    source: Source = opt(help="what to download: pubmed-baseline, pubmed-updates or uniprot-sprot")
    out: str | None = opt(None, "folder to download into (default: $DOMAINLM_DATA/<source>, where the corpus "
                                "cards look; DOMAINLM_DATA defaults to ~/.cache/domainlm/data)")
    base_url: str | None = opt(None, "server folder to download from (default: NCBI's or UniProt's; tests point "
                                     "it at a local server)")
    files: list[str] | None = opt(None, "file names to fetch (default: every matching file the server lists)")
    limit: int | None = opt(None, "fetch only the first N files, in name order")
    retries: int = opt(3, "attempts per file after the first one (transfers resume where they stopped)")
    retry_wait: float = opt(2.0, "seconds before the first retry; doubled each time")
    timeout: float = opt(60.0, "seconds without data before a connection is given up")
    verify_existing: bool = opt(False, "re-check the md5 of files that are already downloaded")

    def problems(self) -> list[str]:
        out = []
        if self.limit is not None and self.limit < 1:
            out.append(f"'limit' must be positive, got {self.limit}")
        if self.retries < 0:
            out.append(f"'retries' cannot be negative, got {self.retries}")
        if self.base_url is not None and not re.match(r"^(https?|file)://", self.base_url):
            out.append(f"'base_url' must be an http(s):// or file:// URL, got {self.base_url!r}")
        return out
