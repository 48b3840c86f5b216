"""Hypothesis-mutated input files for every reader: read (bad records counted), or refused naming the file.

Targets and mutations live in tests/harness/fuzz.py; experiments/reliability.py writes the same numbers at full size into
experiments/RELIABILITY.md. Bugs that earlier fuzzing runs found (and that are fixed) are pinned by the
regression tests at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness.fixtures import MEDLINE, PUBMED_UPDATE, PUBMEDQA
from harness.fuzz import FuzzStats, check_case, fuzz_target, fuzz_targets, mutate

from domainlm.errors import DomainLMError

TARGETS = {t.name: t for t in fuzz_targets()}


@pytest.mark.parametrize("name", list(TARGETS))
def test_seed_files_are_valid(name, tmp_path):
    """Fuzzing starts from files the reader accepts whole (else every mutation would just be refused)."""
    target = TARGETS[name]
    for rel_path, data in target.files.items():
        (tmp_path / rel_path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel_path).write_bytes(data)
    stats = FuzzStats(name, target.group, 0)
    assert check_case(target, tmp_path, stats, "seed") is None
    assert (stats.accepted, stats.skipped, stats.refused) == (1, 0, 0)
    n, _ = target.run(tmp_path)
    assert n >= 1


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzzed_reader_reads_or_refuses_clearly(name, tmp_path):
    stats = fuzz_target(TARGETS[name], 40, seed=0, raise_on_bug=True, work=tmp_path)
    assert stats.ok and stats.examples >= 40
    assert stats.accepted + stats.skipped + stats.refused == stats.examples


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzzed_reader_thousands_of_cases(name, tmp_path):
    stats = fuzz_target(TARGETS[name], 3000, seed=1, raise_on_bug=True, work=tmp_path)
    assert stats.ok and stats.examples >= 3000


def test_mutations_are_reproducible_and_cover_gzip_and_fields():
    case = {"file": "x", "fields": [([0, 1], "set", None)], "bytes": [("insert", 3, b"<"), ("flip", 0, 1)],
            "gzip": "cut", "cut": 10}
    data = json.dumps({"a": 1, "b": {"c": 2}}).encode()
    a, b = mutate(data, case, "json"), mutate(data, case, "json")
    assert a == b and a[:2] == b"\x1f\x8b" and len(a) == 12


# --------------------------------------------------------------------------------------------------
# Regression tests for bugs the fuzzing found (all fixed)
# --------------------------------------------------------------------------------------------------

def _read_or_refuse(target: str, files: dict[str, bytes], tmp_path: Path) -> bool:
    """True when the reader reads the files or refuses them with a DomainLMError naming the file."""
    t = TARGETS[target]
    for name, data in {**t.files, **files}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    try:
        n, _ = t.run(tmp_path)
        return n >= 0
    except DomainLMError as exc:  # a clear refusal is one of the two accepted outcomes
        return any(Path(name).name in str(exc) for name in files)


def test_huge_pmid_in_an_update_file(tmp_path):
    update = PUBMED_UPDATE.replace(b'<PMID Version="3">1003</PMID>', b'<PMID Version="3">99999999999999999999</PMID>')
    assert _read_or_refuse("PubMed XML (baseline + update)", {"update.xml": update}, tmp_path)


def test_medline_record_starting_with_a_continuation_line(tmp_path):
    lines = MEDLINE.split(b"\n")
    lines[0], lines[5] = lines[5], lines[0]  # '      two-state mechanism ...' becomes the first line
    assert _read_or_refuse("MEDLINE", {"records.medline": b"\n".join(lines)}, tmp_path)


def test_pubmedqa_decision_that_is_a_list(tmp_path):
    data = json.loads(PUBMEDQA)
    data["1002"]["final_decision"] = ["yes"]
    assert _read_or_refuse("PubMedQA JSON", {"pubmedqa.json": json.dumps(data).encode()}, tmp_path)


def test_pubmedqa_context_that_is_not_text(tmp_path):
    data = json.loads(PUBMEDQA)
    data["1002"]["CONTEXTS"] = ["Yeast grew.", None]
    assert _read_or_refuse("PubMedQA JSON", {"pubmedqa.json": json.dumps(data).encode()}, tmp_path)


@pytest.mark.parametrize("escape", ["\\U99999999", "\\U00110000"])
def test_yaml_escape_beyond_unicode(escape, tmp_path):
    recipe = TARGETS["YAML recipe (adapt)"].files["recipe.yaml"] + f'description_note: "{escape}"\n'.encode()
    assert _read_or_refuse("YAML recipe (adapt)", {"recipe.yaml": recipe}, tmp_path)


@pytest.mark.parametrize("line", ["1: x", "null: 1"])
def test_yaml_key_that_is_not_a_string(line, tmp_path):
    recipe = TARGETS["YAML recipe (adapt)"].files["recipe.yaml"] + f"{line}\n".encode()
    assert _read_or_refuse("YAML recipe (adapt)", {"recipe.yaml": recipe}, tmp_path)


@pytest.mark.parametrize("versions", [5, {"v1": "x"}])
def test_arxiv_versions_that_are_not_a_list(versions, tmp_path):
    line = json.dumps({"id": "2101.09999", "title": "Films", "abstract": "Thin films of an oxide were grown on glass.",
                       "categories": "cond-mat.mtrl-sci", "versions": versions})
    assert _read_or_refuse("arXiv JSONL", {"arxiv.jsonl": (line + "\n").encode()}, tmp_path)
