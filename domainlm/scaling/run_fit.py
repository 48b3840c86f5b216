"""How ``domainlm scaling fit TABLE`` fits scaling laws to a sweep table and say how far they can be trusted."""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domainlm.errors import DataError
from domainlm.scaling.config import FitConfig
from domainlm.scaling.laws import (
    EXPONENT_MAX,
    KAPLAN,
    CLaw,
    NDLaw,
    extrapolation,
    fit_c,
    fit_nd,
)

log = logging.getLogger(__name__)

TABLE_NAME = "sweep.csv"
# Beyond this factor outside the fitted range a prediction is flagged (the threshold).
EXTRAPOLATION_WARN = 10.0


# --------------------------------------------------------------------------------------------------
# Reading the table
# --------------------------------------------------------------------------------------------------

@dataclass
class Runs:
    path: Path
    names: list[str]
    n: list[float]
    d: list[float]
    c: list[float]
    loss: list[float]
    skipped: list[str]
    compute_column: str


def read_table(path: str | Path, params: str = "non_embedding") -> Runs:
    """Read the runs of a sweep table; rows whose status is not ``ok`` are skipped and listed."""
    path = Path(path)
    if path.is_dir():
        path = path / TABLE_NAME
    if not path.is_file():
        raise DataError(f"sweep table not found: {path}; run `domainlm scaling sweep` first, or pass the CSV it wrote")
    n_col = "non_embedding_params" if params == "non_embedding" else "params"
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        need = [n_col, "tokens_trained", "val_loss"]
        missing = [c for c in need if c not in columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected at least {', '.join(need)} "
                            f"(found: {', '.join(columns) or 'nothing'})")
        compute_column = "flops" if "flops" in columns else "6ND"
        runs = Runs(path, [], [], [], [], [], [], compute_column)
        for line, row in enumerate(reader, start=2):
            name = row.get("run") or f"line {line}"
            status = (row.get("status") or "ok").strip()
            if status != "ok":
                runs.skipped.append(f"{name} ({status})")
                continue
            values = {}
            for col in need + (["flops"] if compute_column == "flops" else []) + (["params"] if "params" in columns
                                                                                   else []):
                text = (row.get(col) or "").strip()
                try:
                    values[col] = float(text)
                except ValueError:
                    raise DataError(f"{path}, line {line} (run {name}): column '{col}' is {text!r}, not a number; "
                                    "fix the value or set that row's status to something other than 'ok'") from None
                if not math.isfinite(values[col]) or values[col] <= 0:
                    raise DataError(f"{path}, line {line} (run {name}): column '{col}' must be a positive finite "
                                    f"number, got {text}")
            runs.names.append(name)
            runs.n.append(values[n_col])
            runs.d.append(values["tokens_trained"])
            runs.loss.append(values["val_loss"])
            total = values.get("params", values[n_col])
            runs.c.append(values["flops"] if compute_column == "flops" else 6 * total * values["tokens_trained"])
    return runs


# --------------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------------

def plot_fit(runs: Runs, nd: NDLaw | None, c_law: CLaw | None, frontier_idx: list[int], k: float,
             path: Path) -> None:
    """Log-log held-out loss against training FLOPs: runs by size, the fitted L(C) and the L(N, D) frontier."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from domainlm.artifacts import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(10.5, 5), dpi=110)
    sizes = sorted(set(runs.n))
    cmap = plt.get_cmap("viridis")
    for i, size in enumerate(sizes):
        idx = sorted((j for j, n in enumerate(runs.n) if n == size), key=lambda j: runs.c[j])
        color = cmap(i / max(1, len(sizes) - 1))
        ax.plot([runs.c[j] for j in idx], [runs.loss[j] for j in idx], "o-", color=color, alpha=0.8, ms=5,
                label=f"N = {size:,.0f}")
    ax.scatter([runs.c[j] for j in frontier_idx], [runs.loss[j] for j in frontier_idx], s=90, facecolors="none",
               edgecolors="black", label="compute frontier (used for L(C))", zorder=3)
    lo, hi = min(runs.c), max(runs.c)
    grid = np.logspace(math.log10(lo) - 0.5, math.log10(hi) + 0.5, 100)
    if c_law is not None:
        ax.plot(grid, c_law.loss(grid), "k--", lw=1.5,
                label=f"L(C) = (C_c/C)^{c_law.alpha_C:.3f}")
    if nd is not None:
        try:
            best = np.array([nd.optimal(c, k) for c in grid])
        except DataError:
            best = None
        if best is not None:
            # Solid only where the optimal N and D both lie inside the swept ranges: elsewhere the
            # frontier is the law extrapolated, even at budgets the sweep covered.
            inside = ((best[:, 0] >= min(runs.n)) & (best[:, 0] <= max(runs.n)) & (best[:, 1] >= min(runs.d))
                      & (best[:, 1] <= max(runs.d)))
            label = f"L(N,D) fit at compute-optimal N, D (α={nd.alpha:.2f}, β={nd.beta:.2f})"
            ax.plot(grid, best[:, 2], color="tab:red", lw=1.2, ls=":",
                    label=label + ("; dotted: N or D outside the sweep" if not inside.all() else ""))
            if inside.any():
                ax.plot(grid[inside], best[inside, 2], color="tab:red", lw=1.8)
    ax.axvspan(lo, hi, color="0.92", zorder=0, label="range of the data")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:.3g}")  # "4.5" reads better than "4.5×10^0" on a loss axis
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("training FLOPs" + (" (recorded by adapt)" if runs.compute_column == "flops" else " (6ND)"))
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title("Scaling sweep: loss vs compute (valid only inside the shaded range)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------------------------
# The verb
# --------------------------------------------------------------------------------------------------

def _range(values: list[float]) -> tuple[float, float]:
    return min(values), max(values)


def run(cfg: FitConfig) -> dict[str, Any]:
    import numpy as np

    from domainlm.artifacts import atomic_write_json

    runs = read_table(cfg.table, cfg.params)
    out_dir = Path(cfg.out) if cfg.out else runs.path.parent
    if runs.skipped:
        log.warning("%d run(s) skipped (status not ok): %s", len(runs.skipped), "; ".join(runs.skipped))
    if len(runs.n) < 2:
        raise DataError(f"{runs.path} has {len(runs.n)} usable run(s); a fit needs a sweep of at least 6")
    conf = cfg.confidence
    n_rng, d_rng, c_rng = _range(runs.n), _range(runs.d), _range(runs.c)
    k = float(np.median([c / (n * d) for n, d, c in zip(runs.n, runs.d, runs.c, strict=True)]))
    result: dict[str, Any] = {
        "table": str(runs.path), "runs_used": len(runs.n), "runs_skipped": runs.skipped, "n_column": cfg.params,
        "compute_column": runs.compute_column, "flops_per_param_token": k,
        "validity": {"N": n_rng, "D": d_rng, "C": c_rng}, "warnings": [],
    }
    warnings: list[str] = result["warnings"]

    def warn_range(what: str, **values: float) -> None:
        for axis, value in values.items():
            lo, hi = result["validity"][axis]
            factor = extrapolation(value, lo, hi)
            if factor > EXTRAPOLATION_WARN:
                msg = (f"{what}: {axis} = {value:.3g} is {factor:.0f}x outside the swept range [{lo:.3g}, {hi:.3g}]; "
                       "the fit was not tested there and power laws fitted on a narrow range often bend")
                warnings.append(msg)

    # ---- L(N, D) -----------------------------------------------------------------------------
    nd = None
    nd_boot = None
    try:
        nd, nd_boot = fit_nd(runs.n, runs.d, runs.loss, delta=cfg.huber_delta, bootstrap=cfg.bootstrap, seed=cfg.seed)
    except DataError as exc:
        warnings.append(f"L(N, D) not fitted: {exc}")
    if nd is not None:
        pred = nd.loss(np.array(runs.n), np.array(runs.d))
        resid = np.log(np.array(runs.loss)) - np.log(pred)
        result["nd"] = {"law": nd.as_dict(), "residual_rms_log": float(np.sqrt(np.mean(resid**2))),
                        "bootstrap_ok": len(nd_boot.laws), "bootstrap_failed": nd_boot.failed,
                        "intervals": {key: nd_boot.interval(lambda law, key=key: getattr(law, key), conf)
                                      for key in ("E", "A", "alpha", "B", "beta")}}
    # ---- L(C) --------------------------------------------------------------------------------
    c_law = None
    used: list[int] = []
    try:
        c_law, c_boot, used = fit_c(runs.c, runs.loss, bootstrap=cfg.bootstrap, seed=cfg.seed)
        result["c"] = {"law": c_law.as_dict(), "frontier_runs": [runs.names[i] for i in used],
                       "bootstrap_ok": len(c_boot.laws), "bootstrap_failed": c_boot.failed,
                       "intervals": {key: c_boot.interval(lambda law, key=key: getattr(law, key), conf)
                                     for key in ("C_c", "alpha_C")}}
    except DataError as exc:
        warnings.append(f"L(C) not fitted: {exc}")
    # ---- more tokens or a bigger model? -------------------------------------------------------------
    if nd is not None:
        at_n = cfg.n if cfg.n is not None else max(runs.n)
        at_d = cfg.d if cfg.d is not None else max(runs.d)

        def gain(law: NDLaw, n_mult: float, d_mult: float) -> float:
            return float(law.loss(at_n, at_d) - law.loss(at_n * n_mult, at_d * d_mult))

        result["doubling"] = {"N": at_n, "D": at_d, "loss": float(nd.loss(at_n, at_d)),
                              "gain_2x_N": gain(nd, 2, 1), "gain_2x_D": gain(nd, 1, 2),
                              "gain_2x_N_interval": nd_boot.interval(lambda law: gain(law, 2, 1), conf),
                              "gain_2x_D_interval": nd_boot.interval(lambda law: gain(law, 1, 2), conf)}
    # ---- prediction and allocation -------------------------------------------------------------
    if cfg.n is not None and cfg.d is not None and nd is not None:
        point = float(nd.loss(cfg.n, cfg.d))
        lo, hi = nd_boot.interval(lambda law: float(law.loss(cfg.n, cfg.d)), conf)
        result["prediction"] = {"N": cfg.n, "D": cfg.d, "loss": point, "interval": [lo, hi]}
        warn_range("prediction", N=cfg.n, D=cfg.d)
    if cfg.budget is not None:
        entry: dict[str, Any] = {"C": cfg.budget}
        if nd is not None:
            try:
                n_opt, d_opt, l_opt = nd.optimal(cfg.budget, k)
                entry.update(N=n_opt, D=d_opt, tokens_per_param=d_opt / n_opt, loss=l_opt,
                             N_interval=nd_boot.interval(lambda law: law.optimal(cfg.budget, k)[0], conf),
                             D_interval=nd_boot.interval(lambda law: law.optimal(cfg.budget, k)[1], conf))
                warn_range("compute-optimal allocation", N=n_opt, D=d_opt, C=cfg.budget)
            except DataError as exc:
                warnings.append(str(exc))
        if c_law is not None:
            entry["loss_from_L(C)"] = float(c_law.loss(cfg.budget))
            if nd is None:
                warn_range("L(C) prediction", C=cfg.budget)
        result["budget"] = entry
    # ---- write ---------------------------------------------------------------------------------
    if cfg.plot:
        png = out_dir / "scaling_fit.png"
        plot_fit(runs, nd, c_law, used, k, png)
        result["plot"] = str(png)
    atomic_write_json(out_dir / "fit.json", {"config": {f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
                                             **result})
    result["fit_json"] = str(out_dir / "fit.json")
    _print_report(result, conf)
    return result


def _iv(interval: Any, fmt: str = ".3g") -> str:
    lo, hi = interval
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "(no interval)"
    return f"[{lo:{fmt}}, {hi:{fmt}}]"


def _print_report(r: dict[str, Any], conf: float) -> None:
    p = print
    v = r["validity"]
    p(f"\nscaling fit of {r['runs_used']} runs from {r['table']}"
      + (f" ({len(r['runs_skipped'])} skipped)" if r["runs_skipped"] else ""))
    p(f"N = {r['n_column'].replace('_', '-')} parameters; C = "
      + ("FLOPs recorded by adapt" if r["compute_column"] == "flops" else "6ND")
      + f" (median {r['flops_per_param_token']:.2f} FLOPs per parameter-token; 6 in Kaplan/Chinchilla)")
    pct = f"{conf:.0%}"
    if "nd" in r:
        law, iv = r["nd"]["law"], r["nd"]["intervals"]
        p(f"\nL(N, D) = E + A/N^alpha + B/D^beta   ({pct} bootstrap intervals over "
          f"{r['nd']['bootstrap_ok']} resamples; residual RMS {r['nd']['residual_rms_log']:.3f} in log-loss)")
        at_bound = [k for k in ("E", "A", "B") if law[k] == 0] + [k for k in ("alpha", "beta")
                                                                  if law[k] in (0.0, EXPONENT_MAX)]
        for key, ref in (("E", "1.69"), ("A", "406.4"), ("alpha", f"0.34 (Kaplan alpha_N {KAPLAN['alpha_N']})"),
                         ("B", "410.7"), ("beta", f"0.28 (Kaplan alpha_D {KAPLAN['alpha_D']})")):
            p(f"  {key:<6} {law[key]:>10.4g}  {_iv(iv[key]):<24} Chinchilla: {ref}")
        if at_bound:
            p(f"  note: {', '.join(at_bound)} sit(s) at a bound of the fit: the sweep does not resolve that term "
              "(E = 0 means no irreducible loss is visible yet); read the interval, not the point value")
    if "c" in r:
        law, iv = r["c"]["law"], r["c"]["intervals"]
        p(f"\nL(C) = (C_c/C)^alpha_C on the compute frontier ({len(r['c']['frontier_runs'])} runs)")
        p(f"  alpha_C {law['alpha_C']:>9.4g}  {_iv(iv['alpha_C']):<24} Kaplan: {KAPLAN['alpha_C']}")
        p(f"  C_c     {law['C_c']:>9.4g}  {_iv(iv['C_c'])}")
    p(f"\nrange of validity: N in [{v['N'][0]:.3g}, {v['N'][1]:.3g}], D in [{v['D'][0]:.3g}, {v['D'][1]:.3g}] tokens, "
      f"C in [{v['C'][0]:.3g}, {v['C'][1]:.3g}] FLOPs")
    p("  These exponents describe this sweep (tiny models, one corpus, one tokenizer, fixed hyperparameters). They "
      "are not Kaplan's or Chinchilla's and do not transfer to large models; within about 10x of the range above "
      "they are a fair guide, beyond it they are a guess.")
    if "doubling" in r:
        g = r["doubling"]
        p(f"\nmore data or a bigger model? at N = {g['N']:.3g}, D = {g['D']:.3g} (loss {g['loss']:.4f} by the fit):")
        p(f"  2x tokens lowers the loss by {g['gain_2x_D']:.4f} {_iv(g['gain_2x_D_interval'], '.4f')}, "
          f"2x parameters by {g['gain_2x_N']:.4f} {_iv(g['gain_2x_N_interval'], '.4f')}")
    if "prediction" in r:
        pr = r["prediction"]
        p(f"\nprediction at N = {pr['N']:.3g}, D = {pr['D']:.3g}: loss {pr['loss']:.4f}  "
          f"{pct} interval {_iv(pr['interval'], '.4f')} (parameter uncertainty only)")
    if "budget" in r:
        b = r["budget"]
        if "N" in b:
            p(f"\ncompute-optimal for C = {b['C']:.3g} FLOPs under the fitted L(N, D) with C = "
              f"{r['flops_per_param_token']:.2f}·N·D:")
            p(f"  N = {b['N']:.3g} {_iv(b['N_interval'])}, D = {b['D']:.3g} {_iv(b['D_interval'])} tokens, "
              f"{b['tokens_per_param']:.3g} tokens per parameter (Chinchilla: about 20), loss {b['loss']:.4f}")
        if "loss_from_L(C)" in b:
            p(f"  L(C) predicts loss {b['loss_from_L(C)']:.4f} at this budget")
    for w in r["warnings"]:
        p(f"WARNING: {w}")
    if "plot" in r:
        p(f"\nplot: {r['plot']}")
    p(f"fit:  {r['fit_json']}")


__all__ = ["plot_fit", "read_table", "run"]
