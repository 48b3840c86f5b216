"""Domain text for ``vocab extend``: from a corpus card, a prepared corpus folder, or raw input files.

Tokenizer training needs text, not token ids: raw inputs and cards are read with the corpus readers
(``domainlm.documents.readers``) and cleaned like ``corpus prepare`` cleans them; a prepared folder is
decoded back to text document by document with the tokenizer it was prepared with.
"""

from __future__ import annotations

import glob
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domainlm.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class Texts:
    """Documents as text plus where they came from (for the manifest)."""

    texts: list[str]
    description: str
    source: dict[str, Any] = field(default_factory=dict)
    held_out_spec: str | None = None  # the prepared folder whose validation split is the held-out text
    held_out: Texts | None = None  # a card's held-out sample

    def describe(self) -> dict[str, Any]:
        h = hashlib.sha256()
        for t in self.texts:
            h.update(t.encode("utf-8"))
            h.update(b"\0")
        return {**self.source, "description": self.description, "documents": len(self.texts),
                "characters": sum(len(t) for t in self.texts), "text_sha256": h.hexdigest()}


def _read_files(inputs: list[str], fmt: str, text_field: str, max_documents: int | None, *, label: str,
                categories: list[str] | None = None, keep_title_only: bool = False, min_chars: int = 0) -> Texts:
    from domainlm.corpora.clean import clean_text, exact_key
    from domainlm.documents.pubmed import scan_pubmed_events
    from domainlm.documents.readers import ReaderOptions, SkipLog
    from domainlm.documents.registry import iter_documents, resolve_inputs

    skips = SkipLog()
    files = resolve_inputs(inputs, fmt, skips=skips)
    options = ReaderOptions(text_field=text_field, categories=categories, keep_title_only=keep_title_only)
    texts: list[str] = []
    seen: set[int] = set()
    # PubMed update files revise and delete baseline records, as in `corpus prepare`; exact duplicates are
    # dropped so they do not inflate word counts (near-duplicates are left: they change counts little).
    events = scan_pubmed_events(files)
    for doc, kind, _ in iter_documents(files, options, skips, pubmed_events=events):
        if kind == "protein":
            raise DataError(f"{label} holds protein sequences ({doc.metadata.get('source', doc.id)}); vocab extend "
                            "adds words to text tokenizers")
        text = clean_text(doc.text)
        where = str(doc.metadata.get("source", doc.id))
        if len(text.strip()) < max(min_chars, 1):
            skips.skip("too_short", where, "shorter than min_chars")
            continue
        key = exact_key(text)
        if key in seen:
            skips.skip("exact_duplicate", where, "same text as an earlier document")
            continue
        seen.add(key)
        texts.append(text)
        if max_documents is not None and len(texts) >= max_documents:
            break
    skipped = dict(skips.counts)
    if skipped:
        log.warning("%s: skipped records by reason: %s", label, skipped)
    return Texts(texts, f"{len(files)} file(s) from {label}",
                 {"kind": "files", "inputs": list(inputs), "files": [f.describe() for f in files], "skipped": skipped})


def _is_prepared(path: Path) -> bool:
    from domainlm.artifacts import peek_manifest

    return path.is_dir() and peek_manifest(path).get("kind") == "corpus"


def _read_prepared(path: Path, split: str, max_documents: int | None) -> Texts:
    """Decode a prepared corpus split back to one text per document.

    Blocks hold a global document index per token and a document may continue into the next block, so
    tokens are gathered per index in block order. Special tokens (the separators packing added) are
    dropped. The last document of a split may be cut short: packing drops the final partial block.
    """
    import numpy as np

    from domainlm.corpora import load_prepared, read_corpus_manifest
    from domainlm.sources.load import load_tokenizer

    manifest = read_corpus_manifest(path)
    tok_info = manifest.get("tokenizer") or {}
    spec = tok_info.get("source") or tok_info.get("name_or_path")
    if not spec:
        raise DataError(f"{path}/manifest.json does not say which tokenizer prepared the corpus ('tokenizer.source'); "
                        "prepare it again, or pass the raw input files as --corpus")
    tokenizer = load_tokenizer(spec)
    if tok_info.get("vocab_size") not in (None, len(tokenizer)):
        raise DataError(f"{path} was prepared with a tokenizer of {tok_info['vocab_size']} tokens but '{spec}' now has "
                        f"{len(tokenizer)}; pass the raw input files as --corpus instead")
    ds = load_prepared(path, split).with_format("numpy")
    docs: dict[int, list[np.ndarray]] = {}
    for start in range(0, len(ds), 1024):
        chunk = ds[start:start + 1024]
        ids, doc_ids = np.asarray(chunk["input_ids"]).ravel(), np.asarray(chunk["doc_ids"]).ravel()
        cuts = np.flatnonzero(np.diff(doc_ids)) + 1
        for seg_ids, seg_docs in zip(np.split(ids, cuts), np.split(doc_ids, cuts), strict=True):
            docs.setdefault(int(seg_docs[0]), []).append(seg_ids)
        if max_documents is not None and len(docs) > max_documents:
            break
    order = sorted(docs)[:max_documents] if max_documents is not None else sorted(docs)
    texts = [tokenizer.decode(np.concatenate(docs[d]).tolist(), skip_special_tokens=True) for d in order]
    texts = [t for t in texts if t.strip()]
    return Texts(texts, f"prepared corpus {path} ({split}, decoded with the tokenizer of {spec})",
                 {"kind": "prepared", "path": str(path), "split": split, "tokenizer": spec})


def _read_card(name: str, max_documents: int | None) -> tuple[Texts, Texts | None]:
    from domainlm.corpora.cards import card_prepare_values, heldout_inputs

    values = card_prepare_values(name)
    opts = {"categories": values.get("categories"), "keep_title_only": bool(values.get("keep_title_only")),
            "min_chars": int(values.get("min_chars", 20))}
    fmt, field_name = values.get("format", "auto"), values.get("text_field", "text")
    train = _read_files(values["inputs"], fmt, field_name, max_documents, label=f"corpus card {name}", **opts)
    train.description = f"corpus card {name} ({train.description})"
    train.source.update(kind="card", card=name)
    held_files = heldout_inputs(name)
    held = None
    if held_files:
        held = _read_files(held_files, fmt, field_name, None, label=f"held-out files of card {name}", **opts)
        held.description = f"held-out sample of corpus card {name}"
        held.source.update(kind="card", card=name, split="held_out")
    return train, held


def read_texts(spec: str, *, fmt: str = "auto", text_field: str = "text", max_documents: int | None = None) -> Texts:
    """The corpus named by ``spec``: a prepared folder, input files/folders/globs, or a corpus card name."""
    path = Path(spec).expanduser()
    if _is_prepared(path):
        texts = _read_prepared(path, "train", max_documents)
        texts.held_out_spec = str(path)
    elif path.exists() or glob.has_magic(spec):
        texts = _read_files([spec], fmt, text_field, max_documents, label=spec)
    else:
        try:
            texts, held = _read_card(spec, max_documents)
        except ConfigError as exc:
            if "unknown corpus card" not in str(exc):
                raise
            raise ConfigError([f"corpus '{spec}' is not a file, folder, glob or prepared corpus, and "
                               + "; ".join(exc.problems)]) from None
        texts.held_out = held
    if not texts.texts:
        raise DataError(f"no text found in {spec}: {texts.description} gave no documents")
    return texts


def read_held_out(spec: str | None, corpus: Texts, *, fmt: str = "auto", text_field: str = "text") -> Texts:
    """Held-out domain text for the before/after report: ``spec``, else the corpus's own held-out part."""
    if spec is not None:
        path = Path(spec).expanduser()
        if _is_prepared(path):
            return _read_prepared(path, "validation", None)
        if path.exists() or glob.has_magic(spec):
            return read_texts(spec, fmt=fmt, text_field=text_field)
        _, held = _read_card(spec, 1)  # a card name: its held-out files
        if held is None or not held.texts:
            raise ConfigError([f"'held_out': corpus card '{spec}' lists no held-out files; pass a file or folder"])
        return held
    if corpus.held_out is not None and corpus.held_out.texts:
        return corpus.held_out
    if corpus.held_out_spec:
        held = _read_prepared(Path(corpus.held_out_spec), "validation", None)
        if held.texts:
            return held
    raise ConfigError([f"no held-out domain text for the fragmentation report: {corpus.description} has none; pass "
                       "--held-out with a file or folder of domain text the corpus does not contain"])
