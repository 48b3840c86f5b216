#!/usr/bin/env python
"""Reliability and security trials: killed runs, full disks, fuzzed input files, untrusted model folders.

Every statement in ``experiments/RELIABILITY.md`` is written by this script from what it ran::

    python experiments/reliability.py                 # full size: >= 10 kill trials, ~3000 fuzz cases per reader
    python experiments/reliability.py --quick         # small counts, a few minutes
    python experiments/reliability.py --only fuzz,untrusted --report /tmp/r.md

Trial classes (``--only``): ``adapt-kill``, ``prepare-kill``, ``disk-full``, ``fuzz``, ``untrusted``, ``secrets``.
This file only runs the trials and writes the report. The trials themselves (process launcher, fault and
fuzz trials, fixtures, the Markdown renderer) are the package ``tests/harness/``, which
tests/test_reliability_*.py import to run the same trials, small in the default tier and at full size in
the slow tier, so the report and the tests check one implementation.

Commands run as child processes, forked from this process after it has imported torch and transformers
once (``--launcher exec`` starts real ``python -m domainlm`` processes instead); see ``tests.harness.procs``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "experiments" / "RELIABILITY.md"
# The trials live in tests/harness/ (the tests run the same code, small); domainlm and tests.harness from this checkout.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness.faults import (  # noqa: E402
    AdaptTrials,
    DiskUnavailable,
    PrepareTrials,
    disk_full_checkpoint,
    disk_full_publish,
)
from tests.harness.fuzz import FuzzStats, fuzz_target, fuzz_targets  # noqa: E402
from tests.harness.procs import CHILD_ENV, Trial, warm_imports  # noqa: E402
from tests.harness.report import Results, md_table, render, summary_rows  # noqa: E402
from tests.harness.untrusted import secrets_trial, untrusted_trials  # noqa: E402

CLASSES = ("adapt-kill", "prepare-kill", "disk-full", "fuzz", "untrusted", "secrets")
# Counts for the full run and for --quick. The issue asks for >= 10 adapt kill trials and a few thousand fuzz
# cases per reader; prepare trials are cheap (a few seconds each).
FULL = {"adapt_trials": 15, "adapt_exec_trials": 2, "prepare_trials": 9, "disk_free_kib": (128, 1536, 2936),
        "fuzz_examples": 3000}
QUICK = {"adapt_trials": 3, "adapt_exec_trials": 0, "prepare_trials": 3, "disk_free_kib": (1536,),
         "fuzz_examples": 60}


# ====================================================================================================
# Main
# ====================================================================================================

def _meta(args: argparse.Namespace, started: datetime.datetime) -> dict[str, Any]:
    from importlib.metadata import version

    from domainlm.device import cpu_name

    cpu = cpu_name()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    finished = datetime.datetime.now().astimezone()
    return {"command": "python experiments/reliability.py " + " ".join(args.argv), "quick": args.quick,
            "launcher": args.launcher, "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"), "minutes": (finished - started).total_seconds() / 60,
            "commit": commit + (" (with uncommitted changes)" if dirty else ""),
            "machine": f"{cpu}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
            "python": platform.python_version(), "torch": version("torch"), "transformers": version("transformers"),
            "hypothesis": version("hypothesis")}


def _print_row(t: Trial | FuzzStats) -> None:
    if isinstance(t, Trial):
        print(f"[{'ok' if t.ok else 'FAIL'}] {t.klass} / {t.name} ({t.seconds:.0f} s): {t.outcome}", flush=True)
    else:
        print(f"[{'ok' if t.ok else 'FAIL'}] fuzz / {t.target}: {t.examples} cases, accepted {t.accepted}, skips "
              f"{t.skipped}, refused {t.refused}, bugs {len(t.bugs)} ({t.seconds:.0f} s)", flush=True)
        for b in t.bugs[:3]:
            print(f"    bug: {b}", flush=True)


def run_all(args: argparse.Namespace) -> Results:
    counts = QUICK if args.quick else FULL
    only = set(args.only.split(","))
    unknown = only - set(CLASSES)
    if unknown:
        raise SystemExit(f"unknown classes {sorted(unknown)}; choose from {', '.join(CLASSES)}")
    work = Path(args.work or tempfile.mkdtemp(prefix="domainlm-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DOMAINLM_CACHE", str(work / "cache"))
    res = Results(work=str(work))
    adapt = AdaptTrials(work, args.launcher)
    if only & {"adapt-kill", "disk-full"}:
        adapt.setup()
        print(f"reference adapt run: {adapt.ref_seconds:.0f} s", flush=True)
    if "adapt-kill" in only:
        for seed in range(args.seed, args.seed + counts["adapt_trials"]):
            res.trials.append(adapt.trial(seed))
            _print_row(res.trials[-1])
        if args.launcher == "fork" and counts["adapt_exec_trials"]:
            real = AdaptTrials(work, "exec")
            real.corpus = adapt.corpus
            same = real.exec_reference(adapt.ref)
            print(f"reference run as `python -m domainlm adapt`: {real.ref_seconds:.0f} s, final weights {same} to "
                  "the forked reference", flush=True)
            start = args.seed + counts["adapt_trials"]
            for seed in range(start, start + counts["adapt_exec_trials"]):
                res.trials.append(real.trial(seed))
                _print_row(res.trials[-1])
    if "prepare-kill" in only:
        prep = PrepareTrials(work, args.launcher)
        prep.setup()
        print(f"reference prepare run: {prep.ref_seconds:.1f} s, {prep.shards} shards", flush=True)
        for seed in range(args.seed, args.seed + counts["prepare_trials"]):
            res.trials.append(prep.trial(seed))
            _print_row(res.trials[-1])
    if "disk-full" in only:
        try:
            for kib in counts["disk_free_kib"]:
                res.trials.append(disk_full_checkpoint(adapt, kib))
                _print_row(res.trials[-1])
            res.trials.append(disk_full_publish(adapt))
            _print_row(res.trials[-1])
        except DiskUnavailable as exc:
            res.skipped["Full disk"] = f"not run: no small filesystem could be mounted here ({exc}); run as root"
    if "untrusted" in only:
        for t in untrusted_trials(work, args.launcher):
            res.trials.append(t)
            _print_row(t)
    if "secrets" in only:
        res.trials.append(secrets_trial(work, args.launcher))
        _print_row(res.trials[-1])
    if "fuzz" in only:
        for target in fuzz_targets():
            stats = fuzz_target(target, counts["fuzz_examples"], seed=args.seed, work=work)
            res.fuzz.append(stats)
            _print_row(stats)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts (minutes instead of ~half an hour)")
    ap.add_argument("--only", default=",".join(CLASSES), help=f"comma-separated classes: {', '.join(CLASSES)}")
    ap.add_argument("--launcher", choices=("fork", "exec"), default="fork",
                    help="fork children from this warm process (fast) or exec `python -m domainlm` (slow)")
    ap.add_argument("--seed", type=int, default=0, help="first seed; trial i uses seed + i")
    ap.add_argument("--work", default=None, help="scratch folder (default: a new temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--report", default=str(REPORT), help="where to write the markdown report")
    ap.add_argument("--no-report", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for k, v in CHILD_ENV.items():
        if v is not None:
            os.environ.setdefault(k, v)
    started = datetime.datetime.now().astimezone()
    if args.launcher == "fork":
        warm_imports()
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars of the in-process checks
        hf_logging.set_verbosity_error()
    res = run_all(args)
    res.meta = _meta(args, started)
    res.meta["work"] = res.work
    text = render(res)
    print("\n" + md_table(("Class", "What was tried", "Count", "Seeds", "Outcome"), summary_rows(res)))
    if not args.no_report:
        from domainlm.artifacts import atomic_write_text

        atomic_write_text(args.report, text)
        print(f"\nwrote {args.report}")
    ok = all(t.ok for t in res.trials) and all(s.ok for s in res.fuzz)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
