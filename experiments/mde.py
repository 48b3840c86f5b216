"""Minimum detectable effect per task, read from a bench report with a baseline.

    python experiments/mde.py runs/bench/report.json [more reports...]

For each task: n test, the paired delta and its 95% bootstrap CI (model minus baseline, resampled
over the same test items), and the CI's half-width. A change smaller than the half-width cannot be
told from noise at that test size; that half-width is the minimum detectable effect written in the
suite READMEs. The half-width depends on the pair compared (how correlated the two models' per-item
scores are), so it is measured from a real pair, not derived from n alone. The last column divides
it by the baseline's score, the readable form for perplexities.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    print("| task | metric | n test | model | baseline | paired delta [95% CI] | MDE (half-width) | MDE / baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for path in sys.argv[1:]:
        report = json.load(open(path))
        for t in report["tasks"]:
            ci = t.get("delta_ci")
            if not ci or t.get("delta") is None:
                continue
            m, b = t["model"]["score"], t["baseline"]["score"]
            half = (ci[1] - ci[0]) / 2
            rel = f"{half / abs(b):.1%}" if b else "-"
            print(f"| `{t['name']}` | {t['metric']} | {t.get('n_test')} | {m:.4g} | {b:.4g} | "
                  f"{t['delta']:+.4g} [{ci[0]:+.4g}, {ci[1]:+.4g}] | {half:.3g} | {rel} |")


if __name__ == "__main__":
    main()
