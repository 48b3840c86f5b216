"""The metrics log (JSONL, plus the experiment trackers of ``report_to``) and the loss/perplexity curve PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only JSONL of train and eval records; on resume, records after the checkpoint are dropped. Every
    record also goes to the experiment trackers of ``report_to`` (adapt/tracking.py)."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool = True,
                 report_to: list[str] | None = None, config: dict[str, Any] | None = None):
        self.path = path
        self.enabled = enabled
        self.trackers: list = []
        if not enabled:
            return
        if resume_step is None:
            path.write_text("")
        elif path.is_file():
            keep = [line for line in path.read_text().splitlines() if line.strip()
                    and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(k + "\n" for k in keep))
        from domainlm.adapt.tracking import open_trackers

        self.trackers = open_trackers(report_to, path.parent, config or {})

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        for tracker in self.trackers:
            tracker.log(record)

    def manifest(self, manifest: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.manifest(manifest)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(metrics_path: Path, out_png: Path, title: str) -> Path:
    """Training loss and held-out perplexity (domain, or each source of a mixture, and general when tracked)
    against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from domainlm.artifacts import atomic_write_bytes

    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    if train:
        ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", color="#1f77b4",
                 marker="o" if len(train) <= 40 else None, markersize=3)  # sparse logs: show the points
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss (nats/token)")
    ax1.set_title("training loss")
    ax1.grid(alpha=0.3)
    names = list(dict.fromkeys(n for r in evals for n in (r.get("sources") or {})))
    series = [(lambda r, n=n: (r.get("sources") or {}).get(n, {}).get("ppl"), f"{n} (held-out)", None)
              for n in names]  # a mixture: one line per source (the first is also domain_ppl: not drawn twice)
    if not names:
        series.append((lambda r: r.get("domain_ppl"), "domain (held-out)", "#d62728"))
    series.append((lambda r: r.get("general_ppl"), "general (forgetting)", "#2ca02c"))
    for get, label, color in series:
        pts = [(r["step"], v) for r in evals if (v := get(r)) is not None and math.isfinite(v)]
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label, color=color)
    ax2.set_xlabel("step")
    ax2.set_title("held-out perplexity")
    if ax2.lines:
        ax2.set_yscale("log")
        ax2.set_ylabel("perplexity")
        ax2.grid(alpha=0.3, which="both")
        ax2.legend()
    else:  # a corpus without validation blocks: say so instead of an empty log axis (and matplotlib's warning)
        ax2.text(0.5, 0.5, "not tracked: the corpus has no validation blocks", ha="center", va="center",
                 transform=ax2.transAxes, fontsize=9, color="#555555")
        ax2.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out_png, buf.getvalue())
    return out_png
