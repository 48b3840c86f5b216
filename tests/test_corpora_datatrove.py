"""corpus prepare on datatrove: parity with the previous engine, PubMed updates across tasks, the Slurm and Ray
executors, and benchmark decontamination."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from domainlm.cli import main
from domainlm.corpora import prepare
from domainlm.corpora.pack import load_documents, load_prepared, read_corpus_manifest
from domainlm.corpora.run import prepare_card

FIX = Path(__file__).parent / "fixtures" / "corpora"
PUBMED = [str(FIX / "pubmed_baseline.xml"), str(FIX / "pubmed_update.xml")]

# `domainlm corpus prepare pubmed-sample --model minilm` with the engine before datatrove (a process pool with an
# in-memory datasketch LSH), measured on 2026-12-04 just before it was replaced. The datatrove engine keeps the
# same 188 documents and writes identical blocks: its MinHash LSH (9 bands x 13 rows for threshold 0.8 and 128
# permutations, word-trigram shingles) drops the same two near-duplicates, PMIDs 39000118 and 39000176 (edited
# copies of earlier abstracts in the sample), so there is no near-duplicate difference to list.
OLD_ENGINE_COUNTS = {
    "documents": 188, "tokens": 60957, "records_read": 191, "tokens_in_blocks": 60672,
    "tail_tokens_dropped": {"train": 76, "validation": 209},
    "drops": {"deleted": 2, "exact_duplicate": 1, "near_duplicate": 2, "no_abstract": 12, "superseded": 1},
}
OLD_ENGINE_SPLITS = {"train": {"blocks": 223, "tokens": 57088, "documents": 176, "files": 1},
                     "validation": {"blocks": 14, "tokens": 3584, "documents": 12, "files": 1}}


def _summary(out: Path, blocks: bool = True) -> dict:
    """What must not depend on the executor: counts, splits, every block and the document table. Across task
    counts (``blocks=False``) blocks differ where tasks end (each drops its own partial block), so the block counts
    and the tail are left out and the documents, their indices, token counts and drops compared."""
    m = read_corpus_manifest(out)
    task_bound = ("tokens_in_blocks", "tail_tokens_dropped")
    keep = {"counts": {k: v for k, v in m["counts"].items() if k != "drop_examples" and (blocks or k not in task_bound)},
            "splits": m["splits"] if blocks else {s: v["documents"] for s, v in m["splits"].items()}}
    for split in ("train", "validation") if blocks else ():
        table = load_prepared(out, split).with_format("arrow")[:]
        keep[split] = [np.asarray(table.column(c).combine_chunks().flatten()).tobytes()
                       for c in ("input_ids", "doc_ids")]
    keep["documents"] = load_documents(out).to_dict()
    return keep


def test_pubmed_sample_gives_the_old_engines_counts(tmp_path):
    out = tmp_path / "pm"
    assert main(["corpus", "prepare", "pubmed-sample", "--model", "minilm", "--out", str(out),
                 "--executor", "local"]) == 0
    m = read_corpus_manifest(out)
    assert {k: v for k, v in m["counts"].items()
            if k not in ("drop_examples", "word_tokenised_documents")} == OLD_ENGINE_COUNTS
    assert m["counts"]["word_tokenised_documents"] == 0  # abstracts are prose: nothing to note
    assert m["splits"] == OLD_ENGINE_SPLITS
    assert sorted(m["counts"]["drop_examples"]["near_duplicate"]) == ["39000118", "39000176"]
    assert m["counts"]["drop_examples"]["superseded"] == ["PMID 39000010"]
    assert m["near_dup"]["threshold"] == 0.8 and m["near_dup"]["num_perm"] == 128
    assert (m["near_dup"]["bands"], m["near_dup"]["rows"]) == (9, 13)
    assert m["executor"]["kind"] == "local" and not (out / ".work").exists()


def test_pubmed_updates_give_the_same_documents_on_1_and_4_tasks(tmp_path):
    one = prepare_card("pubmed-sample", "tiny-llama", tmp_path / "one", block_size=64, tasks=1)
    four = prepare_card("pubmed-sample", "tiny-llama", tmp_path / "four", block_size=64, tasks=4, workers=2)
    assert four["executor"]["tasks"] == 4
    assert one["counts"]["drops"]["superseded"] == 1 and one["counts"]["drops"]["deleted"] == 2
    ids = load_documents(tmp_path / "one")["id"]
    assert "39000020" not in ids and "39000021" not in ids  # deleted by the update file
    assert ids.count("39000010") == 1  # the update's version replaced the baseline's
    assert _summary(tmp_path / "one", blocks=False) == _summary(tmp_path / "four", blocks=False)


def test_pubmed_updates_and_minhash_buckets_across_task_boundaries(tmp_path):
    """A revision and a deletion in a later file reach records that other tasks read; with 4 tasks and 2 LSH
    bands, datatrove splits each band between 2 bucket tasks."""
    import re

    records = re.findall(r"<PubmedArticle>.*?</PubmedArticle>", (FIX / "pubmed_baseline.xml").read_text(), re.S)
    head = '<?xml version="1.0"?>\n<PubmedArticleSet>\n'
    parts = []
    for k, chunk in enumerate((records[:2], records[2:4], records[4:])):
        path = tmp_path / f"base{k}.xml"
        path.write_text(head + "\n".join(chunk) + "\n</PubmedArticleSet>\n")
        parts.append(str(path))
    kw = dict(model="tiny-llama", block_size=16, validation_fraction=0.0, near_dup_num_perm=16)
    whole = prepare(inputs=PUBMED, out=str(tmp_path / "whole"), **kw)
    split = prepare(inputs=[*parts, PUBMED[1]], out=str(tmp_path / "four"), tasks=4, workers=2, **kw)
    assert split["executor"]["tasks"] == 4 and (split["near_dup"]["bands"], split["near_dup"]["rows"]) == (2, 8)
    assert split["stage_seconds"].keys() >= {"read", "updates", "hash", "exact", "minhash-buckets", "pack"}
    assert whole["counts"]["drops"] == split["counts"]["drops"] and whole["counts"]["drops"]["superseded"] == 1
    assert load_documents(tmp_path / "whole")["id"] == load_documents(tmp_path / "four")["id"]


def _fake_slurm(bin_dir: Path, log: Path) -> None:
    """sbatch that runs each array task of the job script at once (so dependencies hold), plus srun/scontrol."""
    scripts = {
        "sbatch": f"""#!/bin/bash
script="${{@: -1}}"
n=$(ls {log} | wc -l)
cp "$script" {log}/job-$n.sh
pik=$(grep -o '[^ ]*executor.pik' "$script")
[ -n "$pik" ] && cp "$(dirname "$pik")/launch_script.slurm" {log}/saved-$n.slurm
array=$(sed -n 's/^#SBATCH --array=0-\\([0-9]*\\).*/\\1/p' "$script")
for i in $(seq 0 ${{array:-0}}); do
  SLURM_ARRAY_TASK_ID=$i SLURM_JOB_ID=$n SLURM_NODELIST=localhost bash "$script" > /dev/null 2>&1 || exit 1
done
echo "Submitted batch job $((1000 + n))"
""",
        "srun": """#!/bin/bash
while [[ "$1" == -* ]]; do if [[ "$1" == -n ]]; then shift; fi; shift; done
exec "$@"
""",
        "scontrol": """#!/bin/bash
[[ "$1 $2" == "show hostnames" ]] && echo localhost
exit 0
""",
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.slow  # every stage's job script starts a fresh interpreter per array task (~50 of them): ~5 min
def test_slurm_executor_with_a_stubbed_sbatch_8_tasks_equal_1_local_task(tmp_path, monkeypatch):
    bin_dir, log = tmp_path / "bin", tmp_path / "jobs"
    bin_dir.mkdir()
    log.mkdir()
    _fake_slurm(bin_dir, log)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    kw = dict(inputs=PUBMED, model="tiny-llama", block_size=16, validation_fraction=0.2)
    local = prepare(out=str(tmp_path / "local"), tasks=1, **kw)
    out = tmp_path / "slurm"
    m = prepare(out=str(out), executor="slurm", partition="debug", time="00:10:00", tasks=8, **kw)
    assert m["executor"] == {"kind": "slurm", "tasks": 8, "workers": -1} and len(m["layout"]["tasks"]) == 8
    assert _summary(out, blocks=False) == _summary(tmp_path / "local", blocks=False)
    assert m["counts"]["tokens"] == local["counts"]["tokens"] and m["counts"]["drops"] == local["counts"]["drops"]
    submitted = sorted(log.glob("job-*.sh"), key=lambda p: int(p.stem.split("-")[1]))
    saved = {p.read_text() for p in log.glob("saved-*.slurm")}  # the launch_script.slurm datatrove wrote
    jobs = [p.read_text() for p in submitted if "launch_pickled_pipeline" in p.read_text()]
    assert len(jobs) == 8 and set(jobs) == saved  # what was submitted is datatrove's launch script, stage by stage
    first = jobs[0]
    assert "#SBATCH --partition=debug" in first and "#SBATCH --time=00:10:00" in first
    assert "#SBATCH --array=0-7" in first and "domainlm-read" in first
    assert "domainlm-index" in jobs[-1] and "#SBATCH --array=0-0" in jobs[-1]  # the index step is one small task


@pytest.mark.slow  # starting a local Ray cluster takes ~20-40 s on 2 busy cores
def test_ray_executor_on_a_local_cluster(tmp_path):
    ray = pytest.importorskip("ray")
    # the same task count on both sides: blocks never span tasks, so a different count would differ where tasks end
    kw = dict(inputs=PUBMED, model="tiny-llama", block_size=16, validation_fraction=0.2, tasks=2)
    local = prepare(out=str(tmp_path / "local"), **kw)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        m = prepare(out=str(tmp_path / "ray"), executor="ray", **kw)
    finally:
        ray.shutdown()
    assert m["executor"]["kind"] == "ray" and m["counts"] == local["counts"]
    assert _summary(tmp_path / "ray") == _summary(tmp_path / "local")


def test_decontamination_drops_a_planted_test_sentence(tmp_path):
    test_file = Path(__file__).parent.parent / "benchmarks" / "biomed" / "data" / "doccls" / "test.jsonl"
    planted = json.loads(test_file.read_text().splitlines()[1])["text"]
    rng = np.random.default_rng(0)
    vocab = "cell protein gene tumour binding assay patient dose kinase pathway receptor serum".split()
    texts = [" ".join(rng.choice(vocab, 40)) + "." for _ in range(30)]
    texts[7] = texts[7] + " " + planted + " " + texts[8]
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    kw = dict(inputs=[str(src)], model="tiny-llama", block_size=16, validation_fraction=0.0)
    m = prepare(out=str(tmp_path / "o"), decontaminate=["biomed"], **kw)
    d = m["decontamination"]
    assert m["counts"]["drops"] == {"test_set_overlap": 1} and m["counts"]["documents"] == 29
    assert d["dropped"] == 1 and d["dropped_by_task"] == {"biomed:doccls": 1} and d["ngram"] == 13
    assert d["examples"][0]["id"] == "d7" and d["suites"] == ["biomed"] and d["test_ngrams"]["biomed:doccls"] > 0
    assert "d7" not in load_documents(tmp_path / "o")["id"]
    # an explicit file works the same way; a shorter overlap than 13 words is not contamination
    (tmp_path / "t.txt").write_text(planted + "\n" + " ".join(texts[3].split()[:12]) + "\n")
    m2 = prepare(out=str(tmp_path / "o2"), decontaminate=[str(tmp_path / "t.txt")], **kw)
    assert m2["decontamination"]["dropped_by_task"] == {"file:t.txt": 1}


def test_batched_minhash_signatures_are_datatroves_bytes(tmp_path, monkeypatch):
    """Signature permutes many documents' shingles at once (and reduces modulo the Mersenne prime with shifts):
    its band files must be byte for byte what datatrove's per-document MinhashDedupSignature writes with the same
    shingles, across batch boundaries, for documents without shingles and for proteins."""
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashDedupSignature

    from domainlm.corpora.clean import shingle_hashes
    from domainlm.corpora.steps.base import Whitespace
    from domainlm.corpora.steps.minhash import Signature, minhash_config

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(0, 120, size=60)]
    texts[5:5] = ["", "two words", "three small words"]
    proteins = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=int(n))) for n in rng.integers(1, 400, size=20)]

    class PerDocument(MinhashDedupSignature):  # datatrove's own stage 1, fed our shingles
        kind = "text"

        def get_shingles(self, text):
            return shingle_hashes(text, self.kind).astype(np.uint64).reshape((-1, 1))

    monkeypatch.setattr(Signature, "BATCH_SHINGLES", 64)  # many batches, and documents larger than one batch
    for kind, docs in (("text", texts), ("protein", proteins)):
        for threshold, perm in ((0.8, 128), (0.5, 32)):
            cfg = minhash_config(threshold, perm)
            ours, ref = tmp_path / f"ours-{kind}-{perm}", tmp_path / f"ref-{kind}-{perm}"
            Signature(str(ours), cfg).run(
                iter([Document(text=t, id=str(i), metadata={"kind": kind}) for i, t in enumerate(docs)]), 0, 1)
            reference = PerDocument(str(ref), config=cfg, language=Whitespace())
            reference.kind = kind
            reference.run(iter([Document(text=t, id=str(i)) for i, t in enumerate(docs)]), 0, 1)
            files = sorted(p.relative_to(ref) for p in ref.rglob("*.sig"))
            assert len(files) == cfg.num_buckets
            assert sorted(p.relative_to(ours) for p in ours.rglob("*.sig")) == files
            for f in files:
                assert (ours / f).read_bytes() == (ref / f).read_bytes(), (kind, perm, f)
            assert (ref / files[0]).stat().st_size > 0


def test_mersenne_modulo_matches_numpy_on_the_edges():
    from domainlm.corpora.steps.minhash import mod_mersenne61

    p = (1 << 61) - 1
    edges = [0, 1, p - 8, p - 1, p, p + 1, 2 * p - 1, 2 * p, 2 * p + 7, (1 << 64) - 1, (1 << 64) - 8,
             (7 << 61) + p - 3, (7 << 61) + p - 7, (1 << 63) + 12345]
    x = np.array(edges + list(np.random.default_rng(1).integers(0, 2**63, size=1000, dtype=np.uint64) * 2 + 1),
                 dtype=np.uint64)
    assert (mod_mersenne61(x.copy()) == x % np.uint64(p)).all()
