"""How ``domainlm scaling sweep`` trains its grid: sizes built from configs, runs cheapest first, the table kept current."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

from domainlm.config import to_dict
from domainlm.errors import DataError
from domainlm.scaling.config import HEAD_DIM, SIZE, SweepConfig

log = logging.getLogger(__name__)

TABLE_COLUMNS = ["run", "status", "layers", "hidden", "intermediate", "heads", "params", "non_embedding_params",
                 "embedding_params", "tokens", "tokens_trained", "flops", "val_loss", "initial_val_loss",
                 "train_loss", "wall_s", "tokens_per_s"]

_now = time.perf_counter  # indirection so tests can drive the time bound with a fake clock


def size_overrides(family: str, size: str) -> dict[str, int]:
    """Config overrides for ``build_tiny`` that turn a ``LAYERSxHIDDEN`` size into a model."""
    layers, hidden = (int(x) for x in SIZE.match(size).groups())  # type: ignore[union-attr]
    heads = hidden // HEAD_DIM
    over = {"num_hidden_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
            "intermediate_size": (3 if family == "tiny-llama" else 4) * hidden}
    if family == "tiny-llama":
        over["num_key_value_heads"] = heads
    return over


def predict_seconds(history: list[tuple[float, float]], flops: float, *, margin: float = 1.1) -> float:
    """Wall seconds a run of ``flops`` should take, from (FLOPs, seconds) of the runs before it.

    A run costs a fixed overhead (set-up, two evaluations, saving) plus time proportional to its
    FLOPs; with two or more runs both are fitted (the first run, which pays the imports, is left out
    once three exist); with one, time is scaled by FLOPs alone, which overestimates larger runs.
    """
    import numpy as np

    points = history[1:] if len(history) >= 3 else history
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    if len(points) >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        if slope > 0:
            return margin * (max(intercept, 0.0) + slope * flops)
    return margin * flops * float(np.max(y / x))


def _adapt(**kwargs: Any) -> dict[str, Any]:
    from domainlm.adapt import adapt

    return adapt(**kwargs)


def _prepare_corpus(cfg: SweepConfig, model_dir: Path, out: Path) -> Path:
    path = Path(cfg.corpus)
    if path.is_dir():
        return path
    target = out / "corpus"
    if (target / "manifest.json").is_file():
        return target
    from domainlm.corpora.run import prepare_card

    log.info("preparing corpus card %s into %s (block size %d)", cfg.corpus, target, cfg.seq_len)
    prepare_card(cfg.corpus, str(model_dir), target, block_size=cfg.seq_len)
    return target


def _metric(result: dict[str, Any], *keys: str) -> Any:
    """Read a field of adapt's result, accepting the few layouts adapt's manifest has used."""
    for key in keys:
        node: Any = result
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


def _write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    from domainlm.artifacts import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in TABLE_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def run(cfg: SweepConfig) -> dict[str, Any]:
    from domainlm.artifacts import atomic_write_json, write_manifest
    from domainlm.flops import model_flops
    from domainlm.sources.tiny import build_tiny

    t0 = _now()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(cfg, k) for k in ("corpus", "family", "seq_len", "batch_size", "lr", "warmup_ratio",
                                              "eval_batches", "seed")}
    # ---- models, then the plan: every (size, tokens) with its parameter and FLOPs count ----------
    from transformers import AutoConfig

    plan = []
    models: dict[str, Path] = {}
    for size in cfg.sizes:
        over = size_overrides(cfg.family, size)
        folder = out / "models" / size
        if not (folder / "config.json").is_file():
            build_tiny(cfg.family, folder, seed=cfg.seed, **over)
        models[size] = folder
        fb = model_flops(AutoConfig.from_pretrained(folder), cfg.seq_len,
                         head_fraction=1.0 if cfg.family == "tiny-llama" else 0.15)
        for tokens in cfg.tokens:
            plan.append({"run": f"{size}-{tokens}", "size": size, "layers": over["num_hidden_layers"],
                         "hidden": over["hidden_size"], "intermediate": over["intermediate_size"],
                         "heads": over["num_attention_heads"], "params": fb.total_params,
                         "non_embedding_params": fb.non_embedding_params, "embedding_params": fb.embedding_params,
                         "tokens": tokens, "planned_flops": fb.training_flops_per_token * tokens})
    plan.sort(key=lambda r: r["planned_flops"])
    corpus = _prepare_corpus(cfg, models[cfg.sizes[0]], out)
    # ---- runs ----------------------------------------------------------------------------------
    rows: list[dict[str, Any]] = []
    history: list[tuple[float, float]] = []  # (FLOPs, wall seconds) of the runs trained in this call
    table = out / "sweep.csv"
    for item in plan:
        row = {k: v for k, v in item.items() if k in TABLE_COLUMNS}
        saved = out / "rows" / f"{item['run']}.json"
        if saved.is_file() and not cfg.overwrite:
            old = json.loads(saved.read_text(encoding="utf-8"))
            if old.get("settings") == settings and old.get("row", {}).get("status") == "ok":
                rows.append(old["row"])
                log.info("reusing finished run %s", item["run"])
                _write_table(table, rows)
                continue
        left = cfg.time_budget_s - (_now() - t0)
        if history:
            predicted = predict_seconds(history, item["planned_flops"])
            if predicted > left:
                row["status"] = f"skipped: time bound (predicted {predicted:.0f} s, {max(left, 0):.0f} s left)"
                rows.append(row)
                log.warning("skipping %s: %s", item["run"], row["status"])
                _write_table(table, rows)
                continue
        elif left <= 0:
            row["status"] = "skipped: time bound"
            rows.append(row)
            continue
        log.info("sweep run %s: %s layers x %s hidden, %s tokens", item["run"], item["layers"], item["hidden"],
                 f"{item['tokens']:,}")
        start = _now()
        result = _adapt(model=str(models[item["size"]]), corpus=str(corpus), out=str(out / "runs" / item["run"]),
                        from_scratch=True, method="full", max_tokens=item["tokens"], max_steps=None, lr=cfg.lr,
                        warmup_ratio=cfg.warmup_ratio, batch_size=cfg.batch_size, eval_every=0, save_every=0,
                        eval_batches=cfg.eval_batches, log_every=10**9, seed=cfg.seed, overwrite=True,
                        block_size=cfg.seq_len)
        wall = _now() - start
        val = _metric(result, "final_metrics.validation_loss", "metrics.validation_loss")
        flops = _metric(result, "flops.total", "flops")
        trained = _metric(result, "tokens_trained")
        if val is None or flops is None or trained is None:
            raise DataError(f"adapt's result for {item['run']} lacks validation_loss, flops or tokens_trained "
                            f"(keys: {sorted(result)}); the corpus may have an empty validation split")
        row.update(status="ok", tokens_trained=int(trained), flops=float(flops), val_loss=float(val),
                   initial_val_loss=_metric(result, "metrics.initial.domain_loss"),
                   train_loss=_metric(result, "metrics.train_loss", "final_metrics.train_loss"), wall_s=round(wall, 2),
                   tokens_per_s=_metric(result, "tokens_per_s"))
        history.append((float(item["planned_flops"]), wall))
        rows.append(row)
        atomic_write_json(saved, {"settings": settings, "row": row})
        _write_table(table, rows)
    _write_table(table, rows)
    done = [r for r in rows if r.get("status") == "ok"]
    wall = _now() - t0
    write_manifest(out, "scaling-sweep", config=to_dict(cfg), inputs={"corpus": str(corpus)},
                   counts={"runs": len(rows), "ok": len(done), "skipped": len(rows) - len(done)},
                   flops=sum(r["flops"] for r in done), wall_time_s=wall, notes=[f"table: {table.name}"])
    print(f"\nscaling sweep: {len(done)}/{len(rows)} runs finished in {wall:.0f} s -> {table}")
    width = max(len(r["run"]) for r in rows)
    print(f"  {'run':<{width}}  {'N (non-emb)':>11}  {'D trained':>10}  {'FLOPs':>9}  {'val loss':>8}")
    for r in rows:
        if r.get("status") == "ok":
            print(f"  {r['run']:<{width}}  {r['non_embedding_params']:>11,}  {r['tokens_trained']:>10,}  "
                  f"{r['flops']:>9.3g}  {r['val_loss']:>8.4f}")
        else:
            print(f"  {r['run']:<{width}}  {r['status']}")
    print(f"next: domainlm scaling fit {table}")
    return {"table": str(table), "rows": rows, "wall_time_s": wall, "corpus": str(corpus)}
