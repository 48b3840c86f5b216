"""Fuzzing the readers: hypothesis-drawn mutations of valid inputs; nothing but documented errors may escape.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fixtures import (
    ARXIV,
    BRAT,
    CONLL,
    FASTA,
    JUNK,
    MEDLINE,
    NUMBERS,
    PUBMED_BASELINE,
    PUBMED_UPDATE,
    PUBMEDQA,
    PUBTATOR,
    SWISSPROT,
)
from .procs import Hang, quiet, time_limit

# ====================================================================================================
# Fuzzing the readers
# ====================================================================================================

@dataclass
class FuzzTarget:
    """A reader under fuzzing: its seed files (valid input, written by hand for this script), which of them
    mutations touch, and how the reader is run (returns records read and the skip log, or raises)."""

    name: str
    group: str
    files: dict[str, bytes]
    mutable: tuple[str, ...]
    run: Callable[[Path], tuple[int, Any]]
    structured: str | None = None  # "jsonl", "json" or "yaml": field-level mutations too
    gzip_ok: bool = False


def _corpus_run(fmt: str, names: tuple[str, ...], **options: Any) -> Callable[[Path], tuple[int, Any]]:
    def run(folder: Path) -> tuple[int, Any]:
        from domainlm.corpora.clean import clean_text
        from domainlm.documents.pubmed import scan_pubmed_events
        from domainlm.documents.readers import InputFile, ReaderOptions, SkipLog
        from domainlm.documents.registry import iter_documents

        files = [InputFile(folder / n, fmt, (folder / n).stat().st_size, n) for n in names]
        skips = SkipLog()
        events = scan_pubmed_events(files) if fmt == "pubmed-xml" else None
        n = 0
        for doc, kind, _ in iter_documents(files, ReaderOptions(**options), skips, pubmed_events=events):
            if kind != "protein":
                clean_text(doc.text)  # the next step of `corpus prepare`
            n += 1
        return n, skips

    return run


def _bench_run(fmt: str, test: str, **spec: Any) -> Callable[[Path], tuple[int, Any]]:
    def run(folder: Path) -> tuple[int, Any]:
        from domainlm.tasks.data import load_data
        from domainlm.tasks.spec import TaskSpec

        task = TaskSpec(version=1, format=fmt, files={"test": str(folder / test)}, source=str(folder / "task.yaml"),
                        **spec)
        data = load_data(task, needs_train=False)
        return sum(len(v) for v in data.splits.values()), None

    return run


def _recipe_run(folder: Path) -> tuple[int, Any]:
    from domainlm import config as cfgmod
    from domainlm.adapt.config import AdaptConfig

    cfgmod.load(AdaptConfig, folder / "recipe.yaml")
    return 1, None


def _task_run(folder: Path) -> tuple[int, Any]:
    from domainlm.tasks.suites import load_task

    load_task(folder / "task.yaml")
    return 1, None


def _card_run(folder: Path) -> tuple[int, Any]:
    from domainlm.corpora.cards import load_card

    load_card(folder / "card.yaml")
    return 1, None


def fuzz_targets() -> list[FuzzTarget]:
    """Every reader the issue names, plus Swiss-Prot and corpus cards. YAML seeds are the shipped files."""
    from domainlm.resources import benchmarks_dir, corpora_dir, shipped_recipes

    return [
        FuzzTarget("PubMed XML (baseline + update)", "corpus reader",
                   {"baseline.xml": PUBMED_BASELINE, "update.xml": PUBMED_UPDATE}, ("baseline.xml", "update.xml"),
                   _corpus_run("pubmed-xml", ("baseline.xml", "update.xml")), gzip_ok=True),
        FuzzTarget("MEDLINE", "corpus reader", {"records.medline": MEDLINE}, ("records.medline",),
                   _corpus_run("medline", ("records.medline",)), gzip_ok=True),
        FuzzTarget("arXiv JSONL", "corpus reader", {"arxiv.jsonl": ARXIV}, ("arxiv.jsonl",),
                   _corpus_run("arxiv", ("arxiv.jsonl",), categories=["cond-mat.*"]), structured="jsonl",
                   gzip_ok=True),
        FuzzTarget("FASTA", "corpus reader", {"proteins.fasta": FASTA}, ("proteins.fasta",),
                   _corpus_run("fasta", ("proteins.fasta",)), gzip_ok=True),
        FuzzTarget("Swiss-Prot", "corpus reader", {"proteins.dat": SWISSPROT}, ("proteins.dat",),
                   _corpus_run("swissprot", ("proteins.dat",)), gzip_ok=True),
        FuzzTarget("CoNLL", "bench reader", {"ner.tsv": CONLL}, ("ner.tsv",),
                   _bench_run("conll", "ner.tsv", head="token", metric="entity_f1")),
        FuzzTarget("PubTator", "bench reader", {"docs.pubtator": PUBTATOR}, ("docs.pubtator",),
                   _bench_run("pubtator", "docs.pubtator", head="token", metric="entity_f1")),
        FuzzTarget("BRAT", "bench reader", dict(BRAT), tuple(BRAT), _bench_run("brat", "brat", head="token",
                                                                               metric="entity_f1")),
        FuzzTarget("PubMedQA JSON", "bench reader", {"pubmedqa.json": PUBMEDQA}, ("pubmedqa.json",),
                   _bench_run("pubmedqa", "pubmedqa.json", head="sequence", metric="accuracy", mode="zeroshot",
                              labels=["yes", "no", "maybe"], prompt="Q: {question} A:"), structured="json"),
        FuzzTarget("YAML recipe (adapt)", "config", {"recipe.yaml": shipped_recipes()["biogpt-style"].read_bytes()},
                   ("recipe.yaml",), _recipe_run, structured="yaml"),
        FuzzTarget("task file", "config", {"task.yaml": (benchmarks_dir() / "biomed" / "pubmedqa.yaml").read_bytes()},
                   ("task.yaml",), _task_run, structured="yaml"),
        FuzzTarget("corpus card", "config", {"card.yaml": (corpora_dir() / "pubmed.yaml").read_bytes()},
                   ("card.yaml",), _card_run, structured="yaml"),
    ]


def _strategy(target: FuzzTarget):
    from hypothesis import strategies as st

    pos = st.integers(min_value=0, max_value=1 << 16)
    junk = st.one_of(st.sampled_from(JUNK), st.binary(min_size=1, max_size=12))
    byte_op = st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(1, 255)),
        st.tuples(st.just("truncate"), pos),
        st.tuples(st.just("insert"), pos, junk),
        st.tuples(st.just("delete"), pos, st.integers(1, 64)),
        st.tuples(st.just("duplicate"), pos, st.integers(1, 200), pos),
        st.tuples(st.just("drop_line"), pos),
        st.tuples(st.just("swap_lines"), pos, pos),
        st.tuples(st.just("number"), pos, st.sampled_from(NUMBERS)),
        st.tuples(st.just("reencode"), st.sampled_from(["latin-1", "utf-16", "cp1252"])),
    )
    json_value = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=16),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=5)
    field_op = st.tuples(st.lists(pos, min_size=1, max_size=3), st.sampled_from(["delete", "set"]), json_value)
    return st.fixed_dictionaries({
        "file": st.sampled_from(target.mutable),
        "fields": st.lists(field_op, max_size=2) if target.structured else st.just([]),
        "bytes": st.lists(byte_op, max_size=4),
        "gzip": st.sampled_from([None, None, "whole", "cut"]) if target.gzip_ok else st.just(None),
        "cut": pos,
    })


def _edit(obj: Any, path: list[int], action: str, value: Any) -> Any:
    """Delete or replace the element that ``path`` (indices taken modulo the container size) points at."""
    if not isinstance(obj, (dict, list)) or not obj:
        return value if action == "set" else obj
    keys = list(obj) if isinstance(obj, dict) else list(range(len(obj)))
    key = keys[path[0] % len(keys)]
    if len(path) > 1 and isinstance(obj[key], (dict, list)) and obj[key]:
        obj[key] = _edit(obj[key], path[1:], action, value)
    elif action == "delete":
        del obj[key]
    else:
        obj[key] = value
    return obj


def _mutate_fields(data: bytes, ops: list, kind: str) -> bytes:
    import yaml

    try:
        if kind == "jsonl":
            lines = data.decode().splitlines()
            for path, action, value in ops:
                i = path[0] % len(lines)
                lines[i] = json.dumps(_edit(json.loads(lines[i]), path[1:] or [0], action, value))
            return ("\n".join(lines) + "\n").encode()
        obj = json.loads(data) if kind == "json" else yaml.safe_load(data)
        for path, action, value in ops:
            obj = _edit(obj, path, action, value)
        if kind == "json":
            return json.dumps(obj, indent=2).encode()
        return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True).encode()
    except (ValueError, yaml.YAMLError, RecursionError):
        return data


def mutate(data: bytes, case: dict[str, Any], structured: str | None) -> bytes:
    """Apply a drawn case: field edits, then byte-level edits, then optional (truncated) gzip."""
    if case["fields"] and structured:
        data = _mutate_fields(data, case["fields"], structured)
    for op in case["bytes"]:
        kind, n = op[0], len(data)
        if kind == "flip" and n:
            i = op[1] % n
            data = data[:i] + bytes([data[i] ^ op[2]]) + data[i + 1:]
        elif kind == "truncate":
            data = data[:op[1] % (n + 1)]
        elif kind == "insert":
            i = op[1] % (n + 1)
            data = data[:i] + op[2] + data[i:]
        elif kind == "delete":
            i = op[1] % (n + 1)
            data = data[:i] + data[i + op[2]:]
        elif kind == "duplicate":
            i, j = op[1] % (n + 1), op[3] % (n + 1)
            data = data[:j] + data[i:i + op[2]] + data[j:]
        elif kind in ("drop_line", "swap_lines"):
            lines = data.split(b"\n")
            a = op[1] % len(lines)
            if kind == "drop_line":
                del lines[a]
            else:
                b = op[2] % len(lines)
                lines[a], lines[b] = lines[b], lines[a]
            data = b"\n".join(lines)
        elif kind == "number":
            runs = list(re.finditer(rb"\d+", data))
            if runs:
                m = runs[op[1] % len(runs)]
                data = data[:m.start()] + op[2] + data[m.end():]
        elif kind == "reencode":
            data = data.decode("utf-8", "replace").encode(op[1], "replace")
    if case["gzip"]:
        data = gzip.compress(data, mtime=0)
        if case["gzip"] == "cut":
            data = data[:2 + case["cut"] % max(1, len(data) - 2)]
    return data


@dataclass
class FuzzStats:
    """What one reader did with its mutated inputs."""

    target: str
    group: str
    seed: int
    examples: int = 0
    accepted: int = 0  # read with no bad record (records dropped by a filter, e.g. no abstract, do not count)
    skipped: int = 0  # read, with at least one bad record skipped and counted (reason and location logged)
    refused: int = 0  # a DomainLMError naming the file
    skip_reasons: Counter = field(default_factory=Counter)
    refusals: Counter = field(default_factory=Counter)
    refusal_example: str = ""
    bugs: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No bug found."""
        return not self.bugs and self.examples > 0

    @property
    def status(self) -> str:
        return "BUGS" if self.bugs else "OK"


def check_case(target: FuzzTarget, folder: Path, stats: FuzzStats, describe: str) -> str | None:
    """Run the reader on ``folder``; update ``stats``; return a bug description, or None."""
    from domainlm.documents.readers import QUIET_REASONS
    from domainlm.errors import DomainLMError

    names = [Path(n).name for n in target.files] + [Path(n).parent.name for n in target.files if "/" in n]
    stats.examples += 1
    try:
        with time_limit(60):
            _, skips = target.run(folder)
    except DomainLMError as exc:
        msg = str(exc)
        if not any(n in msg for n in names):
            return f"{type(exc).__name__} without the file's name: {msg[:300]!r} ({describe})"
        stats.refused += 1
        stats.refusals[type(exc).__name__] += 1
        if not stats.refusal_example:
            stats.refusal_example = " ".join(msg.replace(f"{folder}{os.sep}", "").split())[:200]
        return None
    except Hang as exc:
        return f"hang: {exc} ({describe})"
    except Exception as exc:  # the property under test: nothing but documented errors escapes a reader
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        return (f"uncaught {type(exc).__name__}: {str(exc)[:200]!r} at {Path(tb.filename).name}:{tb.lineno} "
                f"({describe})")
    counts = dict(skips.counts) if skips is not None else {}
    stats.skip_reasons.update(counts)
    if set(counts) - QUIET_REASONS:  # filters (no abstract, other arXiv category, PubMed updates) are not skips
        stats.skipped += 1
        for reason, examples in skips.examples.items():
            for ex in examples:
                if not any(n in ex for n in names):
                    return f"skip '{reason}' without the file's name: {ex[:200]!r} ({describe})"
    else:
        stats.accepted += 1
    return None


def fuzz_target(target: FuzzTarget, examples: int, seed: int = 0, *, raise_on_bug: bool = False,
                work: Path | None = None) -> FuzzStats:
    """Run ``examples`` hypothesis-drawn mutations of ``target``'s seed files through its reader.

    With ``raise_on_bug`` (tests) the first bug fails the run and hypothesis shrinks it to a minimal input;
    without it (the report) every bug is counted and the run continues.
    """
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    stats = FuzzStats(target.name, target.group, seed)
    root = Path(tempfile.mkdtemp(prefix="fuzz-", dir=work))
    counter = [0]

    @hseed(seed)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.generate, Phase.shrink] if raise_on_bug else [Phase.generate])
    @given(case=_strategy(target))
    def one(case: dict[str, Any]) -> None:
        counter[0] += 1
        folder = root / f"case-{counter[0]}"
        for name, data in target.files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(mutate(data, case, target.structured) if name == case["file"] else data)
        describe = f"mutation of {case['file']}: {_describe_case(case)}"
        try:
            bug = check_case(target, folder, stats, describe)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if bug:
            stats.bugs.append(bug)
            if raise_on_bug:
                raise AssertionError(f"{target.name}: {bug}")

    t0 = time.monotonic()
    try:
        with quiet():
            one()
    finally:
        stats.seconds = time.monotonic() - t0
        shutil.rmtree(root, ignore_errors=True)
    return stats


def _describe_case(case: dict[str, Any]) -> str:
    parts = [f"{op[1]} field {op[0]}" + (f" = {op[2]!r:.40}" if op[1] == "set" else "") for op in case["fields"]]
    parts += [repr(op)[:80] for op in case["bytes"]]
    if case["gzip"]:
        parts.append(f"gzip ({case['gzip']})")
    return ", ".join(parts) or "unchanged"
