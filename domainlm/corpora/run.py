"""``domainlm corpus prepare``: read, clean, deduplicate, split, tokenise and pack a domain corpus.

The work runs as datatrove stages (domainlm/corpora/steps/ has the steps and the order) on the
executor ``--executor`` names: ``local`` (processes on this machine), ``slurm`` (sbatch job arrays that
depend on each other, written and submitted by datatrove) or ``ray``. Intermediate files and datatrove's
completion markers live in ``OUT/.work``, so re-running an interrupted prepare skips the finished tasks.
``OUT/manifest.json`` is written last, by the final (index) stage, from the pack tasks' counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from domainlm.config import as_config, build, to_dict
from domainlm.corpora.cards import card_prepare_values
from domainlm.corpora.config import PrepareConfig
from domainlm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = ["prepare_card", "run"]

# Config fields that do not change the prepared data (so changing them does not invalidate a folder).
_VOLATILE = {"overwrite", "out", "card", "inputs", "executor", "tasks", "workers", "partition", "time"}
WORK = ".work"
SMALL_INPUT = 4 * 2**20  # below this, one task: starting processes costs more than it saves


def run(config: PrepareConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Build the config (a corpus card's settings are the base; every keyword given wins) and run the preparation."""
    card_values = None
    if isinstance(config, PrepareConfig) and config.card and not overrides:
        config = _apply_card(config)
    else:
        card_name = overrides.get("card") or (config.get("card") if isinstance(config, dict) else None)
        if card_name and not isinstance(config, PrepareConfig):
            # Python API: the card's settings are the base and every keyword given wins.
            card_values = card_prepare_values(card_name)
            base = dict(config) if isinstance(config, dict) else {}
            config = build(PrepareConfig, {**card_values, **base, **overrides})
        else:
            config = as_config(PrepareConfig, config, overrides)
            if config.card:
                config = _apply_card(config)
    return _Run(config).run()


def _apply_card(config: PrepareConfig) -> PrepareConfig:
    """Fill every option left at its default from the card (command line: flags given explicitly win,
    except a flag set to exactly its default value, which cannot be told from an unset one)."""
    values = card_prepare_values(config.card)
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING
                         else f.default_factory())  # type: ignore[misc]
                for f in dataclasses.fields(PrepareConfig)}
    merged = to_dict(config)
    for key, value in values.items():
        if merged.get(key) == defaults.get(key):
            merged[key] = value
    return build(PrepareConfig, merged)


def prepare_card(name: str, model: str, out: str | Path, block_size: int | None = None,
                 **overrides: Any) -> dict[str, Any]:
    """Prepare the corpus a card describes with ``model``'s tokenizer into ``out``; returns the manifest.

    A complete folder at ``out`` prepared with the same settings, tokenizer and inputs is reused as is.
    """
    values: dict[str, Any] = {"card": name, "model": model, "out": str(out)}
    if block_size is not None:
        values["block_size"] = block_size
    values.update(overrides)
    return run(**values)


def _after_shard(shard: int) -> None:
    """Called by each pack task after each document-table file it writes (``shard`` counts within the task; tests
    replace it to simulate an interruption)."""


class _Run:
    def __init__(self, config: PrepareConfig) -> None:
        self.config = config
        self.out = Path(config.out).expanduser()
        self.work = self.out / WORK

    # ---- set-up -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from domainlm.artifacts import MANIFEST
        from domainlm.documents.readers import SkipLog
        from domainlm.documents.registry import resolve_inputs

        self.started = time.time()
        c = self.config
        # model and out are checked here, not in problems(), so a recipe may leave them to the command line.
        missing = [m for m, ok in ((
            "'model' is required: the base model whose tokenizer packs the corpus (e.g. minilm, tiny-llama, a "
            "folder or a Hub id)", c.model), ("'out' is required: the folder to write the prepared corpus to",
                                              c.out)) if not ok]
        if missing:
            raise ConfigError(missing)
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError([f"'out': {self.out} is a file; name a folder"])
        self.setup_skips = SkipLog()
        self.files = resolve_inputs(c.inputs, c.format, skips=self.setup_skips)
        if not self.files:
            raise DataError(f"no readable input files in {', '.join(c.inputs)}")
        from domainlm.corpora.tokenizer_plan import plan_tokenizer

        self.plan, self.tokenizer = plan_tokenizer(c.model)
        self.inputs = self._hash_inputs()
        self.fingerprint = self._fingerprint()
        existing = self._existing_manifest()
        if existing is not None:
            return existing
        self.tasks, self.workers = self._plan_tasks()
        self._check_work()
        manifest_path = self.out / MANIFEST
        if manifest_path.exists():  # an overwritten folder: its old manifest must go first
            manifest_path.unlink()
        return self._execute()

    def _hash_inputs(self) -> list[dict[str, Any]]:
        from domainlm.artifacts import peek_manifest, sha256_file

        cache: dict[tuple[str, int, int], str] = {}
        known = [peek_manifest(self.out)]  # a finished folder's input hashes, and an unfinished prepare's
        with contextlib.suppress(OSError, ValueError):
            known.append(json.loads((self.work / "config.json").read_text(encoding="utf-8")))
        for data in known:
            for item in data.get("inputs", []):
                if {"path", "bytes", "mtime_ns", "sha256"} <= set(item):
                    cache[(item["path"], item["bytes"], item["mtime_ns"])] = item["sha256"]
        out = []
        for f in self.files:
            st = f.path.stat()
            key = (str(f.path.resolve()), st.st_size, st.st_mtime_ns)
            sha = cache.get(key) or sha256_file(f.path)
            out.append({"path": key[0], "format": f.format, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
                        "sha256": sha})
        return out

    def _fingerprint(self) -> str:
        settings = {k: v for k, v in to_dict(self.config).items() if k not in _VOLATILE}
        payload = {"settings": settings, "tokenizer": self.plan.fingerprint,
                   "inputs": [(i["path"], i["format"], i["sha256"]) for i in self.inputs]}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def _existing_manifest(self) -> dict[str, Any] | None:
        """A finished folder with the same fingerprint is reused; a different one needs --overwrite."""
        from domainlm.artifacts import MANIFEST, peek_manifest, why_not_replace

        # only the prepare's own subfolders are ever cleared (_clear), so its inputs may live beside them
        refused = why_not_replace(self.out, ("corpus",), markers=(f"{WORK}/config.json",))
        if refused:
            raise ConfigError([f"'out': {refused}"])
        if not (self.out / MANIFEST).is_file():
            return None
        manifest = peek_manifest(self.out)
        if manifest.get("complete") and manifest.get("fingerprint") == self.fingerprint and not self.config.overwrite:
            log.info("%s is already prepared with these settings, tokenizer and inputs: reusing it", self.out)
            shutil.rmtree(self.work, ignore_errors=True)
            return manifest
        if not self.config.overwrite:
            diff = _config_diff(manifest.get("config", {}), to_dict(self.config))
            why = f" (differs in: {', '.join(diff)})" if diff else " (different tokenizer or input files)"
            raise ConfigError([f"'out': {self.out} already holds a corpus prepared differently{why}; pass --overwrite "
                               "to replace it, or choose another --out"])
        log.info("overwriting %s", self.out)
        (self.out / MANIFEST).unlink()
        self._clear()
        return None

    def _clear(self) -> None:
        for name in ("train", "validation", "documents", WORK, "stats"):
            shutil.rmtree(self.out / name, ignore_errors=True)

    def _check_work(self) -> None:
        """An unfinished run's work folder is resumed when its settings match, else refused (or cleared)."""
        from domainlm.artifacts import atomic_write_json

        cfg_path = self.work / "config.json"
        if cfg_path.is_file():
            try:
                saved = json.loads(cfg_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                saved = {}
            same = saved.get("fingerprint") == self.fingerprint and saved.get("tasks") == self.tasks
            if same:
                log.info("resuming the unfinished prepare in %s (finished tasks are skipped)", self.out)
                return
            if not self.config.overwrite and saved.get("fingerprint") != self.fingerprint:
                diff = _config_diff(saved.get("config", {}), to_dict(self.config))
                why = f" (differs in: {', '.join(diff)})" if diff else " (different tokenizer or input files)"
                raise ConfigError([f"'out': {self.out} holds an unfinished prepare with other settings{why}; "
                                   "pass --overwrite to start over, or choose another --out"])
            # Another task count splits the files differently: the finished tasks cannot be reused.
        self._clear()
        atomic_write_json(cfg_path, {"fingerprint": self.fingerprint, "config": to_dict(self.config),
                                     "inputs": self.inputs, "tasks": self.tasks})

    # ---- the datatrove stages -------------------------------------------------------------------

    def _cpus(self) -> int:
        try:
            return len(os.sched_getaffinity(0))  # the cores this process may use (taskset, containers)
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1

    def _plan_tasks(self) -> tuple[int, int]:
        c = self.config
        total = sum(f.bytes for f in self.files)
        if c.tasks is not None:
            tasks = c.tasks
        elif c.executor != "local":
            tasks = len(self.files)  # one task per file on a cluster; the scheduler spreads them
        else:
            tasks = 1 if total < SMALL_INPUT else max(1, min(self._cpus(), 8, len(self.files)))
        workers = c.workers if c.workers is not None else (min(tasks, self._cpus()) if c.executor == "local" else -1)
        return tasks, workers

    def _executor(self, name: str, pipeline: list, tasks: int, depends):
        c = self.config
        logging_dir = str(self.work / "logs" / name)
        workers = self.workers if self.workers == -1 else min(self.workers, tasks)
        if c.executor == "local":
            from datatrove.executor import LocalPipelineExecutor

            # fork: the workers inherit the loaded modules instead of importing them again per stage.
            return LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir,
                                         depends=depends, start_method="fork")
        if c.executor == "ray":
            from datatrove.executor.ray import RayPipelineExecutor

            return RayPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir,
                                       depends=depends)
        import sys

        from datatrove.executor.slurm import SlurmPipelineExecutor

        activate = Path(sys.prefix) / "bin" / "activate"
        return SlurmPipelineExecutor(pipeline, tasks=tasks, time=c.time, partition=c.partition, workers=workers,
                                     job_name=f"domainlm-{name}", logging_dir=logging_dir, depends=depends,
                                     venv_path=str(activate) if activate.is_file() else None,
                                     slurm_logs_folder=str(self.work / "slurm_logs" / name), mail_type="NONE")

    def _decontamination_sources(self) -> tuple[dict[str, list[str]], dict[str, Any]]:
        """Test texts by task for --decontaminate: bench suites (their task YAMLs' test files, loaded as bench
        loads them) or plain files (any corpus format)."""
        from domainlm.documents.readers import ReaderOptions, SkipLog
        from domainlm.documents.registry import iter_documents, resolve_inputs

        sources: dict[str, list[str]] = {}
        described: dict[str, Any] = {"suites": [], "files": []}
        for entry in self.config.decontaminate:
            path = Path(entry).expanduser()
            if path.is_file():
                files = resolve_inputs([str(path)])
                texts = [d.text for d, _, _ in iter_documents(files, ReaderOptions(), SkipLog())]
                sources[f"file:{path.name}"] = texts
                described["files"].append(str(path.resolve()))
                continue
            from domainlm.tasks.data import load_data
            from domainlm.tasks.suites import load_suite

            for spec in load_suite(entry):
                data = load_data(spec, needs_train=False)
                texts = []
                for ex in data.splits.get("test", []):
                    texts.extend(t for t in (ex.text, ex.text_b) if t)
                    if ex.tokens:
                        texts.append(" ".join(ex.tokens))
                sources[f"{entry}:{spec.task_name}"] = texts
            described["suites"].append(entry)
        return sources, described

    def _execute(self) -> dict[str, Any]:
        from domainlm.corpora.steps.decontaminate import build_decont_index
        from domainlm.corpora.steps.index import Index
        from domainlm.corpora.steps.keys import DropKeyed, ExactKeys, ResolveKeys
        from domainlm.corpora.steps.minhash import Signature, minhash_config
        from domainlm.corpora.steps.pack import PackTask
        from domainlm.corpora.steps.read import ReadClean, ReadDocs

        c = self.config
        work = str(self.work)
        tasks = self.tasks
        if c.executor == "ray":
            try:
                import ray
            except ImportError:
                raise ConfigError(["--executor ray needs ray: pip install 'domainlm[ray]'"]) from None
            if not ray.is_initialized():
                ray.init()  # RAY_ADDRESS, a running local cluster, or a new one on this machine
        pubmed_files = sum(f.format == "pubmed-xml" for f in self.files)
        updates = pubmed_files >= 2
        files = [{"path": str(f.path), "format": f.format, "bytes": f.bytes, "rel": f.rel} for f in self.files]
        options = {"text_field": c.text_field, "id_field": c.id_field, "categories": c.categories,
                   "ambiguous": c.ambiguous, "keep_title_only": c.keep_title_only}
        clean = {"unicode_form": c.unicode_form, "min_chars": c.min_chars, "max_chars": c.max_chars,
                 "min_length": c.min_length, "max_length": c.max_length, "detokenize": c.detokenize}
        mh = minhash_config(c.near_dup_threshold, c.near_dup_num_perm) if c.near_dup else None
        sigs, buckets, clusters = (str(self.work / "minhash" / k) for k in ("sigs", "buckets", "remove"))
        hashing = ([ExactKeys(work, tasks)] if c.dedup else []) + \
                  ([Signature(sigs, mh)] if mh is not None else [])

        decont = decont_index = None
        if c.decontaminate:
            sources, decont = self._decontamination_sources()
            index = self.work / "decont"
            sizes = build_decont_index(index, sources, c.decontaminate_ngram)
            decont.update(ngram=c.decontaminate_ngram, test_ngrams=sizes)
            decont_index = (str(index), c.decontaminate_ngram)
        # Exact keys can be written while reading even with PubMed updates (their resolution leaves out what the
        # updates remove); MinHash signatures cannot (datatrove's buckets would pair a kept abstract with its own
        # superseded version), so with near-dup on and updates the cleaned text is written once and hashed after
        # the update barrier.
        late_hashing = updates and mh is not None
        layout = None
        if c.reading_comprehension:  # converted inside the read stage: after cleaning, before decontamination and tokens
            from domainlm.corpora.comprehension import resolve_layout

            layout = resolve_layout(c.reading_comprehension_layout, self.tokenizer)
        read = ReadClean(work, files, options, clean, tasks if updates else None, plan=self.plan,
                         validation_fraction=c.validation_fraction, parallel=tasks > 1,
                         write_text=late_hashing, decontaminate=decont_index,
                         comprehension=(c.model, layout) if layout else None)
        stages: list[tuple[str, list, int]] = [("read", [read, *([] if late_hashing else hashing)], tasks)]
        if updates:
            stages.append(("updates", [ResolveKeys(work, "pubmed", "pubmed", tasks)], tasks))
            if late_hashing:
                stages.append(("hash", [ReadDocs(work), DropKeyed(work, "pubmed", False), *hashing],
                               tasks))
        if c.dedup:
            exclude = "pubmed" if updates and not late_hashing else None
            stages.append(("exact", [ResolveKeys(work, "exact", "exact", tasks, exclude)], tasks))
        if mh is not None:
            from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupCluster

            # One task per band, or several per band on a big run (datatrove splits a band's hash range between
            # them; each needs the first task's signatures to hold at least that many documents, so only when
            # every task reads at least one file).
            per_band = tasks // mh.num_buckets if tasks >= 2 * mh.num_buckets and tasks <= len(self.files) else 1
            stages.append(("minhash-buckets", [MinhashDedupBuckets(sigs, buckets, config=mh)],
                           mh.num_buckets * per_band))
            stages.append(("minhash-clusters", [MinhashDedupCluster(buckets, clusters, config=mh)], 1))
        stages.append(("pack", [PackTask(work, str(self.out), c.block_size, c.shard_size, pubmed=updates,
                                         exact=c.dedup, clusters=clusters if mh is not None else None,
                                         exact_in_read_order=updates and not late_hashing,
                                         comprehension=layout is not None)],
                       tasks))
        log.info("preparing %d input file(s) -> %s with %s (%s executor, %d task%s)", len(self.files), self.out,
                 c.model, c.executor, tasks, "s" if tasks > 1 else "")
        kinds = sorted({"protein" if f.format in ("fasta", "swissprot") else "text" for f in self.files})
        meta = {"config": to_dict(c), "inputs": [{k: i[k] for k in ("path", "format", "sha256", "bytes", "mtime_ns")}
                                                 for i in self.inputs],
                "tokenizer": self.plan.describe(), "content": kinds[0] if len(kinds) == 1 else "mixed",
                "fingerprint": self.fingerprint, "started": self.started,
                "setup_skips": dict(self.setup_skips.counts), "decontamination": decont,
                "reading_comprehension": layout,
                "near_dup": ({"engine": "datatrove MinHash (signatures, buckets, clusters, filter)",
                              "threshold": c.near_dup_threshold, "num_perm": c.near_dup_num_perm,
                              "bands": mh.num_buckets, "rows": mh.hashes_per_bucket,
                              "shingles": "lower-cased word 3-grams; residue 5-mers for proteins"}
                             if mh is not None else None),
                "executor": {"kind": c.executor, "tasks": tasks, "workers": self.workers}}
        if c.executor == "local" and self.workers != 1:
            _preload()
        with _quiet_datatrove(c.executor == "local"), _children_die_with_us():
            try:
                index = ("index", [Index(work, str(self.out), tasks, c.block_size, meta)], 1)
                if c.executor == "slurm":  # submitted at once as jobs that depend on each other
                    stage = None
                    for name, pipeline, n in [*stages, index]:
                        stage = self._executor(name, pipeline, n, stage)
                    stage.run()
                else:  # one stage after the other, timed (the manifest records where the time went)
                    seconds: dict[str, float] = {}
                    for name, pipeline, n in stages:
                        t = time.perf_counter()
                        self._executor(name, pipeline, n, None).run()
                        seconds[name] = round(time.perf_counter() - t, 3)
                    meta["stage_seconds"] = seconds
                    self._executor(*index, None).run()
            except Exception as exc:
                from domainlm.errors import DomainLMError

                if isinstance(exc, DomainLMError):
                    raise
                if _disk_full_anywhere(exc, self.out):
                    raise DataError(f"no space left on the device while preparing {self.out}; free some space and run "
                                    "the same command again (finished tasks are kept and skipped)") from None
                raise DataError(f"corpus prepare failed in a datatrove task: {type(exc).__name__}: {exc} (task logs: "
                                f"{self.work / 'logs'})") from exc
        from domainlm.artifacts import MANIFEST, read_manifest

        if not (self.out / MANIFEST).is_file():
            if c.executor == "slurm":
                log.info("submitted the prepare jobs; %s appears when the last one (pack) finishes", self.out / MANIFEST)
                return {"submitted": True, "executor": "slurm", "out": str(self.out),
                        "manifest": str(self.out / MANIFEST), "logs": str(self.work / "logs")}
            raise DataError(f"corpus prepare finished without writing {self.out / MANIFEST}; see the task logs in "
                            f"{self.work / 'logs'}")
        manifest = read_manifest(self.out, "corpus")
        shutil.rmtree(self.work, ignore_errors=True)
        return manifest


def _preload() -> None:
    """Import, once in this process, what every forked task would otherwise import for itself: the readers, the
    tokenizers and Arrow. pyarrow imports pandas (and builds pyarrow.compute) the first time ``pa.array`` gets a
    numpy array, about 1 CPU-s, which every task of the tokenise stage paid again (experiments/SPEED_PREPARE.md)."""
    import numpy as np
    import pyarrow as pa
    import tokenizers  # noqa: F401

    from domainlm.corpora import clean  # noqa: F401
    from domainlm.documents import registry  # noqa: F401

    pa.array(np.zeros(1, dtype=np.int32))


def _disk_full_anywhere(exc: BaseException, folder: Path) -> bool:
    """A full disk anywhere in the exception's chain (datatrove re-raises a task's OSError, sometimes wrapped)."""
    from domainlm.artifacts import _disk_full

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _disk_full(exc, folder):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# Linux prctl option: the signal a process gets when the thread that forked it dies.
_PR_SET_PDEATHSIG = 1
_pdeathsig_on = False
_pdeathsig_hooked = False
_forking_pid = 0


def _remember_forking_pid() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _die_with_parent() -> None:
    """In a child forked while :func:`_children_die_with_us` is active: SIGKILL it when its parent dies."""
    if not _pdeathsig_on:
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != _forking_pid:  # the parent died before the prctl took effect
            os._exit(1)


@contextlib.contextmanager
def _children_die_with_us():
    """Processes forked inside the block (datatrove's multiprocess Manager server and Pool workers) are killed when
    this process dies, SIGKILL included. Without it a killed prepare left the Manager alive for good, holding its
    log file open (issue 28). Linux only (prctl PR_SET_PDEATHSIG); elsewhere nothing changes."""
    global _pdeathsig_on, _pdeathsig_hooked
    if not sys.platform.startswith("linux") or not hasattr(os, "register_at_fork"):
        yield
        return
    if not _pdeathsig_hooked:
        os.register_at_fork(before=_remember_forking_pid, after_in_child=_die_with_parent)
        _pdeathsig_hooked = True
    before, _pdeathsig_on = _pdeathsig_on, True
    try:
        yield
    finally:
        _pdeathsig_on = before


class _quiet_datatrove:
    """datatrove logs every task's progress to stderr through loguru; on a local run that drowns our own
    messages, so it is muted unless this package logs at DEBUG (the exceptions still propagate)."""

    def __init__(self, active: bool) -> None:
        self.active = active and not log.isEnabledFor(logging.DEBUG)

    def __enter__(self):
        if self.active:
            from loguru import logger

            logger.disable("datatrove")
        return self

    def __exit__(self, *exc):
        if self.active:
            from loguru import logger

            logger.enable("datatrove")
        return False

def _fmt_drops(drops: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if k not in _VOLATILE and old.get(k) != new.get(k))
