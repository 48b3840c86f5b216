"""Parity: our zero-shot `pubmedqa` task against lm-evaluation-harness's, item by item, on the same items.

Reads the real PubMedQA PQA-L test split from ../shared/realdata (never copied into the project: the
lm-eval task YAML and its JSONL are generated in a temporary folder at run time), loads the model
once and scores it with both implementations:

    nice -n 10 python experiments/parity_pubmedqa.py --model smollm2 --out /tmp/parity.json

Prints per-item agreement of the predicted answer, the largest log-likelihood difference and both
accuracies, plus the answer-prior numbers (predicted-label distribution, macro-F1, acc_norm,
batch-calibrated accuracy). The numbers are written down in benchmarks/biomed/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"

YAML = """task: pubmedqa_real
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "Abstract: {{{{CONTEXTS|join('\\n')}}}}\\nQuestion: {{{{QUESTION}}}}\\nAnswer:"
doc_to_target: final_decision
doc_to_choice: ["yes", "no", "maybe"]
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--realdata", default=str(REALDATA))
    ap.add_argument("--limit", type=int, default=None, help="N test items only (quick check)")
    ap.add_argument("--offset", type=int, default=0, help="skip the first K test items (with --limit: items K..K+N)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=None, help="write the per-item comparison as JSON here")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    real = Path(args.realdata)
    if not (real / "pubmedqa" / "ori_pqal.json").is_file():
        print(f"no PubMedQA in {real}; nothing to compare", file=sys.stderr)
        return 1

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from domainlm.bench import harness
    from domainlm.bench.loading import load_for_eval
    from domainlm.bench.modes import RunContext
    from domainlm.bench.modes.zeroshot import run_zeroshot
    from domainlm.device import cpu_name
    from domainlm.tasks.data import load_data
    from domainlm.tasks.priors import answer_priors, label_distribution, macro_f1
    from domainlm.tasks.suites import load_suite, parse_overrides

    overrides = parse_overrides(["pubmedqa.train=", "pubmedqa.dev=", "pubmedqa.test=pubmedqa/ori_pqal.json",
                                 "pubmedqa.test_ids=pubmedqa/test_ground_truth.json"])
    spec = load_suite("biomed", ["pubmedqa"], overrides)[0]
    data = load_data(spec, data_root=real, needs_train=False, max_examples=None)
    if args.limit or args.offset:
        data.splits["test"] = data.test[args.offset:(args.offset + args.limit) if args.limit else None]
    tmp = Path(tempfile.mkdtemp(prefix="pubmedqa-parity-"))
    raw = json.loads((real / "pubmedqa" / "ori_pqal.json").read_text(encoding="utf-8"))
    with (tmp / "test.jsonl").open("w", encoding="utf-8") as fh:  # same items, same order as ours
        for ex in data.test:
            rec = raw[ex.id]
            fh.write(json.dumps({"PMID": ex.id, "QUESTION": rec["QUESTION"], "CONTEXTS": rec["CONTEXTS"],
                                 "final_decision": rec["final_decision"]}) + "\n")
    (tmp / "pubmedqa_real.yaml").write_text(YAML.format(data=tmp / "test.jsonl"), encoding="utf-8")

    loaded = load_for_eval(args.model, "causal")
    from domainlm.device import cpu_flags

    flags = cpu_flags()
    t = time.perf_counter()
    ours = run_zeroshot(loaded, spec, data, RunContext(device="cpu", bf16=False, seeds=1))
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    plan = harness.plan(["pubmedqa_real"], include=str(tmp))
    theirs = harness.evaluate(plan, loaded.model, loaded.tokenizer, batch_size=args.batch_size)["pubmedqa_real"]
    t_theirs = time.perf_counter() - t

    gold = [ex.label for ex in data.test]
    pred_ours = ours.predictions[0]
    agree = sum(a == b for a, b in zip(pred_ours, theirs.predictions, strict=True))
    diffs = [max(abs(a - b) for a, b in zip(x, y, strict=True))
             for x, y in zip(ours.choice_scores, theirs.choice_scores, strict=True)]
    choices = ours.choices
    pri_ours = answer_priors(ours.choice_scores, choices, gold)
    pri_theirs = answer_priors(theirs.choice_scores, theirs.choices, theirs.gold, theirs.choice_lengths)
    report = {
        "model": args.model, "items": len(gold), "agreement": agree / len(gold), "agree_items": agree,
        "max_abs_loglik_diff": max(diffs), "mean_abs_loglik_diff": sum(diffs) / len(diffs),
        "ours": {"acc": sum(p == g for p, g in zip(pred_ours, gold, strict=True)) / len(gold),
                 "predicted": label_distribution(pred_ours), "macro_f1": macro_f1(gold, pred_ours),
                 "acc_norm": pri_ours["acc_norm"], "acc_calibrated": pri_ours["acc_calibrated"],
                 "calibrated_predicted": label_distribution(pri_ours["calibrated_predictions"]),
                 "wall_s": t_ours},
        "lm_eval": {"acc": sum(theirs.values) / len(theirs.values), "reported": theirs.lm_eval_scores,
                    "predicted": label_distribution(theirs.predictions),
                    "macro_f1": macro_f1(theirs.gold, theirs.predictions), "acc_norm": pri_theirs["acc_norm"],
                    "acc_calibrated": pri_theirs["acc_calibrated"], "wall_s": t_theirs},
        "gold": label_distribution(gold),
        "disagreements": [{"pmid": data.test[i].id, "ours": ours.choice_scores[i], "lm_eval": theirs.choice_scores[i]}
                          for i in range(len(gold)) if pred_ours[i] != theirs.predictions[i]][:20],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv),
        "machine": {"cpu": cpu_name(), "flags": flags, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                    "note": "wall times on a CPU shared with other jobs are pessimistic"},
    }
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
