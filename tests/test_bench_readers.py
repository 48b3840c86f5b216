"""bench readers and data checks: hand-written fixtures, bad input, and the real files in ../shared/realdata."""

from __future__ import annotations

from pathlib import Path

import pytest

from domainlm import config as cfgmod
from domainlm.errors import DataError
from domainlm.tasks.data import load_data
from domainlm.tasks.readers.labelled import (
    read_csv,
    read_fasta,
    read_hoc,
    read_jsonl,
    read_pairs,
    read_pubmedqa,
)
from domainlm.tasks.readers.structures import read_pdb
from domainlm.tasks.readers.tagging import read_brat, read_conll, read_pubtator, read_sofc
from domainlm.tasks.readers.text import read_paragraphs, read_text
from domainlm.tasks.spec import TaskSpec

FIX = Path(__file__).parent / "fixtures" / "bench"
PROTEIN = Path(__file__).resolve().parent.parent / "benchmarks" / "protein" / "data"


def spec(**kw) -> TaskSpec:
    kw.setdefault("version", 1)
    kw.setdefault("files", {"train": "x", "test": "y"})
    kw.setdefault("head", "token")
    kw.setdefault("metric", {"token": "entity_f1", "sequence": "accuracy", "multilabel": "micro_f1",
                             "regression": "pearson", "lm": "word_perplexity",
                             "contacts": "precision_at_l5"}[kw["head"]])
    kw.setdefault("format", "conll")
    if kw["head"] == "lm":
        kw.setdefault("mode", "perplexity")
    return cfgmod.build(TaskSpec, kw)


# --------------------------------------------------------------------------------------------------
# Token formats
# --------------------------------------------------------------------------------------------------

def test_conll_two_columns():
    sents = read_conll(FIX / "ner" / "train.tsv", spec(), "train")
    assert len(sents) == 12
    assert sents[1].tokens == ["Patients", "with", "type", "2", "diabetes", "received", "metformin", "."]
    assert sents[1].tags == ["O", "O", "B-Disease", "I-Disease", "I-Disease", "O", "B-Chemical", "O"]
    assert sents[1].where.endswith("train.tsv:9")
    assert sents[1].tag_where[2].endswith("train.tsv:11")


def test_conll_four_columns_docstart_and_several_blank_lines():
    sents = read_conll(FIX / "conll4.txt", spec(), "test")
    assert len(sents) == 3  # -DOCSTART- dropped, double blank lines are one break
    assert sents[0].tokens[:3] == ["Metformin", "lowered", "glucose"]
    assert sents[0].tags[:3] == ["B-Chemical", "O", "B-Chemical"]


def test_conll_bad_tag_names_line_and_fix():
    with pytest.raises(DataError, match=r"bad_tag.tsv:2: tag 'X' is not BIO. Fix: use O, B-TYPE"):
        read_conll(FIX / "ner" / "bad_tag.tsv", spec(), "test")


def test_pubtator_to_bio_with_checked_offsets():
    sents = read_pubtator(FIX / "pubtator" / "docs.pubtator", spec(format="pubtator"), "test")
    # The title is its own sentence; the abstract splits at ". " before a capital.
    assert [s.id for s in sents] == ["38000001.0", "38000001.1", "38000001.2", "38000002.0", "38000002.1",
                                     "38000002.2"]
    assert list(zip(sents[1].tokens, sents[1].tags, strict=True))[2:5] == [
        ("acute", "B-Disease"), ("kidney", "I-Disease"), ("injury", "I-Disease")]
    # "Lithium-induced": the mention edge splits the token.
    assert sents[4].tokens[:3] == ["Lithium", "-", "induced"]
    assert sents[4].tags[:3] == ["B-Chemical", "O", "O"]
    assert sents[4].tag_where[0].endswith("docs.pubtator:15")  # the second Lithium mention
    assert all(s.group in ("38000001", "38000002") for s in sents)


def test_pubtator_bad_offsets_name_line_and_correct_offsets():
    with pytest.raises(DataError) as err:
        read_pubtator(FIX / "pubtator" / "bad_offsets.pubtator", spec(format="pubtator"), "test")
    msg = str(err.value)
    assert "bad_offsets.pubtator:17" in msg
    assert "'Propranolol'" in msg and "occurs at 55-66" in msg


def test_brat_to_bio_tolerates_relations_events_notes():
    sents = read_brat(FIX / "brat", spec(format="brat"), "test")
    assert len(sents) == 4  # newline and ". " sentence breaks
    s = sents[1]
    assert list(zip(s.tokens, s.tags, strict=True))[:3] == [
        ("The", "O"), ("porous", "B-Descriptor"), ("LiFePO4", "B-Material")]
    assert ("3.2", "B-Value") in list(zip(sents[3].tokens, sents[3].tags, strict=False))  # decimals stay whole


def test_brat_bad_offsets():
    with pytest.raises(DataError, match=r"x.ann:1: offsets 0 4 cover 'ZnO ' in x.txt, not 'ZnO'"):
        read_brat(FIX / "brat_bad", spec(format="brat"), "test")


# --------------------------------------------------------------------------------------------------
# Sequence formats
# --------------------------------------------------------------------------------------------------

def test_pubmedqa_json_keyed_by_pmid():
    recs = read_pubmedqa(FIX / "pubmedqa.json", spec(format="pubmedqa", head="sequence"), "test")
    assert len(recs) == 8
    first = recs[0]
    assert first.id == "90000001" and first.label == "yes"
    assert first.text.startswith("Does aspirin")
    assert first.text_b.startswith("Adults with atrial fibrillation") and "Stroke occurred" in first.text_b
    assert first.where.endswith("pubmedqa.json:2")


def test_jsonl_single_label_and_errors():
    s = spec(format="jsonl", head="sequence")
    recs = read_jsonl(FIX / "relation" / "train.jsonl", s, "train")
    assert len(recs) == 8 and recs[0].label == "INHIBITOR" and recs[0].text.startswith("<< Imatinib >>")
    with pytest.raises(DataError, match=r"test_badjson.jsonl:2: not valid JSON"):
        read_jsonl(FIX / "relation" / "test_badjson.jsonl", s, "test")
    with pytest.raises(DataError, match=r"has no field 'sentence'.*fields here: text, label"):
        read_jsonl(FIX / "relation" / "train.jsonl", spec(format="jsonl", head="sequence", text_field="sentence"),
                   "train")


def test_jsonl_multilabel_lists_including_empty():
    recs = read_jsonl(FIX / "doccls" / "train.jsonl", spec(format="jsonl", head="multilabel"), "train")
    assert recs[2].label == ["inducing angiogenesis", "sustaining proliferative signaling"]
    assert recs[3].label == []


def test_csv_classification_with_quotes():
    recs = read_csv(FIX / "glass.csv", spec(format="csv", head="sequence", text_field="Abstract",
                                            label_field="Label"), "test")
    assert [r.label for r in recs] == ["1", "0", "1", "0", "1", "0"]
    assert '"low"' in recs[4].text
    assert recs[1].where.endswith("glass.csv:3")
    with pytest.raises(DataError, match=r"no column 'abstract' \(did you mean 'Abstract'\?\)"):
        read_csv(FIX / "glass.csv", spec(format="csv", head="sequence", text_field="abstract", label_field="Label"),
                 "test")


def test_scored_pairs_with_and_without_header():
    s = spec(format="pairs", head="regression")
    with_header = read_pairs(FIX / "pairs.tsv", s, "test")
    without = read_pairs(FIX / "pairs_noheader.tsv", s, "test")
    assert len(with_header) == len(without) == 6
    assert with_header[0].label == 3.8 and with_header[0].text_b == "Stroke risk is lowered by aspirin."
    assert [r.label for r in with_header] == [r.label for r in without]


def test_fasta_labels_in_headers():
    recs = read_fasta(FIX / "labels.fasta", spec(format="fasta", head="regression"), "test")
    assert [(r.id, r.label) for r in recs][:2] == [("p0|frac|0.8", 0.8), ("p1|frac|0.1", 0.1)]
    assert recs[0].text == "MKLLIVAVLA"
    kv = read_fasta(FIX / "labels_kv.fasta", spec(format="fasta", head="regression", label_field="stability"), "t")
    assert [r.label for r in kv] == [1.5, -0.5]
    with pytest.raises(DataError, match=r"labels_bad.fasta:1: label 'high' is not a number"):
        read_fasta(FIX / "labels_bad.fasta", spec(format="fasta", head="regression"), "test")


def test_hoc_folder_document_labels():
    recs = read_hoc(FIX / "hoc", spec(format="hoc", head="multilabel"), "test")
    assert recs[0].id == "1001"
    assert recs[0].label == ["resisting cell death", "sustaining proliferative signaling"]
    assert recs[1].label == []  # NULL is no label


def test_text_documents_and_pdb_contacts(tmp_path):
    docs = read_text(FIX / "general.txt", spec(format="text", head="lm"), "test")
    assert [d.text[:9] for d in docs] == ["The river", "She bough"]
    # one meaning per format, shared with corpora: `text` is a document per line, `paragraphs` per blank line
    two = tmp_path / "two.txt"
    two.write_text("first line\nsame paragraph\n\nsecond paragraph\n")
    assert [d.text for d in read_text(two, spec(format="text", head="lm"), "test")] == \
        ["first line", "same paragraph", "second paragraph"]
    assert [d.text for d in read_paragraphs(two, spec(format="paragraphs", head="lm"), "test")] == \
        ["first line\nsame paragraph", "second paragraph"]
    s = spec(format="pdb", head="contacts")
    prots = read_pdb(PROTEIN / "structures" / "test", s, "test")
    assert len(prots) == 6
    p = prots[0]
    assert p.label.shape == (len(p.text), len(p.text)) and p.label.diagonal().all()
    assert set(p.text) <= set("ACDEFGHIKLMNPQRSTVWY")


# --------------------------------------------------------------------------------------------------
# Split checks (bad input named with file, line and fix)
# --------------------------------------------------------------------------------------------------

def _task(tmp_path: Path, text: str) -> TaskSpec:
    from domainlm.tasks.suites import load_task

    path = tmp_path / "t.yaml"
    path.write_text(text)
    return load_task(path)


def test_label_sets_differ_between_splits(tmp_path):
    t = _task(tmp_path, f"version: 1\nformat: conll\nhead: token\nmetric: entity_f1\nfiles: {{train: {FIX}/ner/"
                        f"train.tsv, test: {FIX}/ner/test_newtype.tsv}}\n")
    with pytest.raises(DataError) as err:
        load_data(t)
    msg = str(err.value)
    assert "test_newtype.tsv:14: label 'Gene' appears in the test split but never in the train split" in msg
    assert "Fix:" in msg


def test_label_not_in_task_list_and_drop_policy(tmp_path):
    text = (f"version: 1\nformat: jsonl\nhead: sequence\nmetric: accuracy\nlabels: [INHIBITOR, ACTIVATOR]\n"
            f"files: {{train: {FIX}/relation/train.jsonl, test: {FIX}/relation/test_unknown.jsonl}}\n")
    with pytest.raises(DataError, match=r"test_unknown.jsonl:1: label 'AGONIST' is not in the label list of task "
                                        r"'t' \(ACTIVATOR, INHIBITOR\). Fix: add it to 'labels:'"):
        load_data(_task(tmp_path, text))
    t = _task(tmp_path, text.replace("labels:", "other_labels: drop\nlabels:"))
    with pytest.raises(DataError, match="split 'test' of task 't' has no records"):
        load_data(t)  # the only test record was dropped, leaving an empty split


def test_ner_drop_policy_turns_entities_to_o(tmp_path):
    t = _task(tmp_path, f"version: 1\nformat: conll\nhead: token\nmetric: entity_f1\nlabels: [Disease]\n"
                        f"other_labels: drop\nfiles: {{train: {FIX}/ner/train.tsv, test: {FIX}/ner/test.tsv}}\n")
    data = load_data(t)
    assert not any(tag.endswith("Chemical") for ex in data.train for tag in ex.tags)
    assert data.labels == ["Disease"]
    assert any("entity mentions turned to O" in n and "Chemical" in n for n in data.notes)


def test_empty_split_and_missing_file(tmp_path):
    t = _task(tmp_path, f"version: 1\nformat: conll\nhead: token\nmetric: entity_f1\n"
                        f"files: {{train: {FIX}/ner/train.tsv, test: {FIX}/ner/empty.tsv}}\n")
    with pytest.raises(DataError, match=r"empty.tsv: split 'test' of task 't' has no records. Fix:"):
        load_data(t)
    t = _task(tmp_path, "version: 1\nformat: conll\nhead: token\nmetric: entity_f1\n"
                        "files: {train: nope/train.tsv, test: nope/test.tsv}\n")
    with pytest.raises(DataError, match=r"files.train -> .*nope/train.tsv does not exist.*--override t.train=PATH"):
        load_data(t)


def test_test_ids_split_and_carving(tmp_path):
    t = _task(tmp_path, f"version: 1\nformat: pubmedqa\nhead: sequence\nmetric: accuracy\n"
                        f"files: {{test: {FIX}/pubmedqa.json}}\ntest_ids: {FIX}/pubmedqa_test_ids.json\n")
    data = load_data(t)
    assert sorted(ex.id for ex in data.test) == ["90000002", "90000004", "90000007"]
    assert len(data.train) == 5 and data.labels == ["maybe", "no", "yes"]
    t = _task(tmp_path, f"version: 1\nformat: brat\nhead: token\nmetric: entity_f1\ncarve_train: 0.5\n"
                        f"files: {{test: {FIX}/brat}}\n")
    data = load_data(t)
    # Whole documents move: no document is on both sides.
    assert {ex.group for ex in data.train}.isdisjoint({ex.group for ex in data.test})


# --------------------------------------------------------------------------------------------------
# Real files (read-only, never copied): counts from ../shared/realdata/SOURCES.md
# --------------------------------------------------------------------------------------------------

def _count_mentions(sents) -> int:
    return sum(t.startswith("B-") for s in sents for t in s.tags)


def test_real_conll_files(realdata):
    s = spec()
    test = read_conll(realdata / "ncbi_disease_conll" / "test.tsv", s, "test")
    assert len(test) == 940 and _count_mentions(test) == 960
    four = read_conll(realdata / "ncbi_disease_conll" / "scibert_4col" / "test.txt", s, "test")
    assert len(four) == 940 and _count_mentions(four) == 960
    assert [x.tokens for x in four[:50]] == [x.tokens for x in test[:50]]
    bc5 = read_conll(realdata / "bc5cdr_conll" / "test.tsv", s, "test")
    assert len(bc5) == 4797 and sum(len(x.tokens) for x in bc5) == 124750
    assert _count_mentions(bc5) == 5385 + 4424


def test_real_classification_files(realdata):
    chem = read_jsonl(realdata / "chemprot" / "test.jsonl", spec(format="jsonl", head="sequence"), "test")
    assert len(chem) == 3469 and sum(r.label == "INHIBITOR" for r in chem) == 1255
    glass = read_csv(realdata / "matsci_glass_cls" / "test.csv",
                     spec(format="csv", head="sequence", text_field="Abstract", label_field="Label"), "test")
    assert len(glass) == 300 and sum(r.label == "1" for r in glass) == 98
    qa = read_pubmedqa(realdata / "pubmedqa" / "ori_pqal.json", spec(format="pubmedqa", head="sequence"), "t")
    assert len(qa) == 1000 and sum(r.label == "maybe" for r in qa) == 110
    hoc = read_hoc(realdata / "hoc", spec(format="hoc", head="multilabel"), "test")
    assert len(hoc) == 300 and sum(bool(r.label) for r in hoc) == 293


def test_real_brat_sofc_and_fasta(realdata):
    sents = read_brat(realdata / "materials_syntheses" / "data", spec(format="brat"), "test")
    assert len({s.group for s in sents}) == 50 and _count_mentions(sents) > 3000
    sofc = read_sofc(realdata / "sofc_exp", spec(format="sofc"), "train")
    assert sofc and {t[2:] for s in sofc for t in s.tags if t != "O"} <= {"MATERIAL", "VALUE", "DEVICE", "EXPERIMENT"}
    dms = read_fasta(realdata / "protein_fasta" / "esm" / "P62593.first1000.fasta",
                     spec(format="fasta", head="regression"), "test")
    assert len(dms) == 1000 and all(isinstance(r.label, float) for r in dms)
    assert len({len(r.text) for r in dms}) == 1  # single mutants of one protein


def test_on_error_skip_counts_bad_records_and_raise_names_them(tmp_path):
    """Matscholar-style CoNLL lines with a token and no tag: stop by default, or skip the sentence, counted."""
    from domainlm.tasks.suites import load_task

    good = "The\tO\naspirin\tB-Chemical\ndose\tO\n\n"
    bad = "Iron\tB-Chemical\noxide\n\n"  # "oxide" has no tag
    (tmp_path / "train.tsv").write_text(good * 3 + bad)
    bad_twice = "Iron\tB-Chemical\noxide\nrust\n\n"  # two lines without a tag: still one sentence skipped
    (tmp_path / "test.tsv").write_text(good + bad + bad_twice + good)
    yaml = ("version: 1\nformat: conll\nhead: token\nmetric: entity_f1\n"
            "files: {train: train.tsv, test: test.tsv}\n")
    (tmp_path / "t.yaml").write_text(yaml)
    with pytest.raises(DataError, match=r"train.tsv:14: line has one column \('oxide'\).*on_error: skip"):
        load_data(load_task(tmp_path / "t.yaml"))
    (tmp_path / "t.yaml").write_text(yaml + "on_error: skip\n")
    data = load_data(load_task(tmp_path / "t.yaml"))
    assert len(data.train) == 3 and len(data.test) == 2
    assert data.skipped["train"]["counts"] == {"sentence with a bad token line": 1}
    assert data.skipped["test"]["counts"] == {"sentence with a bad token line": 2}  # sentences, not lines (3)
    assert data.skipped["test"]["examples"]["sentence with a bad token line"][0].startswith(f"{tmp_path}/test.tsv:6")
    assert any("2 bad record(s) skipped" in n and "test.tsv:6" in n for n in data.notes)
    # JSONL classification: a broken line and a record without its label field
    (tmp_path / "c.jsonl").write_text('{"text": "a", "label": "x"}\n{broken\n{"text": "b"}\n{"text": "c", "label": "y"}\n')
    s = spec(format="jsonl", head="sequence", mode="zeroshot", prompt="{text}", labels=["x", "y"], on_error="skip",
             files={"test": str(tmp_path / "c.jsonl")})
    data = load_data(s, needs_train=False)
    assert [ex.text for ex in data.test] == ["a", "c"] and data.skipped["test"]["counts"] == {"bad JSONL record": 2}
