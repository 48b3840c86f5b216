"""corpus stats: fragmentation against hand-computed values, domain terms, histogram, prepared and raw corpora."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from domainlm.cli import main
from domainlm.corpora import prepare, stats
from domainlm.corpora.run_stats import domain_terms, fragmentation, word_counts

FIX = Path(__file__).parent / "fixtures" / "corpora"


def _wordpiece():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "the": 1, "liver": 2, "hepat": 3, "##itis": 4, "##s": 5, "of": 6}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def test_fragmentation_hand_computed_wordpiece():
    texts = ["the liver hepatitis livers", "hepatitis of the liver", "xylophone"]
    r = fragmentation(_wordpiece(), texts, top_k=5, min_count=2)
    # the 1, liver 1, hepatitis 2, livers 2 | hepatitis 2, of 1, the 1, liver 1 | xylophone 1 ([UNK])
    assert r["words"] == 9 and r["pieces"] == 12 and r["pieces_per_word"] == pytest.approx(12 / 9, abs=1e-4)
    assert r["split_fraction"] == pytest.approx(3 / 9, abs=1e-4)
    assert r["unique_words"] == 6
    assert r["worst"][0] == {"word": "hepatitis", "count": 2, "pieces": 2, "tokens": ["hepat", "##itis"]}
    assert [w["word"] for w in r["worst"]] == ["hepatitis", "liver", "the"]  # count >= 2, most pieces first
    assert r["costliest"] == [{"word": "hepatitis", "count": 2, "pieces": 2, "tokens": ["hepat", "##itis"],
                               "extra_tokens": 2}]


def test_fragmentation_in_context_with_a_transformers_tokenizer():
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=_wordpiece(), unk_token="[UNK]")
    r = fragmentation(hf, ["the livers, of the liver."], min_count=1)
    assert (r["words"], r["pieces"]) == (5, 6)  # punctuation is not a word; livers = liver ##s
    assert r["unk_fraction"] == 0.0


def test_byte_level_tokenizer_splits_every_word_into_bytes():
    from domainlm.sources.load import load_tokenizer

    r = fragmentation(load_tokenizer("tiny-llama"), ["the cat sat on a mat"], min_count=1)
    assert r["words"] == 6 and r["pieces"] == 3 + 3 + 3 + 2 + 1 + 3  # the leading-space byte is not counted


def test_domain_terms_keyness_against_general_text():
    domain = word_counts(["hepatic steatosis in the liver"] * 5 + ["the patient"] * 5)
    general = word_counts(["the weather in the town"] * 20 + ["a patient dog"])
    terms = domain_terms(domain, general, top_k=10, min_count=3)
    names = [t["term"] for t in terms]
    assert names[:1] and set(names) <= {"hepatic", "steatosis", "liver", "patient"}
    assert "the" not in names and "patient" in names  # relatively more frequent in the domain text
    assert all(t["keyness"] > 0 for t in terms)
    plain = domain_terms(Counter({"alloy": 5, "the": 50, "steel": 7}), None, top_k=5, min_count=1)
    assert [t["term"] for t in plain] == ["steel", "alloy"]


def test_stats_on_a_prepared_corpus_writes_png_and_json(tmp_path):
    out = tmp_path / "c"
    prepare(inputs=[str(FIX / "pubmed_baseline.xml"), str(FIX / "pubmed_update.xml")], model="tiny-bert",
            out=str(out), block_size=16)
    general = tmp_path / "g.jsonl"
    general.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                               ["The town has a new bakery and the weather was fine."] * 3))
    r = stats(corpus=str(out), general=str(general), min_count=1)
    assert r["documents"] == 4 and r["source"] == "prepared" and r["length"]["unit"] == "tokens"
    png = out / "stats" / "length_histogram.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "stats" / "stats.json").read_text())
    assert saved["fragmentation"]["words"] > 0 and saved["terms"]
    assert "record" in {t["term"] for t in saved["terms"]}


def test_stats_on_raw_proteins_and_cli(tmp_path, capsys):
    r = stats(corpus=str(FIX / "proteins.fasta"), out=str(tmp_path / "s"))
    assert r["content"] == "protein" and r["length"]["unit"] == "residues"
    assert abs(sum(r["residues"].values()) - 1) < 1e-3
    code = main(["corpus", "stats", str(FIX / "arxiv.jsonl"), "--model", "tiny-llama", "--out", str(tmp_path / "t"),
                 "--min-count", "1", "--general", "none"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "pieces per word" in printed and (tmp_path / "t" / "length_histogram.png").exists()
