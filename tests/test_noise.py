"""No noise, and the small things a user trips on (issue 28, section 3): each check fails without its fix."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from domainlm.errors import ConfigError


def test_yaml_on_and_off_are_accepted_for_bf16(tmp_path):
    """YAML 1.1 reads an unquoted `bf16: on` as True; the recipe means 'on'."""
    from domainlm.adapt.config import AdaptConfig
    from domainlm.config import build, read_yaml

    for text, want in (("bf16: on\n", "on"), ("bf16: off\n", "off"), ("bf16: auto\n", "auto")):
        (tmp_path / "r.yaml").write_text(text)
        assert build(AdaptConfig, read_yaml(tmp_path / "r.yaml")).bf16 == want
    with pytest.raises(ConfigError, match="'method'"):
        build(AdaptConfig, {"method": True})  # only where on/off are the choices


def test_a_corpus_path_that_does_not_exist_is_named_as_one_and_leaves_no_out(tmp_path, capsys):
    from domainlm.adapt import adapt
    from domainlm.cli import main

    missing = tmp_path / "corpora" / "mine"
    with pytest.raises(ConfigError, match=f"'corpus': {missing} does not exist") as err:
        adapt(corpus=str(missing), out=str(tmp_path / "run"), max_steps=1)
    assert "unknown corpus card" not in str(err.value)
    assert not (tmp_path / "run").exists()  # no empty --out left behind
    with pytest.raises(ConfigError, match="unknown corpus card 'pubmed-sampel'.*did you mean 'pubmed-sample'"):
        adapt(corpus="pubmed-sampel", out=str(tmp_path / "run"), max_steps=1)
    (tmp_path / "r.yaml").write_text(f"corpus: {missing}\nmax_steps: 1\n")
    assert main(["validate", str(tmp_path / "r.yaml")]) != 0  # validate catches it too
    assert "does not exist" in capsys.readouterr().err


def test_cli_mutes_the_bitsandbytes_hub_kernel_warning_unless_verbose():
    """bitsandbytes, on an AVX512-BF16 CPU, logs two WARNINGs at import about a Hub kernel domainlm never uses."""
    from domainlm.cli import main

    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    try:
        main(["--version"])
        assert not bnb.isEnabledFor(logging.WARNING) and bnb.isEnabledFor(logging.ERROR)
        main(["--verbose", "--version"])
        assert bnb.isEnabledFor(logging.WARNING)
    finally:
        bnb.setLevel(logging.NOTSET)
        logging.getLogger("domainlm").setLevel(logging.NOTSET)


def test_single_process_checkpoints_and_peft_wrapping_warn_nothing(tmp_path):
    """torch's 'torch.distributed is disabled' UserWarning at every checkpoint, and transformers'
    'is_gradient_checkpointing is deprecated' FutureWarning that peft triggers, are not the user's problem."""
    import torch.distributed.checkpoint as dcp

    from domainlm.adapt.checkpoint import _dcp
    from domainlm.adapt.config import AdaptConfig
    from domainlm.adapt.setup import prepare_model

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _dcp(dcp.save, {"w": torch.ones(3)}, checkpoint_id=tmp_path / "dcp", no_dist=True)
        back = {"w": torch.zeros(3)}
        _dcp(dcp.load, back, checkpoint_id=tmp_path / "dcp", no_dist=True)
        prepare_model(AdaptConfig(model="tiny-llama", method="lora"))
    assert torch.equal(back["w"], torch.ones(3))


def test_a_corpus_without_validation_blocks_says_perplexity_was_not_tracked(tmp_path, capsys, monkeypatch):
    from domainlm.adapt import adapt
    from domainlm.corpora.run import prepare_card

    monkeypatch.setenv("DOMAINLM_PROGRESS", "0")
    corpus = tmp_path / "c"
    prepare_card("pubmed-sample", "tiny-llama", corpus, block_size=64, validation_fraction=0.0)
    assert json.loads((corpus / "manifest.json").read_text())["splits"]["validation"]["blocks"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "Data has no positive values" on an empty log axis
        adapt(model="tiny-llama", corpus=str(corpus), out=str(tmp_path / "run"), max_steps=1, batch_size=2,
              eval_every=0, save_every=0, bf16="off")
    assert "held-out domain perplexity: not tracked" in capsys.readouterr().out
    assert (tmp_path / "run" / "curves.png").is_file()


def test_building_a_tiny_model_prints_no_shard_bars(tmp_path, capfd):
    from domainlm.sources.tiny import build_tiny

    build_tiny("tiny-bert", tmp_path / "tiny-bert")
    assert "Writing model shards" not in capfd.readouterr().err


def test_bench_shows_a_bar_per_task_counting_batches():
    """bench's per-task bar advances once per forward pass of the model's body, in every mode."""
    import io

    from domainlm.bench.run import _task_progress

    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    loaded = SimpleNamespace(model=model)
    sink = io.StringIO()
    with _task_progress(loaded, "model: ncbi", disable=False, file=sink) as bar:
        for _ in range(3):
            model(torch.zeros(1, 2))
        assert bar.n == 3
    model(torch.zeros(1, 2))  # the hook is gone with the task
    assert bar.n == 3 and "model: ncbi" in sink.getvalue()


def test_a_fresh_head_message_does_not_claim_training_where_nothing_trains():
    from domainlm.sources.load import load_model
    from domainlm.sources.resolution import resolve

    src = resolve("tiny-bert")
    folder = Path(src.path)
    assert folder.is_dir()
    # a masked LM loaded from a checkpoint without its MLM head (as MiniLM's sentence-embedding checkpoint)
    from transformers import AutoModel

    base_only = folder.parent / "tiny-bert-body-only"
    if not (base_only / "config.json").is_file():
        AutoModel.from_pretrained(folder).save_pretrained(base_only)
        for f in folder.glob("*token*"):
            (base_only / f.name).write_bytes(f.read_bytes())
    _, report = load_model(resolve(str(base_only)), "masked")
    msg = " ".join(report.messages)
    assert "initialised fresh" in msg and "domainlm trains it fully" not in msg
    assert "`adapt` trains them" in msg and "mean nothing" in msg


def test_muted_log_drops_only_the_named_message_and_only_inside_the_block(caplog):
    from domainlm.noise import muted_log

    log = logging.getLogger("transformers.configuration_utils")
    with caplog.at_level(logging.WARNING):
        with muted_log("transformers.configuration_utils", "`torch_dtype` is deprecated"):
            log.warning("`torch_dtype` is deprecated! Use `dtype` instead!")
            log.warning("another note")
        log.warning("`torch_dtype` is deprecated! after the block")
    texts = [r.getMessage() for r in caplog.records]
    assert texts == ["another note", "`torch_dtype` is deprecated! after the block"]
