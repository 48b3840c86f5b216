"""Scaling laws: recovery of known laws from noisy synthetic runs, the fit verb, and the sweep's plumbing."""

from __future__ import annotations

import csv
import json
import math

import pytest

from domainlm.config import as_config
from domainlm.errors import ConfigError, DataError
from domainlm.scaling import FitConfig, SweepConfig, fit, sweep
from domainlm.scaling.laws import NDLaw, extrapolation, fit_c, fit_nd, frontier, synthetic_runs

# A law with Chinchilla's exponents but scaled to CPU-sized models (N ~ 1e4-1e6, D ~ 1e5-1e7).
TRUE = NDLaw(E=1.2, A=60.0, alpha=0.34, B=120.0, beta=0.28)
SIZES = [2e4, 6e4, 2e5, 6e5]
TOKENS = [1e5, 3e5, 1e6, 3e6, 1e7]


# ---- the laws ---------------------------------------------------------------------------------

def test_noise_free_runs_recover_the_law_exactly():
    n, d, loss = synthetic_runs(TRUE, SIZES, TOKENS, noise=0.0)
    law, _ = fit_nd(n, d, loss)
    for key, value in TRUE.as_dict().items():
        assert getattr(law, key) == pytest.approx(value, rel=1e-3), key


def test_noisy_runs_recover_the_law_within_tolerance_and_intervals_cover_it():
    n, d, loss = synthetic_runs(TRUE, SIZES, TOKENS, noise=0.005, seed=3)
    law, boot = fit_nd(n, d, loss, bootstrap=40, seed=0)
    assert law.alpha == pytest.approx(TRUE.alpha, abs=0.05)
    assert law.beta == pytest.approx(TRUE.beta, abs=0.05)
    assert law.E == pytest.approx(TRUE.E, abs=0.3)
    assert len(boot.laws) >= 30
    for key in ("alpha", "beta"):
        lo, hi = boot.interval(lambda fitted, key=key: getattr(fitted, key), 0.95)
        assert lo <= getattr(TRUE, key) <= hi, (key, lo, hi)
    # The fitted law predicts a held-out corner of the grid to within a few percent.
    assert law.loss(6e5, 1e7) == pytest.approx(TRUE.loss(6e5, 1e7), rel=0.03)


def test_compute_optimal_allocation_matches_a_numeric_search():
    from scipy.optimize import minimize_scalar

    budget, k = 1e15, 6.0
    n_opt, d_opt, l_opt = TRUE.optimal(budget, k)
    assert k * n_opt * d_opt == pytest.approx(budget)
    res = minimize_scalar(lambda logn: TRUE.loss(math.exp(logn), budget / (k * math.exp(logn))),
                          bounds=(math.log(10), math.log(1e12)), method="bounded", options={"xatol": 1e-9})
    assert math.log(n_opt) == pytest.approx(res.x, abs=1e-3)
    assert l_opt == pytest.approx(res.fun, rel=1e-6)
    # More compute buys both more parameters and more tokens, in the ratio β/(α+β) : α/(α+β).
    n_10, d_10, _ = TRUE.optimal(10 * budget, k)
    assert math.log10(n_10 / n_opt) == pytest.approx(TRUE.beta / (TRUE.alpha + TRUE.beta))
    assert math.log10(d_10 / d_opt) == pytest.approx(TRUE.alpha / (TRUE.alpha + TRUE.beta))


def test_l_of_c_is_recovered_on_the_frontier():
    import numpy as np

    rng = np.random.default_rng(0)
    c = np.logspace(10, 14, 12)
    loss = (1e18 / c) ** 0.07 * np.exp(rng.normal(0, 0.003, c.size))
    law, boot, used = fit_c(c, loss, on_frontier=False, bootstrap=50)
    assert law.alpha_C == pytest.approx(0.07, abs=0.005)
    assert math.log10(law.C_c) == pytest.approx(18, abs=0.5)
    lo, hi = boot.interval(lambda fitted: fitted.alpha_C)
    assert lo < 0.07 < hi


def test_frontier_keeps_runs_better_than_every_cheaper_one():
    compute = [1, 2, 3, 4, 5]
    loss = [5.0, 4.0, 4.5, 3.0, 3.5]
    assert frontier(compute, loss) == [0, 1, 3]


def test_extrapolation_factor():
    assert extrapolation(5, 1, 10) == 1
    assert extrapolation(200, 1, 10) == 20
    assert extrapolation(0.05, 1, 10) == 20


def test_too_few_runs_are_refused_with_the_reason():
    with pytest.raises(DataError, match="at least 6 runs"):
        fit_nd([1e4, 2e4, 3e4], [1e5, 1e5, 1e5], [3.0, 2.9, 2.8])
    with pytest.raises(DataError, match="2 model sizes"):
        fit_nd([1e4] * 6, [1e5, 2e5, 3e5, 4e5, 5e5, 6e5], [3.0, 2.9, 2.8, 2.7, 2.6, 2.5])


# ---- the fit verb -----------------------------------------------------------------------------

def _write_table(path, law=TRUE, noise=0.005, extra_rows=()):
    n, d, loss = synthetic_runs(law, SIZES, TOKENS, noise=noise, seed=1)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "status", "params", "non_embedding_params", "tokens_trained", "flops", "val_loss"])
        for i, (ni, di, li) in enumerate(zip(n, d, loss, strict=True)):
            w.writerow([f"r{i}", "ok", int(ni * 1.1), int(ni), int(di), 6.2 * ni * di, li])
        for row in extra_rows:
            w.writerow(row)
    return path


def test_fit_verb_reports_laws_intervals_prediction_and_plot(tmp_path, capsys):
    table = _write_table(tmp_path / "sweep.csv",
                         extra_rows=[["late", "skipped: time bound", 1, 1, "", "", ""]])
    out = fit(str(table), n=2e5, d=1e6, budget=1e13, bootstrap=30)
    assert out["runs_used"] == 20 and out["runs_skipped"] == ["late (skipped: time bound)"]
    assert out["nd"]["law"]["alpha"] == pytest.approx(TRUE.alpha, abs=0.05)
    lo, hi = out["prediction"]["interval"]
    assert lo <= out["prediction"]["loss"] <= hi
    assert out["prediction"]["loss"] == pytest.approx(TRUE.loss(2e5, 1e6), rel=0.02)
    assert out["flops_per_param_token"] == pytest.approx(6.2)
    budget = out["budget"]
    assert 6.2 * budget["N"] * budget["D"] == pytest.approx(1e13)
    assert not out["warnings"]  # everything requested lies inside the data
    png = tmp_path / "scaling_fit.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "fit.json").read_text())
    assert saved["validity"]["N"] == [2e4, 6e5]
    printed = capsys.readouterr().out
    assert "range of validity" in printed and "not Kaplan's" in printed


def test_fit_warns_when_extrapolating_more_than_10x(tmp_path, capsys):
    table = _write_table(tmp_path / "sweep.csv")
    out = fit(str(tmp_path), n=1e9, d=1e6, budget=1e22, bootstrap=0, plot=False)
    joined = " ".join(out["warnings"])
    assert "N = 1e+09" in joined and "outside the swept range" in joined
    assert "compute-optimal allocation" in joined
    assert "WARNING" in capsys.readouterr().out
    assert table.is_file()


def test_fit_table_errors_name_the_line_and_the_fix(tmp_path):
    bad = _write_table(tmp_path / "sweep.csv", extra_rows=[["broken", "ok", 10, 10, "many", 1.0, 2.0]])
    with pytest.raises(DataError, match=r"line 22 \(run broken\): column 'tokens_trained' is 'many'"):
        fit(str(bad), bootstrap=0, plot=False)
    (tmp_path / "other.csv").write_text("run,loss\nx,1\n")
    with pytest.raises(DataError, match="missing column"):
        fit(str(tmp_path / "other.csv"), bootstrap=0)
    with pytest.raises(DataError, match="not found"):
        fit(str(tmp_path / "nowhere.csv"))
    with pytest.raises(ConfigError, match="both --n and --d"):
        as_config(FitConfig, None, {"table": "x", "n": 1e6})


def test_fit_cli(tmp_path, capsys):
    from domainlm.cli import main

    _write_table(tmp_path / "sweep.csv")
    assert main(["scaling", "fit", str(tmp_path / "sweep.csv"), "--bootstrap", "0", "--no-plot"]) == 0
    assert "L(N, D)" in capsys.readouterr().out


# ---- the sweep's plumbing (adapt stubbed: the real sweep is the slow test below) -------------------

class _FakeAdapt:
    """Stands in for adapt: loss from TRUE at the run's non-embedding N, time from a fake clock."""

    def __init__(self, clock, seconds_per_gflop=1.0):
        self.clock = clock
        self.calls = []
        self.seconds_per_gflop = seconds_per_gflop

    def __call__(self, **kw):
        import json as _json
        from pathlib import Path

        from transformers import AutoConfig

        from domainlm.flops import model_flops

        self.calls.append(kw)
        fb = model_flops(AutoConfig.from_pretrained(kw["model"]), kw["block_size"])
        tokens = math.ceil(kw["max_tokens"] / (kw["batch_size"] * kw["block_size"])) * kw["batch_size"] * kw[
            "block_size"]
        flops = fb.training_flops_per_token * tokens
        self.clock[0] += flops / 1e9 * self.seconds_per_gflop
        Path(kw["out"]).mkdir(parents=True, exist_ok=True)
        (Path(kw["out"]) / "called.json").write_text(_json.dumps(kw))
        return {"tokens_trained": tokens, "flops": {"total": flops}, "tokens_per_s": 1000.0,
                "metrics": {"validation_loss": float(TRUE.loss(fb.non_embedding_params, tokens)),
                            "initial": {"domain_loss": 5.5}, "train_loss": 3.0}}


@pytest.fixture
def fake(monkeypatch):
    from domainlm.scaling import run_sweep as sweep_mod

    clock = [0.0]
    monkeypatch.setattr(sweep_mod, "_now", lambda: clock[0])
    stub = _FakeAdapt(clock)
    monkeypatch.setattr(sweep_mod, "_adapt", stub)
    return stub


def test_sweep_writes_a_table_and_reuses_finished_runs(tmp_path, fake, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    kw = dict(corpus=str(corpus), sizes=["1x16", "2x32"], tokens=[2048, 4096, 8192], seq_len=32, batch_size=4,
              out=str(tmp_path / "sw"))
    result = sweep(**kw)
    rows = list(csv.DictReader((tmp_path / "sw" / "sweep.csv").open()))
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert [float(r["flops"]) for r in rows] == sorted(float(r["flops"]) for r in rows)  # cheapest first
    call = fake.calls[0]
    assert call["from_scratch"] is True and call["method"] == "full" and call["max_steps"] is None
    assert call["corpus"] == str(corpus) and call["eval_every"] == 0 and call["save_every"] == 0
    small = [r for r in rows if r["run"].startswith("1x16")]
    assert {int(r["non_embedding_params"]) for r in small} == {13 * 16 * 16 + 2 * 16 + 16}
    assert result["rows"][0]["val_loss"] > result["rows"][-1]["val_loss"]
    manifest = json.loads((tmp_path / "sw" / "manifest.json").read_text())
    assert manifest["kind"] == "scaling-sweep" and manifest["counts"]["ok"] == 6
    sweep(**kw)  # everything reused
    assert len(fake.calls) == 6
    sweep(**{**kw, "lr": 1e-3})  # a changed setting retrains
    assert len(fake.calls) == 12
    fitted = fit(str(tmp_path / "sw"), bootstrap=0, plot=False)
    assert fitted["runs_used"] == 6


def test_sweep_skips_runs_that_would_overrun_the_time_bound(tmp_path, fake):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    fake.seconds_per_gflop = 400.0
    result = sweep(corpus=str(corpus), sizes=["1x16", "4x64"], tokens=[2048, 16384], seq_len=32, batch_size=4,
                   out=str(tmp_path / "sw"), time_budget_s=60)
    statuses = [r["status"] for r in result["rows"]]
    assert statuses[0] == "ok"
    assert any(s.startswith("skipped: time bound") for s in statuses)
    rows = list(csv.DictReader((tmp_path / "sw" / "sweep.csv").open()))
    assert [r["status"] for r in rows] == statuses


def test_sweep_config_reports_every_problem():
    with pytest.raises(ConfigError) as exc:
        as_config(SweepConfig, None, {"sizes": ["2x64", "big", "1x20"], "tokens": [100], "lr": 0})
    text = str(exc.value)
    assert "'big' is not LAYERSxHIDDEN" in text and "'1x20'" in text and "less than one optimizer step" in text
    assert "'lr' must be positive" in text


@pytest.mark.slow
def test_real_sweep_on_the_shipped_sample_then_fit(tmp_path, capsys):
    """Tier 2: real adapt runs on the shipped biomedical sample, a table, a fit and a plot."""
    result = sweep(sizes=["1x16", "1x32", "2x32"], tokens=[4096, 8192, 16384], seq_len=64, batch_size=4,
                   eval_batches=4, out=str(tmp_path / "sw"), time_budget_s=3000)
    assert all(r["status"] == "ok" for r in result["rows"])
    assert all(0 < r["val_loss"] < 6 for r in result["rows"])  # byte-level: ln(260) = 5.56 at random
    fitted = fit(str(tmp_path / "sw"), bootstrap=20)
    assert "nd" in fitted or fitted["warnings"]
    assert (tmp_path / "sw" / "scaling_fit.png").is_file()


def test_time_prediction_fits_overhead_plus_rate():
    from domainlm.scaling.run_sweep import predict_seconds as predict

    # 10 s of overhead plus 1 s per GFLOP, the first run slowed by imports.
    history = [(1e9, 30.0), (2e9, 12.0), (4e9, 14.0)]
    assert predict(history, 8e9, margin=1.0) == pytest.approx(18.0)
    assert predict([(1e9, 5.0)], 4e9, margin=1.0) == pytest.approx(20.0)  # one run: proportional
