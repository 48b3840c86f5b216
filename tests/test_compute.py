"""``domainlm compute``: the budget planner on tiny models with a short throughput probe."""

from __future__ import annotations

import json

import pytest

from domainlm.compute import ComputeConfig, compute, log_scale_bar
from domainlm.config import as_config
from domainlm.errors import ConfigError
from domainlm.flops import model_flops


def test_exactly_one_budget_and_every_problem_at_once():
    with pytest.raises(ConfigError) as exc:
        as_config(ComputeConfig, None, {"tokens": 10, "flops": 1e9, "utilisation": 1.5, "probe_seconds": -1})
    text = str(exc.value)
    assert "exactly one budget" in text and "utilisation" in text and "probe_seconds" in text
    with pytest.raises(ConfigError, match="exactly one budget"):
        as_config(ComputeConfig, None, {})
    with pytest.raises(ConfigError, match="probe_seconds above 0"):
        as_config(ComputeConfig, None, {"hours": 1.0, "probe_seconds": 0})


def test_tokens_budget_with_probe(capsys):
    from transformers import AutoConfig

    from domainlm.sources import resolve

    out = compute(model="tiny-llama", tokens=10**9, seq_len=64, probe_seconds=0.3, batch_size=2)
    fb = model_flops(AutoConfig.from_pretrained(resolve("tiny-llama").path), 64)
    assert out["flops"] == pytest.approx(1e9 * fb.training_flops_per_token)
    assert out["flops_6nd_chinchilla"] == pytest.approx(1e9 * 6 * fb.total_params)
    assert out["chinchilla_optimal_tokens"] == 20 * fb.total_params
    probe = out["probe"]
    assert probe["tokens_per_s"] > 0 and probe["steps"] >= 1 and probe["seq_len"] == 64
    assert out["wall_time_here_s"] == pytest.approx(1e9 / probe["tokens_per_s"])
    assert out["accelerator"]["wall_time_s"] == pytest.approx(out["flops"] / (989e12 * 0.4))
    assert 0 < out["log_position_probe_to_1e23"] < 1
    printed = capsys.readouterr().out
    for needle in ("FLOPs/token", "tokens/s measured", "h100", "compute-optimal", "1e23: emergent abilities"):
        assert needle in printed


def test_flops_budget_without_probe_writes_json(tmp_path, capsys):
    out = compute(model="tiny-llama", flops=1e18, seq_len=32, probe_seconds=0, accelerator="a100",
                  utilisation=0.5, out=str(tmp_path / "c.json"))
    per_token = out["params"]["training_flops_per_token"]
    assert out["tokens"] == pytest.approx(1e18 / per_token)
    assert out["probe"] is None
    assert out["accelerator"]["wall_time_s"] == pytest.approx(1e18 / (312e12 * 0.5))
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["config"]["accelerator"] == "a100" and saved["flops"] == 1e18
    assert "not measured" in capsys.readouterr().out


def test_hours_budget_uses_measured_speed(capsys):
    out = compute(model="tiny-llama", hours=2.0, seq_len=32, probe_seconds=0.3, batch_size=2)
    assert out["tokens"] == pytest.approx(out["probe"]["tokens_per_s"] * 7200)
    assert out["wall_time_here_s"] == pytest.approx(7200)


def test_masked_model_counts_head_at_masked_positions_only(capsys):
    out = compute(model="tiny-bert", tokens=1000, probe_seconds=0)
    assert out["objective"] == "masked" and out["seq_len"] == 128
    assert out["params"]["head_fraction"] == 0.15
    lora = compute(model="tiny-bert", tokens=1000, probe_seconds=0, trainable_fraction=0.0)
    assert lora["flops"] == pytest.approx(out["flops"] * 2 / 3)


def test_seq_len_beyond_the_models_positions_is_refused():
    with pytest.raises(ConfigError, match="seq-len 512"):
        compute(model="tiny-bert", tokens=1000, seq_len=4096, probe_seconds=0)


def test_log_scale_bar_places_marks():
    lines = log_scale_bar([("a", 1e10), ("b", 1e15), ("c", 1e20)], width=10)
    assert lines[0].startswith("   10^10") and lines[0].endswith("10^20")
    rows = [line.split()[1] for line in lines[1:]]
    assert [r.index("#") for r in rows] == [0, 5, 10]


def test_cli(capsys):
    from domainlm.cli import main

    assert main(["compute", "--model", "tiny-llama", "--tokens", "2e6", "--probe-seconds", "0",
                 "--accelerator", "h200"]) == 0
    assert "h200" in capsys.readouterr().out
    assert main(["compute", "--model", "tiny-llama"]) == 2  # no budget: a config error, exit code 2


def test_objective_that_does_not_fit_the_model_is_a_config_error():
    with pytest.raises(ConfigError, match="objective: masked"):
        compute(model="tiny-llama", tokens=1000, objective="masked", probe_seconds=0.1, seq_len=16)
