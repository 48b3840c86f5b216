"""The quickstart's closing table: base, adapted (and merged) numbers from bench's report.json, with verdicts that
say "better"/"worse" only when the paired bootstrap interval excludes 0."""

from __future__ import annotations

import math
from typing import Any


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value)


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per bench task and perplexity: base, adapted, delta (exactly the report.json numbers)."""
    rows = []
    for t in report.get("tasks", []):
        model, base = t.get("model") or {}, t.get("baseline") or {}
        if model.get("skipped") or t.get("mode") == "perplexity":
            continue  # perplexities are listed once, below, per token and per word
        rows.append({"metric": f"{t['name']} ({t['metric']})", "base": base.get("score"), "adapted": model.get("score"),
                     "delta": t.get("delta"), "delta_ci": t.get("delta_ci"),
                     "higher_is_better": t.get("higher_is_better", True), "n_test": t.get("n_test"),
                     "holm": ((report.get("aggregate") or {}).get("family_wise") or {}).get("verdicts", {}).get(
                         t["name"])})
    task_ci = {t["name"]: t.get("delta_ci") for t in report.get("tasks", []) if t.get("metric") == "word_perplexity"}
    for kind, entry in (report.get("perplexity") or {}).items():
        m, b = entry.get("model") or {}, entry.get("baseline") or {}
        # per token is what training optimises; per word compares models with different tokenizers (and is
        # the perplexity task's metric, so it carries that task's bootstrap interval)
        for unit in ("per_token", "per_word"):
            if m.get(unit) is not None:
                delta = (m[unit] - b[unit]) if b.get(unit) is not None else None
                rows.append({"metric": f"{kind} perplexity ({unit.replace('_', ' ')})", "base": b.get(unit),
                             "adapted": m.get(unit), "delta": delta,
                             "delta_ci": task_ci.get(entry.get("task")) if unit == "per_word" else None,
                             "higher_is_better": False})
    return rows


def _ci(ci: list[float] | None) -> str:
    return "-" if not ci else f"[{ci[0]:+.3g}, {ci[1]:+.3g}]"


def verdict(row: dict[str, Any]) -> str:
    """'better'/'worse' only when the paired bootstrap interval excludes 0; else 'within noise'.

    Rows without an interval (per-token perplexity) say only the direction.
    """
    delta, ci = row["delta"], row.get("delta_ci")
    if delta is None or delta == 0:
        return "-"
    good = (delta > 0) == row["higher_is_better"]
    if not ci:
        return "lower" if delta < 0 else "higher"
    if ci[0] <= 0 <= ci[1]:
        return "within noise"
    return "better" if good else "worse"


# The change a user usually hopes to see from domain adaptation on a 0-1 score (F1, accuracy).
TARGET_EFFECT = 0.02


def detectable(row: dict[str, Any]) -> str:
    """Can this task's test set see a 2-point change? 'yes'/'no' with the minimum detectable effect.

    The minimum detectable effect is the half-width of the paired-delta interval: a true change
    smaller than it lands "within noise". Perplexity rows (no 0-1 scale) get '-'.
    """
    ci = row.get("delta_ci")
    if not ci or ci[0] is None or "perplexity" in row["metric"]:
        return "-"
    mde = (ci[1] - ci[0]) / 2
    return f"{'yes' if mde <= TARGET_EFFECT else 'no'} (±{mde:.2f})"


def add_merged(rows: list[dict[str, Any]], merged_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The merged model's test numbers (its bench against the same base) beside each base/adapted row."""
    by_metric = {r["metric"]: r for r in merged_rows}
    out = []
    for r in rows:
        m = by_metric.get(r["metric"]) or {}
        out.append({**r, "merged": m.get("adapted"), "merged_delta": m.get("delta"),
                    "merged_delta_ci": m.get("delta_ci"), "merged_holm": m.get("holm")})
    return out


def _verdict_text(row: dict[str, Any], prefix: str = "") -> str:
    r = {**row, "delta": row.get(f"{prefix}delta"), "delta_ci": row.get(f"{prefix}delta_ci")}
    holm = row.get(f"{prefix}holm")
    return verdict(r) + (f" (Holm: {holm})" if holm else "")


def render_summary(rows: list[dict[str, Any]], facts: list[tuple[str, str]]) -> str:
    width = max([len(r["metric"]) for r in rows] + [24])
    if any("merged" in r for r in rows):  # base | adapted | merged, each model's paired delta against the base
        cells = []
        for r in rows:
            cells.append([f"{'-' if r.get(f'{p}delta') is None else format(r[f'{p}delta'], '+.3g')} "
                          f"{_ci(r.get(f'{p}delta_ci'))} {_verdict_text(r, p)}" for p in ("", "merged_")])
        cw = max([len(c[0]) for c in cells] + [24])
        lines = [f"{'metric':<{width}}  {'base':>9}  {'adapted':>9}  {'merged':>9}  {'adapted - base, 95% CI':<{cw}}  "
                 "merged - base, 95% CI", "-" * (width + 38 + 2 * cw)]
        for r, (a, m) in zip(rows, cells, strict=True):
            lines.append(f"{r['metric']:<{width}}  {_fmt(r['base']):>9}  {_fmt(r['adapted']):>9}  "
                         f"{_fmt(r.get('merged')):>9}  {a:<{cw}}  {m}")
    else:
        lines = [f"{'metric':<{width}}  {'base':>9}  {'adapted':>9}  {'delta':>9}  {'delta 95% CI':>18}  "
                 f"{'sees 2 pts':>11}  verdict", "-" * (width + 90)]
        for r in rows:
            lines.append(f"{r['metric']:<{width}}  {_fmt(r['base']):>9}  {_fmt(r['adapted']):>9}  "
                         f"{'-' if r['delta'] is None else format(r['delta'], '+.3g'):>9}  "
                         f"{_ci(r.get('delta_ci')):>18}  {detectable(r):>11}  {verdict(r)}"
                         + (f" (Holm: {r['holm']})" if r.get("holm") else ""))
    lines.append("")
    if not any("merged" in r for r in rows) and any(detectable(r).startswith("no") for r in rows):
        lines += ["sees 2 pts: 'no' means the test set is too small to tell a 2-point change from noise (the number "
                  "is the smallest change it can see: half the paired interval); use the real datasets "
                  "(benchmarks/*/README.md) to see one.", ""]
    lines += [f"{k:<18} {v}" for k, v in facts]
    return "\n".join(lines)


def merge_line(selection: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Weight chosen, its dev deltas, and whether the goal holds on test: no task significantly worse than
    the base (Holm where bench applies it) while domain perplexity per word stays significantly better."""
    chosen = next(p for p in selection["points"] if p["weight"] == selection["chosen_weight"])
    dev = "; ".join(f"{n} {r['delta']:+.3g} [{r['delta_ci'][0]:+.3g}, {r['delta_ci'][1]:+.3g}]"
                    for n, r in chosen["tasks"].items() if r.get("delta") is not None and r.get("delta_ci"))
    worse = [r["metric"] for r in rows if "merged" in r and (r.get("merged_holm") or _verdict_text(r, "merged_")
                                                              ).startswith("worse")]
    domain = next((r for r in rows if r["metric"] == "domain perplexity (per word)"), None)
    kept = domain is not None and _verdict_text(domain, "merged_").startswith("better")
    if not worse and kept:
        goal = "goal met on test: no task significantly worse than the base, domain perplexity per word better"
    else:
        goal = ("goal NOT met on test at this budget: " + (f"worse than the base: {', '.join(worse)}" if worse else "")
                + ("; " if worse and not kept else "") + ("" if kept else "domain perplexity per word not "
                                                                   "significantly better"))
    return (f"{selection['method']} weight {selection['chosen_weight']:g} on the adapted model (chosen on dev from "
            f"{', '.join(format(w, 'g') for w in selection['weights'])}; dev: {dev}). {goal}")
