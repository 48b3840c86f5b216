"""How ``domainlm bench download`` fetches a real suite's data files into the cache, pinned and verified.

A real suite's task YAMLs (``benchmarks/blurb``, ``matsci``, ``protein-fitness``) list in ``sources`` the
canonical URL of every data file (at a fixed commit or release), its sha256 and license. Files land in
``$DOMAINLM_CACHE/bench/<path>`` (default ``~/.cache/domainlm/bench``), where ``path`` is the per-task relative
path of the YAML. Those paths are the ones ``../shared/realdata`` uses, so a folder laid out like that
(or like the cache) works as ``bench --data-root`` for whatever it holds.

The transfer itself is :mod:`domainlm.corpora.run_download`'s (one way to download: ``NAME.part`` resumed with
HTTP Range, renamed only once its checksum matches, a progress bar on a terminal). Here:

* a file whose YAML pins no sha256 is refused unless ``--allow-unpinned`` (its sha256 is then recorded);
* a file already in place is checked against its pinned sha256 and reused (no request is made);
* offline (``HF_HUB_OFFLINE=1`` or ``DOMAINLM_OFFLINE=1``), a source without a URL, an unreachable source or
  a wrong checksum is one line naming the file, the URL and the fix;
* ``unpack: zip|tar.gz`` sources are extracted beside the archive (a single top folder, as in GitHub's
  archives, is dropped).

``bench`` calls :func:`ensure_files` on first use of a real suite without ``--data-root``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from domainlm.bench.config import BenchDownloadConfig
from domainlm.errors import ConfigError, DataError, DomainLMError
from domainlm.tasks.spec import TaskSpec

log = logging.getLogger(__name__)
RECORD = "downloads.json"  # what was fetched into a cache folder: path -> url, sha256, bytes


def bench_cache() -> Path:
    """Where real-suite data is downloaded: ``$DOMAINLM_CACHE/bench`` (default ``~/.cache/domainlm/bench``)."""
    from domainlm.sources.source import cache_dir

    return cache_dir() / "bench"


def offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE",
                                                                                   "DOMAINLM_OFFLINE"))


def needed_files(spec: TaskSpec) -> list[str]:
    """The data paths a task reads (relative to the data root): its split files and its test_ids file."""
    paths = list(dict.fromkeys(spec.files.values()))
    return paths + ([spec.test_ids] if spec.test_ids else [])


def missing_files(spec: TaskSpec, root: Path) -> list[str]:
    return [p for p in needed_files(spec) if not (root / p).exists()]


def _digest(path: Path) -> str:
    from domainlm.artifacts import sha256_file

    return sha256_file(path)


def _place_by_hand(src: dict[str, Any], target: Path) -> str:
    pin = f" (sha256 {src['sha256']})" if src.get("sha256") else ""
    where = "it" if src.get("url") else "it from its source (see the task's note)"
    return (f"download {where} on a machine with network and copy it to {target}{pin}, or run bench with --data-root DIR, a folder "
            "laid out like the cache (../shared/realdata is one for the datasets it holds)")


def verify(spec: TaskSpec, root: Path) -> list[dict[str, Any]]:
    """sha256 of each file the task reads under ``root``, checked against the pinned one where there is one.

    Returns one record per file: path, sha256, pinned (the YAML's sha256 or None), url, license. A mismatch
    is a :class:`DataError` naming the file, the URL and the fix.
    """
    out, problems = [], []
    for rel in needed_files(spec):
        path = root / rel
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        src = spec.source_for(rel) or {}
        # A pinned checksum belongs to the source file itself, not to a folder or to files unpacked from it.
        pinned = src.get("sha256") if src.get("path") == rel and not src.get("unpack") else None
        if path.is_dir():
            from domainlm.bench.report import _hash_input  # the folder hash the manifest uses too

            sha = _hash_input(str(path))["sha256"]
        else:
            sha = _digest(path)
        if pinned and sha != pinned:
            problems.append(f"{path}: sha256 {sha} does not match the pinned {pinned} of {src.get('url')} "
                            f"({spec.source}). Fix: delete it and run `domainlm bench download` again, or place "
                            "the exact file from that URL there")
        out.append({"path": rel, "file": str(path), "sha256": sha, "pinned": pinned, "url": src.get("url"),
                    "license": src.get("license"), "files": len(files)})
    if problems:
        raise DataError("\n".join(problems))
    return out


def _unpack(archive: Path, kind: str) -> None:
    """Extract beside the archive, dropping a single top folder (GitHub archives); refuse paths leaving it."""
    import shutil
    import tarfile
    import tempfile
    import zipfile

    dest = archive.parent
    with tempfile.TemporaryDirectory(dir=dest, prefix=".unpack-") as tmp:
        tmp_path = Path(tmp)
        try:
            if kind == "zip":
                with zipfile.ZipFile(archive) as zf:
                    for name in zf.namelist():
                        if name.startswith("/") or ".." in Path(name).parts:
                            raise DataError(f"{archive}: member {name!r} would be written outside {dest}; refused")
                    zf.extractall(tmp_path)
            else:
                with tarfile.open(archive, "r:gz") as tf:
                    tf.extractall(tmp_path, filter="data")  # refuses absolute paths, '..' and device files
        except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
            raise DataError(f"{archive}: cannot unpack it as {kind} ({exc}); delete it and download again") from None
        top = [p for p in tmp_path.iterdir() if not p.name.startswith("__MACOSX")]
        base = top[0] if len(top) == 1 and top[0].is_dir() else tmp_path
        for item in base.iterdir():
            target = dest / item.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            item.replace(target)


def _record(root: Path, entries: list[dict[str, Any]]) -> None:
    import json

    from domainlm.artifacts import atomic_write_json

    path = root / RECORD
    try:
        old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        old = {}
    old.update({e["path"]: {k: e.get(k) for k in ("url", "sha256", "pinned", "bytes", "license")} for e in entries})
    atomic_write_json(path, old)


def fetch(specs: list[TaskSpec], root: Path, *, allow_unpinned: bool = False, retries: int = 3,
          retry_wait: float = 2.0, timeout: float = 60.0, suite: str = "SUITE") -> list[dict[str, Any]]:
    """Make every file the tasks read present under ``root``: reuse what is there, download the rest.

    Returns one record per source (path, url, sha256, pinned, bytes, status). Every file that cannot be
    made present is one line of the raised :class:`DomainLMError` (file, URL, fix), all at once.
    """
    from domainlm.corpora.config import DownloadConfig
    from domainlm.corpora.run_download import _download_one

    dl = DownloadConfig(source="pubmed-baseline", retries=retries, retry_wait=retry_wait, timeout=timeout)
    results: list[dict[str, Any]] = []
    problems: list[str] = []
    done: set[str] = set()
    for spec in specs:
        for rel in missing_files(spec, root):
            src = spec.source_for(rel)
            if src is None:
                problems.append(f"{root / rel}: task {spec.task_name} reads it but {spec.source} gives no source "
                                "for it. Fix: add one under 'sources', or place the file by hand")
                continue
            if src["path"] in done:
                continue
            done.add(src["path"])
            target = root / src["path"]
            url, sha = src.get("url"), src.get("sha256")
            hand = _place_by_hand(src, target)
            if target.exists() and src.get("unpack"):  # an archive fetched before: unpack it again
                _unpack(target, src["unpack"])
                results.append({"path": src["path"], "url": url, "sha256": _digest(target), "pinned": sha,
                                "bytes": target.stat().st_size, "status": "unpacked"})
                continue
            if url is None:
                problems.append(f"{target}: {spec.task_name} has no public URL for this file ({src.get('note') or spec.note}). "
                                f"Fix: place it by hand at {target}")
                continue
            if offline():
                problems.append(f"{target}: offline (HF_HUB_OFFLINE/DOMAINLM_OFFLINE is set), so {url} is not "
                                f"fetched. Fix: {hand}")
                continue
            if sha is None and not allow_unpinned:
                problems.append(f"{target}: {spec.source} pins no sha256 for {url}, so the download could not be "
                                "verified. Fix: pass --allow-unpinned to accept it (its sha256 is recorded in "
                                f"{root / RECORD} and in the bench report), or place a file you trust at {target}")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            log.info("downloading %s -> %s", url, target)
            try:
                size = _download_one(url, target, sha, dl, algo="sha256",
                                     mismatch_fix=f"The pinned file has changed or the URL is wrong. Fix: report "
                                                  f"it, or place the file from the pinned commit at {target}")
            except DomainLMError as exc:
                problems.append(f"{target}: {exc}. Fix: check the network and run `domainlm bench download "
                                f"{suite}` again (it resumes), or {hand}")
                continue
            got = _digest(target)
            if src.get("unpack"):
                _unpack(target, src["unpack"])
            results.append({"path": src["path"], "url": url, "sha256": got, "pinned": sha, "bytes": size,
                            "status": "downloaded" if sha else "downloaded (unpinned: sha256 recorded, not checked)"})
    if results:
        _record(root, results)
    if problems:
        raise DomainLMError("\n".join(problems))
    return results


def run(config: BenchDownloadConfig) -> dict[str, Any]:
    from domainlm.tasks.suites import load_suite

    specs = load_suite(config.suite, config.tasks)
    real = [s for s in specs if s.sources]
    if not real:
        raise ConfigError([f"suite '{config.suite}' names no data sources (no task has 'sources'); real suites: "
                           "blurb, matsci, protein-fitness"])
    root = Path(config.cache).expanduser() if config.cache else bench_cache()
    root.mkdir(parents=True, exist_ok=True)
    ready = [s for s in real if s.ready]
    for spec in real:
        if not spec.ready:
            log.warning("task %s is not ready to run (%s); skipped", spec.task_name, spec.note)
    results = fetch(ready, root, allow_unpinned=config.allow_unpinned, retries=config.retries,
                    retry_wait=config.retry_wait, timeout=config.timeout, suite=config.suite)
    files = [rec for spec in ready for rec in verify(spec, root)]
    for rec in files:
        log.info("%s  %s%s", rec["sha256"][:16], rec["path"], "" if rec["pinned"] else " (not pinned)")
    return {"suite": config.suite, "cache": str(root), "downloaded": results, "files": files,
            "not_ready": {s.task_name: s.note for s in real if not s.ready}}


def prepare_real(specs: list[TaskSpec], *, data_root: str | None, tasks: list[str] | None,
                 allow_unpinned: bool = False, suite: str = "SUITE") -> tuple[list[TaskSpec], dict[str, str]]:
    """Real-suite tasks before bench reads them: drop tasks that are not ready (an error when named with
    --tasks), make the files present (``--data-root`` as given, else the cache, downloaded on first use).

    Returns the tasks to run and each real task's data root.
    """
    keep, roots, problems = [], {}, []
    for spec in specs:
        if not spec.sources:
            keep.append(spec)
            continue
        if not spec.ready:
            if tasks and spec.task_name in tasks:
                problems.append(f"task '{spec.task_name}' is registered but cannot run yet: {spec.note}")
            else:
                log.info("task %s skipped: not ready (%s)", spec.task_name, spec.note)
            continue
        keep.append(spec)
        root = Path(data_root).expanduser() if data_root else bench_cache()
        roots[spec.task_name] = str(root)
        missing = missing_files(spec, root)
        if missing and data_root:
            problems.append(f"task '{spec.task_name}': {', '.join(str(root / m) for m in missing)} not found under "
                            f"--data-root {data_root}. Fix: place the files there (sources in {spec.source}), or "
                            f"drop --data-root to download them into {bench_cache()} "
                            f"(`domainlm bench download {suite}`)")
    if problems:
        raise ConfigError(problems, "suite")
    if not data_root:
        pending = [s for s in keep if s.sources and missing_files(s, bench_cache())]
        if pending:
            log.info("first use of %s: fetching the data into %s", ", ".join(s.task_name for s in pending),
                     bench_cache())
            fetch(pending, bench_cache(), allow_unpinned=allow_unpinned, suite=suite)
    return keep, roots
