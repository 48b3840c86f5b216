"""Speed of the linear-probe NER task on real NCBI-disease with MiniLM (target: < 2 min on 2 cores).

    HF_HUB_OFFLINE=1 .venv/bin/python experiments/speed_bench_ner.py [--realdata ../shared/realdata] [--threads 1]

Runs exactly what ``domainlm bench --model minilm --suite biomed --tasks ner --data-root REALDATA
--override @benchmarks/biomed/realdata-ncbi.overrides`` runs (probe trained on the 923-sentence devel
split, scored on the 940-sentence test split, 1000 bootstrap resamples) and prints the wall time of
the whole call and of the task, and the CPU seconds the call consumed: on a machine shared with
other jobs the wall time measures the neighbours as much as the code, while CPU time (with one
thread, about the wall time on one idle core) does not. A benchmark prints numbers; it asserts
nothing. Results are written down in SPEED_BENCH.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realdata", default=str(REPO.parent / "shared" / "realdata"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--bf16", default="off", choices=["auto", "on", "off"])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    from domainlm.bench import bench

    imports = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        report = bench(model=args.model, suite="biomed", tasks=["ner"], data_root=args.realdata,
                       override=[f"@{REPO / 'benchmarks' / 'biomed' / 'realdata-ncbi.overrides'}"],
                       out=str(Path(tmp) / "out"), bf16=args.bf16, bootstrap=1000, threads=args.threads)
        total = time.perf_counter() - start
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    task = report["tasks"][0]
    load = os.getloadavg()
    result = {
        "model": args.model, "threads": torch.get_num_threads(), "bf16": args.bf16,
        "cpu": platform.processor() or platform.machine(), "load_average_1m": round(load[0], 2),
        "imports_s": round(imports, 1), "bench_call_s": round(total, 1), "bench_call_cpu_s": round(cpu, 1),
        "task_wall_s": round(task["wall_s"], 1),
        "examples_per_s": round(task["examples_per_s"], 1), "n_test": task["n_test"],
        "entity_f1": round(task["model"]["score"], 4), "ci": [round(x, 4) for x in task["model"]["ci"]],
    }
    print(json.dumps(result, indent=2))
    verdict = "under" if total < 120 else "OVER"
    print(f"linear-probe NER on NCBI-disease test ({task['n_test']} sentences): {total:.1f} s for the whole bench "
          f"call ({task['wall_s']:.1f} s in the task itself) on {result['threads']} threads -> {verdict} the "
          "2-minute target")


if __name__ == "__main__":
    main()
