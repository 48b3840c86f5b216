"""Small valid inputs for every reader, written by hand for the trials (the fuzzer mutates them)."""

from __future__ import annotations

import json

PUBMED_BASELINE = b"""<?xml version="1.0" ?>
<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, 1st January 2024//EN" "https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_240101.dtd">
<PubmedArticleSet>
<PubmedArticle>
  <MedlineCitation Status="MEDLINE" Owner="NLM">
    <PMID Version="1">1001</PMID>
    <Article PubModel="Print">
      <Journal><Title>Journal of Invented Biology</Title><JournalIssue><PubDate><Year>2021</Year></PubDate></JournalIssue></Journal>
      <ArticleTitle>Kinase <i>ABC1</i> controls Ca<sup>2+</sup> uptake.</ArticleTitle>
      <Abstract>
        <AbstractText Label="BACKGROUND" NlmCategory="BACKGROUND">Calcium uptake in cultured cells depends on kinases.</AbstractText>
        <AbstractText Label="RESULTS" NlmCategory="RESULTS">Loss of ABC1 halved the uptake (p &lt; 0.01).</AbstractText>
      </Abstract>
      <ELocationID EIdType="doi" ValidYN="Y">10.0000/invented.1001</ELocationID>
      <Language>eng</Language>
    </Article>
    <MeshHeadingList><MeshHeading><DescriptorName UI="D000001">Calcium</DescriptorName></MeshHeading></MeshHeadingList>
  </MedlineCitation>
  <PubmedData><ArticleIdList><ArticleId IdType="pubmed">1001</ArticleId></ArticleIdList></PubmedData>
</PubmedArticle>
<PubmedArticle>
  <MedlineCitation><PMID Version="1">1002</PMID>
    <Article><Journal><Title>J Inv</Title><JournalIssue><PubDate><MedlineDate>1998 Spring</MedlineDate></PubDate></JournalIssue></Journal>
      <ArticleTitle>A title without an abstract.</ArticleTitle></Article>
  </MedlineCitation>
</PubmedArticle>
<PubmedArticle>
  <MedlineCitation><PMID Version="2">1003</PMID>
    <Article><Journal><Title>J Inv</Title></Journal>
      <ArticleTitle>Zinc transport in yeast.</ArticleTitle>
      <Abstract><AbstractText>Zinc transporters were measured in yeast grown at 30 degrees.</AbstractText></Abstract>
    </Article>
  </MedlineCitation>
</PubmedArticle>
</PubmedArticleSet>
"""

PUBMED_UPDATE = b"""<?xml version="1.0" ?>
<PubmedArticleSet>
<PubmedArticle>
  <MedlineCitation><PMID Version="3">1003</PMID>
    <Article><ArticleTitle>Zinc transport in yeast (revised).</ArticleTitle>
      <Abstract><AbstractText>Revised: zinc transporters were measured at 25 degrees.</AbstractText></Abstract>
    </Article>
  </MedlineCitation>
</PubmedArticle>
<DeleteCitation><PMID Version="1">1001</PMID></DeleteCitation>
</PubmedArticleSet>
"""

MEDLINE = b"""PMID- 2001
OWN - NLM
DP  - 2020 Jan
TI  - Protein folding in invented cells.
AB  - We describe the folding of a kinase in detail. The results show a
      two-state mechanism at room temperature.
AU  - Doe J
LA  - eng
MH  - *Protein Folding
AID - 10.0000/invented.2001 [doi]

PMID- 2002
DP  - 1999
TI  - Only a title here.

PMID- 2003
TI  - Lipid rafts.
AB  - Lipid rafts gather receptors in the membrane of invented cells.
"""

ARXIV = (json.dumps({"id": "2101.00001", "title": "Perovskite\n  films on glass", "abstract": "  We grow thin films of "
                     "CsPbI3\n on glass and measure their band gap.", "categories": "cond-mat.mtrl-sci physics.app-ph",
                     "doi": None, "versions": [{"version": "v1", "created": "Mon, 4 Jan 2021 00:00:00 GMT"}],
                     "update_date": "2021-01-05", "license": None}) + "\n"
         + json.dumps({"id": "2101.00002", "title": "No abstract", "abstract": "", "categories": "cond-mat.mtrl-sci"})
         + "\n" + json.dumps({"id": "2101.00003", "title": "Black holes", "abstract": "A paper outside the chosen "
                              "categories.", "categories": "gr-qc"}) + "\n"
         + json.dumps({"id": "2101.00004", "title": "Steel fatigue", "abstract": "Cracks grow slowly in annealed "
                       "steel under cyclic load.", "categories": "cond-mat.mtrl-sci",
                       "versions": [{"version": "v1", "created": "Tue, 5 Jan 2021 00:00:00 GMT"}]}) + "\n").encode()

FASTA = b""">sp|P00001|TEST1_HUMAN Invented kinase OS=Homo sapiens OX=9606 GN=TK1 PE=1 SV=1
MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQ
FEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLK
>tr|Q00002|Q00002_YEAST Another invented protein OS=Saccharomyces cerevisiae
MSTNPKPQRKTKRNTNRRPQDVKFPGGGQIVGGVYLLPRRGPRLGVRATRKTSERSQPRG*
>plain_id a sequence with U, O, B, Z and X residues
MKVLAAGIVGUUOBZXLLLKKAAAGGGTTTSSSRRREEE
"""

SWISSPROT = b"""ID   INV1_HUMAN              Reviewed;          60 AA.
AC   Q90001; Q90099;
DT   01-JAN-2020, integrated into UniProtKB/Swiss-Prot.
DE   RecName: Full=Invented protein one;
GN   Name=INV1;
OS   Homo sapiens (Human).
OC   Eukaryota; Metazoa; Chordata; Craniata; Vertebrata.
OX   NCBI_TaxID=9606;
KW   Reference proteome.
SQ   SEQUENCE   60 AA;  6800 MW;  0000000000000000 CRC64;
     MKTAYIAKQR QISFVKSHFS RQLEERLGLI EVQAPILSRV GDGTQDNLSG AEKAVQVKVK
//
ID   INV2_MOUSE              Reviewed;          30 AA.
AC   Q90002;
DT   01-JAN-2021, integrated into UniProtKB/Swiss-Prot.
DE   RecName: Full=Invented protein two;
OS   Mus musculus (Mouse).
OC   Eukaryota; Metazoa; Chordata.
OX   NCBI_TaxID=10090;
SQ   SEQUENCE   30 AA;  3300 MW;  0000000000000000 CRC64;
     MSTNPKPQRK TKRNTNRRPQ DVKFPGGGQI
//
"""

CONLL = b"""-DOCSTART-\tO

Aspirin\tB-Chemical
reduces\tO
fever\tB-Disease
.\tO

Type\tO
2\tO
diabetes\tB-Disease
mellitus\tI-Disease
was\tO
treated\tO
with\tO
metformin\tB-Chemical
.\tO
"""

PUBTATOR = b"""1001|t|Aspirin and liver injury.
1001|a|Acetaminophen overdose causes hepatotoxicity in rats.
1001\t0\t7\tAspirin\tChemical\tD001241
1001\t12\t24\tliver injury\tDisease\tD056486
1001\t26\t39\tAcetaminophen\tChemical\tD000082
1001\tCID\tD000082\tD056486

1002|t|Cisplatin nephrotoxicity.
1002|a|Renal damage was seen after cisplatin.
1002\t0\t9\tCisplatin\tChemical\tD002945
1002\t10\t24\tnephrotoxicity\tDisease\tD007674
"""

BRAT = {
    "brat/a.txt": b"Thin films of LiCoO2 were annealed at 600 C.\nThe cathode kept 95 % of its capacity.\n",
    "brat/a.ann": b"T1\tMaterial 14 20\tLiCoO2\nT2\tOperation 26 34\tannealed\nT3\tValue 38 43\t600 C\n"
                  b"T4\tMaterial 49 56\tcathode\nR1\tHas Arg1:T1 Arg2:T2\n#1\tAnnotatorNotes T1\tan oxide\n",
    "brat/b.txt": b"Nanoparticles of TiO2 were calcined in air.\n",
    "brat/b.ann": b"T1\tDescriptor 0 13\tNanoparticles\nT2\tMaterial 17 21\tTiO2\nT3\tOperation 27 35\tcalcined\n",
}

PUBMEDQA = json.dumps({
    "1001": {"QUESTION": "Does aspirin lower fever in adults?", "CONTEXTS": ["Aspirin was given to 40 adults.",
                                                                            "Fever fell within two hours."],
             "LABELS": ["METHODS", "RESULTS"], "final_decision": "yes", "LONG_ANSWER": "It does."},
    "1002": {"QUESTION": "Is zinc required for yeast growth?", "CONTEXTS": ["Yeast grew without added zinc."],
             "final_decision": "no"},
    "1003": {"QUESTION": "Do rafts gather receptors?", "CONTEXTS": ["Some evidence, not conclusive."],
             "final_decision": "maybe"},
}, indent=2).encode()

# Junk that reaches parser corners: control and invalid UTF-8 bytes, markup, delimiters, numbers out of
# range, YAML tags (safe_load must refuse object construction), an external XML entity (must never be read).
JUNK = (b"\x00", b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\r", b"\n", b"\n\n", b"\t", b"<", b">",
        b"&", b"&bogus;", b"]]>", b"<!--", b"<i>", b"</AbstractText>", b"<PubmedArticle>", b'"', b"{", b"}", b"[", b"]",
        b":", b",", b"|", b"|t|", b"|a|", b"-", b"*", b"#", b"-1", b"0", b"99999999999999999999", b"1e309", b"NaN",
        b"null", b"~", b"? ", b"%", b"\\", b"\\u0000", "\u2028".encode(), "\u00e9".encode(), "\U0001d6fc".encode(),
        b"!!python/object/apply:os.system ['true']", b"&a", b"*a", b"\x1f\x8b",
        b'<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/hostname">]>', b"&xxe;", b"T9\tMaterial 0 5\tThin ",
        b"1001\t3\t1\tX\tDisease", b"PMID- ", b"AB  - ", b"SQ   SEQUENCE", b"//", b"-DOCSTART-", b"B-", b"I-X")
NUMBERS = (b"-1", b"0", b"", b"99999999999999999999", b"1.5", b"NaN", b"00", b"4294967296")
