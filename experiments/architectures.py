"""Run the architecture matrix (tests/test_architectures.py, both tiers) and write its table in docs/models.md.

    .venv/bin/python experiments/architectures.py            # runs pytest, rewrites the docs/models.md section
    .venv/bin/python experiments/architectures.py --junit F [G ...]  # table from junit XML files, no test run

Every cell of the table is the outcome of one test: ``ok`` when the test passed (with the note the test
recorded, e.g. why the fused head is off for Gemma 2), ``refused`` when the test asserted that adapt refuses
the feature for that family with a one-line error at start-up, ``FAILED`` or ``skipped: reason`` otherwise.
The table goes between the ``architectures:begin`` / ``architectures:end`` markers in docs/models.md; the raw
outcomes, timings and the machine go to experiments/ARCHITECTURES.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests" / "test_architectures.py"
BEGIN, END = "<!-- architectures:begin -->", "<!-- architectures:end -->"
COLUMNS = {"masking": "document masking", "masking_flex": "masking, FlexAttention", "head": "fused / masked-only head", "train": "full + LoRA training",
           "resume": "resume", "publish": "publish + reload", "bench": "bench"}
_NAME = re.compile(r"test_(\w+)\[([\w.-]+)\]")


def run_matrix(junit: Path) -> float:
    """Run both tiers of the matrix into ``junit``; returns the wall time in seconds."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DOMAINLM_PROGRESS": "0"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "-q", str(TESTS), "-m", "slow or not slow",
                    f"--junitxml={junit}", "-o", "junit_family=xunit1"], cwd=REPO, env=env, check=False)
    return time.perf_counter() - t0


def read_junit(junit: Path) -> dict[tuple[str, str], dict]:
    """{(architecture, feature): {"outcome", "note", "seconds"}} from a pytest junit XML file."""
    cells: dict[tuple[str, str], dict] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        m = _NAME.fullmatch(case.get("name", ""))
        if not m or m.group(1) not in COLUMNS:
            continue
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        outcome, note = "ok", props.get("note", "")
        if props.get("refused"):
            outcome, note = "refused", props["refused"]
        for tag in ("failure", "error"):
            if case.find(tag) is not None:
                outcome, note = "FAILED", (case.find(tag).get("message") or "").splitlines()[0][:120]
        skipped = case.find("skipped")
        if skipped is not None:
            outcome, note = "skipped", (skipped.get("message") or "").removeprefix("Skipped: ")[:120]
        cells[(m.group(2), m.group(1))] = {"outcome": outcome, "note": note, "tier": props.get("tier", ""),
                                           "seconds": float(case.get("time", 0.0))}
    return cells


def table(cells: dict[tuple[str, str], dict], architectures: list[str]) -> str:
    head = "| architecture | " + " | ".join(COLUMNS.values()) + " |"
    rows = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for arch in architectures:
        out = []
        for feature in COLUMNS:
            c = cells.get((arch, feature))
            if c is None:
                out.append("not run")
                continue
            note = c["note"] if len(c["note"]) <= 90 else c["note"][:88] + "..."
            text = c["outcome"] + (f": {note}" if note else "")
            if c["tier"] == "slow":
                text += " (slow tier)"
            out.append(text.replace("|", "/"))
        rows.append(f"| {arch} | " + " | ".join(out) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--junit", nargs="+", help="read these junit XML files (later ones win) instead of running "
                    "the tests")
    ap.add_argument("--page", default=str(REPO / "docs" / "models.md"))
    ap.add_argument("--json", default=str(REPO / "experiments" / "ARCHITECTURES.json"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    # the matrix's own list (tests/harness/, which tests/test_architectures.py runs), so the table has a row per arch
    from tests.harness.architectures import ARCHS

    wall = None
    if args.junit:
        junits = [Path(j) for j in args.junit]
    else:
        junits = [Path(tempfile.mkdtemp(prefix="domainlm-arch-")) / "junit.xml"]
        wall = run_matrix(junits[0])
        print(f"junit XML: {junits[0]}")
    cells = {}
    for junit in junits:
        cells.update(read_junit(junit))
    names = [a.name for a in ARCHS]
    md = table(cells, names)
    import torch
    import transformers

    from domainlm.device import cpu_flags, cpu_name

    flags = cpu_flags()
    default_s = sum(c["seconds"] for c in cells.values() if c["tier"] != "slow")
    machine = (f"{cpu_name()} ({', '.join(flags) or 'no AVX flags read'}), {os.cpu_count()} cores, torch "
               f"{torch.__version__}, transformers {transformers.__version__}")
    summary = (f"Generated by `experiments/architectures.py` from the results of `tests/test_architectures.py` "
               f"({sum(c['outcome'] == 'ok' for c in cells.values())} of {len(cells)} cells ok, "
               f"{sum(c['outcome'] == 'refused' for c in cells.values())} refused at adapt start-up; default-tier cells "
               f"took {default_s:.0f} s of test time on {machine}; the machine was shared with other jobs, so "
               "times are pessimistic).")
    block = f"{BEGIN}\n{summary}\n\n{md}\n{END}"
    page = Path(args.page)
    text = page.read_text()
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        page.write_text(text)
        print(f"table updated ({page})")
    else:
        print(f"{page} has no {BEGIN} ... {END} markers; the table is:\n")
    print(block)
    Path(args.json).write_text(json.dumps(
        {"machine": machine, "wall_s": wall, "shared_machine": True,
         "cells": [{"architecture": a, "feature": f, **c} for (a, f), c in sorted(cells.items())]}, indent=2) + "\n")
    return 0 if all(c["outcome"] in ("ok", "refused", "skipped") for c in cells.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
