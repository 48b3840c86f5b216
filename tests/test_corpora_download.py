"""corpus download against a local HTTP server on 127.0.0.1: md5 checks, a cut transfer resumed with Range,
a wrong md5, UniProt's metalink. No test touches the internet."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
from harness.server import FileServer

from domainlm.cli import main
from domainlm.corpora import download
from domainlm.errors import ConfigError, DataError, DomainLMError

FIX = Path(__file__).parent / "fixtures" / "corpora"


def _pubmed_files(server: FileServer, wrong_md5: str | None = None) -> dict[str, bytes]:
    # Large enough that a cut halfway leaves a real partial file (gzip of the fixture, padded by repetition).
    base = gzip.compress((FIX / "pubmed_baseline.xml").read_bytes())
    update = gzip.compress((FIX / "pubmed_update.xml").read_bytes())
    blobs = {"pubmed25n0001.xml.gz": base, "pubmed25n0002.xml.gz": update}
    for name, data in blobs.items():
        md5 = hashlib.md5(data).hexdigest() if name != wrong_md5 else "0" * 32
        server.files[f"/pubmed/{name}"] = data
        server.files[f"/pubmed/{name}.md5"] = f"MD5({name})= {md5}\n".encode()
    server.files["/pubmed/README.txt"] = b"not a data file"
    return blobs


def test_pubmed_download_lists_checks_and_skips_existing(tmp_path):
    with FileServer() as srv:
        blobs = _pubmed_files(srv)
        out = tmp_path / "pm"
        summary = download(source="pubmed-baseline", base_url=srv.url + "/pubmed/", out=str(out), retry_wait=0)
        assert [f["name"] for f in summary["files"]] == list(blobs)
        assert all(f["status"] == "downloaded" for f in summary["files"])
        for name, data in blobs.items():
            assert (out / name).read_bytes() == data
        assert not list(out.glob("*.part"))
        assert json.loads((out / "download.json").read_text())["source"] == "pubmed-baseline"
        n = len(srv.requests)
        again = download(source="pubmed-baseline", base_url=srv.url + "/pubmed/", out=str(out), limit=1)
        assert again["files"] == [{"name": "pubmed25n0001.xml.gz", "bytes": len(blobs["pubmed25n0001.xml.gz"]),
                                   "status": "present"}]
        assert all(not path.endswith(".gz") for path, _ in srv.requests[n:])  # nothing fetched again
    # What was downloaded is a readable corpus: the update's DeleteCitation applies to the baseline.
    from domainlm.documents.pubmed import scan_pubmed_events
    from domainlm.documents.readers import ReaderOptions, SkipLog
    from domainlm.documents.registry import iter_documents, resolve_inputs

    files = resolve_inputs([str(out / "pubmed25n*.xml.gz")])
    skips = SkipLog()
    docs = [d for d, _, _ in iter_documents(files, ReaderOptions(), skips, pubmed_events=scan_pubmed_events(files))]
    assert len(docs) == 4 and skips.counts["deleted"] == 1


def test_transfer_cut_halfway_is_resumed_with_range(tmp_path):
    with FileServer() as srv:
        blobs = _pubmed_files(srv)
        srv.cut_once.add("/pubmed/pubmed25n0001.xml.gz")
        out = tmp_path / "pm"
        summary = download(source="pubmed-baseline", base_url=srv.url + "/pubmed/", out=str(out),
                           files=["pubmed25n0001.xml.gz"], retry_wait=0)
        assert summary["files"][0]["status"] == "downloaded"
        assert (out / "pubmed25n0001.xml.gz").read_bytes() == blobs["pubmed25n0001.xml.gz"]
        half = len(blobs["pubmed25n0001.xml.gz"]) // 2
        ranges = [r for p, r in srv.requests if p == "/pubmed/pubmed25n0001.xml.gz"]
        assert ranges == [None, f"bytes={half}-"]


def test_wrong_md5_keeps_nothing_and_says_so(tmp_path):
    with FileServer() as srv:
        _pubmed_files(srv, wrong_md5="pubmed25n0002.xml.gz")
        out = tmp_path / "pm"
        with pytest.raises(DataError, match="md5 does not match"):
            download(source="pubmed-updates", base_url=srv.url + "/pubmed/", out=str(out), retry_wait=0)
        assert (out / "pubmed25n0001.xml.gz").exists()  # the good file before it is kept
        assert not (out / "pubmed25n0002.xml.gz").exists() and not list(out.glob("*.part"))
        fetched = [p for p, _ in srv.requests if p == "/pubmed/pubmed25n0002.xml.gz"]
        assert len(fetched) == 2  # fetched again once from the start before giving up


def test_uniprot_md5_from_metalink(tmp_path):
    data = gzip.compress((FIX / "proteins.fasta").read_bytes())
    md5 = hashlib.md5(data).hexdigest()
    metalink = (f'<?xml version="1.0" encoding="UTF-8"?>\n<metalink xmlns="http://www.metalinker.org/" version="3.0">'
                f'<files><file name="uniprot_sprot.fasta.gz"><size>{len(data)}</size><verification>'
                f'<hash type="md5">{md5}</hash></verification></file></files></metalink>').encode()
    with FileServer() as srv:
        srv.files["/uniprot/uniprot_sprot.fasta.gz"] = data
        srv.files["/uniprot/RELEASE.metalink"] = metalink
        out = tmp_path / "up"
        assert main(["corpus", "download", "uniprot-sprot", "--base-url", srv.url + "/uniprot/", "--out", str(out),
                     "--retry-wait", "0"]) == 0
        assert (out / "uniprot_sprot.fasta.gz").read_bytes() == data


def test_server_errors_are_clear(tmp_path, capsys):
    with FileServer() as srv:
        _pubmed_files(srv)
        with pytest.raises(DomainLMError, match="HTTP 404"):
            download(source="pubmed-baseline", base_url=srv.url + "/pubmed/", out=str(tmp_path / "x"),
                     files=["pubmed25n0009.xml.gz"], retry_wait=0)
        with pytest.raises(DomainLMError, match="lists no file"):
            download(source="pubmed-baseline", base_url=srv.url + "/empty/", out=str(tmp_path / "y"), retry_wait=0)
    with pytest.raises(ConfigError, match="base_url"):
        download(source="pubmed-baseline", base_url="ftp.example.org/pubmed", out=str(tmp_path / "z"))
    assert main(["corpus", "download", "pubmed-basline"]) == 2
    assert "did you mean 'pubmed-baseline'" in capsys.readouterr().err
