"""Prepared-corpus storage (format 2): uint16/uint32 token ids, document starts instead of per-token ids, the
memory-mapped reader, the loss mask column, and the previous format (1) still loading."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from domainlm.corpora import prepare
from domainlm.corpora.pack import (
    FORMAT_VERSION,
    SplitWriter,
    load_documents,
    load_prepared,
    read_corpus_manifest,
    split_files,
    token_dtype,
)
from domainlm.errors import DataError

FIX = Path(__file__).parent / "fixtures"
PUBMED = [str(FIX / "corpora" / "pubmed_baseline.xml"), str(FIX / "corpora" / "pubmed_update.xml")]
# `prepare(inputs=PUBMED, model="tiny-llama", block_size=16, validation_fraction=0.2, near_dup_num_perm=16)` run by
# the previous version (commit 1d70e9b, format 1: int32 Arrow shards with a per-token doc_ids column).
FORMAT_1 = FIX / "prepared_v1"
SETTINGS = dict(inputs=PUBMED, model="tiny-llama", block_size=16, validation_fraction=0.2, near_dup_num_perm=16)


def _columns(out: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    ds = load_prepared(out, split).with_format("numpy")
    return ds["input_ids"], ds["doc_ids"]


def _as_uint32(src: Path, dst: Path) -> None:
    """The same corpus with its ids stored as uint32 (what a vocabulary over 65,536 entries gets)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    for task in m["layout"]["tasks"]:
        for split in ("train", "validation"):
            path = split_files(dst / split, task["rank"])["tokens"]
            if path.is_file():
                np.fromfile(path, dtype="<u2").astype("<u4").tofile(path)
    m["layout"].update(dtype="uint32", bytes_per_token=4)
    (dst / "manifest.json").write_text(json.dumps(m))


def test_format_2_stores_uint16_ids_and_document_starts(tmp_path):
    m = prepare(out=str(tmp_path / "v2"), **SETTINGS)
    layout = m["layout"]
    assert layout["version"] == FORMAT_VERSION == 2 and layout["dtype"] == "uint16" and not layout["loss_mask"]
    assert token_dtype(65_536).itemsize == 2 and token_dtype(65_537).itemsize == 4
    files = split_files(tmp_path / "v2" / "train", 0)
    assert files["tokens"].stat().st_size == m["splits"]["train"]["blocks"] * 16 * 2  # 2 bytes a token, no doc ids
    starts = np.load(files["docs"])
    assert starts.dtype == np.uint32 and starts.shape[1] == 2 and len(starts) <= m["splits"]["train"]["documents"]
    assert not list((tmp_path / "v2").glob("*/shard-*.arrow")) or list((tmp_path / "v2" / "documents").iterdir())
    # The previous engine wrote exactly these blocks and documents from the same input (one task).
    for split in ("train", "validation"):
        new, old = _columns(tmp_path / "v2", split), _columns(FORMAT_1, split)
        assert new[0].dtype == np.int32 and np.array_equal(new[0], old[0]) and np.array_equal(new[1], old[1])
    assert load_documents(tmp_path / "v2").to_dict() == load_documents(FORMAT_1).to_dict()


def test_reader_offers_what_callers_use(tmp_path):
    prepare(out=str(tmp_path / "c"), **SETTINGS)
    ds = load_prepared(tmp_path / "c", "train")
    n = len(ds)
    assert ds.column_names == ["input_ids", "doc_ids"] and ds.num_rows == n > 4
    row = ds[1]
    assert isinstance(row["input_ids"], list) and len(row["input_ids"]) == 16
    t = ds.with_format("torch")
    assert tuple(t[[3, 0, 3]]["input_ids"].shape) == (3, 16) and t[-1]["doc_ids"].shape == (16,)
    assert np.array_equal(t[[3, 0]]["input_ids"].numpy(), ds.with_format("numpy")[[3, 0]]["input_ids"])
    assert np.array_equal(ds.with_format("numpy")[1:3]["doc_ids"], ds.with_format("numpy")["doc_ids"][1:3])
    assert [r["input_ids"] for r in ds] == ds[:]["input_ids"]
    assert ds.remove_columns("doc_ids").column_names == ["input_ids"]
    assert ds.with_format("arrow")[:].num_rows == n and ds.to_dataset().num_rows == n
    with pytest.raises(IndexError):
        ds[[n]]


@pytest.mark.slow  # three tiny adapt runs and a prepare: ~25 s on 2 busy cores
def test_uint16_uint32_and_the_previous_format_train_the_same_losses(tmp_path):
    from domainlm.adapt import adapt

    prepare(out=str(tmp_path / "u16"), **SETTINGS)
    _as_uint32(tmp_path / "u16", tmp_path / "u32")
    for split in ("train", "validation"):
        assert all(np.array_equal(a, b) for a, b in zip(_columns(tmp_path / "u16", split),
                                                         _columns(tmp_path / "u32", split), strict=True))
    losses = {}
    for name, corpus in (("format 1", FORMAT_1), ("uint16", tmp_path / "u16"), ("uint32", tmp_path / "u32")):
        m = adapt(model="tiny-llama", corpus=str(corpus), out=str(tmp_path / f"run-{name}"), max_steps=3, lr=3e-3,
                  eval_every=0, save_every=0, batch_size=4, eval_batches=1, log_every=1, seed=0, bf16="off")
        rows = [json.loads(x) for x in (tmp_path / f"run-{name}" / "metrics.jsonl").read_text().splitlines()]
        losses[name] = ([r["loss"] for r in rows if r["type"] == "train"], m["metrics"]["final"]["domain_loss"])
    assert len(losses["uint16"][0]) == 3
    assert losses["format 1"] == losses["uint16"] == losses["uint32"]


def test_a_newer_format_is_refused_with_one_line(tmp_path):
    shutil.copytree(FORMAT_1, tmp_path / "c")
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    m["layout"] = {"version": FORMAT_VERSION + 1}
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"newer domainlm .*prepare it again") as err:
        load_prepared(tmp_path / "c")
    assert "\n" not in str(err.value)


def test_a_truncated_token_file_is_refused(tmp_path):
    prepare(out=str(tmp_path / "c"), **SETTINGS)
    path = split_files(tmp_path / "c" / "train", 0)["tokens"]
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(DataError, match="modified after it was prepared"):
        load_prepared(tmp_path / "c")


def test_loss_mask_is_stored_as_bits_and_read_back(tmp_path):
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 40, size=30)
    flat = rng.integers(0, 260, size=int(lengths.sum()))
    mask = rng.integers(0, 2, size=len(flat))
    mask[:int(lengths[:5].sum())] = 1  # the first batch has no mask: its documents count everywhere
    w = SplitWriter(tmp_path / "train", 0, 16, token_dtype(260))
    for a, b in ((0, 5), (5, 11), (11, 30)):  # batches: the mask's partial block carries over
        lo, hi = int(lengths[:a].sum()), int(lengths[:b].sum())
        w.add(flat[lo:hi], lengths[a:b], np.arange(a, b), mask[lo:hi] if a else None)
    got = w.close()
    blocks = len(flat) // 16
    assert got["blocks"] == blocks and got["tail"] == len(flat) % 16 and got["mask"]
    assert (tmp_path / "train" / "00000.mask").stat().st_size == blocks * 2  # 16 bits a block
    from domainlm.artifacts import write_manifest

    plain = SplitWriter(tmp_path / "train", 1, 16, token_dtype(260))  # a task without any masked document
    plain.add(flat[:48], np.array([48]), np.array([0]))
    assert not plain.close()["mask"]
    write_manifest(tmp_path, "corpus", block_size=16, layout={
        "version": 2, "dtype": "uint16", "loss_mask": True,
        "tasks": [{"rank": 0, "doc_base": 7, "documents": 30, "blocks": {"train": blocks, "validation": 0}},
                  {"rank": 1, "doc_base": 37, "documents": 1, "blocks": {"train": 3, "validation": 0}}]})
    both = load_prepared(tmp_path, "train").with_format("numpy")
    assert len(both) == blocks + 3 and (both[blocks:]["loss_mask"] == 1).all()
    assert (both[blocks:]["doc_ids"] == 37).all()
    ds = both[:blocks]
    assert both.column_names == ["input_ids", "doc_ids", "loss_mask"]
    assert np.array_equal(ds["input_ids"].ravel(), flat[:blocks * 16])
    assert np.array_equal(ds["loss_mask"].ravel(), mask[:blocks * 16]) and ds["loss_mask"].dtype == np.int8
    assert np.array_equal(ds["doc_ids"].ravel(), 7 + np.repeat(np.arange(30), lengths)[:blocks * 16])


def _synthetic(folder: Path, blocks: int, block_size: int = 256, tasks: int = 4) -> None:
    """A format-2 corpus of ``blocks`` train blocks of random ids in documents of ~300 tokens."""
    from domainlm.artifacts import write_manifest

    rng = np.random.default_rng(blocks)
    layout = {"version": 2, "dtype": "uint16", "loss_mask": False, "tasks": []}
    base = 0
    for r in range(tasks):
        n_tokens = blocks // tasks * block_size
        lengths = rng.integers(100, 500, size=n_tokens // 100)
        lengths = lengths[np.cumsum(lengths) <= n_tokens + 500]
        w = SplitWriter(folder / "train", r, block_size, np.uint16)
        w.add(rng.integers(0, 30_000, size=int(lengths.sum()), dtype=np.uint16), lengths, np.arange(len(lengths)))
        got = w.close()
        layout["tasks"].append({"rank": r, "doc_base": base, "documents": len(lengths),
                                "blocks": {"train": got["blocks"], "validation": 0}})
        base += len(lengths)
    write_manifest(folder, "corpus", block_size=block_size, layout=layout)


_READ = """
import sys, numpy as np, torch
from domainlm.adapt.batches import read_rows
from domainlm.corpora import load_prepared
ds = load_prepared(sys.argv[1], "train").with_format("torch")
rng = np.random.default_rng(0)
for _ in range(300):  # the reads of 300 steps of batch 8, as adapt does them
    ids, docs = read_rows(ds, rng.integers(0, len(ds), size=8).tolist())
status = {x.split(":")[0]: int(x.split()[1]) for x in open("/proc/self/status") if x.startswith(("VmHWM", "RssAnon"))}
print(len(ds), status["VmHWM"], status["RssAnon"])  # not ru_maxrss: it keeps the forking parent's peak
"""


@pytest.mark.slow  # writes 1x and 10x corpora (~20 and ~200 MB): ~15 s
def test_memory_mapped_reading_keeps_peak_rss_flat(tmp_path):
    peaks = {}
    for scale in (1, 10):
        _synthetic(tmp_path / f"x{scale}", 40_000 * scale)
        out = subprocess.run([sys.executable, "-c", _READ, str(tmp_path / f"x{scale}")], capture_output=True,
                             text=True, check=True).stdout.split()
        peaks[scale] = int(out[1])  # peak RSS, KiB (file pages of the memory map included)
        assert int(out[0]) >= 39_000 * scale
    assert abs(peaks[10] - peaks[1]) <= 0.10 * peaks[1], peaks
    assert read_corpus_manifest(tmp_path / "x10")["layout"]["tasks"][3]["doc_base"] > 0


def _pubmed(path: Path, records: dict[int, str]) -> str:
    body = "".join(f'<PubmedArticle><MedlineCitation Status="MEDLINE" Owner="NLM"><PMID Version="1">{pmid}</PMID>'
                   f"<Article><Journal><Title>J</Title></Journal><ArticleTitle>Title.</ArticleTitle><Abstract>"
                   f"<AbstractText>{text}</AbstractText></Abstract></Article></MedlineCitation></PubmedArticle>"
                   for pmid, text in records.items())
    path.write_text(f'<?xml version="1.0" ?>\n<PubmedArticleSet>{body}</PubmedArticleSet>\n')
    return str(path)


@pytest.mark.parametrize("near_dup", [False, True])
def test_exact_duplicates_of_a_superseded_version_are_kept_whether_keys_are_hashed_early_or_late(tmp_path, near_dup):
    """With near-dup off, exact keys are written while reading (before the PubMed update barrier) and their
    resolution leaves out what the updates remove; with it on they are hashed after the barrier. Same result:
    PMID 2 copied PMID 1's old abstract, which the update revised, so PMID 2 is no longer a duplicate."""
    same = "An abstract that two records share word for word, long enough to pass the length filter."
    files = [_pubmed(tmp_path / "base.xml", {1: same, 2: same, 3: "A third abstract, different from the others."}),
             _pubmed(tmp_path / "update.xml", {1: "The revised abstract of record one replaces the old one."})]
    m = prepare(inputs=files, model="tiny-llama", out=str(tmp_path / "o"), block_size=8, validation_fraction=0,
                near_dup=near_dup, near_dup_num_perm=16, tasks=2, workers=1)
    assert m["counts"]["drops"] == {"superseded": 1}
    assert sorted(load_documents(tmp_path / "o")["id"]) == ["1", "2", "3"]
    assert ("hash" in m["stage_seconds"]) == near_dup


def test_documents_with_loss_segments_get_a_token_mask(tmp_path):
    """The contract for chat/instruction readers: ``metadata['loss_segments']`` = [(text, counts), ...] makes the
    tokens of the counting segments (and the closing separator after one) 1 in ``loss_mask``, the rest 0."""
    import pyarrow as pa

    from domainlm.corpora.steps.tokenise import TokenLog
    from domainlm.corpora.tokenizer_plan import Encoder, plan_tokenizer

    plan, _ = plan_tokenizer("tiny-llama")
    log = TokenLog(str(tmp_path), 0, plan, 0.0, parallel=False)
    log.add("plain", "A plain document with no segments.")
    log.add("chat", "Question: what binds? Answer: the ligand.", [("Question: what binds?", False),
                                                                   (" Answer: the ligand.", True)])
    log.close()
    rows = pa.ipc.open_stream(str(tmp_path / "tokens" / "00000.arrow")).read_all().to_pylist()
    enc = Encoder(plan).encode(["Question: what binds?", " Answer: the ligand."])
    pre, suf = plan.prefix, plan.suffix
    assert rows[1]["ids"] == pre + enc[0] + enc[1] + suf
    assert rows[1]["loss_mask"] == [0] * (len(pre) + len(enc[0])) + [1] * (len(enc[1]) + len(suf))
    assert rows[0]["loss_mask"] == [1] * len(rows[0]["ids"])  # plain text beside chat data counts everywhere
