"""publish --push: the upload path against a local stand-in for the Hub, dry runs, and token hygiene.

The stand-in is an HTTP server on 127.0.0.1 in a thread that records every request and answers the
three Hub endpoints a push uses (create repo, preupload, commit). huggingface_hub runs unpatched over
real sockets, so the test covers its request building, auth header and ndjson commit payload; only
huggingface.co itself is replaced (through HF_ENDPOINT).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from harness.runs import shared_full_run

FAKE_TOKEN = "hf_FAKEtokenForTests0123456789abcdefXYZ"


class FakeHub:
    """Records requests; answers create-repo, validate-yaml (the README card's metadata is parsed as the Hub
    would, 400 when it is not a YAML mapping), preupload (every file 'regular', so no LFS/Xet) and commit."""

    def __init__(self):
        self.requests: list[dict] = []
        self.validated: list[dict] = []  # card metadata the stand-in parsed
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append({"method": "POST", "path": self.path, "headers": dict(self.headers),
                                     "body": body})
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    name = json.loads(body)
                    repo = f"{name.get('organization') or 'me'}/{name['name']}"
                    return self._json({"url": f"{hub.url}/{repo}", "name": repo})
                if path == "/api/validate-yaml":
                    import yaml

                    content = json.loads(body)["content"]
                    meta = yaml.safe_load(content.split("---")[1]) if content.startswith("---") else None
                    if not isinstance(meta, dict):
                        return self._json({"errors": [{"message": "no YAML metadata"}]}, status=400)
                    hub.validated.append(meta)
                    return self._json({"errors": [], "warnings": []})
                if "/preupload/" in path:
                    files = json.loads(body)["files"]
                    return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                 for f in files]})
                if "/commit/" in path:
                    repo = path.split("/api/models/")[1].split("/commit/")[0]
                    return self._json({"commitUrl": f"{hub.url}/{repo}/commit/abc123", "commitOid": "abc123",
                                       "pullRequestUrl": None})
                self.send_error(404)

            def do_GET(self):
                if self.path.startswith("/api/agent-harnesses"):  # huggingface_hub's own daily registry fetch
                    return self.send_error(404)
                hub.requests.append({"method": "GET", "path": self.path, "headers": dict(self.headers), "body": b""})
                self.send_error(404)

            def _json(self, obj, status=200):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def committed_files(self) -> dict[str, bytes]:
        """path -> content of the files in the commit's ndjson payload."""
        out = {}
        for r in self.requests:
            if "/commit/" in r["path"]:
                for line in r["body"].splitlines():
                    item = json.loads(line)
                    if item.get("key") == "file":
                        out[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        return out


def _online(monkeypatch, url: str) -> None:
    """Point huggingface_hub at the local stand-in and lift the test session's offline mode for it."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)  # read once, when huggingface_hub was imported
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="session")
def full_run(session_dir: Path) -> Path:
    return shared_full_run(session_dir)


@pytest.fixture
def fake_hub(monkeypatch):
    with FakeHub() as hub:
        _online(monkeypatch, hub.url)
        yield hub


def _folder(tmp_path: Path) -> Path:
    """A small folder standing in for a published model (the upload does not care what is in it)."""
    folder = tmp_path / "pub"
    (folder / "sub").mkdir(parents=True)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# card\n")
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "curves.png").write_bytes(b"\x89PNG fake")
    return folder


def _scan_for_token(*texts: str, folders: tuple[Path, ...] = ()) -> list[str]:
    hits = [f"text #{i}" for i, t in enumerate(texts) if FAKE_TOKEN in t]
    for folder in folders:
        for p in folder.rglob("*"):
            if p.is_file() and FAKE_TOKEN.encode() in p.read_bytes():
                hits.append(str(p))
    return hits


# ----------------------------------------------------------------------------------------------------
# tier 1/2: the push module against the local hub
# ----------------------------------------------------------------------------------------------------

def test_push_uploads_every_file_with_the_token_in_the_auth_header_only(fake_hub, tmp_path, monkeypatch, capsys,
                                                                       caplog):
    from domainlm.publish.push import push

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    folder = _folder(tmp_path)
    with caplog.at_level(logging.DEBUG):
        info = push(folder, "lab/tiny-domain", private=True)
    paths = [r["path"].split("?")[0] for r in fake_hub.requests]
    assert paths == ["/api/repos/create", "/api/validate-yaml", "/api/models/lab/tiny-domain/preupload/main",
                     "/api/models/lab/tiny-domain/commit/main"]
    assert fake_hub.validated == [{"license": "mit"}]
    create = json.loads(fake_hub.requests[0]["body"])
    assert create["name"] == "tiny-domain" and create["organization"] == "lab" and create["visibility"] == "private"
    assert all(r["headers"].get("authorization") == f"Bearer {FAKE_TOKEN}" for r in fake_hub.requests)
    assert fake_hub.committed_files() == {"README.md": b"---\nlicense: mit\n---\n# card\n", "config.json": b"{}",
                                          "sub/curves.png": b"\x89PNG fake"}
    assert info["commit"] == "abc123" and info["url"] == f"{fake_hub.url}/lab/tiny-domain"
    out = capsys.readouterr()
    assert not _scan_for_token(json.dumps(info), out.out, out.err, caplog.text)


def test_dry_run_lists_exactly_what_a_push_sends_and_sends_nothing(fake_hub, tmp_path, monkeypatch, capsys):
    from domainlm.publish.push import push

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    folder = _folder(tmp_path)
    info = push(folder, "lab/tiny-domain", dry_run=True)
    printed = capsys.readouterr().out
    assert fake_hub.requests == []
    assert "nothing uploaded" in printed and f"{fake_hub.url}/lab/tiny-domain" in printed
    assert "the HF_TOKEN environment variable" in printed and FAKE_TOKEN not in printed
    listed = [f["path"] for f in info["files"]]
    assert listed == ["README.md", "config.json", "sub/curves.png"]
    assert all(p in printed for p in listed)
    push(folder, "lab/tiny-domain")
    assert sorted(fake_hub.committed_files()) == listed


def test_push_without_token_is_refused(fake_hub, tmp_path, monkeypatch):
    from domainlm.errors import DomainLMError
    from domainlm.publish.push import push

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(DomainLMError, match="needs a Hugging Face token.*HF_TOKEN"):
        push(_folder(tmp_path), "lab/tiny-domain")
    assert fake_hub.requests == []


def test_hub_error_is_reported_without_the_token(tmp_path, monkeypatch, capsys):
    """A refused upload: the message names the repo, and neither it nor the logs carry the token."""
    from domainlm.errors import DomainLMError
    from domainlm.publish.push import push

    with FakeHub() as hub:
        _online(monkeypatch, hub.url)
        monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
        hub.server.RequestHandlerClass.do_POST = lambda self: (  # every call answers 403
            self.rfile.read(int(self.headers.get("Content-Length") or 0)), self.send_error(403, "Forbidden"))
        with pytest.raises(DomainLMError) as exc:
            push(_folder(tmp_path), "lab/tiny-domain")
    assert "lab/tiny-domain" in str(exc.value) and "403" in str(exc.value)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__
    out = capsys.readouterr()
    assert not _scan_for_token(str(exc.value), out.out, out.err)


# ----------------------------------------------------------------------------------------------------
# end to end: publish --push on a tiny run
# ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_publish_push_end_to_end_never_leaks_the_token(full_run, fake_hub, tmp_path, monkeypatch, capsys, caplog):
    from domainlm.cli import main

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    out = tmp_path / "published"
    with caplog.at_level(logging.DEBUG):
        assert main(["publish", str(full_run), "--out", str(out), "--push", "lab/tiny-domain", "--dry-run"]) == 0
        dry = capsys.readouterr()
        assert fake_hub.requests == [] and "nothing uploaded" in dry.out
        # Same run, same settings: the verified folder is reused, not exported again.
        assert main(["publish", str(full_run), "--out", str(out), "--push", "lab/tiny-domain"]) == 0
    real = capsys.readouterr()
    assert "pushing it as it is" in real.out
    committed = fake_hub.committed_files()
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert sorted(committed) == on_disk
    assert all(f"  {name}" in dry.out for name in on_disk), "the dry run must list every uploaded file"
    assert b'AutoModelForCausalLM.from_pretrained("lab/tiny-domain")' in committed["README.md"]
    meta = fake_hub.validated[-1]
    assert meta["model-index"][0]["name"] == "tiny-domain" and meta["library_name"] == "transformers"
    assert not _scan_for_token(dry.out, dry.err, real.out, real.err, caplog.text,
                               folders=(out, full_run, tmp_path))


def test_publish_push_without_token_fails_before_any_work(full_run, tmp_path, monkeypatch):
    from domainlm.errors import ConfigError
    from domainlm.publish import publish

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="token"):
        publish(run_dir=str(full_run), out=str(tmp_path / "o"), push="lab/x")
    assert not (tmp_path / "o").exists()


def test_dry_run_without_push_and_bad_repo_id_are_config_errors():
    from domainlm.config import build
    from domainlm.errors import ConfigError
    from domainlm.publish import PublishConfig

    with pytest.raises(ConfigError) as exc:
        build(PublishConfig, {"run_dir": "r", "out": "o", "dry_run": True})
    assert "add --push" in str(exc.value)
    with pytest.raises(ConfigError, match="not a Hub repo id"):
        build(PublishConfig, {"run_dir": "r", "out": "o", "push": "a/b/c"})
