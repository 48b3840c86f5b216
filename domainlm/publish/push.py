"""Upload a verified published folder to the Hugging Face Hub, or list what would be uploaded.

The commit is built file by file (``create_commit`` with one ``CommitOperationAdd`` per file) rather
than with ``upload_folder``'s ignore rules, so ``--dry-run`` lists exactly the files a real push sends.
The token is read from ``HF_TOKEN`` or huggingface_hub's stored login and never leaves this module:
it is not logged, not returned, and scrubbed from any error text.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainlm.errors import DomainLMError
from domainlm.sources.hub import hub_endpoint, hub_offline

log = logging.getLogger(__name__)


def find_token() -> tuple[str | None, str]:
    """The Hub token and where it came from (a description, never the token)."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var, "").strip():
            return os.environ[var].strip(), f"the {var} environment variable"
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception:  # a damaged token file must not stop a dry run; treated as no token
        token = None
    return (token, "huggingface_hub's stored login (hf auth login)") if token else (None, "none")


def redact(text: str, secrets: tuple[str | None, ...]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


class _RedactFilter(logging.Filter):
    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if self.secret in msg:
            record.msg, record.args = msg.replace(self.secret, "***"), None
        return True


@contextlib.contextmanager
def redacted_logs(secret: str | None) -> Iterator[None]:
    """Scrub ``secret`` from every log record emitted while the block runs (ours and libraries')."""
    if not secret:
        yield
        return
    filt = _RedactFilter(secret)
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(filt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(filt)


@dataclass
class UploadFile:
    path_in_repo: str
    local: Path
    size: int


def upload_plan(folder: str | Path) -> list[UploadFile]:
    """Every file under ``folder`` (sorted), as it would be committed."""
    folder = Path(folder)
    out = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out.append(UploadFile(p.relative_to(folder).as_posix(), p, p.stat().st_size))
    return out


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def describe(plan: list[UploadFile], repo_id: str, url: str, private: bool, token_source: str) -> str:
    total = sum(f.size for f in plan)
    width = max((len(f.path_in_repo) for f in plan), default=10)
    lines = [f"{len(plan)} files ({_size(total)}) -> {url} (model repo, branch main, "
             f"{'private' if private else 'public'}, created if missing); token: {token_source}"]
    lines += [f"  {f.path_in_repo:<{width}}  {_size(f.size):>9}" for f in plan]
    return "\n".join(lines)


def push(folder: str | Path, repo_id: str, *, private: bool = True, dry_run: bool = False,
         commit_message: str | None = None) -> dict[str, Any]:
    """Upload ``folder`` to the Hub model repo ``repo_id`` (created if missing), or only list it.

    Returns what was (or would be) uploaded and where; never the token.

    Raises:
        DomainLMError: no token for a real push, or the Hub refused the upload (message scrubbed).
    """
    token, token_source = find_token()
    ep = hub_endpoint()
    url = f"{ep}/{repo_id}"
    plan = upload_plan(folder)
    info: dict[str, Any] = {"repo_id": repo_id, "endpoint": ep, "url": url, "private": private, "dry_run": dry_run,
                            "token_source": token_source,
                            "files": [{"path": f.path_in_repo, "size": f.size} for f in plan]}
    if dry_run:
        print("dry run, nothing uploaded: would upload " + describe(plan, repo_id, url, private, token_source))
        if token is None:
            print("note: no Hugging Face token is configured, so a real push would be refused; set HF_TOKEN or "
                  "run `hf auth login`")
        return info
    if token is None:
        raise DomainLMError("pushing needs a Hugging Face token with write access: set HF_TOKEN or run "
                            "`hf auth login`, then run the command again")
    if hub_offline():
        raise DomainLMError("HF_HUB_OFFLINE is set (domainlm's Makefile sets it), so huggingface_hub refuses to "
                            "upload; run the push with HF_HUB_OFFLINE=0")
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=ep, token=token)
    with redacted_logs(token):
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            ops = [CommitOperationAdd(path_in_repo=f.path_in_repo, path_or_fileobj=str(f.local)) for f in plan]
            commit = api.create_commit(repo_id, operations=ops, repo_type="model",
                                       commit_message=commit_message or "Upload model published with domainlm")
        except Exception as exc:  # any failure inside huggingface_hub: report it without the token or traceback
            detail = redact(f"{type(exc).__name__}: {exc}", (token,))
            raise DomainLMError(f"upload of {folder} to {url} failed: {detail}") from None
    info["commit"] = getattr(commit, "oid", None)
    info["commit_url"] = redact(str(getattr(commit, "commit_url", "")), (token,))
    log.info("uploaded %d files to %s (commit %s)", len(plan), url, info["commit"])
    return info
