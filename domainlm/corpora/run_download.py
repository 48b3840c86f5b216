"""How ``domainlm corpus download`` fetches PubMed baseline/update files and UniProt Swiss-Prot, md5-checked, resumable.

Each file is fetched to ``NAME.part``; an interrupted transfer resumes from where it stopped with an
HTTP ``Range`` request; the md5 published next to the file (PubMed's ``NAME.md5``, UniProt's
``RELEASE.metalink``) is checked before the file is renamed to ``NAME``, so a file with its final name
is always complete. A file already present under its final name is skipped.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from domainlm.corpora.config import DownloadConfig
from domainlm.errors import ConfigError, DataError, DomainLMError

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class _Remote:
    base_url: str
    pattern: str  # file names to take from the server's folder listing
    md5: Literal["sibling", "metalink"]
    default_files: tuple[str, ...] = ()


REMOTES: dict[str, _Remote] = {
    "pubmed-baseline": _Remote("https://ftp.ncbi.nlm.nih.gov/pubmed/baseline/", r"pubmed\d\dn\d{4}\.xml\.gz", "sibling"),
    "pubmed-updates": _Remote("https://ftp.ncbi.nlm.nih.gov/pubmed/updatefiles/", r"pubmed\d\dn\d{4}\.xml\.gz",
                              "sibling"),
    "uniprot-sprot": _Remote("https://ftp.uniprot.org/pub/databases/uniprot/current_release/knowledgebase/complete/",
                             r"uniprot_sprot\.fasta\.gz", "metalink", ("uniprot_sprot.fasta.gz",)),
}
USER_AGENT = "domainlm-corpus-download/0.1 (+https://pypi.org/project/domainlm)"
CHUNK = 1 << 20


def _fetch(url: str, timeout: float, headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - URLs are ours or the user's


def _get_text(url: str, timeout: float) -> str:
    try:
        with _fetch(url, timeout) as resp:
            return resp.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        raise DomainLMError(f"{url}: the server answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DomainLMError(f"cannot reach {url} ({reason}); check the network or --base-url") from None


def _listing(base: str, pattern: str, timeout: float) -> list[str]:
    html = _get_text(base, timeout)
    names = sorted(set(re.findall(rf'(?<![\w.]){pattern}(?![\w.])', html)))
    if not names:
        raise DomainLMError(f"{base} lists no file matching {pattern}; is --base-url the right folder?")
    return names


def _expected_md5(remote: _Remote, base: str, name: str, timeout: float, metalink: dict[str, str] | None) -> str:
    if remote.md5 == "sibling":
        text = _get_text(base + name + ".md5", timeout)
        m = re.search(r"\b([0-9a-fA-F]{32})\b", text)
        if not m:
            raise DataError(f"{base}{name}.md5 does not hold an md5 checksum ({text[:80]!r})")
        return m.group(1).lower()
    if metalink is None or name not in metalink:
        raise DataError(f"{base}RELEASE.metalink lists no md5 for {name}; cannot verify the download")
    return metalink[name]


def _metalink(base: str, timeout: float) -> dict[str, str]:
    """md5 of every file in a Metalink 3 file (UniProt's RELEASE.metalink), namespace-agnostic."""
    text = _get_text(base + "RELEASE.metalink", timeout)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise DataError(f"{base}RELEASE.metalink is not valid XML ({exc})") from None
    out = {}
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "file" and el.get("name"):
            for h in el.iter():
                if h.tag.rsplit("}", 1)[-1] == "hash" and (h.get("type") or "").lower() == "md5" and h.text:
                    out[el.get("name")] = h.text.strip().lower()
    return out


def file_digest(path: Path, algo: str = "md5") -> str:
    """Hex digest of a file (md5 for the NCBI/UniProt checksums, sha256 for pinned benchmark files)."""
    h = hashlib.new(algo, usedforsecurity=False) if algo == "md5" else hashlib.new(algo)
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def md5_file(path: Path) -> str:
    return file_digest(path, "md5")


def _progress(name: str, total: int | None, done: int):
    """A tqdm bar on a terminal (silent otherwise, so logs and tests stay clean); None without tqdm."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with transformers; without it the log lines are the progress
        return None
    return tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False,
                disable=None)


def _transfer(url: str, part: Path, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (Range request when part already has bytes), with a progress bar."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = _fetch(url, timeout, headers)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            return  # nothing left to fetch: the part is complete (or wrong, which the md5 will tell)
        raise
    with resp:
        if have and resp.status != 206:
            have = 0  # the server ignored Range: start over
        expected = resp.headers.get("Content-Length")
        received = 0
        bar = _progress(part.name[: -len(".part")], int(expected) + have if expected else None, have)
        try:
            with open(part, "ab" if have else "wb") as fh:
                while True:
                    block = resp.read(CHUNK)
                    if not block:
                        break
                    fh.write(block)
                    received += len(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
        if expected is not None and received < int(expected):
            raise http.client.IncompleteRead(b"", int(expected) - received)


def _download_one(url: str, final: Path, md5: str | None, config: DownloadConfig, *, algo: str = "md5",
                  mismatch_fix: str = "The server copy may be being replaced (PubMed updates daily): try again "
                                      "later") -> int:
    """Fetch ``url`` to ``final`` via ``final.part`` (resumed across attempts), renamed only once its ``algo``
    digest equals ``md5`` (None: accepted as fetched; the caller records the digest). Returns the size."""
    part = final.with_name(final.name + ".part")
    wait = config.retry_wait
    mismatches = 0
    for attempt in range(config.retries + 1):
        try:
            _transfer(url, part, config.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code in (403, 404, 410):
                raise DomainLMError(f"{url}: HTTP {exc.code} {exc.reason}; is the file name right?") from None
            error = f"HTTP {exc.code}"
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            error = str(getattr(exc, "reason", None) or exc.__class__.__name__)
        else:
            got = file_digest(part, algo) if md5 is not None else None
            if got == md5:
                part.replace(final)
                return final.stat().st_size
            mismatches += 1
            part.unlink()  # a wrong file cannot be resumed: fetch it again from the start
            error = f"{algo} {got} does not match the expected {md5}"
            if mismatches >= 2:
                break
        if attempt < config.retries:
            log.warning("%s: %s; retrying in %.1f s (%s)", final.name, error, wait,
                        f"resuming at byte {part.stat().st_size}" if part.exists() else "from the start")
            time.sleep(wait)
            wait *= 2
    if mismatches:
        raise DataError(f"{url}: the downloaded file's {algo} does not match the expected checksum {md5} (twice); "
                        f"nothing was kept. {mismatch_fix}")
    raise DomainLMError(f"{url}: download failed after {config.retries + 1} attempts ({error}); run the command "
                        f"again to resume from the {part.stat().st_size if part.exists() else 0} bytes kept in "
                        f"{part}")


def run(config: DownloadConfig) -> dict[str, Any]:
    from domainlm.artifacts import atomic_write_json
    from domainlm.corpora.cards import data_dir

    remote = REMOTES[config.source]
    base = config.base_url or remote.base_url
    if not base.endswith("/"):
        base += "/"
    out = Path(config.out).expanduser() if config.out else data_dir() / config.source
    out.mkdir(parents=True, exist_ok=True)
    if config.files:
        names = list(config.files)
        bad = [n for n in names if "/" in n or n.startswith(".")]
        if bad:
            raise ConfigError([f"'files': plain file names expected, got {', '.join(bad)}"])
    elif remote.default_files:
        names = list(remote.default_files)
    else:
        names = _listing(base, remote.pattern, config.timeout)
    if config.limit is not None:
        names = names[: config.limit]
    metalink = _metalink(base, config.timeout) if remote.md5 == "metalink" else None
    results = []
    for i, name in enumerate(names, 1):
        final = out / name
        if final.exists() and not config.verify_existing:
            log.info("[%d/%d] %s is already downloaded", i, len(names), name)
            results.append({"name": name, "bytes": final.stat().st_size, "status": "present"})
            continue
        md5 = _expected_md5(remote, base, name, config.timeout, metalink)
        if final.exists():
            if md5_file(final) == md5:
                results.append({"name": name, "bytes": final.stat().st_size, "md5": md5, "status": "verified"})
                continue
            log.warning("%s: md5 does not match %s; downloading it again", final, md5)
            final.unlink()
        log.info("[%d/%d] downloading %s", i, len(names), base + name)
        size = _download_one(base + name, final, md5, config)
        results.append({"name": name, "bytes": size, "md5": md5, "status": "downloaded"})
    summary = {"source": config.source, "base_url": base, "out": str(out), "files": results}
    atomic_write_json(out / "download.json", summary)
    log.info("%d file(s) in %s", len(results), out)
    return summary
