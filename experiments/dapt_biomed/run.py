"""Stage 3 of the DAPT experiment: each arm a real ``domainlm adapt`` run (or ``domainlm merge --select`` of one),
then scored through the ``domainlm bench`` code path against its reference, the base scored once per group.
Runs go to WORK/runs/ARM, per-task results to WORK/scores/KEY/GROUP.pkl, bench reports to WORK/bench."""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
from pathlib import Path
from typing import Any

from .arms import ARMS, GROUPS, MERGE_DEV, ROOT, arm_model, reference

log = logging.getLogger("dapt_biomed")


def read_run(run_dir: Path) -> dict[str, Any]:
    """The manifest of a finished adapt run (refuses unfinished ones)."""
    from domainlm.artifacts import read_manifest

    man = read_manifest(run_dir, "run")
    if not (run_dir / "final").is_dir():
        raise FileNotFoundError(f"{run_dir}/final")
    return man


def merge_arm(arm: str, work: Path, realdata: Path) -> dict[str, Any]:
    """A merge arm: its source arm trained (or reused), then `domainlm merge --select` on MERGE_DEV's dev splits
    into WORK/runs/ARM, a run folder scored like every arm (test scoring is evaluate_arm's, as for the others)."""
    from domainlm.merge import merge

    spec = ARMS[arm]
    run_arm(spec["merge"], work, realdata)
    run_dir = work / "runs" / arm
    if (run_dir / "manifest.json").is_file():
        try:
            return read_run(run_dir)
        except Exception:  # an interrupted merge left nothing that looks complete: merge again
            pass
    merge(model=str(work / "runs" / spec["merge"]), out=str(run_dir), overwrite=True, select=True, test=False,
          method=spec["method"], weights=spec["weights"], data_root=str(realdata), threads=1,
          **{k: v for k, v in MERGE_DEV.items()})
    return read_run(run_dir)


def run_arm(arm: str, work: Path, realdata: Path | None = None) -> dict[str, Any]:
    """Train one arm (reused when its run folder is complete) and return its run manifest."""
    from domainlm.adapt import adapt

    spec = ARMS[arm]
    if "merge" in spec:
        return merge_arm(arm, work, realdata or ROOT.parent / "shared" / "realdata")
    run_dir = work / "runs" / arm
    lock = run_dir.with_name(arm + ".lock")
    _wait_while_held(lock)  # another process of this script trains it
    if (run_dir / "manifest.json").is_file():
        try:
            return read_run(run_dir)
        except Exception:  # unfinished: resumed from its newest checkpoint below, or started again
            pass
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(str(os.getpid()))
    model = arm_model(arm)
    kw = dict(spec["adapt"])
    corpus = spec.get("corpus", "domain")
    kw["corpus"] = str(work / "corpora" / f"{corpus}-{model}")
    kw["replay_corpus"] = str(work / "corpora" / f"replay-{model}")
    kw["general_eval"] = str(work / "corpora" / f"replay-{model}")
    if "init" in spec:  # DAPT -> TAPT: continue from another arm's final model
        run_arm(spec["init"], work)
        kw["model"] = str(work / "runs" / spec["init"] / "final")
    # A run killed part-way (a session's end) continues from its newest complete checkpoint: adapt's resume
    # is bitwise (tests/test_adapt_checkpoint.py), so the arm's result is the uninterrupted run's.
    from domainlm.adapt.checkpoint import complete_checkpoints

    ckpts = complete_checkpoints(run_dir)  # [] when the run folder or its checkpoints folder is absent
    if ckpts:
        log.info("arm %s: resuming from %s", arm, ckpts[-1].name)
    kw.update(max_tokens=spec["tokens"], max_steps=None, out=str(run_dir), overwrite=not ckpts, resume=bool(ckpts))
    t0 = time.perf_counter()
    try:
        adapt(**kw)
    finally:
        lock.unlink(missing_ok=True)
    log.info("arm %s trained in %.0f s", arm, time.perf_counter() - t0)
    return read_run(run_dir)


def _wait_while_held(lock: Path) -> None:
    """Wait while another live process of this script holds ``lock`` (its pid inside)."""
    while lock.is_file() and _alive(int(lock.read_text() or 0)):
        time.sleep(20)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return pid > 0


def _bench_config(model: str, baseline: str | None, group: str, realdata: Path, work: Path, out: Path):
    from domainlm.bench import BenchConfig

    g = GROUPS[group]
    return BenchConfig(model=model, baseline=baseline, suite=g["suite"], tasks=list(g["tasks"]),
                       data_root=str(realdata), override=[o.replace("{work}", str(work)) for o in g["override"]],
                       out=str(out), seeds=g.get("seeds", 1), mode=g.get("mode"), threads=1, bootstrap=1000,
                       device="cpu")


def score(model_spec: str, key: str, group: str, realdata: Path, work: Path) -> dict[str, Any]:
    """{task: ModeResult} for one model on one group, cached in WORK/scores/KEY/GROUP.pkl."""
    cache = work / "scores" / key / f"{group}.pkl"
    lock = cache.with_suffix(".lock")
    _wait_while_held(lock)  # another process scores it (the shared base)
    if cache.is_file():
        return pickle.loads(cache.read_bytes())
    cache.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(str(os.getpid()))
    try:
        return _score(model_spec, key, group, realdata, work, cache)
    finally:
        lock.unlink(missing_ok=True)


def _score(model_spec: str, key: str, group: str, realdata: Path, work: Path, cache: Path) -> dict[str, Any]:
    import torch

    from domainlm.bench.loading import load_for_eval
    from domainlm.bench.modes import RunContext, run_task
    from domainlm.bench.run import load_all, warm_imports

    cfg = _bench_config(model_spec, None, group, realdata, work, work / "bench" / key / group)
    specs, data = load_all(cfg)
    warm_imports()
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    ctx = RunContext(device="cpu", bf16=False, seeds=cfg.seeds, force_mode=cfg.mode)
    loaded = load_for_eval(model_spec)
    results = {}
    for spec in specs:
        t0 = time.perf_counter()
        results[spec.task_name] = run_task(loaded, spec, data[spec.task_name], ctx)
        log.info("%s %s/%s: %.1f s", key, group, spec.task_name, time.perf_counter() - t0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps(results))
    return results


def compare(arm_key: str, arm_spec: str, base_key: str, base_spec: str, group: str, realdata: Path,
            work: Path) -> dict[str, Any]:
    """The bench report (paired bootstrap against the base) of one arm on one group; written to
    WORK/bench/ARM-vs-BASE/GROUP like any `domainlm bench --model ARM --baseline BASE` report."""
    from domainlm.bench.report import build_report, write_report
    from domainlm.bench.run import load_all

    out = work / "bench" / f"{arm_key}-vs-{base_key}" / group
    if (out / "report.json").is_file():
        return json.loads((out / "report.json").read_text())
    results = {"model": score(arm_spec, arm_key, group, realdata, work),
               "baseline": score(base_spec, base_key, group, realdata, work)}
    cfg = _bench_config(arm_spec, base_spec, group, realdata, work, out)
    specs, data = load_all(cfg)
    report = build_report(cfg, specs, data, results, n_boot=cfg.bootstrap, device="cpu", bf16=False)
    report["wall_s"] = sum(r.wall_s for side in results.values() for r in side.values())
    write_report(out, report, cfg, specs, data)
    return report


def evaluate_arm(arm: str, realdata: Path, work: Path, full: bool, groups: list[str] | None = None) -> dict[str, Any]:
    """Every group's report for one arm: against the base model, and (MiniLM) against the head-only arm,
    whose body is the base's, for perplexities (the base has no MLM head to score with)."""
    model = arm_model(arm)
    run_dir = str(work / "runs" / arm)
    out: dict[str, Any] = {}
    for group, g in GROUPS.items():
        if not (g["cheap"] or full) or (groups is not None and group not in groups):
            continue
        if arm == "minilm-headonly-0.1m":  # the reference itself: its perplexities only (its body is the base's,
            if group in ("ppl", "pubmed"):  # so its probe features and scores are the base's exactly)
                out[group] = {"tasks": [], "self": {t: _ppl(r) for t, r in
                                                    score(run_dir, arm, group, realdata, work).items()}}
            continue
        ref = reference(arm, group)
        if ref != model:  # a reference arm: trained first (reused when finished)
            run_arm(ref, work)
        ref_spec = model if ref == model else str(work / "runs" / ref)
        out[group] = compare(arm, run_dir, ref, ref_spec, group, realdata, work)
    return out


def _ppl(result) -> dict[str, Any] | None:
    return result.perplexity
