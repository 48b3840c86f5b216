"""``domainlm compute``: the budget planner on tiny models with a short throughput probe."""

from __future__ import annotations

import json

import pytest
import torch

from domainlm.compute import ComputeConfig, compute
from domainlm.compute.run import log_scale_bar
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

    from domainlm.sources.resolution import resolve

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


# --------------------------------------------------------------------------------------------------
# the memory planner (compute --memory, domainlm.memory)
# --------------------------------------------------------------------------------------------------

def _shape(**kw):
    from domainlm.memory import ModelShape

    base = dict(params=1_000_000_000, embedding_params=131_072_000, hidden=2048, layers=16, intermediate=5504,
                kv_hidden=2048, vocab=32000)
    base.update(kw)
    return ModelShape(**base)


def test_planner_worked_example_full_lora_qlora():
    from domainlm.memory import GB, estimate

    s = _shape()
    # body linears: 16 x (2*2048*2048 + 2*2048*2048 + 3*2048*5504) = 16 x 50,593,792
    assert s.body_linear_params == 809_500_672
    full = estimate(s, method="full", seq_len=2048, batch=1, bf16=True, device="cpu")
    assert (full.weights, full.gradients, full.optimizer) == (4e9, 4e9, 8e9)  # fp32 master, grads, AdamW moments
    # activations under bf16 autocast, per layer and token: two norms keep 2 fp32 tensors each (16h bytes), five
    # bf16 input casts (q, k, v, gate, up: 10h), attention q, k, v, out in bf16 (k/v repeated to 4h: 8h), the
    # MLP's gate, up, SiLU and product in bf16 (8I); plus, per layer, the dense 2048 x 2048 document mask (bf16
    # on a CPU); autocast's bf16 copy of the body weights (2 B/param); working set 2*2048*5504*4; the fused head:
    # three logit chunks of 2^24, the hidden states' gradient (2048 x 2048 fp32) and the head's (32000 x 2048)
    per_layer = (16 * 2048 + 10 * 2048 + 8 * 2048 + 8 * 5504) * 2048 + 2048 * 2048 * 2
    head = 3 * (1 << 24) * 4 + 2048 * 2048 * 4 + 32000 * 2048 * 4
    assert full.activations == pytest.approx(16 * per_layer + 2 * 809_500_672 + 2 * 2048 * 5504 * 4 + head)
    # the activations peak before any body gradient exists; the optimizer step holds all gradients plus foreach
    # AdamW's temporaries (one fp32 tensor per trainable parameter): the peak is the larger of the two
    assert full.step_working == 4e9
    assert full.total == pytest.approx(4e9 + 8e9 + max(full.activations, 4e9 + 4e9))
    short = estimate(s, method="full", seq_len=256, bf16=True, device="cpu")
    assert short.activations < 8e9 and short.total == pytest.approx(20e9)
    lora = estimate(s, method="lora", seq_len=2048, bf16=True, device="cpu", lora_r=16)
    trainable = 16 * 16 * (9 * 2048 + 2 * 2048 + 3 * 5504)  # r x layers x sum(in + out) of the 7 projections
    assert lora.settings["trainable_params"] == trainable
    assert lora.weights == pytest.approx(2 * 1e9 + 4 * trainable)  # bf16 frozen base + fp32 adapters
    assert lora.optimizer == 8 * trainable
    qlora = estimate(s, method="qlora", seq_len=2048, bf16=True, device="cpu", lora_r=16)
    assert qlora.weights == pytest.approx(4.127 / 8 * 809_500_672 + 2 * (1e9 - 809_500_672) + 4 * trainable)
    lora_fp32 = estimate(s, method="lora", seq_len=2048, bf16=False, device="cpu", lora_r=16)  # before issue 15
    assert lora_fp32.weights == pytest.approx(4 * 1e9 + 4 * trainable)
    assert qlora.weights < 0.25 * lora_fp32.weights
    # LoRA under bf16: frozen norms keep their fp32 input (8h), attention 8h, the MLP's gate, up and SiLU (6I);
    # the adapters (dropout 0.05) keep an fp32 mask and a bf16 cast of their dropped input, 6 x (6h + I), and
    # lora_B's r-wide input (2 x 7 x 16); no head gradient (the head is frozen); autocast's bf16 adapter copies
    per_layer_lora = (8 * 2048 + 8 * 2048 + 6 * 5504 + 6 * (6 * 2048 + 5504) + 2 * 7 * 16) * 2048 + 2048 * 2048 * 2
    head_lora = 3 * (1 << 24) * 4 + 2048 * 2048 * 4
    assert lora.activations == pytest.approx(16 * per_layer_lora + 2 * trainable + 2 * 2048 * 5504 * 4 + head_lora)
    # checkpointing keeps each layer's fp32 input, plus one layer recomputed
    ck = estimate(s, method="qlora", seq_len=2048, bf16=True, device="cpu", gradient_checkpointing=True)
    assert ck.activations == pytest.approx(16 * 2048 * 2048 * 4 + per_layer_lora + 2 * trainable
                                           + 2 * 2048 * 5504 * 4 + head_lora)
    assert qlora.activations / ck.activations > 3
    # flash-attn / flex keep no L x L mask and no repeated k/v (here kv = hidden: only the mask goes)
    gpu = estimate(s, method="qlora", seq_len=2048, bf16=True, device="cuda", lora_r=16, dense_doc_mask=False)
    assert qlora.activations - gpu.activations == pytest.approx(16 * 2048 * 2048 * 2)
    assert estimate(s, device="cuda").runtime == 1 * GB


def test_planner_8b_on_one_80gb_gpu_and_fsdp():
    from domainlm.memory import GB, estimate, plan_report, shape_from_params

    s = shape_from_params(8e9, vocab=128256)
    assert s.params == 8_000_000_000 and 30 <= s.layers <= 36
    full = estimate(s, method="full", gpus=1, gpu_memory_gb=80, seq_len=2048)
    # "8B full on 1x80 GB: does not fit": 16 B/param (fp32 weights, grads, AdamW moments) = 128 GB before activations
    assert full.fits is False and 128 * GB < full.total < 170 * GB
    q = estimate(s, method="qlora", gpus=1, gpu_memory_gb=80, seq_len=2048, gradient_checkpointing=True)
    assert q.fits and 6 * GB < q.total < 16 * GB  # "QLoRA with checkpointing: ~14 GB"
    sharded = estimate(s, method="full", strategy="fsdp", gpus=8, gpu_memory_gb=80, seq_len=2048,
                       gradient_checkpointing=True)
    assert sharded.fits and sharded.optimizer == pytest.approx(full.optimizer / 8)
    lines = plan_report(s, full, gpus=1, gpu_memory_gb=80, seq_len=2048, batch=1)
    text = "\n".join(lines)
    assert "does not fit" in text and "qlora + checkpointing" in text and "lora" in text


def test_planner_shape_matches_a_real_model():
    from transformers import AutoConfig, AutoModelForCausalLM

    from domainlm.memory import shape_from_config
    from domainlm.sources.resolution import resolve

    config = AutoConfig.from_pretrained(resolve("tiny-llama").path)
    shape = shape_from_config(config)
    model = AutoModelForCausalLM.from_config(config)
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and ".layers." in n)
    assert shape.body_linear_params == linear
    assert shape.params == sum(p.numel() for p in model.parameters())


def test_flops_and_the_memory_plan_read_one_shape_from_aliased_configs():
    """OPT names its MLP width ``ffn_dim``, GPT-2 its sizes ``n_embd``/``n_inner``: FLOPs and the memory plan read
    a config through one alias list (``flops.config_shape``), so MFU and the plan describe the same model."""
    from transformers import GPT2Config, OPTConfig

    from domainlm.flops import config_shape
    from domainlm.memory import shape_from_config

    opt = OPTConfig(hidden_size=32, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
                    max_position_embeddings=64, word_embed_proj_dim=32)
    gpt2 = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_inner=80, vocab_size=100, n_positions=64)
    for config in (opt, gpt2):
        s, m = config_shape(config), shape_from_config(config)
        assert (m.hidden, m.layers, m.intermediate, m.kv_hidden, m.vocab) == (
            s.d_model, s.n_layer, s.d_ff, s.n_kv_head * s.head_dim, s.vocab)
    assert shape_from_config(opt).intermediate == 96  # not the 4 x hidden a reader without ffn_dim assumes
    assert shape_from_config(gpt2).intermediate == 80


def test_compute_memory_verb(capsys, tmp_path):
    out = compute(model="tiny-llama", memory=True, method="qlora", gpu_memory=2, seq_len=256,
                  out=str(tmp_path / "m.json"))
    assert out["fits"] is True and out["estimate"]["settings"]["method"] == "qlora"
    assert "fits" in capsys.readouterr().out
    big = compute(memory=True, params=7e9, method="full", gpus=1, gpu_memory=24)
    assert big["fits"] is False and big["seq_len"] == 2048
    printed = capsys.readouterr().out
    assert "does not fit" in printed and "qlora" in printed
    assert json.loads((tmp_path / "m.json").read_text())["config"]["memory"] is True
    with pytest.raises(ConfigError, match="takes no budget"):
        compute(memory=True, tokens=10)


def test_adapt_startup_warning_when_the_run_will_not_fit():
    from domainlm.memory import check_fits, shape_from_params

    shape = shape_from_params(7e9)
    msg = check_fits(shape, device_memory_bytes=24e9, method="full", seq_len=2048, batch=1)
    assert msg and "does not fit" in msg and "--gradient-checkpointing" in msg
    assert check_fits(shape, device_memory_bytes=80e9, method="qlora", seq_len=2048, batch=1,
                      gradient_checkpointing=True) is None
