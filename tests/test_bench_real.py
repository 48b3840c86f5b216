"""Real suites (blurb, matsci, protein-fitness): the task YAMLs, `bench download` against a local HTTP server on
127.0.0.1 (checksums, resume, refusal, offline line, cache reuse), --data-root, the budget flags and the report's
reference and shortened-protocol lines. No test touches the internet."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from harness.server import FileServer  # the same local server the corpus download tests use

from domainlm.bench import download
from domainlm.bench.run_download import verify
from domainlm.cli import main
from domainlm.errors import ConfigError, DataError, DomainLMError
from domainlm.resources import benchmarks_dir
from domainlm.tasks.suites import REAL_SUITES, load_suite, load_task

REAL_TASKS = sorted(p for s in REAL_SUITES for p in (benchmarks_dir() / s).glob("*.yaml"))


@pytest.fixture(autouse=True)
def _online(monkeypatch):
    """The suite runs with HF_HUB_OFFLINE=1; these tests decide for themselves whether we are offline."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("DOMAINLM_OFFLINE", raising=False)


@pytest.mark.parametrize("path", REAL_TASKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_task_yaml_loads_and_names_its_sources(path):
    spec = load_task(path)
    assert spec.sources and spec.protocol and spec.metric_definition
    for rel in [*spec.files.values(), *([spec.test_ids] if spec.test_ids else [])]:
        src = spec.source_for(rel)
        assert src is not None and src["license"]
        assert src["url"] is None or "/blob/" not in src["url"]  # raw files, not GitHub's HTML pages
        if src["sha256"] is None or src["url"] is None:
            assert src.get("note") or src.get("why")  # an unpinned or hand-placed file says why
    assert spec.ready or spec.note


def test_blurb_carries_the_papers_table_as_data():
    specs = load_suite("blurb")
    assert len(specs) == 13  # BLURB's 13 datasets (Gu et al. 2021)
    ref = {s.task_name: s.reference["score"] for s in specs}
    assert ref["ncbi_disease"] == 0.8782 and ref["bc5cdr_chem"] == 0.9333 and ref["pubmedqa"] == 0.5584
    assert {s.task_family for s in specs} == {"ner", "pico", "relation", "similarity", "doccls", "qa"}


def test_real_pins_match_the_realdata_copies(realdata):
    """Every sha256 pinned for a path ../shared/realdata holds is that file's sha256 (byte-for-byte copies)."""
    checked = 0
    for path in REAL_TASKS:
        for src in load_task(path).sources:
            if src["sha256"] and (realdata / src["path"]).is_file():
                assert hashlib.sha256((realdata / src["path"]).read_bytes()).hexdigest() == src["sha256"], src["path"]
                checked += 1
    assert checked >= 9


def _suite(tmp_path: Path, url: str, blobs: dict[str, bytes], *, pin: bool = True, names=("ncbi_disease",),
           suite: str = "blurb") -> Path:
    """The real suite's YAMLs, copied with their sources pointed at the local server (and pinned to ``blobs``)."""
    folder = tmp_path / "suite"
    folder.mkdir(exist_ok=True)
    for name in names:
        data = yaml.safe_load((benchmarks_dir() / suite / f"{name}.yaml").read_text())
        for src in data["sources"]:
            src["url"] = f"{url}/{src['path']}"
            src["sha256"] = hashlib.sha256(blobs[src["path"]]).hexdigest() if pin else None
            src.setdefault("note", "test copy")
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return folder


def _ncbi_blobs() -> dict[str, bytes]:
    sent = "Mutations\tO\nin\tO\nBRCA1\tO\ncause\tO\nbreast\tB-Disease\ncancer\tI-Disease\n.\tO\n\n"
    other = "Ataxia\tB-Disease\ntelangiectasia\tI-Disease\nis\tO\nrare\tO\n.\tO\n\n"
    # Large enough (about 300 kB) that a transfer cut halfway leaves a real partial file.
    return {"ncbi_disease_conll/train.tsv": ((sent + other) * 1500).encode(),
            "ncbi_disease_conll/devel.tsv": (other + sent).encode() * 3,
            "ncbi_disease_conll/test.tsv": (sent + other).encode() * 4}


def _serve(srv: FileServer, blobs: dict[str, bytes]) -> None:
    for rel, data in blobs.items():
        srv.files[f"/{rel}"] = data


def test_download_checks_resumes_and_reuses_the_cache(tmp_path):
    blobs = _ncbi_blobs()
    with FileServer() as srv:
        _serve(srv, blobs)
        srv.cut_once.add("/ncbi_disease_conll/train.tsv")  # the first transfer dies halfway
        suite = _suite(tmp_path, srv.url, blobs)
        cache = tmp_path / "cache"
        out = download(suite=str(suite), cache=str(cache), retry_wait=0)
        for rel, data in blobs.items():
            assert (cache / rel).read_bytes() == data
        assert not list(cache.rglob("*.part"))
        ranges = [rng for path, rng in srv.requests if path == "/ncbi_disease_conll/train.tsv"]
        assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"  # resumed
        assert {f["path"]: f["sha256"] for f in out["files"]} == \
            {rel: hashlib.sha256(d).hexdigest() for rel, d in blobs.items()}
        assert set(json.loads((cache / "downloads.json").read_text())) == set(blobs)
        n = len(srv.requests)
        again = download(suite=str(suite), cache=str(cache))
        assert again["downloaded"] == [] and len(srv.requests) == n  # the cache is reused: no request at all


def test_wrong_checksum_is_refused_and_nothing_kept(tmp_path, capsys):
    blobs = _ncbi_blobs()
    with FileServer() as srv:
        _serve(srv, blobs)
        suite = _suite(tmp_path, srv.url, blobs)
        srv.files["/ncbi_disease_conll/test.tsv"] = b"tampered\tO\n\n"
        cache = tmp_path / "cache"
        code = main(["bench", "download", str(suite), "--cache", str(cache), "--retries", "1", "--retry-wait", "0"])
    err = capsys.readouterr().err
    assert code == 1
    line = next(x for x in err.splitlines() if "test.tsv" in x)
    assert "sha256" in line and f"{srv.url}/ncbi_disease_conll/test.tsv" in line and "Fix:" in line
    assert not (cache / "ncbi_disease_conll/test.tsv").exists() and (cache / "ncbi_disease_conll/train.tsv").exists()


def test_unpinned_files_need_an_explicit_flag(tmp_path):
    blobs = _ncbi_blobs()
    with FileServer() as srv:
        _serve(srv, blobs)
        suite = _suite(tmp_path, srv.url, blobs, pin=False)
        with pytest.raises(DomainLMError, match="pins no sha256.*--allow-unpinned"):
            download(suite=str(suite), cache=str(tmp_path / "c"))
        assert not srv.requests  # refused before anything was fetched
        out = download(suite=str(suite), cache=str(tmp_path / "c"), allow_unpinned=True)
        assert all(f["pinned"] is None and len(f["sha256"]) == 64 for f in out["files"])


def test_offline_and_unreachable_say_how_to_place_files(tmp_path, monkeypatch, capsys):
    blobs = _ncbi_blobs()
    suite = _suite(tmp_path, "http://127.0.0.1:9", blobs)  # port 9 (discard): nothing listens there
    cache = tmp_path / "cache"
    with pytest.raises(DomainLMError) as err:
        download(suite=str(suite), cache=str(cache), retries=0, timeout=2)
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and all("127.0.0.1:9" in x and "Fix:" in x for x in lines)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["bench", "download", str(suite), "--cache", str(cache)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    assert "offline" in lines[0] and "copy it to" in lines[0] and "--data-root" in lines[0]


def test_data_root_is_verified_and_missing_files_named(tmp_path):
    blobs = _ncbi_blobs()
    root = tmp_path / "root"
    for rel, data in blobs.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    suite = _suite(tmp_path, "http://127.0.0.1:9", blobs)
    spec = load_task(suite / "ncbi_disease.yaml")
    assert [r["pinned"] for r in verify(spec, root)] == [r["sha256"] for r in verify(spec, root)]
    (root / "ncbi_disease_conll/test.tsv").write_bytes(b"x\tO\n\n")
    with pytest.raises(DataError, match="does not match the pinned"):
        verify(spec, root)
    from domainlm.bench import bench

    (root / "ncbi_disease_conll/test.tsv").unlink()
    with pytest.raises(ConfigError, match="not found under --data-root"):
        bench(model="tiny-bert", suite=str(suite), data_root=str(root), out=str(tmp_path / "o"))


def test_flip_zip_is_unpacked_and_its_splits_read(tmp_path):
    """protein-fitness/gb1: the splits zip (one top folder, as FLIP's) is fetched, unpacked beside itself, and
    the flip reader takes train/dev/test from the set and validation columns."""
    import io
    import zipfile

    from domainlm.tasks.data import load_data

    rows = ["sequence,target,set,validation"]
    rows += [f"MKV{'A' * (i % 5)}LG,{i / 10},train," for i in range(12)]
    rows += [f"MKW{'C' * (i % 3)}LG,{i / 7},train,True" for i in range(4)]
    rows += [f"MQV{'D' * (i % 4)}LG,{i / 3},test," for i in range(6)]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("splits/three_vs_rest.csv", "\n".join(rows) + "\n")
        zf.writestr("splits/one_vs_rest.csv", rows[0] + "\n")
    blobs = {"flip/gb1/splits.zip": buf.getvalue()}
    with FileServer() as srv:
        _serve(srv, blobs)
        suite = _suite(tmp_path, srv.url, blobs, names=("gb1",), suite="protein-fitness")
        cache = tmp_path / "cache"
        download(suite=str(suite), cache=str(cache))
    assert (cache / "flip/gb1/three_vs_rest.csv").is_file() and (cache / "flip/gb1/splits.zip").is_file()
    data = load_data(load_task(suite / "gb1.yaml"), data_root=cache)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 12, "dev": 4, "test": 6}
    assert data.test[1].label == pytest.approx(1 / 3) and data.test[1].text == "MQVDLG"


def test_not_ready_task_is_refused_by_name():
    from domainlm.bench.run_download import prepare_real

    specs = load_suite("blurb", ["bioasq"])
    with pytest.raises(ConfigError, match="registered but cannot run yet.*registration"):
        prepare_real(specs, data_root="/nonexistent", tasks=["bioasq"])


@pytest.mark.slow  # imports and a model build: over 10 s on the shared 2-core machine
def test_first_use_downloads_then_bench_reports_sha_reference_and_shortening(tmp_path, monkeypatch, capsys):
    """bench on a real suite without --data-root fetches into $DOMAINLM_CACHE/bench, then scores with the budget
    flags; the report carries each file's sha256, the published reference and the shortened-protocol line."""
    from domainlm.bench import bench

    blobs = _ncbi_blobs()
    monkeypatch.setenv("DOMAINLM_CACHE", str(tmp_path / "dlc"))
    with FileServer() as srv:
        _serve(srv, blobs)
        suite = _suite(tmp_path, srv.url, blobs)
        report = bench(model="tiny-bert", suite=str(suite), out=str(tmp_path / "out"), seeds=1, epochs=0.01,
                       max_train_examples=8, bootstrap=0, threads=1)
    assert (tmp_path / "dlc" / "bench" / "ncbi_disease_conll" / "train.tsv").is_file()
    task = report["tasks"][0]
    assert {f["path"]: f["sha256"] for f in task["data_files"]} == \
        {rel: hashlib.sha256(d).hexdigest() for rel, d in blobs.items()}
    assert task["reference"]["score"] == 0.8782
    assert report["protocol"]["shortened"]
    why = report["protocol"]["tasks"]["ncbi_disease"]
    assert any("0.01 epoch(s) instead of the task's 1 epoch(s)" in w for w in why)
    assert any("train split capped at 8 of 3000" in w for w in why)
    assert any("1 seed(s) instead of the protocol's 3" in w for w in why)
    out = capsys.readouterr().out
    assert "Shortened protocol" in out and "Published reference beside ours" in out and "0.878" in out
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Data files" in md and hashlib.sha256(blobs["ncbi_disease_conll/test.tsv"]).hexdigest() in md


@pytest.mark.slow
def test_blurb_names_give_the_override_files_scores(tmp_path, realdata, monkeypatch):
    """NCBI-disease and BC5CDR through the blurb suite score exactly as today's override files at the same settings."""
    from domainlm.bench import bench

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # --data-root: nothing is fetched

    common = dict(model="minilm", data_root=str(realdata), seeds=1, max_examples=60, bootstrap=0, threads=1)
    new = bench(suite="blurb", tasks=["ncbi_disease", "bc5cdr_chem"], out=str(tmp_path / "new"),
                override=["bc5cdr_chem.finetune_evals=2"], **common)
    old = bench(suite="biomed", tasks=["ner", "ner_pubtator"], mode="finetune", out=str(tmp_path / "old"),
                override=["@" + str(benchmarks_dir() / "biomed" / "realdata-blurb.overrides"),
                          "ner_pubtator.labels=Chemical", "ner_pubtator.other_labels=drop"], **common)
    scores_new = {t["name"]: t["model"]["seeds"] for t in new["tasks"]}
    scores_old = {t["name"]: t["model"]["seeds"] for t in old["tasks"]}
    assert scores_new["ncbi_disease"] == scores_old["ner"]
    assert scores_new["bc5cdr_chem"] == scores_old["ner_pubtator"]


def test_shortened_protocol_and_reference_lines():
    """The budget flags are named task by task; ours is printed beside the paper's, with the macro over the same
    tasks and the tasks not run (pure functions: no model)."""
    from domainlm.bench.config import BenchConfig
    from domainlm.bench.report import reference_lines
    from domainlm.bench.run import shortened_protocol
    from domainlm.tasks.data import TaskData

    spec = load_task(benchmarks_dir() / "blurb" / "ncbi_disease.yaml")
    td = TaskData({}, None, {}, notes=["train split capped at 500 of 5424 records (--max-train-examples)"])
    cfg = BenchConfig(model="minilm", suite="blurb", epochs=0.2, seeds=1, max_train_examples=500)
    why = shortened_protocol(spec, cfg, 1.0, td)
    assert why == ["fine-tuned for 0.2 epoch(s) instead of the task's 1 epoch(s) (--epochs)",
                   "train split capped at 500 of 5424 records (--max-train-examples)",
                   "1 seed(s) instead of the protocol's 3 (--seeds)"]
    assert shortened_protocol(spec, BenchConfig(model="minilm", suite="blurb"), 1.0, TaskData({}, None, {})) == []
    side = {"score": 0.7}
    report = {"tasks": [{"name": "ncbi_disease", "family": "ner", "model": side, "baseline": None, "protocol": "P",
                         "reference": spec.reference, "data_files": [{}], "protocol_shortened": why}],
              "aggregate": {"real_suite": {"suite_tasks": ["a", "ncbi_disease"], "run": ["ncbi_disease"],
                                           "not_run": ["a"], "reference_model": "PubMedBERT", "reference_source": "S",
                                           "model_macro": 0.7, "reference_macro": 0.8782}},
              "protocol": {"shortened": True, "tasks": {"ncbi_disease": why}}}
    lines = reference_lines(report)
    assert "ncbi_disease  ours 0.700  vs  0.878" in lines[1]
    assert lines[2].startswith("BLURB-style score over the 1 of 2 suite tasks run") and "PubMedBERT 0.878" in lines[2]
    assert lines[3] == "Not run: a" and lines[4].startswith("Shortened protocol")
    assert lines[5:] == [f"  - {w}" for w in why]
