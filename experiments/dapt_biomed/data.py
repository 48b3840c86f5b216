"""Stages 1 and 2 of the DAPT experiment: the evaluation texts, decontamination by ``corpus prepare
--decontaminate``, and the prepared corpora (domain, detokenised, reading comprehension, replay, TAPT) with the
held-out and PubMed perplexity files. Everything is cached in WORK/data and WORK/corpora."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("dapt_biomed")

NGRAM = 13
MINILM_BLOCK, SMOL_BLOCK = 128, 256


def _conll_sentences(path: Path) -> list[str]:
    out, cur = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if cur:
                out.append(" ".join(cur))
                cur = []
            continue
        cur.append(line.split("\t")[0].split(" ")[0])
    if cur:
        out.append(" ".join(cur))
    return out


def _split_sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def eval_splits(realdata: Path) -> dict[str, list[str]]:
    """Sentences of every evaluation split (test splits, and the splits the probes train on)."""
    r = realdata
    splits = {
        "NCBI-disease test": _conll_sentences(r / "ncbi_disease_conll/test.tsv"),
        "NCBI-disease devel (probe train)": _conll_sentences(r / "ncbi_disease_conll/devel.tsv"),
        "BC5CDR test": _conll_sentences(r / "bc5cdr_conll/test.tsv"),
        "BC5CDR devel (probe train)": _conll_sentences(r / "bc5cdr_conll/devel.tsv"),
    }
    chem = [json.loads(x)["text"] for x in (r / "chemprot/test.jsonl").read_text(encoding="utf-8").splitlines()
            if x.strip()]
    splits["ChemProt test"] = [re.sub(r"<<|>>|\[\[|\]\]", " ", t) for t in chem]
    hoc = []
    for f in sorted((r / "hoc/text").glob("*.txt")):
        hoc += [s for s in f.read_text(encoding="utf-8").splitlines() if s.strip()]
    splits["HoC"] = hoc
    pq = json.loads((r / "pubmedqa/ori_pqal.json").read_text(encoding="utf-8"))
    test_ids = json.loads((r / "pubmedqa/test_ground_truth.json").read_text(encoding="utf-8"))
    sents = []
    for pmid in test_ids:
        rec = pq[pmid]
        sents.append(rec["QUESTION"])
        for ctx in rec["CONTEXTS"]:
            sents += _split_sentences(ctx)
    splits["PubMedQA test"] = sents
    return splits


def _slug(name: str) -> str:
    """A split's name as a file name ("NCBI-disease devel (probe train)" -> "ncbi-disease_devel_probe_train")."""
    return re.sub(r"[^a-z0-9-]+", "_", name.lower()).strip("_")


def decontaminate(realdata: Path, work: Path) -> dict[str, Any]:
    """Write WORK/data/corpus_clean.jsonl (the corpus minus every document sharing a word 13-gram with an evaluation
    split) and return the overlap statistics (cached in WORK/data/decontamination.json).

    The drop is ``domainlm corpus prepare --decontaminate`` itself: each split's sentences are written to
    WORK/data/eval_splits/<split>.jsonl, the corpus is prepared with those files as --decontaminate sources (no
    deduplication, nothing held out), and the documents it keeps are the clean corpus, in their original text. The
    prepared folder (WORK/corpora/decontaminate-minilm) records the drop per split in its manifest. The share of each
    split's sentences that shares an n-gram with the corpus is measured the other way round with the same engine
    (the corpus as the index, each sentence through the filter), so both numbers use one n-gram rule: datatrove's
    (lower-cased, punctuation and digits normalised, whitespace words; GPT-3's check used 13-grams too).
    """
    out_path = work / "data" / "corpus_clean.jsonl"
    stats_path = work / "data" / "decontamination.json"
    if out_path.is_file() and stats_path.is_file():
        return json.loads(stats_path.read_text())
    from domainlm import prepare
    from domainlm.corpora import load_documents

    t0 = time.perf_counter()
    splits = eval_splits(realdata)
    files = {}
    for name, sents in splits.items():
        files[name] = work / "data" / "eval_splits" / f"{_slug(name)}.jsonl"
        # U+FFFD (a few HoC sentences) would make the corpus reader skip the sentence as invalid UTF-8: a space
        # keeps the words around it in the index
        _write_jsonl(files[name], [{"id": f"{_slug(name)}/{i}", "text": s.replace("\ufffd", " ")}
                                   for i, s in enumerate(sents)])
    corpus_path = realdata / "biomed_corpus/biomed_sentences.jsonl"
    prepared = work / "corpora" / "decontaminate-minilm"
    man = prepare(model="minilm", inputs=[str(corpus_path)], format="jsonl", out=str(prepared),
                  block_size=MINILM_BLOCK, validation_fraction=0.0, dedup=False, near_dup=False,
                  decontaminate=[str(f) for f in files.values()], decontaminate_ngram=NGRAM)
    kept_ids = set(load_documents(prepared)["id"])
    records = [json.loads(line) for line in corpus_path.open(encoding="utf-8") if line.strip()]
    _write_jsonl(out_path, [{"id": rec["id"], "text": rec["text"]} for rec in records if rec["id"] in kept_ids])
    d = man["decontamination"]
    by_file = {f"file:{f.name}": name for name, f in files.items()}
    dropped = d.get("dropped", 0)
    stats = {"ngram": NGRAM, "corpus_documents": len(records), "dropped_documents": dropped,
             # documents prepare's reader or cleaning drops (every later prepare of the corpus drops them too)
             "kept_documents": len(kept_ids), "other_drops": len(records) - len(kept_ids) - dropped,
             "dropped_by_split": {by_file.get(k, k): v for k, v in d.get("dropped_by_task", {}).items()},
             "dropped_ids_first": [e["id"] for e in d.get("examples", [])],
             "overlap_before_drop": _overlap(splits, [rec["text"] for rec in records], work / "data" / "corpus_index"),
             "seconds": time.perf_counter() - t0,
             "rule": "datatrove's normalisation: lower-cased, punctuation removed, digits as 0, whitespace words",
             "dropped_by": "by `corpus prepare --decontaminate`, before the corpora were prepared",
             "method": "`domainlm corpus prepare --decontaminate` (datatrove's n-gram filter) with each evaluation "
                       "split as a file"}
    stats_path.write_text(json.dumps(stats, indent=2))
    return stats


def _overlap(splits: dict[str, list[str]], corpus: list[str], index: Path) -> dict[str, dict[str, Any]]:
    """Per split: how many of its sentences share an n-gram with the corpus (the corpus indexed by the engine's
    build_decont_index, each sentence asked through its Decontaminate filter)."""
    from datatrove.data import Document
    from datatrove.utils.text import simplify_text

    from domainlm.corpora.steps import Decontaminate, build_decont_index

    build_decont_index(index, {"corpus": corpus}, NGRAM)
    check = Decontaminate(str(index), NGRAM, str(index))
    out = {}
    for name, sents in splits.items():
        long = hit = 0
        for i, s in enumerate(sents):
            if len(check.tokenizer.word_tokenize(simplify_text(s, check.config.norm_config))) >= NGRAM:
                long += 1
                hit += check.filter(Document(text=s, id=str(i))) is not True
        out[name] = {"sentences": len(sents), "sharing_13gram": hit, "share": hit / max(1, len(sents)),
                     "sentences_with_13_words": long}
    return out


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def prepare_data(realdata: Path, work: Path, models: list[str]) -> dict[str, Any]:
    """Prepared corpora (domain, replay, TAPT) per model, the held-out and PubMed perplexity files."""
    from domainlm import prepare
    from domainlm.corpora import load_documents, read_corpus_manifest

    data = work / "data"
    info: dict[str, Any] = {}
    # TAPT text: the NCBI-disease training split's sentences, labels dropped (Gururangan's TAPT uses the
    # task's own unlabelled training text; 8 sentences per pseudo-document like the domain corpus).
    tapt = data / "tapt_ncbi.jsonl"
    if not tapt.is_file():
        sents = _conll_sentences(realdata / "ncbi_disease_conll/train.tsv")
        _write_jsonl(tapt, [{"id": f"ncbi-train/{i // 8}", "text": " ".join(sents[i:i + 8])}
                            for i in range(0, len(sents), 8)])
    # Real PubMed abstracts for domain perplexity: every record under realdata/pubmed, read by the
    # corpus readers (MEDLINE text and PubMed XML).
    pub = data / "pubmed_real.jsonl"
    if not pub.is_file():
        from domainlm.documents.readers import InputFile, ReadContext, ReaderOptions, SkipLog
        from domainlm.documents.registry import get_reader

        rows, seen = [], set()
        for f in sorted((realdata / "pubmed").rglob("*")):
            if not f.is_file():
                continue
            fmt = "medline" if f.suffix == ".txt" else "pubmed-xml" if ".xml" in f.name else None
            if fmt is None:
                continue
            ctx = ReadContext(ReaderOptions(), SkipLog(), InputFile(f, fmt, f.stat().st_size, f.name), 0)
            for d in get_reader(fmt).read(f, ctx):
                if d.text and d.id not in seen:
                    seen.add(d.id)
                    rows.append({"id": str(d.id), "text": d.text})
        _write_jsonl(pub, rows)
    for model in models:
        block = MINILM_BLOCK if model == "minilm" else SMOL_BLOCK
        specs = {
            "domain": dict(inputs=[str(data / "corpus_clean.jsonl")], format="jsonl"),
            # the NER corpora's word tokenisation undone ("IL - 2 ( 10 ng / ml )" -> "IL-2 (10 ng/ml)"), so a
            # model adapts to the field in the form real abstracts have, not to the spacing
            "domain_detok": dict(inputs=[str(data / "corpus_clean.jsonl")], format="jsonl", detokenize=True),
            "replay": dict(inputs=[str(realdata / "general_wikitext2/valid.txt")], format="text",
                           near_dup=False),
            "tapt_ncbi": dict(inputs=[str(tapt)], format="jsonl"),
        }
        if model != "minilm":  # reading comprehension is for the causal chat model (the chat template)
            specs["domain_rc"] = dict(inputs=[str(data / "corpus_clean.jsonl")], format="jsonl", detokenize=True,
                                      reading_comprehension=True)
        for name, kw in specs.items():
            out = work / "corpora" / f"{name}-{model}"
            if not (out / "manifest.json").is_file():
                t0 = time.perf_counter()
                prepare(model=model, block_size=block, out=str(out), validation_fraction=0.05, **kw)
                log.info("prepared %s in %.0f s", out, time.perf_counter() - t0)
            man = read_corpus_manifest(out)
            info[f"{name}-{model}"] = {"path": str(out), "splits": man.get("splits"), "counts": man.get("counts")}
    # Held-out domain documents: the 5% validation split of the prepared domain corpus (same for every
    # tokenizer: the split is a hash of the document id).
    held = data / "heldout_docs.jsonl"
    if not held.is_file():
        first = work / "corpora" / f"domain-{models[0]}"
        val_ids = {r["id"] for r in load_documents(first) if r["split"] == "validation"}
        rows = []
        with (data / "corpus_clean.jsonl").open(encoding="utf-8") as fin:
            for line in fin:
                rec = json.loads(line)
                if rec["id"] in val_ids:
                    rows.append(rec)
        _write_jsonl(held, rows)
    info["heldout_documents"] = sum(1 for _ in held.open(encoding="utf-8"))
    info["pubmed_abstracts"] = sum(1 for _ in pub.open(encoding="utf-8"))
    return info
