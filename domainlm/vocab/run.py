"""How ``domainlm vocab extend`` runs: read domain text, choose words, extend tokenizer and embeddings, save, report."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from domainlm.artifacts import atomic_dir, atomic_write_text, write_manifest
from domainlm.config import to_dict
from domainlm.errors import ConfigError
from domainlm.vocab.config import ExtendConfig

log = logging.getLogger(__name__)

TIED_NOTE = ("the output layer shares its weight tensor with the input embeddings (tied embeddings): each new token "
             "has one row, initialised once as the mean of its pieces, which is both its input embedding and its "
             "output vector. Nothing to do; train it with method: full, or method: lora with train_embeddings: true "
             "(the shared matrix is then trained fully)")


def _check_out(cfg: ExtendConfig) -> Path:
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not cfg.overwrite:
        raise ConfigError([f"output folder {out} exists and is not empty: pass --overwrite to replace it, or choose "
                           "another --out"])
    return out


def _token_count(tokenizer: Any, texts: list[str]) -> int:
    total = 0
    for i in range(0, len(texts), 256):
        enc = tokenizer(texts[i:i + 256], add_special_tokens=False)["input_ids"]
        total += sum(len(ids) for ids in enc)
    return total


def _change(before: float, after: float) -> float | None:
    return (after / before - 1) if before else None


def _save_model(model: Any, report: Any, folder: Path) -> list[str]:
    """Save the model; a checkpoint that lacked its head (MiniLM) is saved without the fresh head.

    Saving a freshly initialised head would make it look pretrained to ``adapt``, which then would not
    train it fully under LoRA. Without it, adapt finds it missing again and treats it as fresh.
    """
    notes = []
    if report.fresh_parameters:
        trunk = model.base_model
        trunk.save_pretrained(folder, safe_serialization=True)
        notes.append(f"the base checkpoint had no weights for {len(report.fresh_parameters)} head tensors; they were "
                     "not saved, so adapt initialises and trains the head as fresh, as it would for the base model")
    else:
        model.save_pretrained(folder, safe_serialization=True)
    return notes


def run(cfg: ExtendConfig) -> dict[str, Any]:
    """Run ``vocab extend`` (see :func:`domainlm.vocab.extend`); returns the manifest plus ``out``."""
    from domainlm.sources.gguf import materialise
    from domainlm.sources.load import load_model, load_tokenizer
    from domainlm.sources.resolution import resolve
    from domainlm.vocab.candidates import extended_tokenizer, select, tokenizer_family
    from domainlm.vocab.embeddings import add_rows, embeddings_tied
    from domainlm.vocab.texts import read_held_out, read_texts

    t0 = time.perf_counter()
    out = _check_out(cfg)
    src = resolve(cfg.model, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    if src.kind == "protein":
        raise ConfigError([f"{cfg.model} is a protein model: its vocabulary has one token per residue, so there are "
                           "no fragmented words to add. vocab extend is for text models"])
    src = materialise(src)
    tokenizer = load_tokenizer(src, trust_remote_code=cfg.trust_remote_code)
    family = tokenizer_family(tokenizer, cfg.model)  # refuse before reading any data

    corpus = read_texts(cfg.corpus, fmt=cfg.format, text_field=cfg.text_field, max_documents=cfg.max_documents)
    held = read_held_out(cfg.held_out, corpus, fmt=cfg.format, text_field=cfg.text_field)
    log.info("read %d corpus documents (%s) and %d held-out documents (%s)", len(corpus.texts), corpus.description,
             len(held.texts), held.description)

    sel, domain = select(tokenizer, corpus.texts, cfg.add, domain_vocab_size=cfg.domain_vocab_size,
                         min_frequency=cfg.min_frequency, name=cfg.model)
    ext, new_ids = extended_tokenizer(tokenizer, sel.chosen, family)

    model, load_report = load_model(src, src.kind, trust_remote_code=cfg.trust_remote_code,
                                    allow_pickle=cfg.allow_pickle)
    notes: list[str] = []
    if embeddings_tied(model):
        log.warning("%s: %s", cfg.model, TIED_NOTE)
        notes.append(TIED_NOTE)
    init = add_rows(model, new_ids, [c.piece_ids for c in sel.chosen], base_vocab=len(tokenizer),
                    unk_id=tokenizer.unk_token_id)
    if init.whole_mean:
        notes.append(f"{len(init.whole_mean)} added words were written only with the unknown token by the base "
                     "tokenizer; their rows start as the mean of all old rows")

    from domainlm.corpora.run_stats import fragmentation

    frag_before = fragmentation(tokenizer, held.texts)
    frag_after = fragmentation(ext, held.texts)
    counts = {}
    for label, texts in (("corpus", corpus.texts), ("held_out", held.texts)):
        before, after = _token_count(tokenizer, texts), _token_count(ext, texts)
        counts[label] = {"documents": len(texts), "characters": sum(len(t) for t in texts), "before": before,
                         "after": after, "change": _change(before, after)}

    added = [{"id": i, "token": c.content, "word": c.word, "frequency": c.frequency, "pieces": c.pieces,
              "piece_ids": c.piece_ids, "piece_count": len(c.pieces), "tokens_saved": c.tokens_saved,
              "collision_cost": c.collision_cost, "unknown_in_base": c.unknown}
             for c, i in zip(sel.chosen, new_ids, strict=True)]
    with atomic_dir(out) as tmp:
        notes += _save_model(model, load_report, tmp)
        ext.save_pretrained(tmp)
        # The domain tokenizer, for inspection; not a file transformers looks for.
        atomic_write_text(tmp / "domain_tokenizer.json", domain.backend_tokenizer.to_str())
        manifest = write_manifest(
            tmp, "vocab", config=to_dict(cfg),
            base={"name": cfg.model, "kind": src.kind, "origin": src.origin, "path": src.path, "hub_id": src.hub_id,
                  "license": src.license, "vocab_size": len(tokenizer)},
            inputs={"corpus": corpus.describe(), "held_out": held.describe()},
            tokenizer={"family": sel.family, "vocab_size_before": len(tokenizer), "vocab_size_after": len(ext),
                       "domain_vocab_size": sel.domain_vocab_size},
            embeddings={"tied": init.tied, "rows_before": init.rows_before, "rows_after": init.rows_after,
                        "output_initialised_separately": init.output_initialised,
                        "output_bias_initialised": init.output_bias_initialised, "init": "mean of old pieces"},
            counts={"corpus_words": sel.words_in_corpus, "distinct_words": sel.distinct_words,
                    "candidates": sel.candidate_count, "added": len(added),
                    "dropped_by_collisions": sel.dropped_by_collisions},
            added=added,
            fragmentation={"held_out": {"before": frag_before, "after": frag_after}},
            token_counts=counts,
            wall_time_s=time.perf_counter() - t0,
            notes=notes + ["continue with: domainlm adapt --model " + str(out) + " (method: full, or method: lora "
                           "with train_embeddings: true so the new rows are trained)"])
    manifest["out"] = str(out)
    _print_report(manifest)
    return manifest


def _pieces_per_word(frag: dict[str, Any]) -> float | None:
    for key in ("pieces_per_word", "tokens_per_word", "fertility"):
        if key in frag:
            return float(frag[key])
    return None


def _print_report(m: dict[str, Any]) -> None:
    tok, counts = m["tokenizer"], m["token_counts"]
    fb, fa = m["fragmentation"]["held_out"]["before"], m["fragmentation"]["held_out"]["after"]
    rows = [("vocabulary size", tok["vocab_size_before"], tok["vocab_size_after"])]
    pb, pa = _pieces_per_word(fb), _pieces_per_word(fa)
    if pb is not None and pa is not None:
        rows.append(("pieces per word, held-out", pb, pa))
    for label, key in (("tokens, corpus", "corpus"), ("tokens, held-out", "held_out")):
        c = counts[key]
        rows.append((f"{label} ({c['documents']} docs)", c["before"], c["after"]))
    lines = [f"vocab extend: {m['base']['name']} + {m['counts']['added']} domain words "
             f"(of {m['counts']['candidates']} candidates) -> {m['out']}",
             f"  {'':<34}{'before':>12}{'after':>12}{'change':>10}"]
    for label, before, after in rows:
        fmt = (lambda v: f"{v:>12.3f}") if isinstance(before, float) else (lambda v: f"{v:>12,}")
        ch = _change(before, after)
        lines.append(f"  {label:<34}{fmt(before)}{fmt(after)}{'' if ch is None else f'{ch:>+10.1%}'}")
    top = ", ".join(f"{a['token']!r} ({a['piece_count']} pieces, {a['frequency']}x)" for a in m["added"][:8])
    lines.append(f"  most tokens saved: {top}")
    if m["embeddings"]["tied"]:
        lines.append("  note: tied embeddings; each new row serves as input embedding and output vector")
    print("\n".join(lines))


__all__ = ["run"]
