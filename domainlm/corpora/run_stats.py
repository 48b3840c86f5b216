"""How ``domainlm corpus stats`` describes a corpus: size, length histogram, frequent domain terms and tokenizer fragmentation.

Fragmentation is the evidence for extending a vocabulary: how many subword pieces a tokenizer spends
per word of the corpus, and which frequent words it splits worst. :func:`fragmentation` is the one
implementation (the vocabulary command imports it).
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from domainlm.corpora.config import StatsConfig
from domainlm.errors import ConfigError

log = logging.getLogger(__name__)

# A word: letters/digits with inner hyphens or apostrophes ("interleukin-6", "Crohn's"); it must hold a
# letter, so numbers and p-values are not "terms".
WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")
_HAS_LETTER = re.compile(r"[^\W\d_]")


# --------------------------------------------------------------------------------------------------
# Fragmentation
# --------------------------------------------------------------------------------------------------

def _backend(tokenizer):
    """A copy of the fast backend without truncation or padding (MiniLM's would cut texts at 128)."""
    from tokenizers import Tokenizer

    if isinstance(tokenizer, Tokenizer):
        tk = Tokenizer.from_str(tokenizer.to_str())
    elif getattr(tokenizer, "is_fast", False):
        tk = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    else:
        return None
    tk.no_truncation()
    tk.no_padding()
    return tk


def fragmentation(tokenizer, texts, *, top_k: int = 30, min_count: int = 5) -> dict[str, Any]:
    """How finely ``tokenizer`` splits the words of ``texts``.

    Each word (letters/digits with inner hyphens, holding at least one letter) is matched to the tokens
    whose character offsets overlap it, in context, so byte-level BPE's leading-space pieces and
    WordPiece's ``##`` continuations are both counted as the tokenizer really produces them.

    Args:
        tokenizer: a Hugging Face tokenizer (fast ones are read through their offsets; slow ones word by
            word) or a ``tokenizers.Tokenizer``.
        texts: an iterable of strings.
        top_k: how many words to list in ``worst`` and ``costliest``.
        min_count: minimum occurrences for a word to be listed.

    Returns:
        ``words`` (occurrences), ``unique_words``, ``pieces`` (tokens over all words),
        ``pieces_per_word``, ``split_fraction`` (share of occurrences cut into 2+ pieces),
        ``unk_fraction`` (share of occurrences containing the unknown token), ``worst`` (frequent words
        with the most pieces: word, count, pieces, tokens) and ``costliest`` (frequent words ranked by
        the extra tokens they cost the corpus, ``count * (pieces - 1)``).
    """
    backend = _backend(tokenizer)
    counts: Counter[str] = Counter()
    pieces_of: dict[str, int] = {}
    tokens_of: dict[str, list[str]] = {}
    unk_words: set[str] = set()
    unk_token = getattr(tokenizer, "unk_token", None)
    total_words = total_pieces = split_words = unk_occurrences = 0
    batch: list[str] = []

    def consume(batch_texts: list[str]) -> None:
        nonlocal total_words, total_pieces, split_words, unk_occurrences
        if backend is not None:
            encodings = backend.encode_batch(batch_texts, add_special_tokens=False)
        for k, text in enumerate(batch_texts):
            spans = [(m.start(), m.end(), m.group()) for m in WORD.finditer(text) if _HAS_LETTER.search(m.group())]
            if not spans:
                continue
            if backend is not None:
                enc = encodings[k]
                offsets, toks = enc.offsets, enc.tokens
                t = 0
                for s, e, word in spans:
                    while t < len(offsets) and offsets[t][1] <= s:
                        t += 1
                    u, pieces = t, []
                    while u < len(offsets) and offsets[u][0] < e:
                        if offsets[u][1] > offsets[u][0]:
                            pieces.append(toks[u])
                        u += 1
                    _count(word, pieces)
            else:
                for _, _, word in spans:
                    if word not in tokens_of:
                        tokens_of[word] = list(tokenizer.tokenize(" " + word if _leading_space(tokenizer)
                                                                  else word))
                    _count(word, tokens_of[word])

    def _count(word: str, pieces: list[str]) -> None:
        nonlocal total_words, total_pieces, split_words, unk_occurrences
        n = max(1, len(pieces))
        counts[word] += 1
        total_words += 1
        total_pieces += n
        split_words += n > 1
        if word not in pieces_of:
            pieces_of[word] = n
            tokens_of[word] = pieces
            if unk_token is not None and unk_token in pieces:
                unk_words.add(word)
        if word in unk_words:
            unk_occurrences += 1

    for text in texts:
        batch.append(text)
        if len(batch) >= 256:
            consume(batch)
            batch = []
    if batch:
        consume(batch)
    frequent = [w for w, c in counts.items() if c >= min_count]
    worst = sorted(frequent, key=lambda w: (-pieces_of[w], -counts[w], w))[:top_k]
    costliest = sorted(frequent, key=lambda w: (-counts[w] * (pieces_of[w] - 1), w))[:top_k]

    def row(w: str) -> dict[str, Any]:
        return {"word": w, "count": counts[w], "pieces": pieces_of[w], "tokens": tokens_of[w]}

    return {
        "tokenizer": getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__,
        "words": total_words,
        "unique_words": len(counts),
        "pieces": total_pieces,
        "pieces_per_word": round(total_pieces / total_words, 4) if total_words else None,
        "split_fraction": round(split_words / total_words, 4) if total_words else None,
        "unk_fraction": round(unk_occurrences / total_words, 6) if total_words else None,
        "worst": [row(w) for w in worst],
        "costliest": [dict(row(w), extra_tokens=counts[w] * (pieces_of[w] - 1)) for w in costliest
                      if pieces_of[w] > 1],
    }


def _leading_space(tokenizer) -> bool:
    return bool(getattr(tokenizer, "add_prefix_space", False))


# --------------------------------------------------------------------------------------------------
# Terms
# --------------------------------------------------------------------------------------------------

def word_counts(texts) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w.lower() for w in WORD.findall(text) if _HAS_LETTER.search(w))
    return counts


def domain_terms(domain: Counter[str], general: Counter[str] | None, *, top_k: int, min_count: int
                 ) -> list[dict[str, Any]]:
    """Frequent words of the domain, ranked by keyness against general text when it is available.

    Keyness is Dunning's log-likelihood ratio (G2) of a word's frequency in the domain sample against the
    general sample, kept only for words relatively more frequent in the domain; without a reference,
    words are ranked by frequency with English stop words removed (scikit-learn's list).
    """
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    n_dom = sum(domain.values()) or 1
    candidates = [w for w, c in domain.items() if c >= min_count and len(w) > 2 and w not in ENGLISH_STOP_WORDS]
    rows = []
    if general:
        n_gen = sum(general.values())
        for w in candidates:
            a, b = domain[w], general.get(w, 0)
            if a / n_dom <= b / n_gen:
                continue
            e1 = n_dom * (a + b) / (n_dom + n_gen)
            e2 = n_gen * (a + b) / (n_dom + n_gen)
            g2 = 2 * (a * math.log(a / e1) + (b * math.log(b / e2) if b else 0.0))
            rows.append({"term": w, "count": a, "per_million": round(1e6 * a / n_dom, 1), "general_count": b,
                         "keyness": round(g2, 2)})
        rows.sort(key=lambda r: (-r["keyness"], r["term"]))
    else:
        rows = [{"term": w, "count": domain[w], "per_million": round(1e6 * domain[w] / n_dom, 1)} for w in candidates]
        rows.sort(key=lambda r: (-r["count"], r["term"]))
    return rows[:top_k]


# --------------------------------------------------------------------------------------------------
# The verb
# --------------------------------------------------------------------------------------------------

def _read_texts(inputs: list[str], fmt: str, options, limit: int) -> tuple[list[str], str]:
    from domainlm.corpora.clean import clean_text
    from domainlm.documents.readers import SkipLog
    from domainlm.documents.registry import iter_documents, resolve_inputs

    files = resolve_inputs(inputs, fmt)
    kind = "protein" if all(f.format in ("fasta", "swissprot") for f in files) else "text"
    texts: list[str] = []
    skips = SkipLog()
    for doc, doc_kind, _ in iter_documents(files, options, skips):
        texts.append(doc.text if doc_kind == "protein" else clean_text(doc.text))
        if len(texts) >= limit:
            break
    return texts, kind


def _source(config: StatsConfig) -> dict[str, Any]:
    """Work out what CORPUS names: a prepared folder, a card, or raw inputs."""
    from domainlm.documents.readers import ReaderOptions

    path = Path(config.corpus).expanduser()
    if (path / "manifest.json").is_file():
        from domainlm.corpora.pack import read_corpus_manifest

        manifest = read_corpus_manifest(path)
        cfg = manifest.get("config", {})
        return {"kind": "prepared", "folder": path, "manifest": manifest,
                "inputs": [i["path"] for i in manifest.get("inputs", [])], "format": cfg.get("format", "auto"),
                "options": ReaderOptions(text_field=cfg.get("text_field", "text"), id_field=cfg.get("id_field"),
                                         categories=cfg.get("categories"), ambiguous=cfg.get("ambiguous", "keep"),
                                         keep_title_only=cfg.get("keep_title_only", False)),
                "model": cfg.get("model")}
    if path.is_dir() or path.is_file() or "," in config.corpus or any(ch in config.corpus for ch in "*?["):
        return {"kind": "raw", "inputs": [p for p in config.corpus.split(",") if p], "format": config.format,
                "options": ReaderOptions(text_field=config.text_field), "model": None}
    from domainlm.corpora.cards import card_prepare_values

    values = card_prepare_values(config.corpus)
    return {"kind": "card", "inputs": values["inputs"], "format": values.get("format", "auto"),
            "options": ReaderOptions(text_field=values.get("text_field", "text"), id_field=values.get("id_field"),
                                     categories=values.get("categories"), ambiguous=values.get("ambiguous", "keep"),
                                     keep_title_only=values.get("keep_title_only", False)),
            "model": None}


def _histogram_png(lengths: list[int], unit: str, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(lengths, bins=min(50, max(5, len(set(lengths)))), color="#4477aa")
    ax.set_xlabel(f"document length ({unit})")
    ax.set_ylabel("documents")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _quantiles(values: list[int]) -> dict[str, float]:
    import numpy as np

    if not values:
        return {}
    a = np.asarray(values)
    return {"min": int(a.min()), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "max": int(a.max()), "mean": round(float(a.mean()), 2)}


def run(config: StatsConfig) -> dict[str, Any]:
    from domainlm.artifacts import atomic_write_bytes, atomic_write_json

    src = _source(config)
    model = config.model or src["model"]
    out = Path(config.out) if config.out else (src["folder"] / "stats" if src["kind"] == "prepared"
                                               else Path("corpus-stats"))
    texts, kind = [], "text"
    if src["inputs"]:
        try:
            texts, kind = _read_texts(src["inputs"], src["format"], src["options"], config.max_documents)
        except ConfigError as exc:
            if src["kind"] != "prepared":
                raise
            # The prepared folder outlived its inputs: sizes and lengths still come from the folder.
            log.warning("the inputs of %s are gone (%s); terms and fragmentation are skipped", config.corpus, exc)
    if src["kind"] == "prepared" and src["manifest"].get("content") == "protein":
        kind = "protein"
    if not texts and src["kind"] != "prepared":
        raise ConfigError([f"'corpus': no documents could be read from {config.corpus}"])
    tokenizer = None
    if model:
        from domainlm.sources.load import load_tokenizer

        tokenizer = load_tokenizer(model)
    result: dict[str, Any] = {"corpus": str(config.corpus), "source": src["kind"], "content": kind,
                              "sampled_documents": len(texts)}
    if src["kind"] == "prepared":
        from domainlm.corpora.pack import load_documents

        manifest = src["manifest"]
        docs = load_documents(src["folder"])
        lengths = [int(x) for x in docs["tokens"]]
        result.update(documents=manifest["counts"]["documents"], tokens=manifest["counts"]["tokens"],
                      splits=manifest.get("splits"), drops=manifest["counts"].get("drops"))
        unit = "tokens"
    elif tokenizer is not None:
        backend = _backend(tokenizer)
        if backend is not None:
            lengths = [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]
        else:
            lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        result.update(documents=len(texts), tokens=sum(lengths))
        unit = "tokens"
    else:
        lengths = [len(t) if kind == "protein" else len(t.split()) for t in texts]
        result.update(documents=len(texts), words=sum(lengths))
        unit = "residues" if kind == "protein" else "words"
    result["length"] = {"unit": unit, **_quantiles(lengths)}
    if kind == "protein":
        residues = Counter("".join(texts))
        total = sum(residues.values()) or 1
        result["residues"] = {r: round(n / total, 5) for r, n in residues.most_common()}
    else:
        general_counts = None
        if config.general and config.general.lower() != "none":
            try:
                gsrc = _source(StatsConfig(corpus=config.general))
                gtexts, _ = _read_texts(gsrc["inputs"], gsrc["format"], gsrc["options"], config.max_documents)
                general_counts = word_counts(gtexts)
            except ConfigError as exc:
                log.warning("no general reference for domain terms (%s); ranking by frequency", exc)
        result["terms"] = domain_terms(word_counts(texts), general_counts, top_k=config.top_k,
                                       min_count=config.min_count)
        result["terms_reference"] = config.general if general_counts else None
        if tokenizer is not None:
            result["fragmentation"] = fragmentation(tokenizer, texts, top_k=config.top_k, min_count=config.min_count)
    out.mkdir(parents=True, exist_ok=True)
    if lengths:
        atomic_write_bytes(out / "length_histogram.png",
                           _histogram_png(lengths, unit, f"{config.corpus}: {len(lengths)} documents"))
        result["histogram"] = str(out / "length_histogram.png")
    atomic_write_json(out / "stats.json", result)
    _print_summary(result)
    return result


def _print_summary(r: dict[str, Any]) -> None:
    lines = [f"corpus: {r['corpus']} ({r['source']}, {r['content']})"]
    size = ", ".join(f"{k} {r[k]:,}" for k in ("documents", "tokens", "words") if k in r)
    lines.append(f"size: {size}")
    ln = r.get("length", {})
    if ln.get("p50") is not None:
        lines.append(f"length ({ln['unit']}): median {ln['p50']:.0f}, p90 {ln['p90']:.0f}, max {ln['max']}")
    if r.get("terms"):
        lines.append("frequent domain terms: " + ", ".join(t["term"] for t in r["terms"][:15]))
    frag = r.get("fragmentation")
    if frag and frag.get("words"):
        lines.append(f"fragmentation: {frag['pieces_per_word']:.2f} pieces per word, "
                     f"{100 * frag['split_fraction']:.1f}% of words split")
        if frag["worst"]:
            lines.append("split worst: " + ", ".join(f"{w['word']} ({w['pieces']})" for w in frag["worst"][:10]))
    if r.get("histogram"):
        lines.append(f"histogram: {r['histogram']}")
    print("\n".join(lines))
