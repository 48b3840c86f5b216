"""The DAPT experiment's command line (see the package docstring)::

    python experiments/dapt_biomed --realdata ../shared/realdata [--arms A,B] [--full-eval all] [--report-only]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DOMAINLM_PROGRESS", "0")

if not __package__:  # run as `python experiments/dapt_biomed`: import the package from the checkout
    sys.path[0] = str(Path(__file__).resolve().parents[2])  # the checkout, in place of this folder
    __package__ = "experiments.dapt_biomed"

from . import __doc__ as DOC  # noqa: E402
from .arms import ARMS, GROUPS, PAIRS, QUICK_ARM, ROOT, arm_model  # noqa: E402
from .data import decontaminate, prepare_data  # noqa: E402
from .report import write_all  # noqa: E402
from .run import compare, evaluate_arm, run_arm  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=DOC.splitlines()[0])
    ap.add_argument("--realdata", default=str(ROOT.parent / "shared" / "realdata"),
                    help="folder with the real datasets (see its SOURCES.md)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "dapt-biomed"), help="cache of corpora, runs, scores")
    ap.add_argument("--arms", default=None, help="comma-separated arms to run (default: all MiniLM arms)")
    ap.add_argument("--full-eval", default=None,
                    help="comma-separated arms that also get BC5CDR, the fine-tuned NER (NCBI-disease, BC5CDR), "
                         "ChemProt, HoC and PubMedQA "
                         "(default: minilm-warmup-0.3m; 'all' for every arm)")
    ap.add_argument("--groups", default=None, help=f"evaluate only these groups ({', '.join(GROUPS)})")
    ap.add_argument("--quick", action="store_true", help=f"one arm ({QUICK_ARM}), cheap tasks only")
    ap.add_argument("--report-only", action="store_true", help="write the report from what is cached")
    ap.add_argument("--no-report", action="store_true", help="run arms only (several processes can share --work)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per process (1 is fastest on a shared 2-core machine)")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "DAPT_BIOMED"), help="report path without suffix")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    realdata, work = Path(args.realdata).resolve(), Path(args.work).resolve()
    if not (realdata / "biomed_corpus" / "biomed_sentences.jsonl").is_file():
        print(f"error: {realdata} has no biomed_corpus/biomed_sentences.jsonl; pass --realdata with the real "
              "datasets (see experiments/DAPT_BIOMED.md for where each comes from)", file=sys.stderr)
        return 2
    if args.quick:
        arms = [QUICK_ARM]
    elif args.arms:
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    else:
        arms = [a for a in ARMS if a.startswith("minilm")]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        print(f"error: unknown arm(s) {unknown}; known: {', '.join(ARMS)}", file=sys.stderr)
        return 2
    full = set(ARMS) if args.full_eval == "all" else set((args.full_eval or "minilm-warmup-0.3m").split(","))
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    decon = decontaminate(realdata, work)
    models = sorted({arm_model(a) for a in arms} | {"minilm"}, key=lambda m: m != "minilm")
    data_info = prepare_data(realdata, work, models)
    if not args.report_only:
        for arm in arms:
            run_arm(arm, work, realdata)
            evaluate_arm(arm, realdata, work, full=arm in full and not args.quick,
                         groups=args.groups.split(",") if args.groups else None)
    if args.no_report:
        return 0
    for arm, ref, group in PAIRS:
        if all((work / "scores" / a / f"{group}.pkl").is_file() for a in (arm, ref)):
            compare(arm, str(work / "runs" / arm), ref, str(work / "runs" / ref), group, realdata, work)
    write_all(Path(args.out), work, realdata, decon, data_info, quick=args.quick,
              wall_s=time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
